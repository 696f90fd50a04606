"""split: the evaluation protocol. Canonical tables in, index-encoded per-user sequences out.

Default protocol is ComiRec's *strong generalization* (ComiRec §4.1): users, not interactions, are split
8:1:1 into train/valid/test; train users contribute their whole time-ordered sequence; a valid/test user's
first ``int(0.8 n)`` behaviours are the history the model infers interests from and the remaining ones are
the targets. ``protocol: leave_one_out`` is the weak-generalization alternative (DeepMatch, torch-rechub,
RecBole): every user trains on ``seq[:-2]``, is validated on ``seq[-2]`` and tested on ``seq[-1]``.

Output layout and dtypes: docs/CONTRACTS.md, section "Split". Everything is vectorised (numpy/pyarrow, no
per-user Python loop), so 50M interactions fit in a few minutes and a few GB.

Choices the papers leave open (also listed in the report / README):
- Order within a user: timestamp, ties by item id (Unicode code-point order of the original id string).
  Exact duplicate rows are kept: repeat consumption is a behaviour.
- k-core: a user needs ``min_user_interactions`` interaction rows and an item ``min_item_interactions``
  (repeats count). Both are applied together and repeated until both hold; the result is the unique largest
  sub-log satisfying both bounds (removal order does not matter), so it is well defined.
- Index maps: items, users, categories and profile values are numbered 1.. in sorted order of their
  original string (code points), over what survives the filter; 0 is padding / "<unk>". Sorting (not
  first appearance) makes the maps independent of the input row order.
- Profile: every ``users.parquet`` column but ``user_id`` is a profile field, in file order. Null, empty
  and the literal "<unk>" map to 0.
- User split: ``numpy.random.default_rng(seed).permutation`` over user indices; the first
  ``n - n_valid - n_test`` go to train, then valid, then test, with ``n_valid = round(ratio_valid * n)``
  (and the same for test). Exact counts; a user's split does change when the user set changes.
- k-fold (``folds: k >= 3``): the same permutation cut into k near-equal contiguous folds (position j in
  fold ``j * k // n``); fold ``fold`` is test, fold ``(fold + 1) % k`` valid, the rest train. k = 2 is
  refused (no train fold). ``folds: 1`` is the ratio split above, byte for byte.
- A split left with no users (tiny data, or more folds than users) is a DataError naming the counts and
  the keys to change; only a share set explicitly to 0.0 in ``ratios`` may be empty.
- ``int(history_fraction * n)`` is float64 arithmetic as in Python, the same formula readers may use.
- Leave-one-out writes every user as ``split = "train"`` in users.parquet (each is in all three files);
  ``ratios`` and ``history_fraction`` are not used there.
- The optional ``behavior`` column is ignored: ingest keeps only the behaviour that counts (clicks).
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from components.config import ParamsError, load_params, section
from components.io import DataError, atomic_dir, cli_main, read_table, write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
UNK = "<unk>"
QUANTILES = (0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)


@dataclass(frozen=True)
class SplitConfig:
    protocol: Literal["strong_generalization", "leave_one_out"] = "strong_generalization"
    """strong_generalization (ComiRec §4.1: users split, valid/test infer from 80 % of their sequence) or
    leave_one_out (last item test, second-to-last valid, the rest train, every user)."""
    min_user_interactions: int = 5
    """k-core: keep users with at least this many interaction rows (after the item filter too)."""
    min_item_interactions: int = 5
    """k-core: keep items with at least this many interaction rows (after the user filter too)."""
    ratios: tuple[float, ...] = (0.8, 0.1, 0.1)
    """train / valid / test share of users (strong generalization, folds: 1 only); sums to 1."""
    history_fraction: float = 0.8
    """valid/test users: history = first int(history_fraction * n) items, targets = the rest."""
    folds: int = 1
    """k-fold strong generalization: 1 = one split by ``ratios``; k >= 3 = users in k seeded folds, fold
    ``fold`` is test, fold ``(fold + 1) % k`` valid, the rest train (``ratios`` unused)."""
    fold: int = 0
    """which of the ``folds`` folds this run uses, in [0, folds)."""

    def __post_init__(self) -> None:
        if self.min_item_interactions < 1:
            raise ValueError(f"min_item_interactions must be >= 1, got {self.min_item_interactions}")
        if self.min_user_interactions < 1:
            raise ValueError(f"min_user_interactions must be >= 1, got {self.min_user_interactions}")
        if len(self.ratios) != 3:
            raise ValueError(f"ratios must have 3 entries (train, valid, test), got {list(self.ratios)}")
        if any(not 0.0 <= r <= 1.0 for r in self.ratios) or self.ratios[0] <= 0.0:
            raise ValueError(f"ratios must lie in [0, 1] with train > 0, got {list(self.ratios)}")
        if abs(sum(self.ratios) - 1.0) > 1e-6:
            raise ValueError(f"ratios must sum to 1, got {list(self.ratios)} (sum {sum(self.ratios):g})")
        if not 0.0 < self.history_fraction < 1.0:
            raise ValueError(f"history_fraction must lie in (0, 1), got {self.history_fraction}")
        if self.protocol == "leave_one_out" and self.min_user_interactions < 3:
            raise ValueError("min_user_interactions must be >= 3 for leave_one_out (train, valid and test "
                             f"each need an item), got {self.min_user_interactions}")
        # ParamsError naming the full key (from_dict would only prefix "split: ")
        if self.folds < 1 or self.folds == 2:
            raise ParamsError(f"split.folds must be 1 (one split by ratios) or >= 3 (test fold, valid fold, "
                              f"train folds; with 2 no fold is left to train), got {self.folds}")
        if not 0 <= self.fold < self.folds:
            raise ParamsError(f"split.fold must lie in [0, folds) = [0, {self.folds}), got {self.fold}")
        if self.folds > 1 and self.protocol != "strong_generalization":
            raise ParamsError(f"split.folds: k-fold ({self.folds}) splits users, so it needs protocol "
                              f"strong_generalization, got {self.protocol!r}")
        if (self.protocol == "strong_generalization"
                and int(self.history_fraction * self.min_user_interactions) < 1):
            raise ValueError(
                f"min_user_interactions={self.min_user_interactions} with history_fraction="
                f"{self.history_fraction} leaves a valid/test user an empty history; raise either")


# ----------------------------------------------------------------------------------------------- reading

def _strings(table, name: str, path: Path):
    """Column ``name`` as a string ChunkedArray (dictionary decoded); DataError unless string-typed."""
    import pyarrow as pa

    col = table.column(name)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
            or pa.types.is_string_view(col.type)):
        raise DataError(f"expected a string column, got {col.type}", path=path, column=name,
                        rows=col.slice(0, 3).to_pylist())
    return col


def _string_column(table, name: str, path: Path):
    """Like :func:`_strings`, and DataError on nulls (ids, categories)."""
    import pyarrow.compute as pc

    col = _strings(table, name, path)
    if col.null_count:
        rows = np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))
        raise DataError(f"{col.null_count} null value(s)", path=path, column=name, rows=rows[:5].tolist())
    return col


def _unique_check(col, name: str, path: Path) -> None:
    import pyarrow.compute as pc

    counts = pc.value_counts(col)
    dup = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
    if len(dup):
        raise DataError(f"{len(dup)} duplicated id(s)", path=path, column=name, rows=dup[:5].to_pylist())


def _encode(col, value_set, name: str, path: Path, other: Path) -> np.ndarray:
    """Positions of ``col``'s values in ``value_set`` (int32); DataError naming values not found there."""
    import pyarrow.compute as pc

    idx = pc.index_in(col, value_set=value_set)
    if idx.null_count:
        unknown = pc.unique(col.filter(pc.is_null(idx)))
        raise DataError(f"{len(unknown)} id(s) not found in {other}", path=path, column=name,
                        rows=unknown[:5].to_pylist())
    return idx.to_numpy().astype(np.int32, copy=False)


def _read_canonical(data_dir: Path) -> dict[str, Any]:
    """Read and check the three canonical tables; interactions come back as int arrays."""
    import pyarrow as pa
    import pyarrow.compute as pc

    inter_path = data_dir / "interactions.parquet"
    items_path, users_path = data_dir / "items.parquet", data_dir / "users.parquet"
    items = read_table(items_path, ["item_id", "category"])
    users = read_table(users_path)
    if "user_id" not in users.column_names:
        raise DataError(f"missing required column(s) ['user_id']; found {users.column_names}",
                        path=users_path, column="user_id")
    inter_file = _interactions_file(inter_path)
    if inter_file.metadata.num_rows == 0:
        raise DataError("no interactions (empty table)", path=inter_path)

    item_ids = _string_column(items, "item_id", items_path).combine_chunks()
    _unique_check(item_ids, "item_id", items_path)
    category = _string_column(items, "category", items_path).combine_chunks()
    empty = np.flatnonzero(pc.equal(pc.utf8_length(category), 0).to_numpy(zero_copy_only=False))
    if len(empty):
        raise DataError(f"{len(empty)} empty categor(y/ies)", path=items_path, column="category",
                        rows=item_ids.take(empty[:5]).to_pylist())
    user_ids = _string_column(users, "user_id", users_path).combine_chunks()
    _unique_check(user_ids, "user_id", users_path)
    # every column but user_id is a profile field, in file order; nulls allowed (= unknown)
    profile = {f: _strings(users, f, users_path).combine_chunks()
               for f in users.column_names if f != "user_id"}

    # Interactions are read and encoded in chunks of rows: the id strings of the whole table (~3 GB at 100M
    # rows) are never held at once, only their int32 positions. A chunk that fails a check re-reads the
    # whole table through the same checks, so the error (counts, first rows) is the whole table's.
    args = (item_ids, user_ids, inter_path, items_path, users_path)
    parts = []
    try:
        for batch in inter_file.iter_batches(batch_size=READ_CHUNK_ROWS, columns=INTERACTION_COLUMNS):
            parts.append(_encode_interactions(pa.Table.from_batches([batch]), *args))
    except DataError:
        parts = None
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable parquet file ({exc})", path=inter_path) from None
    if parts is None:
        _encode_interactions(read_table(inter_path, INTERACTION_COLUMNS), *args)  # raises the table's error
        raise AssertionError("a chunk failed a check the whole table passes")
    user_raw, item_raw, timestamp = (np.concatenate([p[i] for p in parts]) for i in range(3))
    del parts
    return dict(user_raw=user_raw, item_raw=item_raw, timestamp=timestamp, item_ids=item_ids,
                category=category, user_ids=user_ids, profile=profile)


READ_CHUNK_ROWS = 8_000_000
INTERACTION_COLUMNS = ["user_id", "item_id", "timestamp"]


def _interactions_file(path: Path):
    """The interactions parquet file, checked to be readable and to hold :data:`INTERACTION_COLUMNS`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.io import _check_parquet

    _check_parquet(path, INTERACTION_COLUMNS)
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable parquet file ({exc})", path=path) from None


def _encode_interactions(inter, item_ids, user_ids, inter_path: Path, items_path: Path, users_path: Path):
    """(user positions int32, item positions int32, timestamps int64) of an interactions table (or chunk);
    DataError for a mistyped or null timestamp, a null id or an id missing from items/users."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ts = inter.column("timestamp")
    if not pa.types.is_integer(ts.type):
        raise DataError(f"expected int64 seconds, got {ts.type}", path=inter_path, column="timestamp",
                        rows=ts.slice(0, 3).to_pylist())
    if ts.null_count:
        rows = np.flatnonzero(pc.is_null(ts).to_numpy(zero_copy_only=False))
        raise DataError(f"{ts.null_count} null timestamp(s)", path=inter_path, column="timestamp",
                        rows=rows[:5].tolist())
    item_raw = _encode(_string_column(inter, "item_id", inter_path), item_ids, "item_id", inter_path,
                       items_path)
    user_raw = _encode(_string_column(inter, "user_id", inter_path), user_ids, "user_id", inter_path,
                       users_path)
    return user_raw, item_raw, ts.to_numpy().astype(np.int64, copy=False)


# ---------------------------------------------------------------------------------------------- the core

def kcore(user: np.ndarray, item: np.ndarray, num_users: int, num_items: int, min_user: int,
          min_item: int) -> tuple[np.ndarray, int]:
    """Iterative k-core filter on interaction rows.

    Args:
        user, item: (N,) int codes in [0, num_users) / [0, num_items).
        min_user, min_item: least number of rows a kept user / item has among the kept rows.
    Returns:
        (kept row positions, ascending; number of passes including the final check).
    """
    keep = np.arange(len(user), dtype=np.int64)
    u, i = user, item
    passes = 0
    while True:
        passes += 1
        ok = (np.bincount(u, minlength=num_users) >= min_user)[u]
        ok &= (np.bincount(i, minlength=num_items) >= min_item)[i]
        if ok.all():
            return keep, passes
        keep, u, i = keep[ok], u[ok], i[ok]


def _sorted_vocab(strings, used: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index map for the rows of ``strings`` that occur in ``used``: 1.. in sorted string order.

    Returns (lookup (len(strings),) int64 with 0 for unused rows, the rows of index 1, 2, ...)."""
    import pyarrow.compute as pc

    rows = np.flatnonzero(np.bincount(used, minlength=len(strings)))
    order = pc.sort_indices(strings.take(rows)).to_numpy()
    rows = rows[order]
    lookup = np.zeros(len(strings), dtype=np.int64)
    lookup[rows] = np.arange(1, len(rows) + 1)
    return lookup, rows


def _value_vocab(values, unknown: bool) -> tuple[np.ndarray, list[str]]:
    """Index each string of ``values`` in its sorted distinct set, 1..; index 0 is "<unk>".

    With ``unknown``, null, "" and "<unk>" get index 0 (missing profile values)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    real = values
    if unknown:
        missing = pc.fill_null(pc.or_(pc.equal(values, ""), pc.equal(values, UNK)), True)
        real = values.filter(pc.invert(missing))
    distinct = pc.unique(real)
    distinct = distinct.take(pc.sort_indices(distinct))
    idx = pc.index_in(values, value_set=distinct)
    codes = pc.fill_null(pc.add(idx.cast(pa.int64()), 1), 0).to_numpy()
    return np.asarray(codes, dtype=np.int64), [UNK] + distinct.to_pylist()


def _lists(values: np.ndarray, lengths: np.ndarray):
    """pyarrow list<int64> array from concatenated ``values`` cut into runs of ``lengths``."""
    import pyarrow as pa

    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise DataError(f"{offsets[-1]} items in one split exceed the list<int64> limit of 2^31 - 1")
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, pa.int64()))


def _quantiles(lengths: np.ndarray) -> dict[str, float]:
    if len(lengths) == 0:
        return {}
    qs = np.quantile(lengths, QUANTILES)
    names = ["min" if q == 0 else "max" if q == 1 else f"p{round(q * 100)}" for q in QUANTILES]
    out = {name: round(float(v), 3) for name, v in zip(names, qs)}
    out["mean"] = round(float(lengths.mean()), 3)
    return out


def time_order(user: np.ndarray, timestamp: np.ndarray, item: np.ndarray, num_users: int,
               num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort interaction rows by (user, timestamp, item); return the sorted user and item columns.

    Ties in time are broken by item index, i.e. by original item id; exact duplicate rows are equal, so
    the order is total and the result does not depend on the input row order.

    Fast path: the three keys are packed into one uint64 (user | time offset | item bits) and *values*
    are sorted, which numpy does several times faster than an argsort or ``lexsort``; user and item are
    unpacked from the sorted keys. When the three need up to :data:`MAX_BLOCK_BITS` more than 64 bits, the
    rows are cut by the user's top bits into 2, 4 or 8 blocks of consecutive users and each block is packed
    without those bits and value-sorted (1M users x an 18M-second range x 2M items = 66 bits: 4 blocks;
    100M rows in ~15 s where ranking the times and an argsort took ~160 s). Wider still, times are replaced
    by their rank among the distinct timestamps (:func:`_time_ranks`) and the same is tried again; when
    even that does not fit, user | time rank | the item's top bits are argsorted and the few rows tied on
    that key ordered by item; ``np.lexsort`` only when user and time rank alone exceed 64 bits.

    Args:
        user: (N,) int user_idx in [1, num_users]; timestamp: (N,) int64; item: (N,) int item_idx in
            [1, num_items - 1].
    Returns:
        (user, item) as int64 (N,) arrays in sorted order.
    """
    ub, ib = int(num_users).bit_length(), int(num_items - 1).bit_length()
    tmin = timestamp.min()
    toff = (timestamp - tmin).view(np.uint64)  # wraps correctly even for a range beyond int64
    tb = int(toff.max()).bit_length()
    if ub + tb + ib - 64 > min(MAX_BLOCK_BITS, ub):
        toff = _time_ranks(toff)
        tb = int(toff.max()).bit_length()
    excess = ub + tb + ib - 64
    if excess <= min(MAX_BLOCK_BITS, ub):
        return _blocked_value_sort(user, toff, item, ub, tb, ib, max(excess, 0))
    if ub + tb < 64:
        # e.g. 2^30 users x 2^20 distinct times x 2^30 items: user | time rank | the item's top bits in one
        # uint64, argsorted; rows equal on that key (same user and time, items sharing their top bits: a
        # few) are then put in item order
        spare = 64 - ub - tb
        key = user.astype(np.uint64) << np.uint64(tb + spare)
        key |= toff << np.uint64(spare)
        del toff
        key |= item.astype(np.uint64) >> np.uint64(ib - spare)
        order = np.argsort(key)
        key = key[order]
        tie = np.flatnonzero(key[1:] == key[:-1])
        if len(tie):
            pos = np.unique(np.concatenate([tie, tie + 1]))  # whole groups of equal keys, ascending
            sub = order[pos]
            order[pos] = sub[np.lexsort((item[sub], key[pos]))]
        del key
        return user[order].astype(np.int64), item[order].astype(np.int64)
    order = np.lexsort((item, timestamp, user))  # very many users x distinct times
    return user[order].astype(np.int64), item[order].astype(np.int64)


MAX_BLOCK_BITS = 3
"""time_order: at most 2^3 user blocks (each a pass over the rows to select it)."""


def _blocked_value_sort(user, toff, item, ub: int, tb: int, ib: int, block_bits: int):
    """:func:`time_order`'s packed value sort, in ``2**block_bits`` blocks of the user's top bits.

    Block ``b`` holds the users whose index shifted right by ``ub - block_bits`` is ``b``; within it the
    user's low ``ub - block_bits`` bits | time | item fit 64 bits. Blocks are consecutive user ranges, so
    concatenating the sorted blocks in order sorts the whole.
    """
    low = ub - block_bits
    users_out, items_out = [], []
    for b in range(1 << block_bits):
        if block_bits:
            sel = (user >> low) == b
            if not sel.any():
                continue
            u, t, i = user[sel], toff[sel], item[sel]
            del sel
        else:
            u, t, i = user, toff, item
        key = (u & ((1 << low) - 1)).astype(np.uint64)
        del u
        key <<= np.uint64(tb + ib)
        key |= t << np.uint64(ib)
        del t
        key |= i.astype(np.uint64)
        del i
        key.sort()
        items_out.append((key & np.uint64((1 << ib) - 1)).astype(np.int64))
        key >>= np.uint64(tb + ib)
        u = key.astype(np.int64)
        del key
        u |= b << low
        users_out.append(u)
    if len(users_out) == 1:
        return users_out[0], items_out[0]
    return np.concatenate(users_out), np.concatenate(items_out)


def _time_ranks(toff: np.ndarray) -> np.ndarray:
    """Each time offset's rank among the distinct offsets (uint64), order preserved.

    For a range up to max(N, 2^24) seconds a presence table over the range and its running count give the
    ranks in a few passes (100M rows over 18M seconds: ~4 s); ``np.unique`` + ``searchsorted`` (~4 min at
    that size) only for wider ranges.
    """
    span = int(toff.max()) + 1
    if span <= max(len(toff), 1 << 24):
        present = np.zeros(span, dtype=bool)
        present[toff] = True
        rank = np.cumsum(present, dtype=np.uint64)
        del present
        rank -= np.uint64(1)
        return rank[toff]
    return np.searchsorted(np.unique(toff), toff).astype(np.uint64)


def assign_users(num_users: int, ratios: tuple[float, ...], seed: int) -> np.ndarray:
    """Split code (0 train, 1 valid, 2 test) per user index 0..num_users-1, from a seeded permutation."""
    n_valid = int(round(ratios[1] * num_users))
    n_test = int(round(ratios[2] * num_users))
    n_train = num_users - n_valid - n_test
    perm = np.random.default_rng(seed).permutation(num_users)
    code = np.empty(num_users, dtype=np.int8)
    code[perm[:n_train]] = 0
    code[perm[n_train:n_train + n_valid]] = 1
    code[perm[n_train + n_valid:]] = 2
    return code


def assign_folds(num_users: int, folds: int, fold: int, seed: int) -> np.ndarray:
    """Split code (0 train, 1 valid, 2 test) per user index for fold ``fold`` of ``folds``.

    The seeded permutation of :func:`assign_users` is cut into ``folds`` contiguous runs whose sizes differ
    by at most one (position j of the permutation is in fold ``j * folds // num_users``); fold ``fold`` is
    test, fold ``(fold + 1) % folds`` valid, the others train. Over all folds every user is tested once
    and validated once.
    """
    perm = np.random.default_rng(seed).permutation(num_users)
    fold_of = np.empty(num_users, dtype=np.int64)
    fold_of[perm] = np.arange(num_users, dtype=np.int64) * folds // max(num_users, 1)
    code = np.zeros(num_users, dtype=np.int8)
    code[fold_of == (fold + 1) % folds] = 1
    code[fold_of == fold] = 2
    return code


def _check_nonempty(code: np.ndarray, cfg: SplitConfig, path: Path) -> None:
    """DataError when a split that should hold users holds none (tiny data), naming counts and keys."""
    counts = np.bincount(code, minlength=3)
    wanted = [True] * 3 if cfg.folds > 1 else [r > 0 for r in cfg.ratios]  # an explicit 0.0 share is a choice
    empty = [s for s, n, w in zip(SPLITS, counts, wanted) if w and n == 0]
    if not empty:
        return
    if cfg.folds > 1:
        fix = f"lower split.folds (now {cfg.folds}; each fold needs a user)"
    else:
        fix = f"raise the valid/test shares of split.ratios (now {list(cfg.ratios)})"
    raise DataError(
        f"the split leaves no {' / '.join(empty)} user(s): {len(code)} user(s) after the k-core give "
        f"train/valid/test = {counts[0]}/{counts[1]}/{counts[2]}; {fix}, lower split.min_user_interactions "
        f"(now {cfg.min_user_interactions}) / split.min_item_interactions (now {cfg.min_item_interactions}), "
        "or use more data", path=path)


def run(cfg: SplitConfig, data_dir: Path, out_dir: Path, *, seed: int) -> dict:
    """Filter, index and split the canonical tables in ``data_dir``; write the split to ``out_dir``.

    Args:
        cfg: the ``split`` section of params.yaml.
        data_dir: folder with interactions.parquet, items.parquet, users.parquet (docs/CONTRACTS.md).
        out_dir: replaced atomically by train/valid/test/items/users parquet, vocab.json and stats.json.
        seed: the top-level seed; picks the user split.
    Returns:
        The stats written to stats.json.
    Raises:
        DataError: a missing/corrupt table, a missing or mistyped column, unknown ids, nothing left.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    t0 = time.perf_counter()
    src = _read_canonical(data_dir)
    log.info("read and encoded %d interactions: %.1f s", len(src["user_raw"]), time.perf_counter() - t0)
    n_in = len(src["user_raw"])
    n_users_in = int(np.count_nonzero(np.bincount(src["user_raw"], minlength=len(src["user_ids"]))))
    n_items_in = int(np.count_nonzero(np.bincount(src["item_raw"], minlength=len(src["item_ids"]))))

    rows, passes = kcore(src["user_raw"], src["item_raw"], len(src["user_ids"]), len(src["item_ids"]),
                         cfg.min_user_interactions, cfg.min_item_interactions)
    if len(rows) == 0:
        raise DataError(f"no interactions left after the k-core filter (min_user_interactions="
                        f"{cfg.min_user_interactions}, min_item_interactions={cfg.min_item_interactions})",
                        path=data_dir / "interactions.parquet")
    log.info("k-core: %d passes, %d rows kept: %.1f s", passes, len(rows), time.perf_counter() - t0)
    user_raw = src.pop("user_raw")[rows]
    item_raw = src.pop("item_raw")[rows]
    timestamp = src.pop("timestamp")[rows]
    del rows

    # Index maps: 1.. in sorted order of the original strings; 0 = padding.
    item_lookup, item_rows = _sorted_vocab(src["item_ids"], item_raw)
    user_lookup, user_rows = _sorted_vocab(src["user_ids"], user_raw)
    num_items, num_users = len(item_rows) + 1, len(user_rows)
    item_ids, user_ids = src["item_ids"].take(item_rows), src["user_ids"].take(user_rows)
    category = src["category"].take(item_rows)
    category_idx, category_values = _value_vocab(category, unknown=False)

    item = item_lookup[item_raw]
    user = user_lookup[user_raw]
    del item_raw, user_raw
    log.info("index maps: %.1f s", time.perf_counter() - t0)
    user, item = time_order(user, timestamp, item, num_users, num_items)
    del timestamp
    log.info("time order: %.1f s", time.perf_counter() - t0)
    lengths = np.bincount(user, minlength=num_users + 1)[1:]  # (U,) sequence length per user_idx 1..U
    starts = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    pos = np.arange(len(item), dtype=np.int64) - starts[user - 1]  # position of each row in its sequence
    del starts

    tables: dict[str, pa.Table] = {}
    if cfg.protocol == "strong_generalization":
        if cfg.folds == 1:
            code = assign_users(num_users, cfg.ratios, seed)
        else:
            code = assign_folds(num_users, cfg.folds, cfg.fold, seed)
        _check_nonempty(code, cfg, data_dir / "interactions.parquet")
        hist_len = (cfg.history_fraction * lengths).astype(np.int64)  # int(0.8 n), per user
        row_code = code[user - 1]
        members = {s: np.flatnonzero(code == c) for c, s in enumerate(SPLITS)}  # user_idx - 1, ascending
        train_items = item[row_code == 0]  # rows stay grouped by user, so a mask keeps the sequences
        tables["train"] = pa.table({
            "user_idx": pa.array(members["train"] + 1, pa.int64()),
            "items": _lists(train_items, lengths[members["train"]]),
        })
        is_hist = pos < hist_len[user - 1]
        for c, s in ((1, "valid"), (2, "test")):
            m = members[s]
            in_split = row_code == c
            tables[s] = pa.table({
                "user_idx": pa.array(m + 1, pa.int64()),
                "history": _lists(item[in_split & is_hist], hist_len[m]),
                "targets": _lists(item[in_split & ~is_hist], lengths[m] - hist_len[m]),
            })
        del row_code, is_hist, in_split
        user_split = pa.array(SPLITS).take(pa.array(code))
        split_lengths = {"train": (lengths[members["train"]],),
                         **{s: (hist_len[members[s]], lengths[members[s]] - hist_len[members[s]])
                            for s in ("valid", "test")}}
    else:  # leave_one_out: every user in every file
        back = lengths[user - 1] - pos  # 1 for the last item, 2 for the second-to-last
        uidx = pa.array(np.arange(1, num_users + 1), pa.int64())
        ones = np.ones(num_users, np.int64)
        train_items = item[back > 2]
        tables["train"] = pa.table({"user_idx": uidx, "items": _lists(train_items, lengths - 2)})
        tables["valid"] = pa.table({"user_idx": uidx, "history": _lists(train_items, lengths - 2),
                                    "targets": _lists(item[back == 2], ones)})
        tables["test"] = pa.table({"user_idx": uidx, "history": _lists(item[back > 1], lengths - 1),
                                   "targets": _lists(item[back == 1], ones)})
        del back
        user_split = pa.array(["train"]).take(pa.array(np.zeros(num_users, np.int8)))
        split_lengths = {"train": (lengths - 2,), "valid": (lengths - 2, ones), "test": (lengths - 1, ones)}
    del pos
    train_count = np.bincount(train_items, minlength=num_items)

    items_table = pa.table({
        "item_idx": pa.array(np.arange(1, num_items), pa.int64()),
        "item_id": item_ids.cast(pa.string()),
        "category": category.cast(pa.string()),
        "category_idx": pa.array(category_idx, pa.int64()),
        "train_count": pa.array(train_count[1:], pa.int64()),
    })
    users_cols: dict[str, Any] = {
        "user_idx": pa.array(np.arange(1, num_users + 1), pa.int64()),
        "user_id": user_ids.cast(pa.string()),
        "split": user_split,
    }
    profile_values: dict[str, list[str]] = {}
    for f, col in src["profile"].items():
        codes, values = _value_vocab(col.take(user_rows), unknown=True)
        users_cols[f"profile_{f}"] = pa.array(codes, pa.int64())
        profile_values[f] = values
    users_table = pa.table(users_cols)
    fields = list(src["profile"])
    vocab = {
        "num_items": num_items,
        "num_categories": len(category_values),
        "profile_fields": fields,
        "profile_cardinalities": [len(profile_values[f]) for f in fields],
        "profile_values": profile_values,
        "protocol": cfg.protocol,
    }

    per_split = {}
    for s in SPLITS:
        parts = split_lengths[s]
        total = sum(parts)
        entry: dict[str, Any] = {"users": int(len(total)), "interactions": int(total.sum()),
                                 "seq_len": _quantiles(total)}
        if s != "train":
            entry["history_len"] = _quantiles(parts[0])
            entry["target_len"] = _quantiles(parts[1])
            entry["history_interactions"] = int(parts[0].sum())
            entry["target_interactions"] = int(parts[1].sum())
        per_split[s] = entry
    per_split["train"]["items"] = int(np.count_nonzero(train_count[1:]))
    stats = {
        "protocol": cfg.protocol,
        "seed": int(seed),
        "input": {"users": n_users_in, "items": n_items_in, "interactions": n_in},
        "kcore": {"min_user_interactions": cfg.min_user_interactions,
                  "min_item_interactions": cfg.min_item_interactions, "passes": passes,
                  "removed_interactions": n_in - int(lengths.sum())},
        "users": num_users,
        "items": num_items - 1,
        "categories": len(category_values) - 1,
        "interactions": int(lengths.sum()),
        "seq_len": _quantiles(lengths),
        "splits": per_split,
    }
    if cfg.folds > 1:  # only then, so that folds: 1 writes exactly the files it always did
        stats["folds"], stats["fold"] = cfg.folds, cfg.fold

    log.info("split tables built: %.1f s", time.perf_counter() - t0)
    with atomic_dir(out_dir) as tmp:
        for s in SPLITS:
            pq.write_table(tables[s], tmp / f"{s}.parquet")
        pq.write_table(items_table, tmp / "items.parquet")
        pq.write_table(users_table, tmp / "users.parquet")
        write_json(tmp / "vocab.json", vocab)
        write_json(tmp / "stats.json", stats)
    log.info("written to %s: %.1f s", out_dir, time.perf_counter() - t0)
    return stats


# ------------------------------------------------------------------------------------------------- CLI

def read_seed(params: dict) -> int:
    """The top-level ``seed`` of params.yaml, strictly."""
    seed = params.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ParamsError(f"seed: expected a non-negative integer, got {seed!r}")
    return seed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m components.split", description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="params file (top-level seed, split: section)")
    parser.add_argument("--data", type=Path, default=Path("data/canonical"), help="canonical tables folder")
    parser.add_argument("--out", type=Path, default=Path("data/split"), help="output folder (replaced)")
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_params(args.params)
        cfg = section(params, "split", SplitConfig)
        stats = run(cfg, args.data, args.out, seed=read_seed(params))
        sp = stats["splits"]
        folds = f", fold {cfg.fold} of {cfg.folds}" if cfg.folds > 1 else ""
        print(f"split ({cfg.protocol}{folds}): {stats['users']} users, {stats['items']} items, "
              f"{stats['interactions']} interactions; users train/valid/test = "
              f"{sp['train']['users']}/{sp['valid']['users']}/{sp['test']['users']} -> {args.out}")

    cli_main(body)


if __name__ == "__main__":
    main()
