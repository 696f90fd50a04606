"""Evaluation counts a repeated target once (issue 13).

The protocol (components/evaluate.py docstring, ComiRec §4.1) scores a list against the user's *set* of
targets: Recall@N = |top-N ∩ T| / |T| with T de-duplicated, and NDCG's IDCG over min(|T|, N) positions.
MovieLens has no repeated interactions, so no existing test fed a user whose targets repeat an item, and an
evaluation that no longer de-duplicated passed the suite. These tests write such a user into a split and go
through the real readers (``load_users``) and metrics (``user_metrics``, ``evaluate_model``).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from components import evaluate as E
from components.config import from_dict
from test_evaluate import CategoryOracle, make_split


def _split_with_repeats(root: Path) -> tuple[Path, int, list[int]]:
    """A :func:`make_split` folder whose first test user has every target repeated (three times the first,
    twice the others). Returns the folder, that user's index and its unique targets."""
    split = make_split(root, seed=4)
    test = pd.read_parquet(split / "test.parquet")
    targets = [int(t) for t in test.at[0, "targets"]]
    assert len(set(targets)) == len(targets) >= 2  # make_split draws without replacement
    repeated = [targets[0]] * 3 + [t for t in targets[1:] for _ in range(2)]
    test.at[0, "targets"] = np.array(repeated, dtype=np.int64)
    test.to_parquet(split / "test.parquet", index=False)
    return split, int(test.at[0, "user_idx"]), targets


def test_load_users_keeps_each_target_once(tmp_path):
    split, user, unique = _split_with_repeats(tmp_path / "split")
    users = E.load_users(split, "test", E.load_catalogue(split))
    row = int(np.flatnonzero(users.user_idx == user)[0])
    assert sorted(users.targets[row].tolist()) == sorted(unique)


def test_recall_and_ndcg_divide_by_the_unique_targets(tmp_path):
    """One hit in a 3-list for a user with targets [t0, t0, t0, t1, t1, ...] (k unique): recall = 1 / k
    (not 1 / (k + repeats)); NDCG = (1 / log2 2) / sum_{r <= min(k, 3)} 1 / log2(r + 1)."""
    split, user, unique = _split_with_repeats(tmp_path / "split")
    cat = E.load_catalogue(split)
    users = E.load_users(split, "test", cat)
    row = int(np.flatnonzero(users.user_idx == user)[0])
    others = [i for i in range(1, cat.num_items) if i not in unique]
    lists = {3: np.array([[unique[0], others[0], others[1]]])}
    m = E.user_metrics(lists, [users.targets[row]], cat.item_category)
    k = len(unique)
    assert m["recall@3"][0] == pytest.approx(1 / k)
    idcg = sum(1 / math.log2(r + 1) for r in range(1, min(k, 3) + 1))
    assert m["ndcg@3"][0] == pytest.approx(1.0 / idcg)
    assert m["precision@3"][0] == pytest.approx(1 / 3)
    assert m["hitrate@3"][0] == 1.0


def test_evaluate_model_scores_a_repeating_user_on_unique_targets(tmp_path):
    """End to end: the category oracle ranks every home-category item first. For the repeating user, each
    metric equals what the same user gets with its targets written once (a copy of the split without the
    repeats), and per_user ``num_targets`` is the unique count."""
    split, user, unique = _split_with_repeats(tmp_path / "rep")
    plain = make_split(tmp_path / "plain", seed=4)
    cfg = from_dict(E.EvaluateConfig, dict(topn=[2, 5, 10], bootstrap_samples=0, lambda_sweep=[0.0],
                                           heatmap_users=0, faiss_check=False), "evaluate")
    cat = E.load_catalogue(split)
    oracle = CategoryOracle(torch.as_tensor(cat.item_category), cat.num_categories)
    got = E.evaluate_model(cfg, oracle, split, max_len=6, seed=0)["per_user"]
    ref = E.evaluate_model(cfg, oracle, plain, max_len=6, seed=0)["per_user"]
    g = got[(got["split"] == "test") & (got["user_idx"] == user)].iloc[0]
    r = ref[(ref["split"] == "test") & (ref["user_idx"] == user)].iloc[0]
    assert g["num_targets"] == len(unique)
    assert g["recall@10"] > 0  # the oracle finds some of them: the comparison below is not 0 == 0
    for n in cfg.topn:
        for metric in ("recall", "ndcg", "precision", "hitrate"):
            assert g[f"{metric}@{n}"] == pytest.approx(r[f"{metric}@{n}"]), f"{metric}@{n}"
