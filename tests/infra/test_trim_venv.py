"""infra/trim_venv.py on small fake site-packages trees and on real shared libraries of this venv.

The rules' effect on the image is proven by ``make image-test`` (the pipeline, export's ONNX round trip);
here: what each rule removes and keeps, that a strip which changes what the loader sees is undone, and that
identical libraries become working symlinks.
"""
from __future__ import annotations

import ctypes
import shutil
import stat
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "infra"))
import trim_venv  # noqa: E402  (infra/ is not a package)

SITE = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "yaml").is_dir())


def _touch(root: Path, rel: str, data: bytes = b"x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_remove_unused_drops_tests_headers_stubs_and_named_paths_and_keeps_the_rest(tmp_path):
    site = tmp_path / "site-packages"
    keep = ["torch/bin/torch_shm_manager", "torch/_inductor/codegen/cpp_prefix.h", "torchgen/packaged/t.cpp",
            "numpy/core.py", "pkg/testing/util.py", "kfp/dsl/base.py", "pkg-1.0.dist-info/METADATA",
            "onnxruntime/capi/onnxruntime_pybind11_state.so"]
    gone = ["torch/bin/test_api", "torch/include/ATen/a.h", "torch/_C/_VF.pyi", "numpy/tests/test_x.py",
            "numpy/_core/include/numpy/ndarraytypes.h", "fontTools/misc/bezierTools.c", "pyarrow/lib.pxd",
            "kfp/dsl/base_test.py", "onnxruntime/capi/libonnxruntime.so.1.32.0", "onnxruntime/tools/x.py",
            "pkg-1.0.dist-info/RECORD", "lib/libfoo.a"]
    for rel in keep + gone:
        _touch(site, rel)
    saved = trim_venv.remove_unused(site)
    assert [rel for rel in keep if not (site / rel).exists()] == []
    assert [rel for rel in gone if (site / rel).exists()] == []
    assert sum(saved.values()) == len(gone)  # one byte each
    assert saved["onnxruntime/capi/libonnxruntime.so*"] == 1


def _real_library() -> Path:
    found = sorted((SITE / "yaml").glob("_yaml*.so"))
    if not found:
        pytest.fail(f"no PyYAML extension module under {SITE}/yaml")
    return found[0]


@pytest.mark.skipif(shutil.which("strip") is None, reason="binutils' strip is not installed")
def test_strip_one_strips_a_real_library_that_still_loads(tmp_path):
    lib = tmp_path / _real_library().name
    shutil.copy2(_real_library(), lib)
    before = lib.stat().st_size
    saved, outcome = trim_venv.strip_one(lib)
    assert outcome == "stripped" and saved > 0 and lib.stat().st_size == before - saved
    ctypes.CDLL(str(lib))  # the stripped file loads


def test_strip_one_puts_the_original_back_when_the_loaders_view_changes(tmp_path):
    lib = tmp_path / _real_library().name
    shutil.copy2(_real_library(), lib)
    original = lib.read_bytes()
    # a "strip" that corrupts one byte of .text (inside the first executable PT_LOAD segment's file part)
    head, phdrs, _ = trim_venv._elf(original)
    p_type, p_flags, off, *_ = next(ph for ph in phdrs if ph[0] == trim_venv.PT_LOAD and ph[1] & 1)
    fake = tmp_path / "fake-strip"
    fake.write_text(f"#!{sys.executable}\nimport sys\np = sys.argv[-1]\nb = bytearray(open(p, 'rb').read())\n"
                    f"b[{off + 64}] ^= 0xFF\nopen(p, 'wb').write(bytes(b[:-1]))\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert trim_venv.strip_one(lib, strip=str(fake)) == (0, "restored: the loader's view changed")
    assert lib.read_bytes() == original


def test_same_for_the_loader_refuses_a_segment_moved_off_its_page_alignment():
    original = _real_library().read_bytes()
    head, phdrs, _ = trim_venv._elf(original)
    e_phoff = int.from_bytes(original[32:40], "little")
    i = [n for n, ph in enumerate(phdrs) if ph[0] == trim_venv.PT_LOAD][-1]
    moved = bytearray(original)
    at = e_phoff + i * 56 + 8  # p_offset of the last PT_LOAD
    moved[at:at + 8] = (phdrs[i][2] + 8).to_bytes(8, "little")
    assert trim_venv.same_for_the_loader(original, original)
    assert not trim_venv.same_for_the_loader(original, bytes(moved))


def test_dedupe_links_identical_libraries_and_keeps_different_ones(tmp_path):
    site = tmp_path / "site-packages"
    lib = _real_library().read_bytes()
    a = _touch(site, "pyarrow/libarrow_python.so", lib)
    b = _touch(site, "pyarrow/libarrow_python.so.2600", lib)
    c = _touch(site, "scipy.libs/libx.so.5", lib)
    d = _touch(site, "other/liby.so", lib[:-1] + bytes([lib[-1] ^ 1]))
    saved, links = trim_venv.dedupe(site, min_bytes=1)
    assert saved == 2 * len(lib) and len(links) == 2
    assert not a.is_symlink() and b.is_symlink() and c.is_symlink() and not d.is_symlink()
    assert b.resolve() == a.resolve() and c.read_bytes() == lib
    ctypes.CDLL(str(c))  # a link in another folder loads the kept copy
