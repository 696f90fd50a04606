"""Training and validation data for the train step, built on the fly from ``data/split/``.

Training samples follow the sequential protocol of ComiRec §4.1: for a train user with time-ordered items
``(e_1, ..., e_n)`` every prefix predicts the next item, ``(e_1..e_k) -> e_{k+1}`` for ``k = 1..n-1``, the
history being the **most recent** ``max_len`` items before the target (docs/CONTRACTS.md).

Memory is O(interactions): all train sequences live in one flat int32 item array with per-user offsets,
and a sample is just the flat position of its target (one int per sample). Nothing like a prefix table is
ever materialised; a whole batch (history, mask, profile, target) is gathered with a few vectorised numpy
ops, so the :class:`torch.utils.data.DataLoader` runs with ``batch_size=None`` over a map-style dataset
indexed by *arrays of sample ids* produced by :class:`EpochBatchSampler`.

Sharding (DDP): each epoch one permutation of all samples, drawn from a generator seeded by
``(seed, epoch)``, is cut into *global* batches of ``world_size * batch_size`` samples; rank ``r`` takes
every ``world_size``-th sample of each global batch starting at ``r``. Every sample is seen exactly once per
epoch across ranks, every rank runs the same number of steps (a DDP requirement, or the all-reduce hangs),
and with one rank this is plain shuffled mini-batching. Choice: the last global batch is kept (no
``drop_last``); if it would leave some rank empty (fewer than ``world_size`` samples) it is merged into the
previous one.

Validation users (``valid.parquet``) are sharded the same way (rank ``r`` takes users ``r::world_size``, each
rank the same number of batches), so per-rank sums of per-user recall can be all-reduced into the exact
full-set mean.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytorch_lightning as pl
import torch

from components.io import DataError, read_json, read_parquet, read_table


# ----------------------------------------------------------------------------------------------- split tables
@dataclass(frozen=True)
class SplitMeta:
    """The vocabularies and per-item/per-user side tables of a split directory."""

    num_items: int                      # incl. padding index 0
    num_categories: int                 # incl. padding index 0
    profile_fields: list[str]           # order of the profile tensor's columns
    profile_cardinalities: list[int]    # incl. 0 (= missing)
    item_category: np.ndarray           # (num_items,) int64, category_idx per item_idx, 0 for padding
    item_counts: np.ndarray             # (num_items,) int64, train_count per item_idx, 0 for padding
    profiles: np.ndarray                # (max_user_idx + 1, C) int64, row = user_idx, row 0 unused

    @property
    def num_profile_fields(self) -> int:
        return len(self.profile_fields)


def load_split_meta(split_dir: str | Path) -> SplitMeta:
    """Read ``vocab.json``, ``items.parquet`` and ``users.parquet`` of a split directory.

    Raises:
        DataError: a missing file/column, or indices outside the vocabulary.
    """
    split_dir = Path(split_dir)
    vocab_path = split_dir / "vocab.json"
    vocab = read_json(vocab_path, ("num_items", "num_categories", "profile_fields", "profile_cardinalities"))
    num_items, num_categories = int(vocab["num_items"]), int(vocab["num_categories"])
    fields = list(vocab["profile_fields"])
    cards = [int(c) for c in vocab["profile_cardinalities"]]
    if len(cards) != len(fields):
        raise DataError("profile_cardinalities and profile_fields differ in length", path=vocab_path)

    items_path = split_dir / "items.parquet"
    items = read_parquet(items_path, ["item_idx", "category_idx", "train_count"])
    idx = items["item_idx"].to_numpy(np.int64)
    _check_range(idx, 1, num_items - 1, items_path, "item_idx")
    cat = items["category_idx"].to_numpy(np.int64)
    _check_range(cat, 1, num_categories - 1, items_path, "category_idx")
    item_category = np.zeros(num_items, dtype=np.int64)
    item_category[idx] = cat
    item_counts = np.zeros(num_items, dtype=np.int64)
    item_counts[idx] = items["train_count"].to_numpy(np.int64)

    users_path = split_dir / "users.parquet"
    cols = [f"profile_{f}" for f in fields]
    users = read_parquet(users_path, ["user_idx", *cols])
    uidx = users["user_idx"].to_numpy(np.int64)
    _check_range(uidx, 1, None, users_path, "user_idx")
    profiles = np.zeros((int(uidx.max(initial=0)) + 1, len(fields)), dtype=np.int64)
    for c, (col, card) in enumerate(zip(cols, cards)):
        values = users[col].to_numpy(np.int64)
        _check_range(values, 0, card - 1, users_path, col)
        profiles[uidx, c] = values
    return SplitMeta(num_items, num_categories, fields, cards, item_category, item_counts, profiles)


def _check_range(values: np.ndarray, lo: int, hi: int | None, path: Path, column: str) -> None:
    bad = values < lo
    if hi is not None:
        bad |= values > hi
    if bad.any():
        rows = np.flatnonzero(bad)
        shown = [f"row {r}: {values[r]}" for r in rows[:5]]
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise DataError(f"{len(rows)} value(s) outside {bound}", path=path, column=column, rows=shown)


@dataclass(frozen=True)
class Ragged:
    """Per-user item sequences in one flat array: user ``u``'s items are ``values[offsets[u]:offsets[u+1]]``."""

    user_idx: np.ndarray   # (U,) int64
    values: np.ndarray     # (sum of lengths,) int32 item indices
    offsets: np.ndarray    # (U + 1,) int64

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def read_ragged(path: Path, column: str, num_items: int, num_users: int) -> Ragged:
    """Read ``user_idx`` and the list<int64> ``column`` of a split table without pandas objects."""
    import pyarrow as pa

    table = read_table(path, ["user_idx", column])
    user_idx = table.column("user_idx").to_numpy().astype(np.int64, copy=False)
    _check_range(user_idx, 1, num_users - 1, path, "user_idx")
    lists = table.column(column).combine_chunks()
    if not pa.types.is_list(lists.type) and not pa.types.is_large_list(lists.type):
        raise DataError(f"expected a list column, got {lists.type}", path=path, column=column)
    if lists.null_count:
        raise DataError("null lists", path=path, column=column,
                        rows=np.flatnonzero(lists.is_null().to_numpy(zero_copy_only=False)).tolist())
    # offsets of the (possibly sliced) list array, rebased to 0; .values is the flat child array
    offsets = lists.offsets.to_numpy().astype(np.int64)
    flat = lists.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    offsets = offsets - offsets[0]
    if flat.null_count:
        raise DataError("null item indices inside lists", path=path, column=column)
    values = flat.to_numpy().astype(np.int64, copy=False)
    bad = (values < 1) | (values > num_items - 1)
    if bad.any():
        rows = np.unique(np.searchsorted(offsets, np.flatnonzero(bad), side="right") - 1)
        raise DataError(f"item indices outside [1, {num_items - 1}]", path=path, column=column,
                        rows=[f"user_idx {user_idx[r]}" for r in rows[:5]])
    return Ragged(user_idx, values.astype(np.int32), offsets)


# ---------------------------------------------------------------------------------------- batch gathering
def tail_window(values: np.ndarray, ends: np.ndarray, lengths: np.ndarray, max_len: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """The most recent ``min(length, max_len)`` items before each ``end``, left-aligned and 0-padded.

    Args:
        values: flat item array.
        ends: (B,) exclusive end positions in ``values``.
        lengths: (B,) number of items available before each end (the prefix length).
        max_len: L.
    Returns:
        (history (B, L) int64, mask (B, L) bool), ``history[b, :n_b]`` = the last ``n_b`` items in time order.
    """
    n = np.minimum(lengths, max_len)                                    # (B,)
    j = np.arange(max_len)                                              # (L,)
    mask = j[None, :] < n[:, None]                                      # (B, L)
    src = ends[:, None] - n[:, None] + j[None, :]                       # (B, L)
    history = np.where(mask, values[np.where(mask, src, 0)], 0).astype(np.int64)
    return history, mask


def _pad_lists(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Whole ragged rows ``values[starts[b]:ends[b]]`` left-aligned in a 0-padded (B, max length) array."""
    lengths = ends - starts
    width = max(int(lengths.max(initial=0)), 1)
    j = np.arange(width)
    mask = j[None, :] < lengths[:, None]
    src = np.where(mask, starts[:, None] + j[None, :], 0)
    return np.where(mask, values[src], 0).astype(np.int64)


class PrefixDataset:
    """Map-style dataset of every (prefix -> next item) sample; ``ds[ids]`` gathers a whole batch.

    A sample id ``s`` is the position ``target_pos[s]`` of its target item in the flat item array; the
    history is the up-to-``max_len`` items right before it within the same user's sequence.
    """

    def __init__(self, seqs: Ragged, profiles: np.ndarray, max_len: int):
        if max_len < 1:
            raise ValueError("max_len must be >= 1")
        self.seqs = seqs
        self.profiles = profiles
        self.max_len = max_len
        lengths = seqs.lengths
        # every flat position except each sequence's first item is a target
        is_target = np.ones(len(seqs.values), dtype=bool)
        is_target[seqs.offsets[:-1][lengths > 0]] = False
        pos_dtype = np.int32 if len(seqs.values) < 2**31 else np.int64
        self.target_pos = np.flatnonzero(is_target).astype(pos_dtype)  # (num_samples,)

    def __len__(self) -> int:
        return len(self.target_pos)

    def __getitem__(self, ids: np.ndarray) -> dict[str, Any]:
        pos = self.target_pos[np.asarray(ids)].astype(np.int64)                 # (B,)
        row = np.searchsorted(self.seqs.offsets, pos, side="right") - 1          # (B,) user row
        start = self.seqs.offsets[row]
        history, mask = tail_window(self.seqs.values, pos, pos - start, self.max_len)
        profile = self.profiles[self.seqs.user_idx[row]]                         # (B, C)
        return {
            "history": torch.from_numpy(history),
            "mask": torch.from_numpy(mask),
            "profile": torch.from_numpy(profile),
            "target": torch.from_numpy(self.seqs.values[pos].astype(np.int64)),
        }


class EpochBatchSampler:
    """Yields this rank's batches (arrays of sample ids) of one epoch; see the module docstring.

    ``set_epoch`` is called by Lightning at the start of every epoch (it looks for ``sampler.set_epoch``).
    """

    def __init__(self, num_samples: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        if num_samples < world_size:
            raise DataError(f"{num_samples} training sample(s) cannot feed {world_size} ranks")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _bounds(self) -> list[int]:
        """Start positions of the global batches in the epoch's permutation, plus the end."""
        g = self.batch_size * self.world_size
        bounds = list(range(0, self.num_samples, g)) + [self.num_samples]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < self.world_size:
            del bounds[-2]  # a last global batch too small to give every rank a sample joins the previous one
        return bounds

    def __len__(self) -> int:
        return len(self._bounds()) - 1

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        bounds = self._bounds()
        for a, b in zip(bounds[:-1], bounds[1:]):
            yield order[a:b][self.rank::self.world_size]


# ------------------------------------------------------------------------------------------- validation
class EvalUsers:
    """Validation/test users: truncated model input, whole history to exclude, unique targets.

    ``ds[ids]`` (ids = row numbers) gathers a batch: ``history``/``mask`` (B, L) = most recent ``max_len``
    items, ``profile`` (B, C), ``exclude`` (B, H) = the whole history (0-padded), ``targets`` (B, T) unique
    targets (0-padded).
    """

    def __init__(self, path: Path, meta: SplitMeta, max_len: int):
        num_users = meta.profiles.shape[0]
        self.history = read_ragged(path, "history", meta.num_items, num_users)
        self.targets = read_ragged(path, "targets", meta.num_items, num_users)
        if not np.array_equal(self.history.user_idx, self.targets.user_idx):  # same rows: both from one table
            raise DataError("history and targets rows disagree", path=path)
        empty = np.flatnonzero(self.targets.lengths == 0)
        if len(empty):
            raise DataError("users without targets", path=path, column="targets",
                            rows=[f"user_idx {self.history.user_idx[r]}" for r in empty[:5]])
        self.profiles = meta.profiles
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.history.user_idx)

    def __getitem__(self, ids: np.ndarray) -> dict[str, Any]:
        ids = np.asarray(ids)
        h, t = self.history, self.targets
        ends = h.offsets[ids + 1]
        lengths = ends - h.offsets[ids]
        history, mask = tail_window(h.values, ends, lengths, self.max_len)
        exclude = _pad_lists(h.values, h.offsets[ids], ends)
        targets = _pad_lists(t.values, t.offsets[ids], t.offsets[ids + 1])
        targets = _unique_rows(targets)
        return {
            "history": torch.from_numpy(history),
            "mask": torch.from_numpy(mask),
            "profile": torch.from_numpy(self.profiles[h.user_idx[ids]]),
            "exclude": torch.from_numpy(exclude),
            "targets": torch.from_numpy(targets),
        }


def _unique_rows(a: np.ndarray) -> np.ndarray:
    """Zero repeated values within each row (0 is padding), so a target is counted once."""
    a = np.sort(a, axis=1)
    dup = np.zeros_like(a, dtype=bool)
    dup[:, 1:] = a[:, 1:] == a[:, :-1]
    return np.where(dup, 0, a)


def shard_batches(num_rows: int, batch_size: int, rank: int, world_size: int) -> list[np.ndarray]:
    """Rows ``rank::world_size`` cut into the same number of batches on every rank (none empty).

    Requires ``num_rows >= world_size``.
    """
    if num_rows < world_size:
        raise DataError(f"{num_rows} evaluation user(s) cannot be sharded over {world_size} ranks")
    per_rank = math.ceil(num_rows / world_size)
    n_batches = math.ceil(per_rank / batch_size)
    mine = np.arange(rank, num_rows, world_size)
    return [b for b in np.array_split(mine, n_batches)]


class _ListSampler:
    """A fixed list of index arrays, for a ``DataLoader(batch_size=None)``."""

    def __init__(self, batches: list[np.ndarray]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.batches)


# ------------------------------------------------------------------------------------------ data module
class SplitDataModule(pl.LightningDataModule):
    """Train samples from ``train.parquet`` and validation users from ``valid.parquet``.

    Rank and world size are read from the attached trainer when the loaders are built, so the same module
    serves one process or DDP. The Trainer must run with ``use_distributed_sampler=False``: sharding is done
    here (see :class:`EpochBatchSampler`).

    Args:
        split_dir: the split directory (docs/CONTRACTS.md "Split").
        meta: its side tables, from :func:`load_split_meta`.
        max_len: L, history truncation (most recent items kept).
        batch_size: training samples per rank per step.
        eval_batch_size: validation users per batch.
        seed: shuffling seed; epoch ``e`` uses the generator seeded by ``(seed, e)``.
        num_workers: DataLoader workers (spawned, never forked).
        pin_memory: pin host batches (GPU training).
    """

    def __init__(self, split_dir: str | Path, meta: SplitMeta, *, max_len: int, batch_size: int,
                 eval_batch_size: int, seed: int, num_workers: int = 0, pin_memory: bool = False):
        super().__init__()
        self.split_dir = Path(split_dir)
        self.meta = meta
        self.max_len, self.batch_size, self.eval_batch_size = max_len, batch_size, eval_batch_size
        self.seed, self.num_workers, self.pin_memory = seed, num_workers, pin_memory
        self.train_set: PrefixDataset | None = None
        self.valid_set: EvalUsers | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            path = self.split_dir / "train.parquet"
            seqs = read_ragged(path, "items", self.meta.num_items, self.meta.profiles.shape[0])
            self.train_set = PrefixDataset(seqs, self.meta.profiles, self.max_len)
            if len(self.train_set) == 0:
                raise DataError("no training samples (every sequence shorter than 2)", path=path,
                                column="items")
        if self.valid_set is None:
            self.valid_set = EvalUsers(self.split_dir / "valid.parquet", self.meta, self.max_len)

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _loader(self, dataset, sampler) -> torch.utils.data.DataLoader:
        kwargs: dict[str, Any] = {}
        if self.num_workers > 0:  # fork after torch threads hangs (ENVIRONMENT.md): spawn workers
            kwargs = {"multiprocessing_context": "spawn", "persistent_workers": True}
        return torch.utils.data.DataLoader(dataset, batch_size=None, sampler=sampler,
                                           num_workers=self.num_workers, pin_memory=self.pin_memory, **kwargs)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        rank, world = self._rank_world()
        sampler = EpochBatchSampler(len(self.train_set), self.batch_size, seed=self.seed, rank=rank,
                                    world_size=world)
        return self._loader(self.train_set, sampler)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        rank, world = self._rank_world()
        batches = shard_batches(len(self.valid_set), self.eval_batch_size, rank, world)
        return self._loader(self.valid_set, _ListSampler(batches))
