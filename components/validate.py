"""validate: Great Expectations (1.x) suites over the canonical tables, before anything downstream reads them.

Reads ``interactions.parquet``, ``items.parquet`` and ``users.parquet`` (docs/CONTRACTS.md) and runs one
expectation suite per table, plus one per foreign key, through an ephemeral GX context: a pandas data source
with one dataframe asset per table, a whole-dataframe batch definition fed with
``batch_parameters={"dataframe": df}``, a validation definition and a checkpoint per suite, and an
``UpdateDataDocsAction`` that renders the results into our own Data Docs site (``out_dir/docs``).

Outputs (``out_dir``, written to a temporary sibling and renamed into place):
- ``result.json``: overall success, and per expectation its suite, table, type, kwargs, success, observed
  value, unexpected count/share and a few unexpected values;
- ``docs/``: GX Data Docs, ``docs/index.html`` at a stable place.

A failed expectation still writes both (they are the report), then raises :class:`ValidationFailed` whose
message names each failed expectation with a few offending values; the CLI prints it and exits 1. A missing
or unreadable table is a ``DataError`` (exit 2) that replaces ``result.json`` with ``success: false`` and the
error: an earlier passing report never stays beside data that failed. A params typo is a ``ParamsError`` (exit 2)
raised before anything is written.

Choices the issue leaves open (also in the report):
- Result format ``BASIC`` with 5 partial unexpected values, not ``SUMMARY``: for pandas, ``SUMMARY`` also
  computes ``unexpected_index_list``, a Python list of *every* failing row index (50M Python ints when a
  whole column is off, e.g. timestamps in milliseconds); ``BASIC`` keeps only the counts and the first few
  values, so a failing run at benchmark scale costs what a passing one does.
- Foreign keys (interaction item in ``items``, interaction user in ``users``): GX has no cross-batch
  expectation for pandas, and ``ExpectColumnValuesToBeInSet`` would embed the whole key set (1M user ids) in
  the suite, result and Data Docs. Instead the distinct interaction ids are left-joined onto the key table
  (a small derived table: one row per distinct id, ``items_item_id`` null when unmatched) and GX checks
  ``ExpectColumnPairValuesToBeEqual(item_id, items_item_id)`` on it; the unexpected values are the
  offending ids. The user key is checked only when ``users`` has profile columns (CONTRACTS: a source
  without profiles may ship ``user_id`` alone, and then nothing downstream reads ``users``).
- Duplicates: ``ExpectCompoundColumnsToBeUnique`` over every interaction column with
  ``mostly = 1 - max_duplicate_share``. GX counts every copy of a duplicated row as unexpected (pandas
  ``duplicated(keep=False)``), so the share is "rows that belong to a group of exact duplicates".
- Column-level expectations are added only for columns that exist; a missing required column fails its
  ``ExpectColumnToExist`` and its other checks are listed under ``skipped`` in result.json, instead of
  erroring with GX's opaque exception. Every column of ``users`` other than ``user_id`` is a profile field
  and must be ``str``; extra item attributes are not type-checked (CONTRACTS leaves them open).
- ``category`` non-empty means not null and not matching ``^\\s*$`` (empty or whitespace only).

Scale: ``interactions`` is never held whole. It is read in chunks of :data:`CHUNK_ROWS` rows
(:func:`_validate_interactions`): GX validates every chunk against the column checks (exist, type, not
null, range), which are additive over rows, and the chunk results are combined (success when every chunk
succeeds, counts summed, the first offending values kept, and their global row numbers named in the failure
summary: a chunk runs with result format SUMMARY, whose index list is bounded by the chunk). The two checks
that are not additive run on derived batches, still through GX: the row count on a zero-column frame with
one row per interaction, exact duplicates on the candidate rows found by a streamed 64-bit row hash (equal
rows hash alike; a collision only adds a candidate that GX then finds unique), the ``mostly`` verdict taken
over all rows. The foreign-key tables use the distinct ids collected per chunk. Data Docs render the first
chunk's validation and every failing chunk's (a page costs ~2.5 s). Measured figures:
benchmarks/results/scale.json (before streaming, 50M interactions took ~95 s CPU and 5.5 GB peak, the
pandas duplicate check alone ~60 s). GX's per-batch md5 fingerprint is skipped
(:func:`_no_batch_fingerprint`).
Data Docs pages load their CSS/JS from public CDNs when opened (GX's templates): offline they are unstyled
but complete; nothing is fetched while validating.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from components.config import load_params, section, to_dict
from components.io import DataError, atomic_dir, cli_main, read_parquet, write_json

TABLES = ("interactions", "items", "users")
# Required columns and their pandas dtype names per table (pandas 3: string columns have dtype `str`).
REQUIRED = {
    "interactions": {"user_id": "str", "item_id": "str", "timestamp": "int64"},
    "items": {"item_id": "str", "category": "str"},
    "users": {"user_id": "str"},
}
OPTIONAL = {"interactions": {"behavior": "str"}, "items": {}, "users": {}}
# Foreign-key suites: suite name -> (key column of interactions, table that must hold every key).
REFERENCES = {"interactions_item_refs": ("item_id", "items"), "interactions_user_refs": ("user_id", "users")}
PARTIAL_UNEXPECTED_COUNT = 5  # offending values kept per expectation (result.json, Data Docs, summary)
RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": PARTIAL_UNEXPECTED_COUNT}
DOCS_SITE = "validation_docs"  # our Data Docs site; the ephemeral context's default `local_site` is not used
EXIT_VALIDATION_FAILED = 1
_RUN_TIME = _dt.datetime.now(_dt.timezone.utc)  # one run time for every GX run of this process
# Interaction rows per GX batch. A failing chunk is validated with result format SUMMARY (global row numbers of
# the first offending rows), whose cost is a Python list of the chunk's failing row indices: bounded by this.
CHUNK_ROWS = 4_000_000
CHUNK_RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": PARTIAL_UNEXPECTED_COUNT}
# Expectations of the interactions suite that are not additive over chunks: validated on derived batches.
ROW_COUNT = "expect_table_row_count_to_be_between"
DUPLICATES = "expect_compound_columns_to_be_unique"


@dataclass(frozen=True)
class ValidateConfig:
    """The ``validate`` section of params.yaml."""

    min_rows: int = 100  # minimum number of rows in interactions.parquet
    timestamp_min: int = 0  # smallest plausible interaction timestamp, seconds since the epoch (inclusive)
    timestamp_max: int = 4102444800  # largest plausible timestamp, inclusive (default 2100-01-01)
    max_duplicate_share: float = 0.0  # largest share of interaction rows that belong to a group of exact duplicates

    def __post_init__(self) -> None:
        if self.min_rows < 1:
            raise ValueError(f"validate.min_rows must be >= 1, got {self.min_rows}")
        if self.timestamp_max <= self.timestamp_min:
            raise ValueError(f"validate.timestamp_max ({self.timestamp_max}) must be greater than "
                             f"validate.timestamp_min ({self.timestamp_min})")
        if not 0.0 <= self.max_duplicate_share < 1.0:
            raise ValueError(f"validate.max_duplicate_share must be in [0, 1), got {self.max_duplicate_share}")


class ValidationFailed(Exception):
    """At least one expectation failed; ``str(exc)`` is the short human summary, ``exc.result`` the report."""

    def __init__(self, summary: str, result: dict[str, Any]):
        super().__init__(summary)
        self.result = result


def run(cfg: ValidateConfig, data_dir: Path, out_dir: Path, *, chunk_rows: int | None = None) -> dict[str, Any]:
    """Validate the canonical tables in ``data_dir``; write ``result.json`` and ``docs/`` into ``out_dir``.

    ``items`` and ``users`` are validated whole; ``interactions`` is streamed in chunks of ``chunk_rows``
    rows (see :func:`_validate_interactions`), so memory does not grow with the number of interactions.

    Args:
        cfg: thresholds (``validate`` section of params.yaml).
        data_dir: folder with interactions.parquet, items.parquet, users.parquet.
        out_dir: replaced atomically by the report folder.
        chunk_rows: interaction rows per GX batch (default :data:`CHUNK_ROWS`).

    Returns:
        The content of ``result.json`` (``success`` is True).

    Raises:
        DataError: a table is missing or not readable parquet (result.json then says success: false, with the error).
        ValidationFailed: an expectation failed (``result.json`` and ``docs/`` are written first).
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    try:
        source = _InteractionChunks(data_dir / "interactions.parquet", chunk_rows or CHUNK_ROWS)
        frames = {name: read_parquet(data_dir / f"{name}.parquet") for name in TABLES if name != "interactions"}
    except DataError as exc:
        # never leave an earlier passing report beside data that cannot even be read
        with atomic_dir(out_dir) as tmp:
            write_json(tmp / "result.json", {"success": False, "error": str(exc), "data_dir": str(data_dir)})
        raise
    # The suites depend on the columns only: interactions are represented by a zero-row frame of its columns.
    frames["interactions"] = source.empty_frame()
    batches, suites, skipped = _build_suites(cfg, frames)
    with atomic_dir(out_dir) as tmp:
        context = _context(tmp / "docs")
        inter, distinct = _validate_interactions(cfg, source, suites["interactions"], context,
                                                 [key for key, _ in REFERENCES.values()])
        for name in suites:  # foreign-key tables from the streamed distinct ids
            if name in REFERENCES:
                key, table = REFERENCES[name]
                batches[name] = _reference_table(distinct[key], frames[table][key], key, f"{table}_{key}")
        results = {"interactions": inter}
        results.update(_run_checkpoints({n: batches[n] for n in suites if n != "interactions"},
                                        {n: e for n, e in suites.items() if n != "interactions"}, context))
        frames["interactions"] = _RowsOnly(source.num_rows, [str(c) for c in frames["interactions"].columns])
        report = _report(cfg, data_dir, frames, suites, results, skipped)
        write_json(tmp / "result.json", report)
    if not report["success"]:
        by_id = {r.expectation_config.id: r for r in inter.results}
        rows = [by_id[e.id].rows for e in suites["interactions"]]  # the interactions suite comes first
        raise ValidationFailed(_summary(report, out_dir, rows), report)
    return report


# --- suites ---------------------------------------------------------------------------------------------

def _build_suites(cfg: ValidateConfig, frames: dict) -> tuple[dict, dict, list]:
    """Expectations per suite, the dataframe each suite runs on, and the checks not built.

    Returns:
        batches: suite name -> the dataframe it runs on;
        suites: suite name -> list of GX expectations, in report order (GX assigns each an ``id`` when
            the suite is added, which maps results back: GX returns them grouped by metric);
        skipped: [{"suite", "table", "column", "kind", "reason"}] for checks not built: ``missing_column``
            (the column's ExpectColumnToExist fails) or ``no_profile`` (users holds ``user_id`` only).
    """
    import great_expectations as gx

    E = gx.expectations
    suites: dict[str, list] = {}
    batches: dict[str, Any] = {}
    skipped: list[dict[str, str]] = []

    def column_checks(table: str, df, column: str, dtype: str, required: bool) -> list:
        present = column in df.columns
        out = [E.ExpectColumnToExist(column=column)] if required else []
        if not present:
            if required:
                skipped.append({"suite": table, "table": table, "column": column, "kind": "missing_column",
                                "reason": "column missing: its type/null/range checks were not run"})
            return out
        out.append(E.ExpectColumnValuesToBeOfType(column=column, type_=dtype))
        return out

    for table in TABLES:
        df = frames[table]
        exps: list = []
        columns = dict(REQUIRED[table])
        columns.update({c: t for c, t in OPTIONAL[table].items() if c in df.columns})
        if table == "users":  # every other column is a profile field, stored as str (CONTRACTS)
            columns.update({c: "str" for c in df.columns if c != "user_id"})
        for column, dtype in columns.items():
            exps += column_checks(table, df, column, dtype, required=column in REQUIRED[table])
        has = set(df.columns)
        min_rows = cfg.min_rows if table == "interactions" else 1
        exps.append(E.ExpectTableRowCountToBeBetween(min_value=min_rows))
        if table == "interactions":
            exps += [E.ExpectColumnValuesToNotBeNull(column=c) for c in ("user_id", "item_id", "timestamp")
                     if c in has]
            if "timestamp" in has:
                exps.append(E.ExpectColumnValuesToBeBetween(
                    column="timestamp", min_value=cfg.timestamp_min, max_value=cfg.timestamp_max))
            if len(df.columns) >= 2:  # GX needs two columns or more for a compound key
                exps.append(E.ExpectCompoundColumnsToBeUnique(
                    column_list=list(df.columns), mostly=1.0 - cfg.max_duplicate_share,
                    description=(f"Exact duplicate rows (all columns equal, every copy counted) are at most "
                                 f"{cfg.max_duplicate_share:.2%} of the rows.")))
        else:
            key = "item_id" if table == "items" else "user_id"
            if key in has:
                exps += [E.ExpectColumnValuesToNotBeNull(column=key), E.ExpectColumnValuesToBeUnique(column=key)]
            if table == "items" and "category" in has:
                exps += [E.ExpectColumnValuesToNotBeNull(column="category"),
                         E.ExpectColumnValuesToNotMatchRegex(column="category", regex=r"^\s*$")]
        suites[table] = exps
        batches[table] = df

    inter = frames["interactions"]
    for name, (key, table) in REFERENCES.items():
        if table == "users" and not [c for c in frames["users"].columns if c != "user_id"]:
            skipped.append({"suite": name, "table": "interactions", "column": key, "kind": "no_profile",
                            "reason": "users has no profile columns: interaction users are not matched to users"})
            continue
        if key not in inter.columns or key not in frames[table].columns:
            skipped.append({"suite": name, "table": "interactions", "column": key, "kind": "missing_column",
                            "reason": f"column missing: {key} of interactions could not be matched to {table}"})
            continue
        matched = f"{table}_{key}"
        suites[name] = [E.ExpectColumnPairValuesToBeEqual(
            column_A=key, column_B=matched,
            description=(f"Every {key} of interactions is present in {table}.{key} (one row per distinct "
                         f"interaction {key}; {matched} is null where the left join finds no match)."))]
        batches[name] = _reference_table(inter[key], frames[table][key], key, matched)
    return batches, suites, skipped


def _reference_table(ids, keys, key: str, matched: str):
    """One row per distinct non-null id of ``ids``; column ``matched`` = the id if it is in ``keys``, else null.

    ``ids`` is a pandas column or already the distinct values as a pyarrow string array.

    Computed with pyarrow (pandas 3 ``Series.isin`` on arrow strings is ~40x slower: 23 s vs 0.6 s for 1M
    ids in 1M keys). Ids are compared as strings, so a wrongly typed column (reported by its own type
    expectation) still gets a meaningful membership check instead of an exception.
    """
    import pandas as pd
    import pyarrow.compute as pc

    import pyarrow as pa

    distinct = ids.cast(pa.large_string()) if isinstance(ids, (pa.Array, pa.ChunkedArray)) else _unique_strings(ids)
    found = pc.is_in(distinct, value_set=_unique_strings(keys))
    return pd.DataFrame({key: pd.Series(distinct, dtype="str"),
                         matched: pd.Series(pc.if_else(found, distinct, None), dtype="str")})


def _unique_strings(column):
    """Distinct non-null values of a pandas column as a pyarrow large_string array.

    A `str` column is handed to pyarrow without a copy (pandas 3 stores it as arrow strings); any other
    dtype is first converted to text.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.dtype != "str":
        column = column.dropna().astype("str")
    return pc.unique(pa.array(column.array)).drop_null().cast(pa.large_string())


# --- running GX -----------------------------------------------------------------------------------------

def _context(docs_dir: Path):
    """An ephemeral GX context: in-memory stores, no analytics, no progress bars, Data Docs in ``docs_dir``."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        # init_temp_docs_sites=False: no default `local_site` writing into a temporary folder.
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    context.add_data_docs_site(DOCS_SITE, {
        "class_name": "SiteBuilder",
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
    })
    return context


@contextlib.contextmanager
def _no_batch_fingerprint() -> Iterator[None]:
    """Skip GX's pandas batch fingerprint for the duration of a checkpoint run.

    GX 1.24 hashes every pandas batch under 1 GB (``pd.util.hash_pandas_object`` row by row, ~3.6 s per
    million arrow-string rows here) only to store an md5 as a batch marker, which nothing we use reads;
    batches over 1 GB are never hashed. Lowering ``HASH_THRESHOLD`` to 0 makes every batch behave like a
    big one. The module global is restored afterwards; if a GX upgrade drops it, nothing is changed.
    """
    from great_expectations.execution_engine import pandas_execution_engine as engine

    saved = getattr(engine, "HASH_THRESHOLD", None)
    if saved is None:
        yield
        return
    engine.HASH_THRESHOLD = 0
    try:
        yield
    finally:
        engine.HASH_THRESHOLD = saved


def _checkpoint(context, name: str, expectations: list, result_format: dict):
    """A checkpoint validating a whole-dataframe batch of asset ``name`` against ``expectations``, Data Docs on."""
    import great_expectations as gx

    try:
        source = context.data_sources.get("canonical")
    except (KeyError, ValueError, LookupError):
        source = context.data_sources.add_pandas("canonical")
    batch_definition = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole")
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_definition,
                                                                            suite=suite))
    return context.checkpoints.add(gx.Checkpoint(
        name=f"validate_{name}", validation_definitions=[definition], result_format=dict(result_format),
        actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])]))


def _without_docs(context, checkpoint):
    """A twin of ``checkpoint`` (same validation definition and result format) that renders no Data Docs."""
    import great_expectations as gx

    return context.checkpoints.add(gx.Checkpoint(
        name=f"{checkpoint.name}_no_docs", validation_definitions=list(checkpoint.validation_definitions),
        result_format=checkpoint.result_format, actions=[]))


def _run_checkpoint(checkpoint, df, run_name: str = "validate"):
    """One GX run of ``checkpoint`` on the dataframe ``df``; its (only) validation result."""
    from great_expectations.core.run_identifier import RunIdentifier

    run_id = RunIdentifier(run_name=run_name, run_time=_RUN_TIME)
    with _no_batch_fingerprint():
        outcome = checkpoint.run(batch_parameters={"dataframe": df}, run_id=run_id)
    (result,) = outcome.run_results.values()
    return result


def _run_checkpoints(batches: dict, suites: dict, context) -> dict:
    """Run one checkpoint per suite (batch parameters are per checkpoint run); suite name -> GX result."""
    return {name: _run_checkpoint(_checkpoint(context, name, expectations, RESULT_FORMAT), batches[name])
            for name, expectations in suites.items()}


# --- streamed interactions ------------------------------------------------------------------------------

class _InteractionChunks:
    """interactions.parquet read as pandas chunks of ``chunk_rows`` rows, index = global row number."""

    def __init__(self, path: Path, chunk_rows: int):
        import pyarrow.parquet as pq

        from components.io import _check_parquet

        _check_parquet(path, None)
        self.path, self.chunk_rows = path, int(chunk_rows)
        self.file = pq.ParquetFile(path)
        self.num_rows = int(self.file.metadata.num_rows)

    def empty_frame(self):
        """Zero rows with the pandas columns and dtypes a whole-table read gives."""
        return self.file.schema_arrow.empty_table().to_pandas()

    def __iter__(self):
        """(first row, pyarrow table, pandas frame) per chunk, in file order."""
        import pandas as pd
        import pyarrow as pa

        start = 0
        try:
            for batch in self.file.iter_batches(batch_size=self.chunk_rows):
                table = pa.Table.from_batches([batch])
                df = table.to_pandas()
                df.index = pd.RangeIndex(start, start + len(df))
                yield start, table, df
                start += len(df)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"not a readable parquet file ({exc})", path=self.path) from None


class _RowsOnly:
    """Stands in for the interactions frame in :func:`_report`: its row count and column names."""

    def __init__(self, rows: int, columns: list[str]):
        self.rows, self.columns = rows, columns

    def __len__(self) -> int:
        return self.rows


@dataclass
class _Config:
    """The parts of a GX expectation configuration :func:`_report` reads."""

    id: str
    type: str
    kwargs: dict


@dataclass
class _Combined:
    """An expectation's result over all chunks, shaped like GX's ExpectationValidationResult for _report."""

    expectation_config: _Config
    success: bool
    result: dict
    exception_info: dict
    rows: list  # global row numbers of the first offending rows (for the summary)


@dataclass
class _Results:
    results: list


def _validate_interactions(cfg: ValidateConfig, source: _InteractionChunks, suite: list, context,
                           keys: list[str]) -> tuple[_Results, dict]:
    """Validate the interactions suite over the streamed chunks; the combined results and distinct keys.

    - Column checks (exist, type, not null, between) are additive over rows: GX validates every chunk
      (``CHUNK_RESULT_FORMAT``, global row index) and the results are combined: success when every chunk
      succeeds, counts summed, the first offending values and row numbers kept.
    - Row count: GX validates a zero-column frame with one row per interaction (a ``RangeIndex``: no data).
    - Exact duplicate rows: a 64-bit hash per row is streamed (:func:`_row_hash`); the rows whose hash occurs
      more than once are the only rows that can be duplicates (every copy of a duplicate has the same hash;
      a hash collision only adds a candidate). GX validates the compound-key uniqueness on those candidate
      rows and its unexpected count is the table's; the share and the ``mostly`` verdict are then taken over
      all rows, as GX computes them on a whole table.
    - The distinct values of ``keys`` (for the foreign-key tables) are collected along the way.
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    additive = [e for e in suite if e.expectation_type not in (ROW_COUNT, DUPLICATES)]
    by_type = {e.expectation_type: e for e in suite}
    # Checkpoints first: adding a suite gives its expectations their ids (results are matched by id).
    checkpoint = _checkpoint(context, "interactions", additive, CHUNK_RESULT_FORMAT) if additive else None
    derived = {t: _checkpoint(context, name, [by_type[t]], fmt) for t, name, fmt in (
        (ROW_COUNT, "interactions_row_count", RESULT_FORMAT),
        (DUPLICATES, "interactions_duplicates", CHUNK_RESULT_FORMAT)) if t in by_type}
    combined = {e.id: {"success": True, "result": {}, "errors": [], "rows": [], "type": e.expectation_type,
                       "kwargs": dict(e.configuration.kwargs)} for e in suite}
    # Data Docs (rendering is ~2.5 s per page) for the first chunk and for every chunk that fails
    quiet = _without_docs(context, checkpoint) if checkpoint is not None else None
    accumulators = {key: _Distinct() for key in keys}
    hashes = [] if DUPLICATES in by_type else None
    for start, table, df in source:
        if checkpoint is not None:
            run_name = f"rows_{start}-{start + len(df) - 1}"
            result = _run_checkpoint(quiet if start > 0 else checkpoint, df, run_name=run_name)
            if start > 0 and not result.success:
                result = _run_checkpoint(checkpoint, df, run_name=run_name)
            for r in result.results:
                _add_chunk(combined[r.expectation_config.id], r)
        packed: dict[str, tuple] = {}  # column -> (valid, filled array, packed, short), shared by both uses
        for key in keys:
            if key in df.columns:
                accumulators[key].add(table.column(key), df[key], packed)
        if hashes is not None:
            hashes.append(_row_hash(table, packed))
        del table, df, packed
    distinct = {key: acc.values() for key, acc in accumulators.items()}
    n = source.num_rows
    if ROW_COUNT in by_type:
        exp = by_type[ROW_COUNT]
        frame = pd.DataFrame(index=pd.RangeIndex(n))
        result = _run_checkpoint(derived[ROW_COUNT], frame)
        _add_chunk(combined[exp.id], result.results[0])
    if hashes is not None:
        exp = by_type[DUPLICATES]
        allh = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
        del hashes
        ordered = np.sort(allh)
        repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
        del ordered
        rows = np.flatnonzero(np.isin(allh, repeated)) if len(repeated) else np.zeros(0, np.int64)
        del allh
        candidates = _take_rows(source, rows)
        result = _run_checkpoint(derived[DUPLICATES], candidates)
        r = result.results[0]
        entry = combined[exp.id]
        _add_chunk(entry, r)
        res = entry["result"]
        unexpected = int(res.get("unexpected_count") or 0)
        mostly = exp.configuration.kwargs.get("mostly", 1.0)
        res["element_count"] = n
        res["missing_count"] = 0
        # GX's verdict on a whole table: (non-missing - unexpected) / non-missing >= mostly
        entry["success"] = not entry["errors"] and (n == 0 or (n - unexpected) / n >= mostly)
    results = [_Combined(_Config(i, c["type"], c["kwargs"]), c["success"], _finish(c["result"]),
                         {"exception_message": "; ".join(c["errors"])} if c["errors"] else {}, c["rows"])
               for i, c in combined.items()]
    return _Results(results), distinct


def _add_chunk(entry: dict, r) -> None:
    """Fold one chunk's GX result ``r`` into the running ``entry`` of its expectation."""
    entry["success"] = entry["success"] and bool(r.success)
    res = dict(r.result or {})
    acc = entry["result"]
    for k in ("element_count", "missing_count", "unexpected_count"):
        if res.get(k) is not None:
            acc[k] = acc.get(k, 0) + int(res[k])
    if "observed_value" in res and acc.get("observed_value") is None:
        acc["observed_value"] = res["observed_value"]
    if res.get("partial_unexpected_list"):
        acc.setdefault("partial_unexpected_list", [])
        acc["partial_unexpected_list"] = (acc["partial_unexpected_list"]
                                          + list(res["partial_unexpected_list"]))[:PARTIAL_UNEXPECTED_COUNT]
    elif "partial_unexpected_list" in res:
        acc.setdefault("partial_unexpected_list", [])
    idx = res.get("partial_unexpected_index_list") or []
    entry["rows"] = (entry["rows"] + [int(i) if not isinstance(i, dict) else i for i in idx])[
        :PARTIAL_UNEXPECTED_COUNT]
    exc = r.exception_info or {}
    messages = [v.get("exception_message") for v in exc.values() if isinstance(v, dict)]
    messages.append(exc.get("exception_message"))
    for m in messages:
        if m and m not in entry["errors"]:
            entry["errors"].append(m)


def _finish(acc: dict) -> dict:
    """unexpected_percent of the combined counts, as GX computes it (share of the non-missing values)."""
    if acc.get("unexpected_count") is not None and acc.get("element_count"):
        nonnull = acc["element_count"] - acc.get("missing_count", 0)
        acc["unexpected_percent"] = acc["unexpected_count"] / nonnull * 100 if nonnull > 0 else None
    return acc


def _take_rows(source: _InteractionChunks, rows):
    """The interaction rows at the sorted global positions ``rows``, as one frame indexed by row number."""
    import numpy as np
    import pandas as pd

    parts = []
    for start, _table, df in source:
        lo, hi = np.searchsorted(rows, [start, start + len(df)])
        if hi > lo:
            parts.append(df.iloc[rows[lo:hi] - start])
    if not parts:
        return source.empty_frame()
    return pd.concat(parts)


_MASK = (1 << 64) - 1


def _mix(x):
    """splitmix64 finaliser on a uint64 numpy array (wrap-around arithmetic)."""
    import numpy as np

    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _string_hash(arr):
    """64-bit hash of each string of a pyarrow string array (equal strings, equal hashes); null -> a constant.

    Hand-written because neither pyarrow nor numpy hashes variable-length strings vectorised, and pandas'
    ``hash_array`` goes through Python objects (~10x slower here). Each byte, offset by 1, is multiplied by
    a position-dependent odd constant and the products are summed per string (prefix sums), then mixed
    with the length. Collisions only add duplicate candidates, which GX then checks exactly.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = arr.cast(pa.large_string())
    valid = np.asarray(pc.is_valid(arr)) if arr.null_count else None
    arr = pc.fill_null(arr, "") if valid is not None else arr
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    base = offsets[0]
    lengths = np.diff(offsets)
    pos = np.arange(offsets[-1] - base, dtype=np.uint64) - np.repeat(
        (offsets[:-1] - base).astype(np.uint64), lengths)
    with np.errstate(over="ignore"):
        weights = _mix(pos + np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)
        terms = (data[base:offsets[-1]].astype(np.uint64) + np.uint64(1)) * weights
        prefix = np.concatenate([np.zeros(1, np.uint64), np.cumsum(terms, dtype=np.uint64)])
        h = prefix[offsets[1:] - base] - prefix[offsets[:-1] - base]
        h = _mix(h ^ ((lengths.astype(np.uint64) + np.uint64(1)) * np.uint64(0xD6E8FEB86659FD93)))
    if valid is not None:
        h[~valid] = np.uint64(_NULL_HASH)
    return h


_SHORT = 7  # strings of at most this many bytes are packed exactly into one uint64 (length in the top byte)
_NULL_HASH = 0x5BD1E9955BD1E995


def _offsets_data(arr):
    """(offsets int64 (N+1,), data uint8) of a large_string array, offsets into ``data``."""
    import numpy as np

    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] is not None else np.zeros(1, np.uint8)
    return offsets, data


def _short_strings(arr):
    """(packed, short) for a large_string array without nulls: ``short`` marks strings of <= ``_SHORT`` bytes,
    ``packed`` holds those bytes little-endian with the length in the top byte (an injective code: equal
    packed values are equal strings). Item and user ids are short; this costs ``_SHORT`` gathers per row
    instead of a hash table of strings (pyarrow ``unique``/``dictionary_encode``: ~5x slower here)."""
    import numpy as np

    offsets, data = _offsets_data(arr)
    lengths = np.diff(offsets)
    short = lengths <= _SHORT
    starts = offsets[:-1]
    packed = np.where(short, lengths, 0).astype(np.uint64) << np.uint64(56)
    last = max(len(data) - 1, 0)
    for k in range(int(min(_SHORT, lengths.max(initial=0)))):
        has = short & (lengths > k)
        byte = data[np.minimum(starts + k, last)].astype(np.uint64) << np.uint64(8 * k)
        packed |= np.where(has, byte, np.uint64(0))
    return packed, short


def _unpack_short(packed):
    """The large_string array of ``packed`` codes (inverse of :func:`_short_strings`)."""
    import numpy as np
    import pyarrow as pa

    packed = np.ascontiguousarray(packed, dtype=np.uint64)
    lengths = (packed >> np.uint64(56)).astype(np.int64)
    raw = packed.view(np.uint8).reshape(-1, 8)[:, :_SHORT]
    data = raw[np.arange(_SHORT)[None, :] < lengths[:, None]]
    offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths)])
    return pa.LargeStringArray.from_buffers(len(packed), pa.py_buffer(offsets.tobytes()),
                                            pa.py_buffer(data.tobytes()))


class _Distinct:
    """Distinct non-null values of one key column over the chunks, as text (see :func:`_unique_strings`)."""

    def __init__(self):
        self.packed, self.strings = [], []

    def add(self, column, series, cache: dict | None = None) -> None:
        """Add the values of ``column`` (pyarrow; ``series`` is the same column in pandas)."""
        import pandas as pd
        import pyarrow as pa
        import pyarrow.compute as pc

        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            self.strings.append(_unique_strings(series))  # a wrongly typed key: compared as text
            return
        valid, arr, packed, short = _packed_column(column, cache, series.name)
        keep = short if valid is None else short & valid
        self.packed.append(pd.unique(packed[keep]))
        if not keep.all():
            longer = ~short if valid is None else ~short & valid
            if longer.any():
                self.strings.append(pc.unique(arr.filter(pa.array(longer))))

    def values(self):
        import numpy as np
        import pandas as pd
        import pyarrow as pa
        import pyarrow.compute as pc

        packed = pd.unique(np.concatenate(self.packed)) if self.packed else np.zeros(0, np.uint64)
        parts = [_unpack_short(packed), *(s.cast(pa.large_string()) for s in self.strings)]
        out = pa.concat_arrays(parts)
        return pc.unique(out) if self.strings else out


def _packed_column(column, cache: dict | None = None, name=None):
    """(valid mask or None, null-filled large_string array, packed, short) of a string column, memoised in
    ``cache[name]`` (the duplicate hash and the distinct ids of a chunk read the same columns)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if cache is not None and name in cache:
        return cache[name]
    arr = column.cast(pa.large_string())
    valid = np.asarray(pc.is_valid(arr)) if arr.null_count else None
    arr = pc.fill_null(arr, "") if valid is not None else arr
    out = (valid, arr, *_short_strings(arr))
    if cache is not None:
        cache[name] = out
    return out


def _string_column_hash(arr, cache: dict | None = None, name=None):
    """64-bit hash per row of a string array, the same for equal strings in any chunk; null -> a constant."""
    import numpy as np
    import pyarrow as pa

    valid, arr, packed, short = _packed_column(arr, cache, name)
    with np.errstate(over="ignore"):
        h = _mix(packed ^ np.uint64(0x243F6A8885A308D3))
    if not short.all():
        rows = np.flatnonzero(~short)
        h[rows] = _string_hash(arr.take(pa.array(rows)))
    if valid is not None:
        h[~valid] = np.uint64(_NULL_HASH)
    return h


def _column_hash(column, cache: dict | None = None, name=None):
    """64-bit hash per value of one pyarrow column (equal values, equal hashes, in every chunk)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    t = column.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_temporal(t):
        values = column.to_pandas()
        return pd.util.hash_array(values.to_numpy(), categorize=False).astype(np.uint64)
    return _string_column_hash(column, cache, name)


def _row_hash(table, cache: dict | None = None):
    """64-bit hash per row over every column of ``table`` (equal rows, equal hashes)."""
    import numpy as np

    h = np.zeros(table.num_rows, np.uint64)
    with np.errstate(over="ignore"):
        for i, name in enumerate(table.column_names):
            h = _mix(h * np.uint64(0x100000001B3) + _column_hash(table.column(name), cache, name) + np.uint64(i))
    return h


# --- report ---------------------------------------------------------------------------------------------

def _report(cfg: ValidateConfig, data_dir: Path, frames: dict, suites: dict, results: dict,
            skipped: list) -> dict[str, Any]:
    """The machine-readable result (result.json), expectations in suite order."""
    expectations = []
    for name, suite in suites.items():
        by_id = {r.expectation_config.id: r for r in results[name].results}
        table = name if name in TABLES else "interactions"  # foreign-key suites describe interactions
        for exp in suite:
            r = by_id.get(exp.id)
            if r is None:  # every expectation of a suite yields exactly one result
                raise RuntimeError(f"GX returned no result for {exp.expectation_type} in suite {name}")
            res = dict(r.result or {})
            exc = r.exception_info or {}
            # Aggregate checks have exception_info keyed by metric; map checks a flat dict.
            messages = [v.get("exception_message") for v in exc.values() if isinstance(v, dict)]
            messages.append(exc.get("exception_message"))
            error = "; ".join(m for m in messages if m) or None
            kwargs = {k: v for k, v in r.expectation_config.kwargs.items() if k != "batch_id"}
            expectations.append(_plain({
                "suite": name,
                "table": table,
                "expectation_type": r.expectation_config.type,
                "kwargs": kwargs,
                "success": bool(r.success),
                "observed_value": res.get("observed_value"),
                "element_count": res.get("element_count"),
                "unexpected_count": res.get("unexpected_count"),
                "unexpected_percent": res.get("unexpected_percent"),
                "partial_unexpected_list": res.get("partial_unexpected_list"),
                "error": error,
            }))
    failed = sum(not e["success"] for e in expectations)
    return {
        "success": failed == 0,
        "statistics": {"evaluated": len(expectations), "successful": len(expectations) - failed,
                       "unsuccessful": failed},
        "tables": {t: {"rows": int(len(frames[t])), "columns": [str(c) for c in frames[t].columns]}
                   for t in TABLES},
        "data_dir": str(data_dir),
        "params": to_dict(cfg),
        "great_expectations": _gx_version(),
        "result_format": RESULT_FORMAT,
        "docs_index": "docs/index.html",
        "skipped": skipped,
        "expectations": expectations,
    }


def _gx_version() -> str:
    import great_expectations as gx

    return gx.__version__


def _plain(value: Any) -> Any:
    """JSON-ready copy: NaN/NA -> None, numpy scalars -> Python, tuples -> lists, anything else -> str."""
    import numpy as np
    import pandas as pd

    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _summary(report: dict[str, Any], out_dir: Path, rows: list | None = None) -> str:
    """Short human summary: one line per failed expectation with a few offending values.

    ``rows``: per expectation, in report order (may be shorter), the row numbers of its first offending
    interaction rows (0-based, in file order), named in its line.
    """
    rows = rows or []
    stats = report["statistics"]
    lines = [f"validation failed: {stats['unsuccessful']} of {stats['evaluated']} expectations "
             f"(report: {out_dir / 'result.json'}, Data Docs: {out_dir / report['docs_index']})"]
    for pos, e in enumerate(report["expectations"]):
        if e["success"]:
            continue
        args = ", ".join(f"{k}={v!r}" for k, v in e["kwargs"].items())
        line = f"  - {e['suite']}: {e['expectation_type']}({args})"
        if e["expectation_type"] == "expect_column_to_exist":
            line += f": column missing (found {report['tables'][e['table']]['columns']})"
        elif e["error"]:
            line += f": error: {e['error'].splitlines()[0][:200]}"
        elif e["unexpected_count"] is not None:
            values = e["partial_unexpected_list"] or []
            if e["suite"] in REFERENCES:
                key, table = REFERENCES[e["suite"]]
                values = [v[0] if isinstance(v, list) else v for v in values]  # the unmatched ids
                what = f"distinct {key} values of interactions are not in {table}"
            else:
                what = f"rows unexpected ({e['unexpected_percent'] or 0:.3g}%)"
            line += f": {e['unexpected_count']} of {e['element_count']} {what}"
            if values:
                line += f", e.g. {', '.join(repr(v) for v in values)}"
            if pos < len(rows) and rows[pos]:
                line += f" (rows {', '.join(str(r) for r in rows[pos])})"
        else:
            line += f": observed {e['observed_value']!r}"
        lines.append(line)
    for s in report["skipped"]:
        if s["kind"] == "missing_column":
            lines.append(f"  - {s['suite']}: not checked: {s['reason']} (column {s['column']!r})")
    return "\n".join(lines)


# --- CLI ------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m components.validate",
        description="Validate the canonical tables with Great Expectations; write result.json and Data Docs.")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (section `validate`)")
    parser.add_argument("--data", type=Path, default=Path("data/canonical"), help="folder of the canonical tables")
    parser.add_argument("--out", type=Path, default=Path("data/validation"), help="report folder (replaced)")
    args = parser.parse_args(argv)

    def body() -> None:
        cfg = section(load_params(args.params), "validate", ValidateConfig)
        try:
            report = run(cfg, args.data, args.out)
        except ValidationFailed as exc:
            print(str(exc), file=sys.stderr, flush=True)
            raise SystemExit(EXIT_VALIDATION_FAILED) from None
        stats = report["statistics"]
        print(f"validation passed: {stats['evaluated']} expectations "
              f"(report: {args.out / 'result.json'}, Data Docs: {args.out / report['docs_index']})")

    cli_main(body)


if __name__ == "__main__":
    main()
