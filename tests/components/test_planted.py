"""Planted interests: multi-interest models recover what the synthetic generator put in the data.

Data: components.synthetic through the real ingest and split steps — 1000 users with 4 planted interests each
(categories, Dirichlet weights, 5 % noise), 800 items in 40 categories, ~30 interactions per user; users split
60/20/20 so the test set has ~200 users. Every model trains through ``components.train.run`` (5 epochs,
batch 128, 20 uniform negatives, lr 0.01, D = 8) and is scored on the *test* users with the validation code
(Recall@50, history excluded).

Why D = 8: with many categories and a small dimension one user vector cannot point at four categories at
once (the premise of MIND §1 and ComiRec §3), while K = 4 vectors can; with D = 64 and 40 near-orthogonal
category directions a single vector could still be their sum. Every model gets the same item features
(id + category embedding, MIND §3.2), so the comparison is about the user side only.

Seed-to-seed noise, measured with ``python tests/components/test_planted.py --seeds 0 1 2 3`` (four
training seeds on this data set), test Recall@50 mean ± sd: YouTube DNN 0.305 ± 0.005, MIND 0.375 ± 0.013,
ComiRec-SA 0.459 ± 0.008; MIND - YouTube DNN 0.051..0.079 (mean 0.070), ComiRec-SA - YouTube DNN
0.140..0.165. ``MARGIN`` = 0.03 is more than twice the sd of the MIND - YouTube DNN difference (0.014) and
below every measured gap. MIND coupling purity 0.904 ± 0.005 against 0.610 ± 0.001 shuffled.

MIND's coupling coefficients: each history behaviour of a test user is assigned to the capsule with the
largest final coupling coefficient w_ij (eval-mode routing, deterministic); purity = the share of
(non-noise) behaviours whose capsule's majority planted interest is their own, pooled over users. The
baseline is the same purity after shuffling the assignments within each user (same cluster sizes), which
is what routing that ignored the interests would score.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from components.ingest import IngestConfig
from components.ingest import run as ingest
from components.split import SplitConfig
from components.split import run as split_run
from components.synthetic import SyntheticConfig
from components.train import ModelConfig, TrainConfig, _retrieval_recall
from components.train import run as train
from components.train_data import EvalUsers, load_split_meta

SYNTHETIC = SyntheticConfig(num_users=1000, num_items=800, num_categories=40, interests_per_user=4,
                            mean_length=30, min_length=10, noise=0.05, save_ground_truth=True)
DATA_SEED = 1
TRAIN = TrainConfig(max_len=20, max_epochs=5, batch_size=128, num_negatives=20, lr=0.01, patience=5,
                    progress_refresh=0, num_threads=1)
MODELS = {
    "youtube_dnn": ModelConfig(name="youtube_dnn", arch="youtube_dnn", hparams={"dim": 8}),
    "mind": ModelConfig(name="mind", arch="mind", hparams={"dim": 8, "num_interests": 4}, attention_pow=2.0),
    "comirec_sa": ModelConfig(name="comirec_sa", arch="comirec_sa",
                              hparams={"dim": 8, "num_interests": 4, "use_category": True}),
}
TRAIN_SEED = 0
#: required test Recall@50 gain over YouTube DNN (see the module docstring for the measured noise)
MARGIN = 0.03


def make_data(root: Path) -> tuple[Path, Path]:
    """(canonical dir, split dir) of the planted data set."""
    canonical, split = root / "canonical", root / "split"
    ingest(IngestConfig(source="synthetic", synthetic=SYNTHETIC), canonical, seed=DATA_SEED)
    split_run(SplitConfig(ratios=(0.6, 0.2, 0.2)), canonical, split, seed=DATA_SEED)
    return canonical, split


def test_recall(model, split: Path) -> float:
    """Mean Recall@50 over the test users (history excluded), with the validation code."""
    meta = load_split_meta(split)
    users = EvalUsers(split / "test.parquet", meta, TRAIN.max_len)
    with torch.no_grad():
        s, c = _retrieval_recall(model, users[np.arange(len(users))],
                                 model.item_embeddings(torch.arange(meta.num_items)), 50)
    return float(s / c)


test_recall.__test__ = False  # a helper, not a test


def planted_labels(canonical: Path, split: Path, table: str = "test") -> tuple[EvalUsers, list[np.ndarray]]:
    """The test users and, per user, the planted interest (-1 = noise) of each history item, in order.

    The split's history is the user's time-ordered sequence (k-core filtered) cut at 80 %; the ground truth
    has every generated interaction with its timestamp, so the filtered, time-sorted ground truth of a user
    starts with exactly the history (checked item by item).
    """
    meta = load_split_meta(split)
    users = EvalUsers(split / f"{table}.parquet", meta, TRAIN.max_len)
    items = pd.read_parquet(split / "items.parquet")[["item_idx", "item_id"]]
    uid = pd.read_parquet(split / "users.parquet")[["user_idx", "user_id"]]
    gt = pd.read_parquet(canonical / "ground_truth.parquet")
    gt = gt.merge(items, on="item_id").merge(uid, on="user_id").sort_values(["user_idx", "timestamp", "item_id"])
    by_user = {u: g for u, g in gt.groupby("user_idx")}
    h = users.history
    labels = []
    for r, u in enumerate(h.user_idx):
        seq = h.values[h.offsets[r]:h.offsets[r + 1]]
        g = by_user[u]
        assert np.array_equal(g["item_idx"].to_numpy()[: len(seq)], seq)
        labels.append(g["interest"].to_numpy()[: len(seq)])
    return users, labels


def coupling_purity(model, users: EvalUsers, labels: list[np.ndarray], seed: int = 0) -> tuple[float, float]:
    """(purity of MIND's behaviour -> capsule assignment, the same after shuffling within users)."""
    batch = users[np.arange(len(users))]
    model.eval()
    with torch.no_grad():
        _, w, imask = model.capsules(batch["history"], batch["mask"])  # w (B, K, L)
    assign = w.argmax(dim=1).numpy()  # (B, L): capsule of each behaviour
    mask = batch["mask"].numpy()
    rng = np.random.default_rng(seed)
    hit = hit_shuffled = total = 0
    for b, lab in enumerate(labels):
        n = int(mask[b].sum())
        lab = lab[-n:]  # the model sees the most recent max_len items
        a = assign[b, :n]
        keep = lab >= 0
        lab, a = lab[keep], a[keep]
        hit += _majority_hits(a, lab)
        hit_shuffled += _majority_hits(rng.permutation(a), lab)
        total += len(lab)
    return hit / total, hit_shuffled / total


def _majority_hits(assign: np.ndarray, labels: np.ndarray) -> int:
    return sum(np.unique(labels[assign == k], return_counts=True)[1].max() for k in np.unique(assign))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    canonical, split = make_data(root)
    import models

    trained = {}
    for name, mc in MODELS.items():
        train(TRAIN, mc, split, root / "models" / name, seed=TRAIN_SEED)
        trained[name] = models.load_model(root / "models" / name / "model.pt")
    return canonical, split, trained


@pytest.mark.slow
def test_multi_interest_models_beat_youtube_dnn(planted):
    _, split, trained = planted
    recall = {name: test_recall(m, split) for name, m in trained.items()}
    print("test Recall@50:", {k: round(v, 4) for k, v in recall.items()})
    assert recall["mind"] > recall["youtube_dnn"] + MARGIN, recall
    assert recall["comirec_sa"] > recall["youtube_dnn"] + MARGIN, recall


@pytest.mark.slow
def test_mind_coupling_groups_behaviours_by_planted_interest(planted):
    canonical, split, trained = planted
    users, labels = planted_labels(canonical, split)
    purity, shuffled = coupling_purity(trained["mind"], users, labels)
    print(f"MIND coupling purity {purity:.3f} (shuffled within users: {shuffled:.3f})")
    assert purity > shuffled + 0.2, (purity, shuffled)  # measured 0.90 vs 0.61, sd 0.005


def _measure(seeds: list[int], root: Path) -> None:
    """Seed-to-seed noise of the comparison: train every model with each seed on the same data."""
    import models

    canonical, split = make_data(root) if not (root / "split").exists() else (root / "canonical", root / "split")
    users, labels = planted_labels(canonical, split)
    rows = []
    for seed in seeds:
        row = {"seed": seed}
        for name, mc in MODELS.items():
            out = root / f"models-{seed}" / name
            train(TRAIN, mc, split, out, seed=seed)
            m = models.load_model(out / "model.pt")
            row[name] = test_recall(m, split)
            if name == "mind":
                row["purity"], row["purity_shuffled"] = coupling_purity(m, users, labels)
        rows.append(row)
        print(row, flush=True)
    df = pd.DataFrame(rows).set_index("seed")
    print(df.round(4).to_string())
    print("mean", df.mean().round(4).to_dict())
    print("std ", df.std(ddof=1).round(4).to_dict())
    for name in ("mind", "comirec_sa"):
        gap = df[name] - df["youtube_dnn"]
        print(f"{name} - youtube_dnn: min {gap.min():.4f} mean {gap.mean():.4f}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="measure the seed-to-seed noise of the planted comparison")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=Path("/tmp/planted-noise"))
    a = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    _measure(a.seeds, a.root)
