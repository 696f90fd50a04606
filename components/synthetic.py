"""Seeded synthetic interaction logs with **planted interests**, from test size to 50M interactions.

What a multi-interest model should recover is put there on purpose, so tests can check it:

- ``num_items`` items are split into ``num_categories`` categories of (almost) equal size; inside a category
  item popularity follows a Zipf law with exponent ``popularity_skew`` (0 = uniform).
- Every user draws ``interests_per_user`` distinct categories uniformly at random (their *planted interests*)
  and interest weights from a symmetric Dirichlet(1) (uniform on the simplex).
- The sequence length is ``min_length + Geometric`` with mean ``mean_length``.
- Each interaction, independently: with probability ``noise`` a uniformly random item (ground truth -1);
  otherwise an interest is drawn by weight and an item from that category by popularity (ground truth = the
  category index). Sampling interests i.i.d. per step is the plainest form of "several interests at once",
  exactly the case where one user vector cannot serve every next item (MIND section 1, ComiRec section 3).
- Timestamps start at a uniform random time in a 180-day window and grow by ``1 + floor(Exp(1 h))``
  seconds per step, so every user's timestamps are strictly increasing.
- Profile fields ``gender`` (2 values), ``age`` (the 7 MovieLens-1M age groups) and ``occupation`` (21 values)
  are correlated with the interests: every category has its own random distribution over each field's values
  (Dirichlet(0.5), so fairly peaked); for each field a user picks one of their interests by weight and draws
  the value from that category's distribution (the UMI premise: profile features tell which interests matter).

Ids: users ``"1".."num_users"``, items ``"1".."num_items"``, categories ``"cat<index>"`` zero-padded; the
``interest`` of ``ground_truth`` is that category index.

Determinism: users are generated in fixed blocks of :data:`BLOCK_USERS`, each with its own generator seeded
by ``(seed, 1, block)``; the item/category/profile "world" uses ``(seed, 0)``. So the same seed gives the same
data whatever the chunk size, and :func:`generate` (in memory) equals :func:`write` (streamed).

API:
    ``generate(cfg, seed) -> SyntheticTables``: small data in memory (pandas), for tests.
    ``write(cfg, out_dir, seed=...) -> dict``: streams the canonical parquet tables (docs/CONTRACTS.md) with
    ``pyarrow.parquet.ParquetWriter`` in chunks of users; memory is bounded by ``chunk_rows``, not by the
    data size. Used by ``components.ingest`` (``source: synthetic``) and ``benchmarks/data_path.py``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

BLOCK_USERS = 1024                 # users per seeded block (fixed: part of what the seed means)
START_TIME = 1_600_000_000         # 2020-09-13, seconds since the epoch
START_SPAN = 180 * 86_400          # user start times are uniform in [START_TIME, START_TIME + START_SPAN)
MEAN_GAP = 3_600.0                 # seconds; gap between two interactions is 1 + floor(Exp(MEAN_GAP))
INTEREST_ALPHA = 1.0               # symmetric Dirichlet concentration of a user's interest weights
PROFILE_ALPHA = 0.5                # Dirichlet concentration of a category's distribution over a field's values

GENDERS = ("F", "M")
AGE_GROUPS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")   # MovieLens-1M age groups
OCCUPATIONS = tuple(f"occupation{i:02d}" for i in range(21))               # MovieLens-1M has 21
PROFILE_FIELDS = {"gender": GENDERS, "age": AGE_GROUPS, "occupation": OCCUPATIONS}


@dataclass(frozen=True)
class SyntheticConfig:
    """``ingest.synthetic`` in params.yaml."""

    num_users: int = 2000              # users to generate
    num_items: int = 2000              # items (>= num_categories)
    num_categories: int = 20           # categories = the possible planted interests
    interests_per_user: int = 4        # distinct planted interests per user (<= num_categories)
    mean_length: float = 40.0          # mean interactions per user (>= min_length)
    min_length: int = 8                # minimum interactions per user
    noise: float = 0.1                 # probability that an interaction is a uniformly random item
    popularity_skew: float = 0.8       # Zipf exponent of item popularity inside a category (0 = uniform)
    save_ground_truth: bool = True     # also write ground_truth.parquet (the interest of each interaction)

    def __post_init__(self) -> None:
        for key in ("num_users", "num_items", "num_categories", "interests_per_user", "min_length"):
            if getattr(self, key) < 1:
                raise ValueError(f"synthetic.{key} must be >= 1, got {getattr(self, key)}")
        if self.num_items < self.num_categories:
            raise ValueError(f"synthetic.num_items ({self.num_items}) must be >= synthetic.num_categories "
                             f"({self.num_categories})")
        if self.interests_per_user > self.num_categories:
            raise ValueError(f"synthetic.interests_per_user ({self.interests_per_user}) must be <= "
                             f"synthetic.num_categories ({self.num_categories})")
        if not self.mean_length >= self.min_length:
            raise ValueError(f"synthetic.mean_length ({self.mean_length}) must be >= synthetic.min_length "
                             f"({self.min_length})")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"synthetic.noise must be in [0, 1], got {self.noise}")
        if not self.popularity_skew >= 0.0:
            raise ValueError(f"synthetic.popularity_skew must be >= 0, got {self.popularity_skew}")


@dataclass(frozen=True)
class SyntheticTables:
    """In-memory result of :func:`generate` (pandas DataFrames in the canonical schema)."""

    interactions: "pd.DataFrame"       # user_id, item_id, timestamp
    items: "pd.DataFrame"              # item_id, category
    users: "pd.DataFrame"              # user_id, gender, age, occupation
    ground_truth: "pd.DataFrame"       # user_id, item_id, timestamp, interest (category index, -1 = noise)


@dataclass(frozen=True)
class _World:
    """Everything shared by all users: item categories, popularity and per-category profile tables."""

    item_category: np.ndarray          # (num_items,) category index of item index i (item id = i + 1)
    order: np.ndarray                  # (num_items,) item indices grouped by category, most popular first
    category_start: np.ndarray         # (num_categories,) first position of each category in ``order``
    category_size: np.ndarray          # (num_categories,) items per category (sizes differ by at most 1)
    rank_cum: np.ndarray               # (max size,) cumulative Zipf weight of popularity ranks 0..r
    profile_cdf: dict                  # field -> (num_categories, V) CDF of the field's values per category


@dataclass(frozen=True)
class Block:
    """One block of users as flat numpy arrays (no per-row Python objects)."""

    user_index: np.ndarray             # (n,) 0-based user index (user id = index + 1)
    profile: dict                      # field -> (n,) int value index into PROFILE_FIELDS[field]
    row_user: np.ndarray               # (R,) user index of each interaction
    item_index: np.ndarray             # (R,) 0-based item index (item id = index + 1)
    timestamp: np.ndarray              # (R,) int64 seconds, strictly increasing within a user
    interest: np.ndarray               # (R,) planted category index, -1 for noise


def category_names(num_categories: int) -> list[str]:
    """Category strings, index -> name (``interest`` in ground truth is this index)."""
    width = len(str(max(num_categories - 1, 0)))
    return [f"cat{c:0{width}d}" for c in range(num_categories)]


def make_world(cfg: SyntheticConfig, seed: int) -> _World:
    """Item categories, within-category popularity and the profile-given-category tables for ``seed``."""
    rng = np.random.default_rng([seed, 0])
    n_items, n_cat = cfg.num_items, cfg.num_categories
    item_category = rng.permutation(np.arange(n_items) % n_cat).astype(np.int64)
    # Items of each category in a random order; the popularity rank is the position in that order.
    order = np.lexsort((rng.random(n_items), item_category))               # (num_items,) grouped by category
    size = np.bincount(item_category, minlength=n_cat)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    rank_cum = np.cumsum((np.arange(size.max()) + 1.0) ** -cfg.popularity_skew)   # Zipf weight of rank r
    profile_cdf = {}
    for field, values in PROFILE_FIELDS.items():
        probs = rng.dirichlet(np.full(len(values), PROFILE_ALPHA), size=n_cat)     # (num_categories, V)
        c = np.cumsum(probs, axis=1)
        c[:, -1] = 1.0
        profile_cdf[field] = c
    return _World(item_category, order, start, size, rank_cum, profile_cdf)


def _choose_subsets(rng: np.random.Generator, n: int, population: int, k: int) -> np.ndarray:
    """(n, k) rows of distinct values, each row a uniform random k-subset of ``range(population)``.

    Robert Floyd's algorithm, vectorised over rows: k steps, no rejection, no (n, population) matrix.
    """
    chosen = np.empty((n, k), dtype=np.int64)
    for i, j in enumerate(range(population - k, population)):
        t = rng.integers(0, j + 1, size=n)
        taken = (chosen[:, :i] == t[:, None]).any(axis=1)
        chosen[:, i] = np.where(taken, j, t)
    return chosen


def generate_block(cfg: SyntheticConfig, world: _World, seed: int, block: int) -> Block:
    """Users ``[block * BLOCK_USERS, ...)``: interests, profile and interactions, vectorised."""
    first = block * BLOCK_USERS
    n = min(BLOCK_USERS, cfg.num_users - first)
    if n <= 0:
        raise ValueError(f"block {block} is past num_users={cfg.num_users}")
    rng = np.random.default_rng([seed, 1, block])
    k, n_cat = cfg.interests_per_user, cfg.num_categories
    # Planted interests: a uniform random k-subset of the categories per user.
    interests = _choose_subsets(rng, n, n_cat, k)                                   # (n, k)
    weights = rng.dirichlet(np.full(k, INTEREST_ALPHA), size=n)                     # (n, k)
    cum_w = np.cumsum(weights, axis=1)
    cum_w[:, -1] = 1.0

    profile = {}
    for field, cdf in world.profile_cdf.items():
        slot = (rng.random(n)[:, None] >= cum_w).sum(axis=1)                        # (n,) interest by weight
        cat = interests[np.arange(n), slot]
        profile[field] = (rng.random(n)[:, None] >= cdf[cat]).sum(axis=1)           # (n,) value by the table

    extra_mean = cfg.mean_length - cfg.min_length
    if extra_mean > 0:
        lengths = cfg.min_length + rng.geometric(1.0 / (extra_mean + 1.0), size=n) - 1
    else:
        lengths = np.full(n, cfg.min_length, dtype=np.int64)
    lengths = lengths.astype(np.int64)
    row_user = np.repeat(np.arange(n), lengths)                                     # (R,) local user
    total = int(lengths.sum())

    slot = (rng.random(total)[:, None] >= cum_w[row_user]).sum(axis=1)              # (R,) interest by weight
    cat = interests[row_user, slot]
    # Popularity rank by inverse CDF: the first size(c) Zipf weights, renormalised, are category c's law.
    size = world.category_size[cat]
    rank = np.searchsorted(world.rank_cum, rng.random(total) * world.rank_cum[size - 1], side="right")
    item = world.order[world.category_start[cat] + np.minimum(rank, size - 1)]
    noisy = rng.random(total) < cfg.noise
    item[noisy] = rng.integers(0, cfg.num_items, size=int(noisy.sum()))
    interest = np.where(noisy, -1, cat).astype(np.int64)

    start = START_TIME + rng.integers(0, START_SPAN, size=n)
    gaps = 1 + np.floor(rng.exponential(MEAN_GAP, size=total)).astype(np.int64)
    run = np.cumsum(gaps)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    timestamp = start[row_user] + run - run[offsets][row_user]                      # first one = start

    return Block(user_index=first + np.arange(n), profile=profile, row_user=first + row_user,
                 item_index=item.astype(np.int64), timestamp=timestamp.astype(np.int64), interest=interest)


def iter_blocks(cfg: SyntheticConfig, seed: int, world: _World | None = None) -> Iterator[Block]:
    """All users, block by block, in user order."""
    world = world or make_world(cfg, seed)
    for block in range((cfg.num_users + BLOCK_USERS - 1) // BLOCK_USERS):
        yield generate_block(cfg, world, seed, block)


# --- Arrow conversion (vectorised: ids become strings by an Arrow cast, values by an Arrow take) ---------

def _ids(index: np.ndarray):
    import pyarrow as pa

    return pa.array(index + 1, type=pa.int64()).cast(pa.string())


def _labels(values: tuple[str, ...], index: np.ndarray):
    import pyarrow as pa

    return pa.array(values, type=pa.string()).take(pa.array(index, type=pa.int64()))


def _interactions_table(b: Block, ground_truth: bool):
    import pyarrow as pa

    cols = {"user_id": _ids(b.row_user), "item_id": _ids(b.item_index),
            "timestamp": pa.array(b.timestamp, type=pa.int64())}
    if ground_truth:
        cols["interest"] = pa.array(b.interest, type=pa.int64())
    return pa.table(cols)


def _users_table(b: Block):
    import pyarrow as pa

    cols = {"user_id": _ids(b.user_index)}
    for field, values in PROFILE_FIELDS.items():
        cols[field] = _labels(values, b.profile[field])
    return pa.table(cols)


def _items_table(cfg: SyntheticConfig, world: _World):
    import pyarrow as pa

    names = tuple(category_names(cfg.num_categories))
    return pa.table({"item_id": _ids(np.arange(cfg.num_items)),
                     "category": _labels(names, world.item_category)})


def _concat(blocks: list[Block]) -> Block:
    return Block(user_index=np.concatenate([b.user_index for b in blocks]),
                 profile={f: np.concatenate([b.profile[f] for b in blocks]) for f in PROFILE_FIELDS},
                 row_user=np.concatenate([b.row_user for b in blocks]),
                 item_index=np.concatenate([b.item_index for b in blocks]),
                 timestamp=np.concatenate([b.timestamp for b in blocks]),
                 interest=np.concatenate([b.interest for b in blocks]))


def generate(cfg: SyntheticConfig, seed: int) -> SyntheticTables:
    """Generate everything in memory (small configurations: tests, examples).

    Args:
        cfg: sizes and noise; see :class:`SyntheticConfig`.
        seed: the only source of randomness.

    Returns:
        :class:`SyntheticTables` with canonical ``interactions``/``items``/``users`` and ``ground_truth``
        (always returned here; ``cfg.save_ground_truth`` only matters for :func:`write`).
    """
    world = make_world(cfg, seed)
    b = _concat(list(iter_blocks(cfg, seed, world)))
    gt = _interactions_table(b, ground_truth=True).to_pandas()
    return SyntheticTables(interactions=gt[["user_id", "item_id", "timestamp"]].copy(),
                           items=_items_table(cfg, world).to_pandas(),
                           users=_users_table(b).to_pandas(),
                           ground_truth=gt)


def write(cfg: SyntheticConfig, out_dir: str | Path, *, seed: int, chunk_rows: int = 4_000_000) -> dict:
    """Stream the canonical tables into ``out_dir`` (which must exist) with bounded memory.

    Writes ``interactions.parquet``, ``items.parquet``, ``users.parquet`` and, if ``cfg.save_ground_truth``,
    ``ground_truth.parquet``. Blocks of users are gathered until about ``chunk_rows`` interactions, then
    written as one row group, so peak memory is O(chunk_rows) whatever ``num_users``.

    Returns:
        Counts: ``users``, ``items``, ``categories``, ``interactions``, ``noise_interactions``,
        ``min_length``/``max_length``, ``timestamp_min``/``timestamp_max``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    world = make_world(cfg, seed)
    pq.write_table(_items_table(cfg, world), out_dir / "items.parquet")
    inter_schema = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64())])
    gt_schema = inter_schema.append(pa.field("interest", pa.int64()))
    user_schema = pa.schema([("user_id", pa.string())] + [(f, pa.string()) for f in PROFILE_FIELDS])
    stats = {"users": cfg.num_users, "items": cfg.num_items, "categories": cfg.num_categories,
             "interactions": 0, "noise_interactions": 0, "min_length": None, "max_length": None,
             "timestamp_min": None, "timestamp_max": None}
    writers = {"interactions": pq.ParquetWriter(out_dir / "interactions.parquet", inter_schema),
               "users": pq.ParquetWriter(out_dir / "users.parquet", user_schema)}
    if cfg.save_ground_truth:
        writers["ground_truth"] = pq.ParquetWriter(out_dir / "ground_truth.parquet", gt_schema)
    try:
        pending: list[Block] = []
        rows = 0
        blocks = iter_blocks(cfg, seed, world)
        for b in blocks:
            pending.append(b)
            rows += len(b.row_user)
            if rows >= chunk_rows:
                _flush(pending, writers, stats)
                pending, rows = [], 0
        if pending:
            _flush(pending, writers, stats)
    finally:
        for w in writers.values():
            w.close()
    return stats


def _flush(pending: list[Block], writers: dict, stats: dict) -> None:
    b = _concat(pending)
    gt = _interactions_table(b, ground_truth=True)
    writers["interactions"].write_table(gt.drop_columns(["interest"]))
    if "ground_truth" in writers:
        writers["ground_truth"].write_table(gt)
    writers["users"].write_table(_users_table(b))
    lengths = np.bincount(b.row_user - b.user_index[0], minlength=len(b.user_index))
    stats["interactions"] += int(len(b.row_user))
    stats["noise_interactions"] += int((b.interest < 0).sum())
    for key, value, pick in (("min_length", lengths.min(), min), ("max_length", lengths.max(), max),
                             ("timestamp_min", b.timestamp.min(), min), ("timestamp_max", b.timestamp.max(), max)):
        stats[key] = int(value) if stats[key] is None else int(pick(stats[key], value))


def replace(cfg: SyntheticConfig, **changes) -> SyntheticConfig:
    """``dataclasses.replace`` re-exported: ``replace(cfg, num_users=100)`` (validated again)."""
    return dataclasses.replace(cfg, **changes)
