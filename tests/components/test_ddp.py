"""Two-process CPU DDP (gloo) through the real CLI, in a subprocess.

In-process DDP under pytest re-executes pytest for rank 1 and can deadlock (ENVIRONMENT.md), so the test
runs ``python -m components.train`` with ``strategy: ddp, devices: 2`` and checks the outputs contract: the
files exist once (rank 0 only, no leftovers from rank 1), one metrics row per epoch, and the validation
Recall@50 that ranks computed on their halves of the users and all-reduced equals the full-set recall of
the saved best model scored here in one process.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_train_data import write_tiny_split  # noqa: E402

from components.train import _retrieval_recall  # noqa: E402
from components.train_data import EvalUsers, PrefixDataset, load_split_meta, read_ragged  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_process_ddp_cli_writes_the_outputs_contract(tmp_path):
    split = write_tiny_split(tmp_path / "split", num_users=75, num_items=80, num_categories=5, min_len=5,
                             max_len=15, seed=5)  # odd user and sample counts: uneven shards
    params = {
        "seed": 7,
        "train": {"models": ["ytb"], "max_len": 5, "accelerator": "cpu", "devices": 2, "strategy": "ddp",
                  "max_epochs": 2, "batch_size": 16, "num_negatives": 8, "eval_batch_size": 2,
                  "progress_refresh": 0, "patience": 5},
        "models": {"ytb": {"arch": "youtube_dnn", "dim": 8, "hidden_dim": 16}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "models" / "ytb"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    res = subprocess.run([sys.executable, "-m", "components.train", "--params", str(tmp_path / "params.yaml"),
                          "--model", "ytb", "--split", str(split), "--out", str(out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("ytb: val/recall@50") == 1  # one summary line: rank 0 only
    assert sorted(p.name for p in out.parent.iterdir()) == ["ytb"]  # rank 1's staging dir is gone
    assert sorted(p.name for p in out.iterdir()) == ["best.ckpt", "logs", "model.pt", "train.json"]
    train = json.loads((out / "train.json").read_text())
    assert train["world_size"] == 2 and train["epochs"] == 2

    meta = load_split_meta(split)
    seqs = read_ragged(split / "train.parquet", "items", meta.num_items, meta.profiles.shape[0])
    assert train["train_samples"] == len(PrefixDataset(seqs, meta.profiles, 5))

    with open(out / "logs" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    recalls = [float(r["val/recall@50"]) for r in rows]
    assert train["best_val_recall@50"] == pytest.approx(max(recalls))
    # per-rank shard sums all-reduced == the full validation set scored in one process
    import models

    model = models.load_model(out / "model.pt")
    valid = EvalUsers(split / "valid.parquet", meta, max_len=5)
    assert len(valid) % 2 == 1  # 7 users: the two ranks' shards are uneven (4 + 3)
    with torch.no_grad():
        s, c = _retrieval_recall(model, valid[np.arange(len(valid))],
                                 model.item_embeddings(torch.arange(meta.num_items)), 50)
    assert (s / c).item() == pytest.approx(max(recalls), abs=1e-6)
