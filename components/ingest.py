"""Step 1 of the pipeline: read a source and write the canonical tables (docs/CONTRACTS.md).

Outputs in ``out_dir`` (replaced atomically, so a failed run leaves the previous outputs intact):
``interactions.parquet`` (``user_id`` str, ``item_id`` str, ``timestamp`` int64 seconds, optional ``behavior``
str), ``items.parquet`` (``item_id``, ``category`` non-empty, optional ``title``/``genres``), ``users.parquet``
(``user_id`` plus profile fields as str), ``ground_truth.parquet`` (synthetic, when asked) and ``stats.json``.

Sources (``ingest.source`` in params.yaml) and the choices made where the papers and the issue are silent:

- ``movielens-100k`` (default): the RecBole atomic files ``ml-100k.{inter,user,item}`` in the folder ``path``
  (default ``data/raw/ml-100k``), put there by the DVC stage ``fetch`` (``python -m components.ingest fetch``) from the ``recbole==1.2.1`` wheel (SHA-256 of the wheel and
  of each file checked; recbole is never installed). Every rating is one implicit interaction (ratings are
  dropped, as MIND/ComiRec/UMI treat behaviours as implicit feedback). Category = the movie's first listed
  genre (``unknown`` when it has none). User profile: ``gender``, ``occupation`` and ``age``; by default
  ``age`` is bucketed into the 7 MovieLens-1M age groups (``<18``, ``18-24``, ..., ``56+``), which is how
  UMI's MovieLens experiments see age (a categorical profile field; UMI section 3.1 discretises continuous
  features) and avoids ~60 sparse raw-age values; ``age_groups: false`` keeps the raw age. The zip code is
  dropped (hundreds of near-unique values, no use as a profile embedding at this size).
- ``grouplens``: the original GroupLens ``ml-100k.zip`` or a folder holding ``u.data`` (tab-separated),
  ``u.user`` and ``u.item`` (``|``-separated, latin-1, 19 genre flags in ``u.genre`` order). Same choices as
  above, so both give the same canonical tables up to the title text. A zip is checked entry by entry first:
  any entry that would land outside the extraction folder (absolute path, ``..``, symlink) rejects the archive.
- ``synthetic``: :mod:`components.synthetic` (planted interests, ground truth), streamed in chunks.
- ``csv`` / ``parquet``: a user's own log; ``columns`` maps canonical names onto the file's column names
  (``behavior`` and ``category`` optional). CSV must have a header (tab-separated if the name ends in
  ``.tsv``), timestamps must be numeric seconds (parquet timestamp columns are converted, naive = UTC;
  fractional seconds are floored). Ids may be strings or integers (formatted in decimal). Items get the
  item's most frequent category (ties: smallest string), ``unknown`` without a category column; users get
  only ``user_id``.
- ``amazon-books``: the McAuley ratings CSV ``user,item,rating,timestamp`` (no header; every rating is an
  interaction, as in ComiRec) plus the metadata file (one JSON or Python-literal dict per line with ``asin``
  and ``categories``, a list of category paths; ``.gz`` accepted). Primary category = the first non-root
  level of the first path under ``Books`` (e.g. ``Literature & Fiction``): about 30 coarse categories, which
  suits ComiRec's category diversity. (ComiRec's released preprocessing, THUDM/ComiRec
  ``preprocess/category.py``, took the leaf of the first path, ``categories[0][-1]``; the coarse level is
  our choice.) Items without metadata or without a ``Books`` path get ``unknown``.
- ``taobao``: ``UserBehavior.csv`` (``user,item,category,behavior,timestamp``, no header); only ``pv``
  (click) rows are kept, as in ComiRec; an item's category is its most frequent one among its clicks
  (ComiRec's script keeps the last one seen; in this data set an item has one category anyway).

Ingest does not filter, deduplicate or sort: validation checks the tables, split filters and orders them.

``ingest.path`` is the one input of every source that reads one (never null, so ``dvc.yaml`` can name it as the
ingest stage's dependency through templating: editing the file re-runs ingest). Its default is the folder the
``fetch`` stage fills with MovieLens-100K; the sources that read a user's own file refuse that default.
"""
from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Literal, Optional

from components.config import ParamsError, from_dict, load_params, section
from components.io import DataError, atomic_dir, atomic_path, cli_main, file_digest, read_table, write_json
from components.synthetic import AGE_GROUPS, SyntheticConfig
from components import synthetic

Source = Literal["movielens-100k", "grouplens", "synthetic", "csv", "parquet", "amazon-books", "taobao"]
DEFAULT_RAW = Path("data/raw/ml-100k")
NEEDS_PATH = ("grouplens", "csv", "parquet", "amazon-books", "taobao")
UNKNOWN = "unknown"            # category of an item whose source gives none (the contract wants non-empty)

# MovieLens-100K as shipped in the recbole 1.2.1 wheel (hashes computed once from the PyPI wheel).
RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_ML100K_DIR = "recbole/dataset_example/ml-100k/"
ML100K_FILES = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
VERIFIED = ".verified"

# GroupLens u.genre order: the 19 flags at the end of each u.item line.
ML_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
             "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
             "War", "Western")
TAOBAO_COLUMNS = ("user_id", "item_id", "category", "behavior", "timestamp")
AMAZON_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
AMAZON_ROOT = "Books"


@dataclass(frozen=True)
class ColumnMapping:
    """``ingest.columns``: canonical name -> column name in a ``csv``/``parquet`` source."""

    user_id: str = "user_id"                 # column holding the user id
    item_id: str = "item_id"                 # column holding the item id
    timestamp: str = "timestamp"             # column holding seconds since the epoch (numeric or timestamp type)
    behavior: Optional[str] = None           # optional behaviour type column (kept as ``behavior``)
    category: Optional[str] = None           # optional item category column (items table derives from it)


@dataclass(frozen=True)
class IngestConfig:
    """``ingest`` in params.yaml."""

    source: Source = "movielens-100k"        # which reader (see the module docstring)
    path: Path = DEFAULT_RAW                 # the input: movielens-100k folder (fetched), grouplens zip/folder,
                                             # csv/parquet/amazon-books/taobao file; a DVC dependency of ingest
    meta_path: Optional[Path] = None         # amazon-books: metadata file (asin + categories per line)
    age_groups: bool = True                  # movielens/grouplens: age as MovieLens-1M age groups, else raw
    columns: ColumnMapping = field(default_factory=ColumnMapping)      # csv/parquet column mapping
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # synthetic generator settings

    def __post_init__(self) -> None:
        if self.source in NEEDS_PATH and Path(self.path) == DEFAULT_RAW:
            raise ValueError(f"ingest.path must name the input file or folder for source '{self.source}' "
                             f"(it is still the MovieLens default {DEFAULT_RAW})")
        if self.source == "amazon-books" and self.meta_path is None:
            raise ValueError("ingest.meta_path is required for source 'amazon-books'")


# --------------------------------------------------------------------------------------------------------
# run: source -> canonical tables
# --------------------------------------------------------------------------------------------------------

def run(cfg: IngestConfig, out_dir: Path, *, seed: int) -> dict:
    """Read ``cfg.source`` and write the canonical tables into ``out_dir`` atomically.

    Args:
        cfg: the ``ingest`` params section.
        out_dir: output folder; replaced only if everything succeeded.
        seed: used by the synthetic source only.

    Returns:
        The stats also written to ``stats.json`` (counts of users, items, categories, interactions, the
        timestamp range, the profile fields and the source).

    Raises:
        DataError: unusable input, naming the file, the column and a few rows.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        if cfg.source == "synthetic":
            stats = synthetic.write(cfg.synthetic, tmp, seed=seed)
            stats["profile_fields"] = list(synthetic.PROFILE_FIELDS)
        else:
            inter, items, users = READERS[cfg.source](cfg)
            stats = _write_canonical(inter, items, users, tmp)
        stats["source"] = cfg.source
        write_json(tmp / "stats.json", stats)
    return stats


def _write_canonical(inter, items, users, out: Path) -> dict:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pq.write_table(inter, out / "interactions.parquet")
    pq.write_table(items, out / "items.parquet")
    pq.write_table(users, out / "users.parquet")
    return {"interactions": inter.num_rows, "users": users.num_rows, "items": items.num_rows,
            "categories": pc.count_distinct(items["category"]).as_py(),
            "timestamp_min": pc.min(inter["timestamp"]).as_py(),
            "timestamp_max": pc.max(inter["timestamp"]).as_py(),
            "profile_fields": [c for c in users.column_names if c != "user_id"]}


# --- column normalisation (pyarrow, vectorised; errors name file, column and rows) ------------------------

def _bad_rows(mask, values, limit: int = 5) -> list:
    """(row, value) pairs where ``mask`` is true (0-based data rows), the first ``limit`` of them."""
    import pyarrow.compute as pc

    idx = pc.indices_nonzero(mask)
    rows = [(i, values[i].as_py()) for i in idx.slice(0, limit).to_pylist()]
    if len(idx) > limit:
        rows.append(f"... {len(idx)} rows in all")
    return rows


def _ids(arr, path, column: str):
    """Ids as non-empty strings; integers are formatted, nulls and empty strings are errors."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type) or pa.types.is_dictionary(arr.type):
        arr = pc.cast(arr, pa.string())
    if not pa.types.is_string(arr.type):
        if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
            raise DataError(f"ids must be strings or integers, got {arr.type}", path=path, column=column)
        if pa.types.is_floating(arr.type):
            frac = pc.invert(pc.equal(arr, pc.floor(arr)))          # also true for NaN and inf
            frac = pc.or_(frac, pc.invert(pc.is_finite(arr)))
            if pc.any(frac).as_py():
                raise DataError("non-integer ids", path=path, column=column, rows=_bad_rows(frac, arr))
            arr = pc.cast(arr, pa.int64())
        arr = pc.cast(arr, pa.string())
    missing = pc.fill_null(pc.or_(pc.is_null(arr), pc.equal(pc.utf8_length(arr), 0)), True)
    if pc.any(missing).as_py():
        raise DataError("missing (null or empty) ids", path=path, column=column, rows=_bad_rows(missing, arr))
    return pc.cast(arr, pa.string())


def _timestamps(arr, path, column: str):
    """Seconds since the epoch as int64: integers as is, floats floored, numeric strings parsed,
    timestamp-typed columns converted; anything else (or a null) is an error naming the rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if arr.null_count:
        raise DataError("missing timestamps", path=path, column=column, rows=_bad_rows(pc.is_null(arr), arr))
    if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
        arr = pc.cast(arr, pa.string())
    t = arr.type
    if pa.types.is_timestamp(t):                          # a timezone-naive timestamp is read as UTC
        return pc.cast(pc.cast(arr, pa.timestamp("s", tz=t.tz), safe=False), pa.int64())
    if pa.types.is_string(t):
        stripped = pc.utf8_trim_whitespace(arr)
        try:
            return pc.cast(stripped, pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        try:
            arr = pc.cast(stripped, pa.float64())
            t = arr.type
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            import pandas as pd

            parsed = pd.to_numeric(pd.Series(stripped.to_numpy(zero_copy_only=False)), errors="coerce")
            bad = pa.array(parsed.isna().to_numpy())
            raise DataError("non-numeric timestamps (need seconds since the epoch)", path=path, column=column,
                            rows=_bad_rows(bad, arr)) from None
    if pa.types.is_integer(t):
        return pc.cast(arr, pa.int64())
    if pa.types.is_floating(t):
        finite = pc.is_finite(arr)
        if not pc.all(finite).as_py():
            raise DataError("non-finite timestamps", path=path, column=column,
                            rows=_bad_rows(pc.invert(finite), arr))
        return pc.cast(pc.floor(arr), pa.int64())
    raise DataError(f"timestamps must be numeric seconds or a timestamp type, got {t}", path=path,
                    column=column)


def _strings(arr):
    """Any column as strings (nulls kept)."""
    import pyarrow as pa

    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    return arr if pa.types.is_string(arr.type) else arr.cast(pa.string())


def _interactions(user, item, ts, path, names: dict, behavior=None):
    """The canonical interactions table from raw columns (``names`` = the source's column names)."""
    import pyarrow as pa

    cols = {"user_id": _ids(user, path, names["user_id"]), "item_id": _ids(item, path, names["item_id"]),
            "timestamp": _timestamps(ts, path, names["timestamp"])}
    if behavior is not None:
        cols["behavior"] = _strings(behavior)
    table = pa.table(cols)
    if table.num_rows == 0:
        raise DataError("no interactions", path=path)
    return table


def _items_from_interactions(item_ids, categories=None):
    """One row per item; its most frequent non-empty category (ties: smallest), ``unknown`` if none."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if categories is None:
        ids = pc.unique(item_ids)
        return pa.table({"item_id": ids, "category": pa.repeat(UNKNOWN, len(ids))}).sort_by("item_id")
    cat = _strings(categories)
    cat = pc.if_else(pc.fill_null(pc.equal(pc.utf8_length(cat), 0), True), UNKNOWN, cat)
    counts = pa.table({"item_id": item_ids, "category": cat}).group_by(["item_id", "category"]) \
        .aggregate([([], "count_all")]).to_pandas()
    counts["is_unknown"] = counts["category"] == UNKNOWN         # a real category beats a missing one
    first = counts.sort_values(["item_id", "is_unknown", "count_all", "category"],
                               ascending=[True, True, False, True]).drop_duplicates("item_id")
    return pa.table({"item_id": pa.array(first["item_id"].to_numpy(), pa.string()),
                     "category": pa.array(first["category"].to_numpy(), pa.string())})


def _users_from_interactions(user_ids):
    import pyarrow as pa
    import pyarrow.compute as pc

    return pa.table({"user_id": pc.unique(user_ids)}).sort_by("user_id")


# --- CSV streaming ------------------------------------------------------------------------------------------

def _read_csv(path: Path, *, names: Iterable[str] | None, wanted: Iterable[str], delimiter: str = ",",
              keep: Callable | None = None, encoding: str = "utf8"):
    """Read the ``wanted`` columns of a (possibly compressed) CSV as strings, streaming.

    ``names`` gives the column names of a header-less file. ``keep(batch) -> bool mask`` filters rows
    while streaming, so only the kept rows are ever held. Returns a ``pyarrow.Table``.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=path)
    if path.stat().st_size == 0:
        raise DataError("empty file", path=path)
    wanted = list(wanted)
    read_opts = pacsv.ReadOptions(column_names=list(names) if names else None, encoding=encoding,
                                  block_size=1 << 24)
    parse_opts = pacsv.ParseOptions(delimiter=delimiter, quote_char=False if delimiter == "\t" else '"')
    try:
        with pa.input_stream(str(path), compression="detect") as raw:
            header = pacsv.open_csv(raw, read_options=read_opts, parse_options=parse_opts).schema.names
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"not a readable CSV file ({exc})", path=path) from None
    missing = [c for c in wanted if c not in header]
    if missing:
        raise DataError(f"missing required column(s) {missing}; found {header}", path=path, column=missing[0])
    convert = pacsv.ConvertOptions(include_columns=wanted, column_types={c: pa.string() for c in wanted},
                                   strings_can_be_null=True, quoted_strings_can_be_null=False)
    batches, schema = [], None
    try:
        with pa.input_stream(str(path), compression="detect") as raw:
            reader = pacsv.open_csv(raw, read_options=read_opts, parse_options=parse_opts,
                                    convert_options=convert)
            schema = reader.schema
            for batch in reader:
                if keep is not None:
                    batch = batch.filter(keep(batch))
                batches.append(batch)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"not a readable CSV file ({exc})", path=path) from None
    table = pa.Table.from_batches(batches, schema=schema)
    if table.num_rows == 0:
        raise DataError("no data rows", path=path)
    return table


# --- MovieLens-100K (RecBole atomic files, GroupLens files) -------------------------------------------------

def _read_atomic(path: Path, required: Iterable[str]):
    """A RecBole atomic file (tab-separated, header ``name:type``) as a DataFrame of strings."""
    import pandas as pd

    if not path.is_file():
        raise DataError("file not found (run `python -m components.ingest fetch` or `make data`)", path=path)
    if path.stat().st_size == 0:
        raise DataError("empty file", path=path)
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3, encoding="utf-8")
    df.columns = [c.split(":", 1)[0] for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"missing required column(s) {missing}; found {list(df.columns)}", path=path,
                        column=missing[0])
    return df


def _age_values(age, path: Path, grouped: bool):
    """Ages as strings: MovieLens-1M groups (``<18``, ``18-24``, ... ``56+``) or the raw number."""
    import numpy as np
    import pandas as pd

    num = pd.to_numeric(age, errors="coerce")
    bad = num.isna() & (age.astype(str).str.len() > 0)
    if bad.any():
        raise DataError("non-numeric ages", path=path, column="age",
                        rows=list(zip(np.flatnonzero(bad.to_numpy())[:5].tolist(), age[bad].head(5))))
    if not grouped:
        return num.map(lambda v: "" if pd.isna(v) else str(int(v))).astype(str)
    edges = np.array([18, 25, 35, 45, 50, 56])              # MovieLens-1M README: group lower bounds
    idx = np.searchsorted(edges, num.fillna(-1).to_numpy(), side="right")
    out = np.asarray(AGE_GROUPS, dtype=object)[idx]
    out[num.isna().to_numpy()] = ""
    return pd.Series(out, index=age.index).astype(str)


def _movielens_tables(inter, users, items, user_path, item_path, age_groups: bool):
    """Canonical tables from DataFrames of strings (shared by the RecBole and GroupLens readers)."""
    import pyarrow as pa

    users = users.copy()
    users["age"] = _age_values(users["age"], user_path, age_groups)
    items_t = pa.table({"item_id": _ids(pa.array(items["item_id"]), item_path, "item_id"),
                        "category": pa.array(items["category"], pa.string()),
                        "title": pa.array(items["title"], pa.string()),
                        "genres": pa.array(items["genres"], pa.string())})
    users_t = pa.table({"user_id": _ids(pa.array(users["user_id"]), user_path, "user_id"),
                        **{f: pa.array(users[f].astype(str), pa.string())
                           for f in ("gender", "age", "occupation")}})
    return inter, items_t, users_t


def read_movielens_100k(cfg: IngestConfig):
    """The RecBole ml-100k atomic files in the folder ``cfg.path``."""
    import pyarrow as pa

    raw = Path(cfg.path)
    ip, up, tp = raw / "ml-100k.inter", raw / "ml-100k.user", raw / "ml-100k.item"
    inter = _read_atomic(ip, ["user_id", "item_id", "timestamp"])
    users = _read_atomic(up, ["user_id", "age", "gender", "occupation"])
    items = _read_atomic(tp, ["item_id", "movie_title", "class"])
    names = {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp"}
    inter_t = _interactions(pa.array(inter["user_id"]), pa.array(inter["item_id"]),
                            pa.array(inter["timestamp"]), ip, names)
    genres = items["class"].str.split()
    items = items.assign(title=items["movie_title"], genres=genres.str.join("|"),
                         category=genres.map(lambda g: g[0] if g else UNKNOWN))
    return _movielens_tables(inter_t, users, items, up, tp, cfg.age_groups)


def read_grouplens(cfg: IngestConfig):
    """The original GroupLens ml-100k: a ``.zip`` (extracted safely) or a folder with u.data/u.user/u.item."""
    path = Path(cfg.path)
    if not path.exists():
        raise DataError("file not found", path=path)
    if path.is_dir():
        return _read_grouplens_dir(_grouplens_folder(path), cfg.age_groups)
    with tempfile.TemporaryDirectory(prefix="grouplens-") as tmp:
        safe_extract(path, Path(tmp), wanted=("u.data", "u.user", "u.item"))
        return _read_grouplens_dir(_grouplens_folder(Path(tmp)), cfg.age_groups)


def _grouplens_folder(root: Path) -> Path:
    for cand in (root, root / "ml-100k", *sorted(p.parent for p in root.rglob("u.data"))):
        if (cand / "u.data").is_file():
            return cand
    raise DataError("no u.data found (expected u.data, u.user, u.item)", path=root)


def _read_grouplens_dir(folder: Path, age_groups: bool):
    import pandas as pd
    import pyarrow as pa

    def table(name: str, sep: str, ncols: int, encoding: str):
        p = folder / name
        if not p.is_file():
            raise DataError("file not found", path=p)
        if p.stat().st_size == 0:
            raise DataError("empty file", path=p)
        df = pd.read_csv(p, sep=sep, header=None, dtype=str, keep_default_na=False, quoting=3,
                         encoding=encoding)
        if df.shape[1] != ncols:
            raise DataError(f"expected {ncols} {sep!r}-separated fields per line, found {df.shape[1]}", path=p)
        return df, p

    inter, ip = table("u.data", "\t", 4, "latin-1")
    users, up = table("u.user", "|", 5, "latin-1")
    items, tp = table("u.item", "|", 5 + len(ML_GENRES), "latin-1")
    names = {"user_id": "u.data field 1 (user id)", "item_id": "u.data field 2 (item id)",
             "timestamp": "u.data field 4 (timestamp)"}
    inter_t = _interactions(pa.array(inter[0]), pa.array(inter[1]), pa.array(inter[3]), ip, names)
    users = users.rename(columns={0: "user_id", 1: "age", 2: "gender", 3: "occupation"})
    flags = items.iloc[:, 5:].to_numpy() == "1"                        # (items, 19) genre flags
    genre_names = pd.Series([[g for g, f in zip(ML_GENRES, row) if f] for row in flags], index=items.index)
    items = pd.DataFrame({"item_id": items[0], "title": items[1], "genres": genre_names.str.join("|"),
                          "category": genre_names.map(lambda g: g[0] if g else UNKNOWN)})
    return _movielens_tables(inter_t, users, items, up, tp, age_groups)


# --- user logs, Amazon Books, Taobao ------------------------------------------------------------------------

def read_csv_log(cfg: IngestConfig):
    """A user's CSV log mapped by ``cfg.columns``."""
    path = Path(cfg.path)
    delimiter = "\t" if path.name.endswith((".tsv", ".tsv.gz")) else ","
    return _log_tables(_read_csv(path, names=None, wanted=_mapped(cfg), delimiter=delimiter), cfg, path)


def read_parquet_log(cfg: IngestConfig):
    """A user's parquet log mapped by ``cfg.columns``."""
    path = Path(cfg.path)
    table = read_table(path, columns=_mapped(cfg))
    if table.num_rows == 0:
        raise DataError("no data rows", path=path)
    return _log_tables(table, cfg, path)


def _mapped(cfg: IngestConfig) -> list[str]:
    c = cfg.columns
    return list(dict.fromkeys(x for x in (c.user_id, c.item_id, c.timestamp, c.behavior, c.category) if x))


def _log_tables(table, cfg: IngestConfig, path: Path):
    c = cfg.columns
    names = {"user_id": c.user_id, "item_id": c.item_id, "timestamp": c.timestamp}
    inter = _interactions(table[c.user_id], table[c.item_id], table[c.timestamp], path, names,
                          behavior=table[c.behavior] if c.behavior else None)
    items = _items_from_interactions(inter["item_id"], table[c.category] if c.category else None)
    return inter, items, _users_from_interactions(inter["user_id"])


def read_taobao(cfg: IngestConfig):
    """Taobao ``UserBehavior.csv``: keep the ``pv`` (click) rows only."""
    import pyarrow.compute as pc

    path = Path(cfg.path)
    table = _read_csv(path, names=TAOBAO_COLUMNS, wanted=TAOBAO_COLUMNS,
                      keep=lambda b: pc.fill_null(pc.equal(b.column("behavior"), "pv"), False))
    if table.num_rows == 0:
        raise DataError("no 'pv' (click) rows", path=path, column="behavior")
    names = {"user_id": "user (field 1)", "item_id": "item (field 2)", "timestamp": "timestamp (field 5)"}
    inter = _interactions(table["user_id"], table["item_id"], table["timestamp"], path, names,
                          behavior=table["behavior"])
    items = _items_from_interactions(inter["item_id"], table["category"])
    return inter, items, _users_from_interactions(inter["user_id"])


def read_amazon_books(cfg: IngestConfig):
    """Amazon Books ratings CSV (``user,item,rating,timestamp``) + McAuley metadata with categories."""
    import pyarrow as pa
    import pyarrow.compute as pc

    path = Path(cfg.path)
    table = _read_csv(path, names=AMAZON_COLUMNS, wanted=("user_id", "item_id", "timestamp"))
    names = {"user_id": "user (field 1)", "item_id": "item (field 2)", "timestamp": "timestamp (field 4)"}
    inter = _interactions(table["user_id"], table["item_id"], table["timestamp"], path, names)
    ids = pc.unique(inter["item_id"]).sort()
    cats = read_amazon_categories(Path(cfg.meta_path), set(ids.to_pylist()))
    items = pa.table({"item_id": ids, "category": pa.array([cats.get(i, UNKNOWN) for i in ids.to_pylist()],
                                                          pa.string())})
    return inter, items, _users_from_interactions(inter["user_id"])


_ASIN = re.compile(r"""["']asin["']\s*:\s*["']([^"']+)["']""")


def read_amazon_categories(path: Path, wanted: set[str] | None = None) -> dict[str, str]:
    """``asin -> primary category`` from a McAuley metadata file (JSON or Python-literal dict per line).

    Only lines whose ``asin`` is in ``wanted`` are fully parsed (the metadata is mostly long descriptions).
    """
    if not path.is_file():
        raise DataError("file not found", path=path)
    if path.stat().st_size == 0:
        raise DataError("empty file", path=path)
    opener = gzip.open if path.name.endswith(".gz") else open
    out: dict[str, str] = {}
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.strip()
            if not line:
                continue
            m = _ASIN.search(line)
            if m is not None and wanted is not None and m.group(1) not in wanted:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                try:
                    rec = ast.literal_eval(line)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    raise DataError("line is neither JSON nor a Python dict literal", path=path,
                                    rows=[f"line {lineno}: {line[:80]}"]) from None
            if not isinstance(rec, dict) or "asin" not in rec:
                raise DataError("record without 'asin'", path=path, column="asin",
                                rows=[f"line {lineno}: {line[:80]}"])
            out[str(rec["asin"])] = primary_book_category(rec.get("categories"))
    return out


def primary_book_category(paths: Any) -> str:
    """First non-root level of the first category path under ``Books``; ``unknown`` if there is none."""
    if isinstance(paths, list):
        for p in paths:
            if isinstance(p, list) and len(p) >= 2 and p[0] == AMAZON_ROOT and str(p[1]).strip():
                return str(p[1]).strip()
    return UNKNOWN


READERS: dict[str, Callable] = {
    "movielens-100k": read_movielens_100k,
    "grouplens": read_grouplens,
    "csv": read_csv_log,
    "parquet": read_parquet_log,
    "amazon-books": read_amazon_books,
    "taobao": read_taobao,
}


# --------------------------------------------------------------------------------------------------------
# Safe archives and the verified MovieLens-100K download
# --------------------------------------------------------------------------------------------------------

def unsafe_entries(zf: zipfile.ZipFile, dest: Path) -> list[str]:
    """Names of entries that would land outside ``dest``: absolute, drive-letter, ``..``, or symlinks."""
    root = dest.resolve()
    bad = []
    for info in zf.infolist():
        name = info.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        is_link = stat.S_ISLNK(info.external_attr >> 16)
        target = (root / name).resolve()
        if (name.startswith("/") or ".." in parts or re.match(r"^[A-Za-z]:", name) or is_link
                or not target.is_relative_to(root)):
            bad.append(info.filename)
    return bad


def safe_extract(archive: Path, dest: Path, *, wanted: Iterable[str]) -> dict[str, Path]:
    """Extract the entries whose base name is in ``wanted`` into ``dest``.

    The whole archive is checked first: one entry escaping ``dest`` rejects it (DataError), even if it is
    not wanted. Returns ``{base name: extracted path}``.
    """
    wanted = set(wanted)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"not a readable zip archive ({exc})", path=archive) from None
    with zf:
        bad = unsafe_entries(zf, dest)
        if bad:
            raise DataError("archive entries escape the target folder; refusing to extract", path=archive,
                            rows=bad)
        found: dict[str, Path] = {}
        for info in zf.infolist():
            base = PurePosixPath(info.filename.replace("\\", "/")).name
            if base in wanted and not info.is_dir():
                if base in found:
                    raise DataError(f"archive holds '{base}' twice", path=archive)
                target = dest / base                       # flattened: no archive-controlled sub-paths
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                found[base] = target
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(f"archive lacks {missing}", path=archive)
    return found


def _files_verified(dest: Path, files: dict[str, str]) -> bool:
    return all((dest / n).is_file() and file_digest(dest / n) == h for n, h in files.items())


def extract_verified(wheel: Path, dest: Path, *, files: dict[str, str] = ML100K_FILES,
                     prefix: str = RECBOLE_ML100K_DIR) -> None:
    """Copy ``prefix + name`` for each of ``files`` out of ``wheel`` into ``dest``, checking each SHA-256.

    Only these exact member names are read; each is written to a temp file and renamed once its hash
    matches, so ``dest`` never holds an unverified file under the final name.
    """
    dest.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"not a readable wheel ({exc})", path=wheel) from None
    with zf:
        for name, expected in files.items():
            try:
                info = zf.getinfo(prefix + name)
            except KeyError:
                raise DataError(f"wheel lacks {prefix + name}", path=wheel) from None
            with atomic_path(dest / name) as tmp:
                h = hashlib.sha256()
                with zf.open(info) as src, open(tmp, "wb") as out:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        h.update(chunk)
                        out.write(chunk)
                if h.hexdigest() != expected:
                    raise DataError(f"SHA-256 mismatch for {prefix + name}: got {h.hexdigest()}, "
                                    f"expected {expected}", path=wheel)


def fetch(dest: Path, cache_dir: Path = Path(".cache/downloads")) -> dict:
    """Put the verified MovieLens-100K files into ``dest`` and write ``dest/.verified``.

    Offline and idempotent once done: files already present with the right hashes are kept as they are.
    Otherwise the recbole wheel is taken from ``cache_dir`` or fetched with ``pip download --no-deps``
    (never installed), its SHA-256 checked against :data:`RECBOLE_WHEEL_SHA256`, and the three files
    extracted and checked one by one. A cached wheel with the wrong hash is an error (not silently replaced).

    Returns:
        ``{"dest", "status": "present" | "cached wheel" | "downloaded", "files": {name: sha256}}``;
        ``.verified`` records the wheel and the file hashes.
    """
    dest, cache_dir = Path(dest), Path(cache_dir)
    status = "present"
    if not _files_verified(dest, ML100K_FILES):
        wheel = cache_dir / RECBOLE_WHEEL
        status = "cached wheel"
        if not wheel.is_file():
            _pip_download(cache_dir)
            status = "downloaded"
            if not wheel.is_file():
                raise DataError(f"pip download did not produce {RECBOLE_WHEEL}", path=cache_dir)
        digest = file_digest(wheel)
        if digest != RECBOLE_WHEEL_SHA256:
            raise DataError(f"SHA-256 mismatch: got {digest}, expected {RECBOLE_WHEEL_SHA256} "
                            "(delete the file to download it again)", path=wheel)
        extract_verified(wheel, dest)
    record = {"source": f"{RECBOLE_REQUIREMENT} wheel ({RECBOLE_WHEEL}, sha256 {RECBOLE_WHEEL_SHA256})",
              "files": dict(ML100K_FILES)}
    write_json(dest / VERIFIED, record)           # rewritten every time: `make` compares its mtime
    return {"dest": str(dest), "status": status, "files": dict(ML100K_FILES)}


def _pip_download(cache_dir: Path) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", RECBOLE_REQUIREMENT, "-d", str(cache_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        raise DataError(f"`pip download {RECBOLE_REQUIREMENT}` failed (exit {proc.returncode}): {tail[0]}",
                        path=cache_dir)


# --------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------

def load_config(params: dict) -> tuple[IngestConfig, int]:
    """``(IngestConfig, seed)`` from a loaded params dict (strict: typos raise ParamsError)."""
    cfg = section(params, "ingest", IngestConfig)
    seed = params.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ParamsError(f"seed: expected an integer, got {seed!r}")
    return cfg, seed


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m components.ingest",
                                description="Fetch MovieLens-100K, or read a source into the canonical tables. "
                                            "Without a subcommand, `run` is assumed.")
    sub = p.add_subparsers(dest="command")
    f = sub.add_parser("fetch", help="download (pip) and verify the recbole ml-100k files")
    f.add_argument("--dest", type=Path, default=Path("data/raw/ml-100k"), help="target folder")
    f.add_argument("--cache", type=Path, default=Path(".cache/downloads"), help="wheel download cache")
    f.add_argument("--params", type=Path, default=None,
                   help="params file: fetch only when ingest.source is movielens-100k (else write a note)")
    r = sub.add_parser("run", help="write the canonical tables for params `ingest.source`")
    r.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    r.add_argument("--out", type=Path, default=Path("data/canonical"), help="output folder")
    r.add_argument("--seed", type=int, default=None, help="override params `seed`")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("fetch", "run", "-h", "--help"):
        argv = ["run", *argv]
    args = _parser().parse_args(argv)

    def body() -> None:
        if args.command == "fetch":
            if args.params is not None:
                cfg, _ = load_config(load_params(args.params))
                if cfg.source != "movielens-100k":
                    # the DVC stage still needs its output folder; the data itself is not needed
                    with atomic_dir(args.dest) as tmp:
                        (tmp / "README").write_text(f"MovieLens-100K not fetched: ingest.source is {cfg.source}\n")
                    print(f"ingest fetch: nothing to fetch for source {cfg.source} ({args.dest} holds a note)")
                    return
            res = fetch(args.dest, args.cache)
            print(f"ingest fetch: {res['dest']} verified ({res['status']})")
            return
        cfg, seed = load_config(load_params(args.params))
        stats = run(cfg, args.out, seed=args.seed if args.seed is not None else seed)
        print(f"ingest: {stats['source']} -> {args.out}: {stats['interactions']} interactions, "
              f"{stats['users']} users, {stats['items']} items, {stats['categories']} categories")

    cli_main(body)


if __name__ == "__main__":
    main()
