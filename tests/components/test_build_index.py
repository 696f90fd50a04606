"""build_index: the faiss index is faithful to the item embeddings, exact where it must be, ANN-approximate
where configured, and reports its figures."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from components import build_index as BI
from components.config import ParamsError, from_dict
from test_evaluate import ROOT, make_split, save_random_model


def _cfg(**kw) -> BI.IndexConfig:
    base = dict(recall_n=10, batch_size=16)
    base.update(kw)
    return from_dict(BI.IndexConfig, base, "index")


def test_flat_index_is_exact_and_maps_rows_to_items(tmp_path):
    import faiss

    import models

    split = make_split(tmp_path / "split")
    mdir = save_random_model(split, tmp_path / "m")
    info = BI.run(_cfg(), mdir, split, tmp_path / "idx")
    assert info["factory"] == "Flat" and info["num_items"] == 40 and info["dim"] == 8
    assert info["interest_recall@10"] == pytest.approx(1.0)
    assert info["merged_recall@10"] == pytest.approx(1.0)
    assert info["queries_per_s"] > 0 and info["num_queries"] == 24  # 24 valid + test users, K = 1
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["factory"] == "Flat"
    index, rows, _ = BI.load_index(tmp_path / "idx")
    emb = models.load_model(mdir / "model.pt").item_embeddings(torch.arange(41)).detach().numpy()
    for r in (0, 17, 39):
        assert np.allclose(index.reconstruct(r), emb[rows[r]])
    assert 0 not in set(rows.tolist())
    assert isinstance(index, faiss.Index)


def test_ivf_with_all_lists_probed_is_exact_and_hnsw_is_close():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((2001, 16)).astype(np.float32)
    emb[0] = 0
    q = torch.as_tensor(rng.standard_normal((50, 2, 16)).astype(np.float32))
    m = torch.ones(50, 2, dtype=torch.bool)
    index, rows, used = BI.build_faiss_index(emb, "IVF8,Flat", nprobe=8)
    assert used == "IVF8,Flat"
    r = BI.ann_recall(index, rows, emb, q, m, 20)
    assert r["interest_recall"] == pytest.approx(1.0) and r["merged_recall"] == pytest.approx(1.0)
    index, rows, _ = BI.build_faiss_index(emb, "IVF8,Flat", nprobe=1)
    assert BI.ann_recall(index, rows, emb, q, m, 20)["interest_recall"] < 1.0  # one list of 8: approximate
    index, rows, used = BI.build_faiss_index(emb, "HNSW16", ef_search=64)
    r = BI.ann_recall(index, rows, emb, q, m, 20)
    assert used == "HNSW16" and 0.8 < r["interest_recall"] <= 1.0


def test_ann_recall_matches_a_numpy_reference_with_masked_interests():
    """Recall of an approximate index against a brute-force reference written here: per interest, the
    overlap of its top-n with numpy's argsort top-n; merged, the overlap with the top-n of each item's best
    score over the user's unmasked interests (ComiRec eq. 11)."""
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((3001, 8)).astype(np.float32)
    emb[0] = 0
    v = rng.standard_normal((40, 3, 8)).astype(np.float32)
    m = np.ones((40, 3), dtype=bool)
    m[::3, 2] = False  # some users with fewer interests
    n = 15
    index, rows, _ = BI.build_faiss_index(emb, "IVF16,Flat", nprobe=2)
    _, found = index.search(np.ascontiguousarray(v[m]), n)
    ann_items = rows[found]
    scores = v[m] @ emb[1:].T  # (Q, N) over the real items 1..N
    exact = np.argsort(-scores, axis=1)[:, :n] + 1
    per = np.mean([len(set(a) & set(e)) / n for a, e in zip(ann_items, exact)])
    merged_ref = []
    from components.retrieval import faiss_topn
    _, ann_merged = faiss_topn(index, rows, v, m, n)
    for u in range(len(v)):
        best = (v[u][m[u]] @ emb[1:].T).max(axis=0)
        merged_ref.append(len(set(ann_merged[u]) & set(np.argsort(-best)[:n] + 1)) / n)
    r = BI.ann_recall(index, rows, emb, torch.as_tensor(v), torch.as_tensor(m), n)
    assert 0.3 < per < 1.0  # nprobe 2 of 16 lists: approximate, so the check can tell
    assert r["interest_recall"] == pytest.approx(per)
    assert r["merged_recall"] == pytest.approx(np.mean(merged_ref))


def test_small_catalogue_falls_back_to_flat_and_bad_factory_is_named():
    emb = np.random.default_rng(1).standard_normal((50, 8)).astype(np.float32)
    _, _, used = BI.build_faiss_index(emb, "HNSW32", flat_below=100)
    assert used == "Flat"
    with pytest.raises(ParamsError, match="index.factory.*NotAnIndex"):
        BI.build_faiss_index(emb, "NotAnIndex")
    with pytest.raises(ParamsError, match="index.factory.*PQ16"):
        BI.build_faiss_index(emb, "IVF4,PQ16")  # d = 8 is not a multiple of 16 sub-quantizers


def test_config_and_params_section():
    from components.config import load_params, section

    with pytest.raises(ParamsError, match="nprobe"):
        _cfg(nprobe=0)
    with pytest.raises(ParamsError, match="factory"):
        _cfg(factory=" ")
    cfg = section(load_params(ROOT / "params.yaml"), "index", BI.IndexConfig)
    assert cfg.factory == "auto" and BI.resolve_factory(cfg.factory, 1349, cfg.flat_below) == "Flat"


def test_auto_factory_scales_lists_with_the_catalogue():
    # nlist = 4 sqrt(N) rounded to a power of two: 4 sqrt(1e6) = 4000 -> 4096; 4 sqrt(2e5) = 1789 -> 2048
    assert BI.resolve_factory("auto", 1_000_000, 200_000) == "IVF4096,SQfp16"
    assert BI.resolve_factory("auto", 200_000, 200_000) == "IVF2048,SQfp16"
    assert BI.resolve_factory("auto", 199_999, 200_000) == "Flat"
    assert BI.resolve_factory("HNSW32", 150, 100) == "HNSW32"
    # never fewer than 39 training points per list: 4 sqrt(5000) = 283 -> 256 lists need 9,984 > 5,000 points
    assert BI.resolve_factory("auto", 5000, 0) == "IVF128,SQfp16"
    assert BI.resolve_factory("auto", 50, 0) == "Flat"


def test_auto_ivf_sqfp16_recall_and_faiss_settings():
    """The auto index on a clustered catalogue: all lists probed it is exact up to fp16 rounding of the
    vectors; the default nprobe is approximate but close. k-means trains on <= 64 points per list, and the
    BLAS threshold is set back to 20."""
    import faiss

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 16)).astype(np.float32)
    emb = centres[rng.integers(0, 40, 6001)] + 0.5 * rng.standard_normal((6001, 16)).astype(np.float32)
    emb[0] = 0
    q = torch.as_tensor(centres[rng.integers(0, 40, (60, 2))] + 0.3 * rng.standard_normal((60, 2, 16)).astype(
        np.float32))
    m = torch.ones(60, 2, dtype=torch.bool)
    faiss.cvar.distance_compute_blas_threshold = 128000
    index, rows, used = BI.build_faiss_index(emb, "auto", nprobe=128, flat_below=0)
    assert used == "IVF128,SQfp16"  # 4 sqrt(6000) = 310 -> 256, but 256 * 39 = 9,984 > 6,000 -> 128
    assert faiss.cvar.distance_compute_blas_threshold == BI.BLAS_THRESHOLD
    assert faiss.extract_index_ivf(index).cp.max_points_per_centroid == BI.KMEANS_POINTS_PER_LIST
    r = BI.ann_recall(index, rows, emb, q, m, 20)
    assert r["interest_recall"] >= 0.99 and r["merged_recall"] >= 0.99  # fp16 codes: only near-ties may swap
    BI.set_search_params(index, nprobe=8, ef_search=16)
    r8 = BI.ann_recall(index, rows, emb, q, m, 20)["interest_recall"]
    assert 0.5 < r8 < r["interest_recall"] + 1e-9


def test_cli(tmp_path, capsys):
    split = make_split(tmp_path / "split")
    save_random_model(split, tmp_path / "models" / "youtube_dnn")
    args = ["--params", str(ROOT / "params.yaml"), "--models-dir", str(tmp_path / "models"), "--split", str(split)]
    BI.main([*args, "--model", "youtube_dnn", "--out", str(tmp_path / "idx")])
    assert "Flat over 40 items" in capsys.readouterr().out
    assert (tmp_path / "idx" / "index.faiss").exists()
    with pytest.raises(SystemExit) as exc:
        BI.main([*args, "--model", "nope", "--out", str(tmp_path / "idx2")])
    assert exc.value.code == 2 and "model.pt" in capsys.readouterr().err
    r = subprocess.run([sys.executable, "-m", "components.build_index", "--help"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0 and "--models-dir" in r.stdout


def test_auto_falls_back_to_flat_when_ivf_recall_is_low(tmp_path):
    """A random-init model's item embeddings are near-isotropic: one probed list of 4 misses much of the
    exact top-N, so auto rebuilds Flat (exact: recall 1) and records why; all 4 lists probed it keeps IVF."""
    split = make_split(tmp_path / "split", num_items=201, num_users=60)
    mdir = save_random_model(split, tmp_path / "m")
    low = BI.run(_cfg(factory="auto", flat_below=0, nprobe=1), mdir, split, tmp_path / "low")
    # 200 items: 4 sqrt(200) = 57 -> 64 lists, halved while lists * 39 > 200 -> 4 lists
    assert low["auto_fallback"]["factory"] == "IVF4,SQfp16"
    assert low["auto_fallback"]["interest_recall@10"] < 0.95
    assert low["factory"] == "Flat" and low["interest_recall@10"] == pytest.approx(1.0)
    keep = BI.run(_cfg(factory="auto", flat_below=0, nprobe=4), mdir, split, tmp_path / "keep")
    assert keep["factory"] == "IVF4,SQfp16" and keep["auto_fallback"] is None
    assert keep["interest_recall@10"] >= 0.95
    with pytest.raises(ParamsError, match="auto_min_recall"):
        _cfg(auto_min_recall=1.5)


def test_tune_nprobe_doubles_until_the_recall_target_and_stops_at_nlist_over_16():
    """On a clustered catalogue, one probed list of 128 misses neighbours in adjacent lists; the tuner
    returns the first doubling whose recall (measured by ann_recall against brute force) reaches the
    target, and the recall of every value tried; an unreachable target stops at nlist / 16 = 8."""
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((60, 16)).astype(np.float32)
    emb = centres[rng.integers(0, 60, 6001)] + 0.6 * rng.standard_normal((6001, 16)).astype(np.float32)
    emb[0] = 0
    q = centres[rng.integers(0, 60, (80, 2))] + 0.5 * rng.standard_normal((80, 2, 16)).astype(np.float32)
    m = np.ones((80, 2), dtype=bool)
    index, rows, used = BI.build_faiss_index(emb, "IVF128,Flat", nprobe=1)
    exact = BI.exact_reference(emb, q, m, 20)

    def measure():
        return BI.ann_recall(index, rows, emb, q, m, 20, exact=exact)

    at = {}
    for p in (1, 2, 4, 8):
        BI.set_search_params(index, nprobe=p, ef_search=16)
        at[p] = measure()["interest_recall"]
    assert at[1] < at[2] <= at[4] <= at[8]  # more lists, more recall
    target = (at[2] + at[4]) / 2 if at[4] > at[2] else at[2]  # reached first at 4 (or 2 if 2 and 4 tie)
    nprobe, quality, tried = BI.tune_nprobe(index, measure, start=1, target=target)
    first = min(p for p in at if at[p] >= target)
    assert nprobe == first and quality["interest_recall"] == pytest.approx(at[first])
    assert tried == {str(p): pytest.approx(at[p]) for p in at if p <= first}
    assert faiss_nprobe(index) == first
    nprobe, quality, tried = BI.tune_nprobe(index, measure, start=1, target=1.01)  # unreachable
    assert nprobe == 8 and list(tried) == ["1", "2", "4", "8"]


def faiss_nprobe(index) -> int:
    import faiss

    return faiss.extract_index_ivf(index).nprobe


def test_auto_tunes_nprobe_before_falling_back(tmp_path):
    """A random-init model over 5,000 items: auto builds IVF128 and, below the recall target at nprobe 1,
    tries 2, 4 and 8 lists (nlist / 16) before the Flat fallback, which records the last nprobe tried."""
    split = make_split(tmp_path / "split", num_items=5001, num_users=40)
    mdir = save_random_model(split, tmp_path / "m")
    info = BI.run(_cfg(factory="auto", flat_below=0, nprobe=1, auto_min_recall=1.0), mdir, split, tmp_path / "o")
    assert list(info["nprobe_tuning"]) == ["1", "2", "4", "8"]
    recalls = list(info["nprobe_tuning"].values())
    assert recalls == sorted(recalls) and recalls[-1] < 1.0
    assert info["auto_fallback"]["factory"] == "IVF128,SQfp16" and info["auto_fallback"]["nprobe"] == 8
    assert info["factory"] == "Flat" and info["nprobe"] == 1 and info["interest_recall@10"] == 1.0
    # a target the first nprobe meets: no tuning, IVF kept at the requested nprobe
    keep = BI.run(_cfg(factory="auto", flat_below=0, nprobe=1, auto_min_recall=0.0), mdir, split, tmp_path / "k")
    assert keep["factory"] == "IVF128,SQfp16" and keep["nprobe"] == 1 and keep["nprobe_tuning"] == {}

