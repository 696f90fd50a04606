"""Bundle format 2: no code is read from a bundle, every file is verified, the id follows the served model only,
the ONNX tower matches eager, modes follow the umask, and one Recommender serves many threads."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import stat
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from components import bundle as B
from components.export import ExportPaths, build_bundle
from components.io import DataError
from components.serving import Recommender
from test_evaluate import make_split, save_random_model

MAX_LEN = 6


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A random-init MIND (3 interests) exported once; tests tamper with copies."""
    root = tmp_path_factory.mktemp("bundle")
    split = make_split(root / "split", num_items=41, num_users=60)
    save_random_model(split, root / "models" / "mind", arch="mind", max_len=MAX_LEN, num_interests=3, seed=3)
    paths = ExportPaths(models_dir=root / "models", eval_dir=root / "eval", index_dir=root / "index",
                        split_dir=split, bundles_dir=root / "bundles")
    bundle = build_bundle("mind", paths, {}, {"test.recall@10": 0.5}, {"passed": True}, "v1")
    return {"root": root, "split": split, "paths": paths, "bundle": bundle}


@pytest.fixture
def copy(built, tmp_path):
    dst = tmp_path / built["bundle"].name
    shutil.copytree(built["bundle"], dst)
    return dst


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refresh_manifest(bundle: Path) -> None:
    """What an attacker who controls the folder does: list every file with its real hash and size, and
    recompute the content hash, so only the loaders' formats stand between the bundle and code execution."""
    man = json.loads((bundle / "manifest.json").read_text())
    names = sorted(p.name for p in bundle.iterdir() if p.name != "manifest.json")
    man["files"] = {n: _sha(bundle / n) for n in names}
    man["sizes"] = {n: (bundle / n).stat().st_size for n in names}
    if set(B.HASHED_FILES) <= set(names):
        body = {"format": man["format"], "files": {n: man["files"][n] for n in B.HASHED_FILES},
                "ident": {k: man[k] for k in B.IDENT_KEYS}}
        man["content_hash"] = "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(man))


# ------------------------------------------------------------------------------------------ the format
def test_bundle_holds_only_data_files_each_hashed_in_the_manifest(built):
    b = built["bundle"]
    man = json.loads((b / "manifest.json").read_text())
    assert man["format"] == 2
    assert sorted(p.name for p in b.iterdir()) == sorted([*B.BUNDLE_FILES, "manifest.json"])
    assert "user_tower.pt" not in man["files"] and not (b / "user_tower.pt").exists()
    for name in B.BUNDLE_FILES:
        assert man["files"][name] == _sha(b / name), name
        assert man["sizes"][name] == len((b / name).read_bytes()), name
    # no file is a zip (TorchScript / torch.save) or a pickle stream
    for name in B.BUNDLE_FILES:
        head = (b / name).read_bytes()[:2]
        assert head != b"PK" and head[:1] != b"\x80", name
    # safetensors: an 8-byte little-endian header length, then a JSON header naming every tensor of the model
    raw = (b / "weights.safetensors").read_bytes()
    header = json.loads(raw[8: 8 + int.from_bytes(raw[:8], "little")])
    eager = models.load_model(built["paths"].models_dir / "mind" / "model.pt")
    assert set(header) - {"__metadata__"} == set(eager.state_dict())
    assert b.name == f"mind-{man['content_hash'].split(':')[1][:12]}"
    assert B.verify(b) == man


def test_content_hash_is_the_documented_formula(built):
    """Recomputed here from the manifest: sha256 of the JSON of format, hashed files' sha256 and the model
    description — the ONNX file, metrics and gate are outside it."""
    man = json.loads((built["bundle"] / "manifest.json").read_text())
    hashed = {n: man["files"][n] for n in ("weights.safetensors", "item_embeddings.npy", "index.faiss",
                                          "item_ids.npy", "index.json", "items.parquet", "vocab.json")}
    ident = {k: man[k] for k in ("model", "arch", "hparams", "max_len", "exclude_history", "data_version")}
    want = hashlib.sha256(json.dumps({"format": 2, "files": hashed, "ident": ident},
                                     sort_keys=True).encode()).hexdigest()
    assert man["content_hash"] == f"sha256:{want}"
    assert man["metrics"] == {"test.recall@10": 0.5} and man["gate"] == {"passed": True}


def test_onnx_tower_matches_eager_for_other_batch_sizes_and_lengths(built):
    import onnx
    import onnxruntime as ort

    b = built["bundle"]
    onnx.checker.check_model(onnx.load(str(b / "user_tower.onnx")))
    sess = ort.InferenceSession(str(b / "user_tower.onnx"), providers=["CPUExecutionProvider"])
    eager = models.load_model(built["paths"].models_dir / "mind" / "model.pt")
    gen = torch.Generator().manual_seed(11)
    for batch, length in ((1, MAX_LEN), (9, MAX_LEN), (4, 3), (2, 1)):
        h = torch.randint(1, 41, (batch, length), generator=gen)
        h[:, length // 2 + 1:] *= torch.randint(0, 2, (batch, 1), generator=gen)  # some shorter histories
        p = torch.randint(0, 3, (batch, 1), generator=gen)
        with torch.no_grad():
            v, m = eager.user_interests(h, h != 0, p)
        ov, om = sess.run(["interests", "interest_mask"], {"history": h.numpy(), "mask": (h != 0).numpy(),
                                                           "profile": p.numpy()})
        assert ov.shape == (batch, 3, v.shape[-1])
        assert np.array_equal(om.astype(bool), m.numpy())
        assert np.abs(ov - v.numpy()).max() <= 1e-5
    assert json.loads((b / "manifest.json").read_text())["onnx"]["max_abs_diff_vs_eager"] <= 1e-5


def test_an_architecture_that_cannot_export_fails_with_its_name(tmp_path):
    class ValueBranching(torch.nn.Module):
        """Branches on tensor values: torch.export cannot capture one graph for it."""

        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)

        def user_interests(self, history, mask, profile):
            v = self.emb(history).sum(1, keepdim=True)
            if int(history.sum()) > 7:
                v = -v
            return v, mask[:, :1]

    with pytest.raises(ValueError, match="arch ValueBranching: the user tower cannot be exported to ONNX"):
        B.export_onnx(ValueBranching(), tmp_path / "t.onnx", max_len=4, num_profile_fields=0, num_items=10)


def test_both_backends_serve_the_same_lists(built):
    torch_rec = Recommender.load(built["bundle"])
    onnx_rec = Recommender.load(built["bundle"], backend="onnx")
    assert (torch_rec.backend, onnx_rec.backend) == ("torch", "onnx")
    rng = np.random.default_rng(0)
    ids = [f"m{7 * i}" for i in range(1, 41)]
    for _ in range(30):
        hist = list(rng.choice(ids, size=int(rng.integers(1, 10)), replace=False))
        prof = {"gender": str(rng.choice(["F", "M"]))}
        a, b = torch_rec.recommend(hist, prof, n=10), onnx_rec.recommend(hist, prof, n=10)
        assert [i for i, _ in a] == [i for i, _ in b]
        assert np.allclose([s for _, s in a], [s for _, s in b], atol=1e-5)
    with pytest.raises(ValueError, match="backend must be one of"):
        Recommender.load(built["bundle"], backend="tensorrt")


# ---------------------------------------------------------------------------------------- no code is run
def _evil_torchscript(marker: Path) -> bytes:
    """A real TorchScript module whose forward creates ``marker`` (torch.from_file with shared=True)."""
    class Evil(torch.nn.Module):
        def __init__(self, path: str):
            super().__init__()
            self.path = path

        def forward(self, history: torch.Tensor, mask: torch.Tensor, profile: torch.Tensor):
            f = torch.from_file(self.path, True, 16, dtype=torch.uint8)  # creates the file (or overwrites)
            return history.float().unsqueeze(-1) + f.float().sum() * 0, mask  # used: not dead code

    import io

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Evil(str(marker))), buf)
    return buf.getvalue()


class _OpenOnUnpickle:
    """Unpickling this object calls ``open(marker, "w")``: the file appears if the pickle is ever loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_the_payloads_are_live(tmp_path):
    """Control: each payload really creates its marker when loaded the unsafe way (so the refusals below
    mean something)."""
    ts, pk, npy = tmp_path / "ts", tmp_path / "pk", tmp_path / "npy"
    (tmp_path / "a.pt").write_bytes(_evil_torchscript(ts))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(tmp_path / "a.pt"))(torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2).bool(),
                                               torch.zeros(1, 0, dtype=torch.long))
    assert ts.exists()
    pickle.loads(pickle.dumps(_OpenOnUnpickle(pk)))
    assert pk.exists()
    np.save(tmp_path / "e.npy", np.array([_OpenOnUnpickle(npy)], dtype=object), allow_pickle=True)
    np.load(tmp_path / "e.npy", allow_pickle=True)
    assert npy.exists()


@pytest.mark.parametrize("name,payload,match", [
    ("user_tower.pt", "torchscript", "unexpected file 'user_tower.pt'"),
    ("model.pt", "pickle", "unexpected file 'model.pt'"),
    ("weights.safetensors", "torchscript", "weights.safetensors: not a safetensors file"),
    ("weights.safetensors", "pickle", "weights.safetensors: not a safetensors file"),
    ("item_embeddings.npy", "npy_pickle", "item_embeddings.npy: not a plain .npy array"),
    ("user_tower.onnx", "torchscript", "user_tower.onnx: not a loadable ONNX model"),
])
def test_code_in_a_bundle_is_refused_and_never_run(copy, tmp_path, name, payload, match):
    marker = tmp_path / "pwned"
    if payload == "torchscript":
        data = _evil_torchscript(marker)
    elif payload == "pickle":
        data = pickle.dumps({"state_dict": _OpenOnUnpickle(marker)})
    else:
        np.save(tmp_path / "e.npy", np.array([_OpenOnUnpickle(marker)], dtype=object), allow_pickle=True)
        data = (tmp_path / "e.npy").read_bytes()
    (copy / name).write_bytes(data)
    _refresh_manifest(copy)  # the attacker fixes up every hash
    unread = {"user_tower.onnx": "torch", "weights.safetensors": "onnx"}  # a backend that never reads the file
    for backend in ("torch", "onnx"):
        if unread.get(name) == backend:
            Recommender.load(copy, backend=backend).recommend(["m7", "m14"], n=3)  # ignored, not run
            continue
        with pytest.raises(DataError, match=match):
            Recommender.load(copy, backend=backend, use_index=True)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- integrity
def test_swapped_truncated_missing_or_extra_files_are_refused_by_name(copy, tmp_path):
    good = B.verify(copy)
    emb = np.load(copy / "item_embeddings.npy")
    np.save(copy / "item_embeddings.npy", emb[::-1].copy())  # same shape and dtype, other rows
    with pytest.raises(DataError, match=r"item_embeddings\.npy: sha256 differs from the manifest"):
        Recommender.load(copy)
    np.save(copy / "item_embeddings.npy", emb)
    assert B.verify(copy) == good  # np.save is deterministic: the original bytes are back

    data = (copy / "items.parquet").read_bytes()
    (copy / "items.parquet").write_bytes(data[:-10])
    with pytest.raises(DataError, match=r"items\.parquet: size \d+ bytes, the manifest says \d+ \(truncated"):
        Recommender.load(copy)
    (copy / "items.parquet").write_bytes(data)

    idx = (copy / "index.faiss").read_bytes()
    (copy / "index.faiss").unlink()
    with pytest.raises(DataError, match=r"index\.faiss: file missing from the bundle"):
        Recommender.load(copy)
    (copy / "index.faiss").write_bytes(idx)

    (copy / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt: unexpected file in the bundle"):
        Recommender.load(copy)
    (copy / "notes.txt").unlink()

    (copy / "vocab.json").rename(copy / "vocab.real")
    os.symlink(copy / "vocab.real", copy / "vocab.json")
    _refresh_manifest(copy)
    with pytest.raises(DataError, match="unexpected file|not a regular file"):
        B.verify(copy)
    (copy / "vocab.json").unlink()
    (copy / "vocab.real").rename(copy / "vocab.json")
    _refresh_manifest(copy)
    assert B.verify(copy)["content_hash"] == good["content_hash"]


def test_manifest_format_and_content_hash_are_checked(copy):
    man = json.loads((copy / "manifest.json").read_text())
    for fmt, match in ((None, "format 1 held an executable TorchScript"), (3, "unknown bundle format 3")):
        (copy / "manifest.json").write_text(json.dumps({**man, "format": fmt}))
        with pytest.raises(DataError, match=f"manifest.json: .*{match}"):
            Recommender.load(copy)
    (copy / "manifest.json").write_text(json.dumps({**man, "max_len": MAX_LEN + 1}))  # hash not recomputed
    with pytest.raises(DataError, match="manifest.json: content_hash .* does not match"):
        Recommender.load(copy)
    files = dict(man["files"])
    del files["vocab.json"]
    (copy / "manifest.json").write_text(json.dumps({**man, "files": files}))
    with pytest.raises(DataError, match=r"vocab\.json: file not listed in the manifest"):
        B.verify(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest.json: not valid JSON"):
        B.verify(copy)
    (copy / "manifest.json").write_text(json.dumps(man))
    assert B.verify(copy) == man


# --------------------------------------------------------------------------------------------- identity
def test_same_weights_same_id_and_re_export_is_a_no_op(built):
    paths, bundle = built["paths"], built["bundle"]
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in bundle.iterdir()}
    again = build_bundle("mind", paths, {"other": 1}, {"test.recall@10": 0.9}, {"passed": False}, "v1")
    assert again == bundle
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in bundle.iterdir()} == before
    assert json.loads((bundle / "manifest.json").read_text())["metrics"] == {"test.recall@10": 0.5}
    assert sorted(p.name for p in paths.bundles_dir.iterdir()) == [bundle.name]  # no staging left
    # another data version is another bundle
    other = build_bundle("mind", paths, {}, {}, {"passed": True}, "v2")
    assert other != bundle and other.name.startswith("mind-")
    shutil.rmtree(other)


def test_fresh_export_gives_the_same_id_and_respects_the_umask(built, tmp_path):
    """Built again from scratch (new folder, ONNX exported again) under umask 027: the same name, and the
    bundle readable by the group, not by others (mkdtemp alone would give 0700)."""
    paths = ExportPaths(models_dir=built["paths"].models_dir, eval_dir=tmp_path, index_dir=tmp_path / "none",
                        split_dir=built["split"], bundles_dir=tmp_path / "bundles")
    old = os.umask(0o027)
    try:
        b = build_bundle("mind", paths, {}, {}, {"passed": True}, "v1")
    finally:
        os.umask(old)
    assert b.name == built["bundle"].name
    assert stat.S_IMODE(b.stat().st_mode) == 0o750
    for p in b.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p.name
    # a re-trained model (other weights) gets another id
    save_random_model(built["split"], tmp_path / "m2" / "mind", arch="mind", max_len=MAX_LEN, num_interests=3,
                      seed=4)
    paths2 = ExportPaths(models_dir=tmp_path / "m2", eval_dir=tmp_path, index_dir=tmp_path / "none",
                         split_dir=built["split"], bundles_dir=tmp_path / "bundles")
    assert build_bundle("mind", paths2, {}, {}, {"passed": True}, "v1").name != b.name


def test_a_damaged_bundle_is_rebuilt_on_re_export(built, tmp_path):
    paths = ExportPaths(models_dir=built["paths"].models_dir, eval_dir=tmp_path, index_dir=tmp_path / "none",
                        split_dir=built["split"], bundles_dir=tmp_path / "bundles")
    shutil.copytree(built["bundle"], paths.bundles_dir / built["bundle"].name)
    (paths.bundles_dir / built["bundle"].name / "vocab.json").write_text("{}")
    b = build_bundle("mind", paths, {}, {}, {"passed": True}, "v1")
    assert b.name == built["bundle"].name and B.verify(b)["content_hash"]


# ---------------------------------------------------------------------------------------------- threads
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_concurrent_requests_equal_sequential_ones_and_stats_add_up(built, backend):
    rng = np.random.default_rng(5)
    ids = [f"m{7 * i}" for i in range(1, 41)]
    reqs = []
    for r in range(40):
        hist = list(rng.choice(ids, size=int(rng.integers(0, 9)), replace=False))
        if r % 4 == 0:
            hist.append("unknown-item")
        prof = {"gender": ["F", "M", "X", None][r % 4]}
        reqs.append((hist, prof, int(rng.integers(1, 15)), [0.0, 0.0, 0.5][r % 3]))
    seq = Recommender.load(built["bundle"], backend=backend)
    want = [seq.recommend(*q) for q in reqs]
    rec = Recommender.load(built["bundle"], backend=backend)
    threads, rounds = 8, 3
    got: list[list] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for _ in range(rounds):
                order = list(range(len(reqs)))[t:] + list(range(len(reqs)))[:t]  # each thread its own order
                got[t].append({i: rec.recommend(*reqs[i]) for i in order})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert not errors
    for t in range(threads):
        for answers in got[t]:
            assert [answers[i] for i in range(len(reqs))] == want
    copies = threads * rounds
    assert rec.stats == {k: v * copies for k, v in seq.stats.items()}
    assert seq.stats["requests"] == 40 and seq.stats["unknown_items"] == 10
    assert seq.stats["unknown_profile_values"] == 10 and seq.stats["fallbacks"] > 0
