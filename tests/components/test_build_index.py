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
    assert cfg.factory == "Flat"


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
