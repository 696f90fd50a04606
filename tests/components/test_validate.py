"""Tests of the validate step (Great Expectations 1.x over the canonical tables).

- Every expectation has a bad table that fails it, and only it (the good table passes): the suites built by
  ``validate._build_suites`` are run by real GX validation definitions in one shared ephemeral context,
  without Data Docs (rendering is most of a run's time).
- A few whole runs through ``validate.run`` / the CLI check result.json, the Data Docs, the summary of a
  failure, exit codes (1 = failed expectation, 2 = bad input or params), atomic outputs, and that GX neither
  opens a socket nor writes outside ``out_dir``.
The tables are tiny canonical tables (docs/CONTRACTS.md) built here.
"""
from __future__ import annotations

import itertools
import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components import validate
from components.config import ParamsError, from_dict, load_params, section
from components.io import DataError
from components.validate import ValidateConfig, ValidationFailed

REPO = Path(__file__).resolve().parents[2]
CFG = ValidateConfig(min_rows=100, timestamp_min=800_000_000, timestamp_max=1_000_000_000,
                     max_duplicate_share=0.0)
NUM_USERS, NUM_ITEMS, PER_USER = 12, 15, 10
T0 = 880_000_000

EXIST = "expect_column_to_exist"
OF_TYPE = "expect_column_values_to_be_of_type"
ROWS = "expect_table_row_count_to_be_between"
NOT_NULL = "expect_column_values_to_not_be_null"
BETWEEN = "expect_column_values_to_be_between"
DUPLICATES = "expect_compound_columns_to_be_unique"
UNIQUE = "expect_column_values_to_be_unique"
BLANK = "expect_column_values_to_not_match_regex"
FOREIGN_KEY = "expect_column_pair_values_to_be_equal"
ALL_SUITES = {"interactions", "items", "users", "interactions_item_refs", "interactions_user_refs"}
# GX suites in Data Docs: interactions is streamed, its row count and duplicate check run on derived batches
DOCS_SUITES = ALL_SUITES | {"interactions_row_count", "interactions_duplicates"}


def good_frames() -> dict[str, pd.DataFrame]:
    """Valid canonical tables: 12 users x 10 distinct items each (120 rows), 15 items, numeric-string ids."""
    users = [str(101 + u) for u in range(NUM_USERS)]
    items = [str(5001 + i) for i in range(NUM_ITEMS)]
    rows = [(users[u], items[(u + k) % NUM_ITEMS], T0 + 60 * (u * PER_USER + k))
            for u in range(NUM_USERS) for k in range(PER_USER)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).astype({"timestamp": "int64"})
    inter["behavior"] = "click"
    return {
        "interactions": inter,
        "items": pd.DataFrame({"item_id": items, "category": [("Drama", "Comedy", "Action")[i % 3]
                                                              for i in range(NUM_ITEMS)],
                               "title": [f"Movie {i}" for i in range(NUM_ITEMS)]}),
        "users": pd.DataFrame({"user_id": users, "gender": ["M", "F"] * (NUM_USERS // 2),
                               "age": [str(18 + u) for u in range(NUM_USERS)]}),
    }


def write_tables(frames: dict[str, pd.DataFrame], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in frames.items():
        df.to_parquet(folder / f"{name}.parquet", index=False)
    return folder


def test_good_tables_have_the_contract_dtypes():
    frames = good_frames()
    assert str(frames["interactions"]["user_id"].dtype) == "str"  # pandas 3
    assert str(frames["interactions"]["timestamp"].dtype) == "int64"
    assert not frames["interactions"].duplicated(["user_id", "item_id"]).any()


# --- every expectation against its bad table (shared GX context, no Data Docs) ---------------------------

@pytest.fixture(scope="module")
def check(tmp_path_factory):
    """``check(frames, cfg) -> (failed, examples, skipped)`` via real GX validation definitions.

    ``failed``: {(suite, expectation type, column)} of failed expectations; ``examples``: the same key ->
    GX's partial unexpected list (or observed value); ``skipped``: what ``_build_suites`` did not build.
    """
    import great_expectations as gx

    context = validate._context(tmp_path_factory.mktemp("docs_unused"))
    source = context.data_sources.add_pandas("cases")
    counter = itertools.count()
    # One asset per suite, reused: adding an asset re-serialises the whole context config (cost grows).
    batch_definitions = {}

    def _check(frames, cfg=CFG):
        batches, suites, skipped = validate._build_suites(cfg, frames)
        failed, examples = set(), {}
        for name, expectations in suites.items():
            tag = f"{name}_{next(counter)}"
            if name not in batch_definitions:
                batch_definitions[name] = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(
                    "whole")
            suite = context.suites.add(gx.ExpectationSuite(name=tag, expectations=expectations))
            definition = context.validation_definitions.add(
                gx.ValidationDefinition(name=tag, data=batch_definitions[name], suite=suite))
            result = definition.run(batch_parameters={"dataframe": batches[name]},
                                    result_format=dict(validate.RESULT_FORMAT))
            assert len(result.results) == len(expectations)
            for r in result.results:
                if not r.success:
                    kwargs = r.expectation_config.kwargs
                    key = (name, r.expectation_config.type, kwargs.get("column", kwargs.get("column_A")))
                    failed.add(key)
                    res = r.result or {}
                    examples[key] = res.get("partial_unexpected_list", res.get("observed_value"))
        return failed, examples, skipped

    return _check


def _set(df: pd.DataFrame, row: int, column: str, value) -> pd.DataFrame:
    df = df.copy()
    df.loc[row, column] = value
    return df


def _append(df: pd.DataFrame, **values) -> pd.DataFrame:
    return pd.concat([df, pd.DataFrame([values]).astype({k: df[k].dtype for k in values if k in df
                                                          and values[k] is not None})],
                     ignore_index=True)


def _mutate(table: str, fn):
    def apply(frames):
        frames[table] = fn(frames[table])
        return frames
    return apply


# (case id, mutation of the good tables, config overrides, expected failures {(suite, type, column)},
#  what GX shows for the first expected failure: values that must be among its partial unexpected list, or
#  the observed value of an aggregate expectation)
CASES = [
    ("interactions without timestamp", _mutate("interactions", lambda d: d.drop(columns="timestamp")), {},
     {("interactions", EXIST, "timestamp")}, None),
    ("interactions without user_id", _mutate("interactions", lambda d: d.drop(columns="user_id")), {},
     {("interactions", EXIST, "user_id")}, None),
    ("items without category", _mutate("items", lambda d: d.drop(columns="category")), {},
     {("items", EXIST, "category")}, None),
    ("users without user_id", _mutate("users", lambda d: d.drop(columns="user_id")), {},
     {("users", EXIST, "user_id")}, None),
    ("interaction user_id int64", _mutate("interactions", lambda d: d.astype({"user_id": "int64"})), {},
     {("interactions", OF_TYPE, "user_id")}, "int64"),
    ("items item_id int64", _mutate("items", lambda d: d.astype({"item_id": "int64"})), {},
     {("items", OF_TYPE, "item_id")}, None),
    ("timestamp float64", _mutate("interactions", lambda d: d.astype({"timestamp": "float64"})), {},
     {("interactions", OF_TYPE, "timestamp")}, "float64"),
    ("timestamp as text", _mutate("interactions", lambda d: d.astype({"timestamp": "str"})), {},
     {("interactions", OF_TYPE, "timestamp"), ("interactions", BETWEEN, "timestamp")}, None),
    ("behavior int64", _mutate("interactions", lambda d: d.assign(behavior=1)), {},
     {("interactions", OF_TYPE, "behavior")}, None),
    ("profile field int64", _mutate("users", lambda d: d.astype({"age": "int64"})), {},
     {("users", OF_TYPE, "age")}, None),
    ("null interaction user_id", _mutate("interactions", lambda d: _set(d, 5, "user_id", None)), {},
     {("interactions", NOT_NULL, "user_id")}, None),
    ("null interaction item_id", _mutate("interactions", lambda d: _set(d, 7, "item_id", None)), {},
     {("interactions", NOT_NULL, "item_id")}, None),
    ("timestamps out of range",
     _mutate("interactions", lambda d: _set(_set(d, 3, "timestamp", 799_999_999), 4, "timestamp", 1_000_000_001)),
     {}, {("interactions", BETWEEN, "timestamp")}, [799_999_999, 1_000_000_001]),
    ("exact duplicate row", _mutate("interactions", lambda d: pd.concat([d, d.iloc[[9]]], ignore_index=True)),
     {}, {("interactions", DUPLICATES, None)}, None),
    ("unknown item in interactions", _mutate("interactions", lambda d: _set(d, 11, "item_id", "9999")), {},
     {("interactions_item_refs", FOREIGN_KEY, "item_id")}, None),
    ("unknown user in interactions", _mutate("interactions", lambda d: _set(d, 12, "user_id", "777")), {},
     {("interactions_user_refs", FOREIGN_KEY, "user_id")}, None),
    ("duplicate item_id in items", _mutate("items", lambda d: _append(d, item_id="5003", category="Drama",
                                                                        title="again")), {},
     {("items", UNIQUE, "item_id")}, ["5003", "5003"]),
    ("null item_id in items", _mutate("items", lambda d: _append(d, item_id=None, category="Drama", title="x")),
     {}, {("items", NOT_NULL, "item_id")}, None),
    ("duplicate user_id in users", _mutate("users", lambda d: _append(d, user_id="104", gender="M", age="30")),
     {}, {("users", UNIQUE, "user_id")}, ["104", "104"]),
    ("null user_id in users", _mutate("users", lambda d: _append(d, user_id=None, gender="M", age="30")), {},
     {("users", NOT_NULL, "user_id")}, None),
    ("empty and blank categories",
     _mutate("items", lambda d: _set(_set(d, 2, "category", ""), 6, "category", "  ")), {},
     {("items", BLANK, "category")}, ["", "  "]),
    ("null category", _mutate("items", lambda d: _set(d, 4, "category", None)), {},
     {("items", NOT_NULL, "category")}, None),
    ("fewer interactions than min_rows", lambda f: f, {"min_rows": 121},
     {("interactions", ROWS, None)}, 120),
    ("empty items table", _mutate("items", lambda d: d.iloc[:0]), {},
     {("items", ROWS, None), ("interactions_item_refs", FOREIGN_KEY, "item_id")}, 0),
    ("empty users table", _mutate("users", lambda d: d.iloc[:0]), {},
     {("users", ROWS, None), ("interactions_user_refs", FOREIGN_KEY, "user_id")}, 0),
]


@pytest.mark.parametrize("mutate, overrides, expected, offending",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_bad_table_fails_exactly_its_expectation(check, mutate, overrides, expected, offending):
    cfg = ValidateConfig(**{**vars(CFG), **overrides})
    failed, examples, _ = check(mutate(good_frames()), cfg)
    assert failed == expected
    if offending is not None:
        shown = examples[next(iter(expected)) if len(expected) == 1 else sorted(expected, key=_order)[0]]
        if isinstance(offending, list):
            assert all(v in shown for v in offending), shown
        else:
            assert shown == offending


def _order(key):
    """Table suites before foreign-key suites: the 'first' expected failure of a case."""
    return (key[0] not in validate.TABLES, str(key))


def test_good_tables_pass_every_expectation_of_every_suite(check):
    failed, _, skipped = check(good_frames())
    assert failed == set()
    assert skipped == []


def test_foreign_key_examples_are_the_unknown_ids(check):
    frames = good_frames()
    frames["interactions"] = _set(_set(frames["interactions"], 11, "item_id", "9999"), 30, "item_id", "8888")
    failed, examples, _ = check(frames)
    key = ("interactions_item_refs", FOREIGN_KEY, "item_id")
    assert failed == {key}
    assert sorted(a for a, _ in examples[key]) == ["8888", "9999"]
    assert all(pd.isna(b) for _, b in examples[key])


def test_missing_column_lists_its_other_checks_as_skipped(check):
    frames = good_frames()
    frames["interactions"] = frames["interactions"].drop(columns="item_id")
    failed, _, skipped = check(frames)
    assert failed == {("interactions", EXIST, "item_id")}
    assert {(s["suite"], s["column"], s["kind"]) for s in skipped} == {
        ("interactions", "item_id", "missing_column"), ("interactions_item_refs", "item_id", "missing_column")}


def test_user_key_is_checked_only_when_users_have_a_profile(check):
    frames = good_frames()
    frames["interactions"] = _set(frames["interactions"], 12, "user_id", "777")
    frames["users"] = frames["users"][["user_id"]]
    failed, _, skipped = check(frames)
    assert failed == set()
    assert [s["kind"] for s in skipped] == ["no_profile"]


def test_duplicate_share_is_bounded_by_params(check):
    frames = good_frames()
    inter = frames["interactions"]
    frames["interactions"] = pd.concat([inter, inter.iloc[[9]]], ignore_index=True)  # 2 of 121 rows
    share = 2 / 121  # GX counts every copy of a duplicated row
    loose = ValidateConfig(**{**vars(CFG), "max_duplicate_share": share + 1e-6})
    tight = ValidateConfig(**{**vars(CFG), "max_duplicate_share": share - 1e-6})
    assert check(frames, loose)[0] == set()
    assert check(frames, tight)[0] == {("interactions", DUPLICATES, None)}


def test_timestamp_bounds_are_inclusive(check):
    ts = good_frames()["interactions"]["timestamp"]
    exact = ValidateConfig(**{**vars(CFG), "timestamp_min": int(ts.min()), "timestamp_max": int(ts.max())})
    inside = ValidateConfig(**{**vars(CFG), "timestamp_min": int(ts.min()) + 1, "timestamp_max": int(ts.max())})
    assert check(good_frames(), exact)[0] == set()
    assert check(good_frames(), inside)[0] == {("interactions", BETWEEN, "timestamp")}


def test_min_rows_is_inclusive(check):
    assert check(good_frames(), ValidateConfig(**{**vars(CFG), "min_rows": 120}))[0] == set()


def test_ingested_synthetic_tables_pass(check, tiny_synthetic):
    frames = {name: pd.read_parquet(tiny_synthetic / f"{name}.parquet") for name in validate.TABLES}
    failed, _, skipped = check(frames, ValidateConfig())
    assert failed == set()
    assert skipped == []


def test_reference_table_is_one_row_per_distinct_id():
    ids = pd.Series(["a", "b", "a", None, "c", "c"], dtype="str")
    keys = pd.Series(["c", "a", "z"], dtype="str")
    ref = validate._reference_table(ids, keys, "item_id", "items_item_id")
    assert ref["item_id"].tolist() == ["a", "b", "c"]
    assert [None if pd.isna(v) else v for v in ref["items_item_id"]] == ["a", None, "c"]
    assert str(ref["item_id"].dtype) == "str"
    # Wrongly typed ids are compared as text: 5001 matches "5001".
    ref = validate._reference_table(pd.Series([5001, 5002]), pd.Series(["5001"], dtype="str"), "k", "m")
    assert [None if pd.isna(v) else v for v in ref["m"]] == ["5001", None]


# --- whole runs: result.json, Data Docs, summary, atomicity, CLI ----------------------------------------

@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """One ``run`` on the good tables from an empty working directory, recording any socket connect."""
    root = tmp_path_factory.mktemp("good_run")
    data = write_tables(good_frames(), root / "canonical")
    out = root / "validation"
    cwd = root / "cwd"
    cwd.mkdir()
    attempts = []

    def refuse(sock, address, *args):
        attempts.append(address)
        raise OSError("network disabled in this test")

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        report = validate.run(CFG, data, out)
    return {"data": data, "out": out, "report": report, "attempts": attempts, "cwd": cwd, "root": root}


def bad_frames() -> dict[str, pd.DataFrame]:
    frames = good_frames()
    inter = _set(frames["interactions"], 11, "item_id", "9999")
    frames["interactions"] = _set(inter, 3, "timestamp", 42)
    frames["items"] = _set(frames["items"], 2, "category", "")
    return frames


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_run")
    data = write_tables(bad_frames(), root / "canonical")
    out = root / "validation"
    with pytest.raises(ValidationFailed) as info:
        validate.run(CFG, data, out)
    return {"data": data, "out": out, "exc": info.value}


def test_run_passes_and_result_json_is_the_returned_report(good_run):
    report = good_run["report"]
    assert report["success"] is True
    assert json.loads((good_run["out"] / "result.json").read_text()) == report
    assert {e["suite"] for e in report["expectations"]} == ALL_SUITES
    assert all(e["success"] for e in report["expectations"])
    stats = report["statistics"]
    assert stats == {"evaluated": len(report["expectations"]), "successful": len(report["expectations"]),
                     "unsuccessful": 0}
    assert report["tables"]["interactions"] == {"rows": 120,
                                                "columns": ["user_id", "item_id", "timestamp", "behavior"]}
    assert report["params"] == vars(CFG)
    by_type = {(e["suite"], e["expectation_type"], e["kwargs"].get("column")): e for e in report["expectations"]}
    rows = by_type[("interactions", ROWS, None)]
    assert rows["observed_value"] == 120 and rows["kwargs"]["min_value"] == CFG.min_rows
    assert by_type[("users", OF_TYPE, "gender")]["observed_value"] == "str"
    between = by_type[("interactions", BETWEEN, "timestamp")]
    assert (between["kwargs"]["min_value"], between["kwargs"]["max_value"]) == (CFG.timestamp_min,
                                                                                 CFG.timestamp_max)
    assert between["element_count"] == 120 and between["unexpected_count"] == 0


def test_gx_opens_no_socket_and_writes_only_out_dir(good_run):
    assert good_run["attempts"] == []
    assert list(good_run["cwd"].iterdir()) == []
    assert sorted(p.name for p in good_run["root"].iterdir()) == ["canonical", "cwd", "validation"]
    assert sorted(p.name for p in good_run["out"].iterdir()) == ["docs", "result.json"]
    # The batch-fingerprint switch is scoped to the checkpoint runs.
    from great_expectations.execution_engine import pandas_execution_engine

    assert pandas_execution_engine.HASH_THRESHOLD == 1e9


def test_data_docs_index_links_every_suite_validation_page(good_run):
    docs = good_run["out"] / "docs"
    index = (docs / "index.html").read_text()
    links = set(re.findall(r"(validations/[^'\"?]+\.html)", index))
    suites = {Path(link).parts[1] for link in links}
    assert suites == DOCS_SUITES
    for link in links:
        assert (docs / link).is_file(), link
    for suite in DOCS_SUITES:
        assert (docs / "expectations" / f"{suite}.html").is_file()
    # Built in a temporary folder then renamed: no link may point at that folder.
    assert ".validation.tmp-" not in index


def test_failed_run_writes_report_and_docs_then_raises(bad_run):
    out, exc = bad_run["out"], bad_run["exc"]
    report = json.loads((out / "result.json").read_text())
    assert report == exc.result
    assert report["success"] is False
    failed = {(e["suite"], e["expectation_type"], e["kwargs"].get("column", e["kwargs"].get("column_A"))): e
              for e in report["expectations"] if not e["success"]}
    assert set(failed) == {("interactions", BETWEEN, "timestamp"), ("items", BLANK, "category"),
                           ("interactions_item_refs", FOREIGN_KEY, "item_id")}
    assert report["statistics"]["unsuccessful"] == 3
    between = failed[("interactions", BETWEEN, "timestamp")]
    assert between["unexpected_count"] == 1 and between["partial_unexpected_list"] == [42]
    assert between["element_count"] == 120
    assert failed[("items", BLANK, "category")]["partial_unexpected_list"] == [""]
    assert failed[("interactions_item_refs", FOREIGN_KEY, "item_id")]["partial_unexpected_list"] == [["9999", None]]
    page = next((out / "docs" / "validations" / "interactions_item_refs").rglob("*.html")).read_text()
    assert "9999" in page


def test_failure_summary_names_each_failed_expectation_with_values(bad_run):
    lines = str(bad_run["exc"]).splitlines()
    assert lines[0].startswith("validation failed: 3 of ")
    assert str(bad_run["out"] / "result.json") in lines[0]
    body = "\n".join(lines[1:])
    assert len(lines) == 4
    assert re.search(r"interactions: expect_column_values_to_be_between\(column='timestamp'.*e\.g\. 42", body)
    assert re.search(r"items: expect_column_values_to_not_match_regex\(column='category'.*e\.g\. ''", body)
    assert re.search(r"interactions_item_refs: .*1 of 16 distinct item_id values of interactions are not in "
                     r"items, e\.g\. '9999'", body)


def test_unreadable_input_replaces_a_passing_report_with_a_failing_one(good_run, tmp_path):
    """A passing report never stays beside data that failed: unreadable tables leave result.json saying
    success: false with the error (and no temp folder behind)."""
    out = tmp_path / "validation"
    shutil.copytree(good_run["out"], out)
    assert json.loads((out / "result.json").read_text())["success"] is True
    data = tmp_path / "canonical"
    shutil.copytree(good_run["data"], data)
    (data / "users.parquet").unlink()
    with pytest.raises(DataError, match=r"users\.parquet.*file not found"):
        validate.run(CFG, data, out)
    report = json.loads((out / "result.json").read_text())
    assert report["success"] is False and "users.parquet" in report["error"]
    shutil.copy(good_run["data"] / "users.parquet", data / "users.parquet")
    (data / "items.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"items\.parquet.*not a readable parquet"):
        validate.run(CFG, data, out)
    report = json.loads((out / "result.json").read_text())
    assert report["success"] is False and "items.parquet" in report["error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["canonical", "validation"]  # no temp dir left


def _params(tmp_path: Path, **validate_section) -> Path:
    params = load_params(REPO / "params.yaml")
    params["validate"] = {**params["validate"], **validate_section}
    import yaml

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_cli_bad_params_and_missing_file_exit_2(good_run, tmp_path, capsys):
    typo = tmp_path / "typo"
    typo.mkdir()
    params = load_params(REPO / "params.yaml")
    params["validate"]["min_row"] = 5
    import yaml

    (typo / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as info:
        validate.main(["--params", str(typo / "params.yaml"), "--data", str(good_run["data"]),
                       "--out", str(tmp_path / "v")])
    assert info.value.code == 2
    assert "validate: unknown key(s) 'min_row'" in capsys.readouterr().err

    with pytest.raises(SystemExit) as info:
        validate.main(["--params", str(_params(tmp_path, timestamp_max=-1)), "--data", str(good_run["data"]),
                       "--out", str(tmp_path / "v")])
    assert info.value.code == 2
    assert "validate.timestamp_max" in capsys.readouterr().err

    with pytest.raises(SystemExit) as info:
        validate.main(["--params", str(REPO / "params.yaml"), "--data", str(tmp_path / "nowhere"),
                       "--out", str(tmp_path / "v")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "interactions.parquet: file not found" in err
    # no passing report beside data that cannot be read: the report says so
    assert json.loads((tmp_path / "v" / "result.json").read_text())["success"] is False


def test_cli_exit_0_on_success_and_1_with_the_summary_on_failure(good_run, bad_run, tmp_path, capsys):
    params = _params(tmp_path, **vars(CFG))
    validate.main(["--params", str(params), "--data", str(good_run["data"]), "--out", str(tmp_path / "ok")])
    assert capsys.readouterr().out.startswith("validation passed: ")
    assert json.loads((tmp_path / "ok" / "result.json").read_text())["success"] is True

    with pytest.raises(SystemExit) as info:
        validate.main(["--params", str(params), "--data", str(bad_run["data"]), "--out", str(tmp_path / "v")])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("validation failed: 3 of ")
    assert "Traceback" not in err and "e.g. '9999'" in err
    assert json.loads((tmp_path / "v" / "result.json").read_text())["success"] is False
    assert (tmp_path / "v" / "docs" / "index.html").is_file()


def test_cli_help_does_not_import_gx_or_pandas():
    """`--help` stays fast: GX (about 3 s to import) and pandas load only when a run starts."""
    code = ("import sys, components.validate as v; "
            "assert not {'great_expectations', 'pandas'} & set(sys.modules), sorted(sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "components.validate", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--data" in proc.stdout


def test_cli_process_exit_status_is_2_for_a_missing_table(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "components.validate", "--params", str(REPO / "params.yaml"),
                           "--data", str(tmp_path), "--out", str(tmp_path / "v")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'interactions.parquet'}: file not found"]


# --- config ---------------------------------------------------------------------------------------------

def test_params_yaml_section_loads():
    cfg = section(load_params(REPO / "params.yaml"), "validate", ValidateConfig)
    assert cfg.timestamp_min < 880_000_000 < cfg.timestamp_max  # MovieLens-100K (1997-98) is plausible
    assert 0.0 <= cfg.max_duplicate_share < 1.0


@pytest.mark.parametrize("bad, key", [
    ({"min_rows": 0}, "validate.min_rows"),
    ({"timestamp_min": 10, "timestamp_max": 10}, "validate.timestamp_max"),
    ({"max_duplicate_share": 1.0}, "validate.max_duplicate_share"),
    ({"max_duplicate_share": -0.1}, "validate.max_duplicate_share"),
    ({"min_rows": "100"}, "validate.min_rows"),
])
def test_config_rejects_bad_values_naming_the_key(bad, key):
    with pytest.raises(ParamsError, match=re.escape(key)):
        from_dict(ValidateConfig, bad, "validate")


def test_json_plain_values():
    assert validate._plain({"a": (np.int64(3), float("nan"), pd.NA, None, "x"), 1: np.float32(0.5)}) == {
        "a": [3, None, None, None, "x"], "1": 0.5}
