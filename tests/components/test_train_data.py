"""Tests of the train data module: prefix samples, history truncation, DDP sharding, validation batches.

``write_tiny_split`` writes a small split directory in the docs/CONTRACTS.md "Split" format; the other
train tests import it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.io import DataError
from components.train_data import (
    EpochBatchSampler,
    EvalUsers,
    PrefixDataset,
    SplitDataModule,
    load_split_meta,
    read_ragged,
    shard_batches,
    tail_window,
)


def write_tiny_split(out: Path, *, num_users: int = 40, num_items: int = 30, num_categories: int = 3,
                     min_len: int = 4, max_len: int = 12, seed: int = 0,
                     sequences: dict[int, list[int]] | None = None) -> Path:
    """A split directory per docs/CONTRACTS.md (strong generalization, 80/10/10 users, one profile field).

    Items belong to category ``(item - 1) % (num_categories - 1) + 1``; each user draws items from one
    preferred category most of the time, so there is something to learn. ``sequences`` (user_idx -> items)
    overrides the generated train sequences.
    """
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    cats = num_categories - 1
    item_cat = {i: (i - 1) % cats + 1 for i in range(1, num_items)}
    by_cat = {c: [i for i in item_cat if item_cat[i] == c] for c in range(1, num_categories)}
    seqs = {}
    for u in range(1, num_users + 1):
        pref = int(rng.integers(1, num_categories))
        n = int(rng.integers(min_len, max_len + 1))
        items = [int(rng.choice(by_cat[pref])) if rng.random() < 0.8 else int(rng.integers(1, num_items))
                 for _ in range(n)]
        seqs[u] = items
    split = {u: ("train" if u <= int(0.8 * num_users) else "valid" if u <= int(0.9 * num_users) else "test")
             for u in seqs}
    if sequences is not None:
        seqs.update(sequences)
        split.update({u: "train" for u in sequences})
    train = [(u, s) for u, s in seqs.items() if split[u] == "train"]
    pd.DataFrame({"user_idx": [u for u, _ in train], "items": [s for _, s in train]}).to_parquet(
        out / "train.parquet")
    for name in ("valid", "test"):
        rows = [(u, s[: int(0.8 * len(s))], s[int(0.8 * len(s)):]) for u, s in seqs.items() if split[u] == name]
        pd.DataFrame({"user_idx": [r[0] for r in rows], "history": [r[1] for r in rows],
                      "targets": [r[2] for r in rows]}).to_parquet(out / f"{name}.parquet")
    counts = np.zeros(num_items, dtype=np.int64)
    for u, s in train:
        np.add.at(counts, s, 1)
    pd.DataFrame({"item_idx": np.arange(1, num_items), "item_id": [f"i{i}" for i in range(1, num_items)],
                  "category": [f"c{item_cat[i]}" for i in range(1, num_items)],
                  "category_idx": [item_cat[i] for i in range(1, num_items)],
                  "train_count": counts[1:]}).to_parquet(out / "items.parquet")
    users = sorted(seqs)
    pd.DataFrame({"user_idx": users, "user_id": [f"u{u}" for u in users], "split": [split[u] for u in users],
                  "profile_gender": [u % 3 for u in users]}).to_parquet(out / "users.parquet")
    (out / "vocab.json").write_text(json.dumps({
        "num_items": num_items, "num_categories": num_categories, "profile_fields": ["gender"],
        "profile_cardinalities": [3], "profile_values": {"gender": ["<unk>", "F", "M"]},
        "protocol": "strong_generalization"}))
    (out / "stats.json").write_text(json.dumps({"users": num_users}))
    return out


def _prefix_samples(seqs: dict[int, list[int]], max_len: int) -> list[tuple[int, tuple[int, ...], int]]:
    """Reference: every prefix -> next item, written plainly."""
    out = []
    for u, s in seqs.items():
        for k in range(1, len(s)):
            out.append((u, tuple(s[max(0, k - max_len):k]), s[k]))
    return out


def test_prefix_samples_match_plain_reference(tmp_path):
    seqs = {1: [5, 6, 7, 8, 9, 10, 11], 2: [3], 3: [4, 2], 4: [9, 9, 1, 2, 3]}
    split = write_tiny_split(tmp_path / "s", num_users=10, sequences=seqs)
    meta = load_split_meta(split)
    ragged = read_ragged(split / "train.parquet", "items", meta.num_items, meta.profiles.shape[0])
    ds = PrefixDataset(ragged, meta.profiles, max_len=3)
    train_users = set(ragged.user_idx.tolist())
    all_seqs = pd.read_parquet(split / "train.parquet").set_index("user_idx")["items"].to_dict()
    expected = sorted(_prefix_samples({u: list(all_seqs[u]) for u in train_users}, 3))
    assert len(ds) == len(expected)
    batch = ds[np.arange(len(ds))]
    got = []
    for h, m, t in zip(batch["history"].numpy(), batch["mask"].numpy(), batch["target"].numpy()):
        assert not h[~m].any() and m[: m.sum()].all()  # left-aligned, zero-padded
        got.append((tuple(h[m].tolist()), int(t)))
    assert sorted(got) == sorted((h, t) for _, h, t in expected)
    # user 1's last sample keeps the 3 most recent items; profile row is that user's
    ids = [i for i, (h, t) in enumerate(got) if t == 11]
    assert got[ids[0]][0] == (8, 9, 10)
    assert batch["profile"].shape == (len(ds), 1)


def test_profile_and_category_tables(tmp_path):
    split = write_tiny_split(tmp_path / "s", num_users=10, num_items=7, num_categories=3)
    meta = load_split_meta(split)
    assert meta.item_category.tolist() == [0, 1, 2, 1, 2, 1, 2]
    assert meta.profiles[0].tolist() == [0] and meta.profiles[4].tolist() == [1]
    assert meta.item_counts[0] == 0 and meta.item_counts.sum() > 0


def test_tail_window_hand_case():
    values = np.array([1, 2, 3, 4, 5, 6], dtype=np.int32)
    hist, mask = tail_window(values, ends=np.array([4, 1, 6]), lengths=np.array([4, 1, 2]), max_len=3)
    assert hist.tolist() == [[2, 3, 4], [1, 0, 0], [5, 6, 0]]
    assert mask.tolist() == [[True] * 3, [True, False, False], [True, True, False]]


@pytest.mark.parametrize("num_samples,batch_size", [(1000, 32), (65, 8), (17, 4), (33, 16), (2, 16)])
def test_two_rank_shards_cover_every_sample_once(num_samples, batch_size):
    for epoch in (0, 1):
        shards = []
        for rank in (0, 1):
            s = EpochBatchSampler(num_samples, batch_size, seed=7, rank=rank, world_size=2)
            s.set_epoch(epoch)
            shards.append(list(s))
            assert len(shards[-1]) == len(s)
        assert len(shards[0]) == len(shards[1])             # same step count on every rank (no DDP hang)
        assert all(len(b) >= 1 for sh in shards for b in sh)
        assert all(len(b) <= batch_size + 1 for sh in shards for b in sh)
        seen = np.concatenate([b for sh in shards for b in sh])
        assert np.array_equal(np.sort(seen), np.arange(num_samples))  # exactly once across ranks


def test_sampler_reshuffles_per_epoch_and_is_seeded():
    def order(seed, epoch):
        s = EpochBatchSampler(500, 50, seed=seed)
        s.set_epoch(epoch)
        return np.concatenate(list(s))

    assert np.array_equal(order(1, 0), order(1, 0))
    assert not np.array_equal(order(1, 0), order(1, 1))
    assert not np.array_equal(order(1, 0), order(2, 0))
    # one rank = plain shuffled mini-batches of the given size
    assert [len(b) for b in EpochBatchSampler(105, 50, seed=0)] == [50, 50, 5]


def test_eval_shards_partition_users_with_equal_batch_counts():
    for n, bs in [(10, 3), (11, 4), (2, 8), (101, 10)]:
        shards = [shard_batches(n, bs, r, 2) for r in (0, 1)]
        assert len(shards[0]) == len(shards[1])
        assert all(len(b) >= 1 for sh in shards for b in sh)
        assert np.array_equal(np.sort(np.concatenate(shards[0] + shards[1])), np.arange(n))
    with pytest.raises(DataError):
        shard_batches(1, 4, 0, 2)


def test_eval_users_batch(tmp_path):
    split = write_tiny_split(tmp_path / "s", num_users=20)
    meta = load_split_meta(split)
    ev = EvalUsers(split / "valid.parquet", meta, max_len=3)
    table = pd.read_parquet(split / "valid.parquet")
    batch = ev[np.arange(len(ev))]
    for i, row in table.iterrows():
        h = list(row["history"])
        assert batch["history"][i][batch["mask"][i]].tolist() == h[-3:]
        assert [x for x in batch["exclude"][i].tolist() if x] == h
        assert sorted(x for x in batch["targets"][i].tolist() if x) == sorted(set(row["targets"]))
        assert batch["profile"][i].tolist() == [row["user_idx"] % 3]


def test_bad_item_index_is_a_data_error(tmp_path):
    split = write_tiny_split(tmp_path / "s", num_users=10, num_items=20)
    pd.DataFrame({"user_idx": [1, 2], "items": [[1, 2], [3, 25]]}).to_parquet(split / "train.parquet")
    meta = load_split_meta(split)
    with pytest.raises(DataError, match=r"train.parquet.*items.*user_idx 2"):
        read_ragged(split / "train.parquet", "items", meta.num_items, meta.profiles.shape[0])


def test_datamodule_loaders_single_process(tmp_path):
    split = write_tiny_split(tmp_path / "s", num_users=30)
    meta = load_split_meta(split)
    dm = SplitDataModule(split, meta, max_len=5, batch_size=8, eval_batch_size=4, seed=3)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(len(b["target"]) for b in batches) == len(dm.train_set)
    assert batches[0]["history"].shape[1] == 5 and batches[0]["history"].dtype.is_floating_point is False
    val = list(dm.val_dataloader())
    assert sum(len(b["targets"]) for b in val) == len(dm.valid_set)
