"""io: atomic outputs get the modes the process umask allows (tempfile.mkdtemp alone makes them 0700)."""
from __future__ import annotations

import os
import stat

import pytest

from components.io import apply_umask, atomic_dir, atomic_path, current_umask, write_json


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("umask,dir_mode,file_mode", [(0o027, 0o750, 0o640), (0o002, 0o775, 0o664),
                                                       (0o077, 0o700, 0o600)])
def test_atomic_outputs_respect_the_umask(tmp_path, umask, dir_mode, file_mode):
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "a.txt").write_text("x")
        write_json(tmp_path / "out" / "b.json", {"k": 1})
        with atomic_path(tmp_path / "c.bin") as t:
            t.write_bytes(b"1")
        secret = tmp_path / "secret"
        secret.write_text("s")
        os.chmod(secret, 0o600)  # what safetensors does
        apply_umask(secret)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "out") == dir_mode
    assert _mode(tmp_path / "out" / "a.txt") == _mode(tmp_path / "out" / "b.json") == file_mode
    assert _mode(tmp_path / "c.bin") == _mode(secret) == file_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bin", "out", "secret"]  # no temp leftovers


def test_relative_paths_cuts_the_checkout_from_every_string(tmp_path):
    from components.io import relative_paths

    root = tmp_path / "repo"
    obj = {"cmd": f"-m x --out {root}/data/split", "n": 3, "runs": [f"{root}/a", ("b", f"{tmp_path}/other")]}
    assert relative_paths(obj, root) == {"cmd": "-m x --out data/split", "n": 3,
                                         "runs": ["a", ["b", f"{tmp_path}/other"]]}
