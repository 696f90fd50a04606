"""Streamed validation of interactions (chunks of rows) against a whole-table GX validation.

``validate.run`` validates interactions.parquet in chunks (``chunk_rows``); these tests run it with chunks of
50 rows over the 120-row good tables of test_validate.py, so that a bad value sits in a *later* chunk or a
duplicate spans two chunks, and compare the report with the reference: the same suites validated by GX on
the whole tables in memory (what validate did before streaming).
"""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from components import validate
from components.validate import ValidateConfig, ValidationFailed
from tests.components.test_validate import CFG, _set, good_frames, write_tables

CHUNK = 50  # 120 rows -> chunks of rows 0-49, 50-99, 100-119


def whole_table_reference(frames, cfg, tmp_path):
    """{(suite, type, column): (success, element_count, unexpected_count, observed, partial)} from GX on the
    whole frames (one batch per suite, as validate ran before it streamed)."""
    import great_expectations as gx

    context = validate._context(tmp_path / "ref_docs")
    source = context.data_sources.add_pandas("ref")
    batches, suites, _ = validate._build_suites(cfg, frames)
    out = {}
    for name, expectations in suites.items():
        bd = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole")
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        vd = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=bd, suite=suite))
        result = vd.run(batch_parameters={"dataframe": batches[name]}, result_format=dict(validate.RESULT_FORMAT))
        for r in result.results:
            kw = r.expectation_config.kwargs
            res = r.result or {}
            out[(name, r.expectation_config.type, kw.get("column", kw.get("column_A")))] = (
                bool(r.success), res.get("element_count"), res.get("unexpected_count"),
                validate._plain(res.get("observed_value")), validate._plain(res.get("partial_unexpected_list")))
    return out


def streamed(frames, cfg, tmp_path, chunk_rows=CHUNK):
    data = write_tables(frames, tmp_path / "canonical")
    try:
        report = validate.run(cfg, data, tmp_path / "validation", chunk_rows=chunk_rows)
        summary = None
    except ValidationFailed as exc:
        report, summary = exc.result, str(exc)
    table = {(e["suite"], e["expectation_type"], e["kwargs"].get("column", e["kwargs"].get("column_A"))):
             (e["success"], e["element_count"], e["unexpected_count"], e["observed_value"],
              e["partial_unexpected_list"]) for e in report["expectations"]}
    return report, table, summary


def _dup_last(d):
    return pd.concat([d, d.iloc[[9]]], ignore_index=True)  # row 120 repeats row 9 (chunks 0 and 2)


CASES = {
    "good": (lambda f: f, {}),
    "timestamp out of range in the last chunk": (
        lambda f: {**f, "interactions": _set(f["interactions"], 110, "timestamp", 42)}, {}),
    "null user in the second chunk": (
        lambda f: {**f, "interactions": _set(f["interactions"], 77, "user_id", None)}, {}),
    "duplicate across chunks": (lambda f: {**f, "interactions": _dup_last(f["interactions"])}, {}),
    "duplicate within the allowed share": (lambda f: {**f, "interactions": _dup_last(f["interactions"])},
                                           {"max_duplicate_share": 2 / 121 + 1e-6}),
    "fewer rows than min_rows": (lambda f: f, {"min_rows": 121}),
    "unknown item in the last chunk": (
        lambda f: {**f, "interactions": _set(f["interactions"], 115, "item_id", "9999")}, {}),
    "timestamp float64": (lambda f: {**f, "interactions": f["interactions"].astype({"timestamp": "float64"})}, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_streamed_report_equals_whole_table_validation(case, tmp_path):
    mutate, overrides = CASES[case]
    cfg = ValidateConfig(**{**vars(CFG), **overrides})
    frames = mutate(good_frames())
    ref = whole_table_reference(mutate(good_frames()), cfg, tmp_path)
    _, got, _ = streamed(frames, cfg, tmp_path)
    assert got.keys() == ref.keys()
    for key in ref:
        r_success, r_count, r_unexpected, r_observed, r_partial = ref[key]
        g_success, g_count, g_unexpected, g_observed, g_partial = got[key]
        assert (g_success, g_count, g_unexpected) == (r_success, r_count, r_unexpected), key
        assert g_observed == r_observed, key
        if key[1] == validate.DUPLICATES and r_partial:
            assert sorted(map(json.dumps, g_partial)) == sorted(map(json.dumps, r_partial)), key
        else:
            assert g_partial == r_partial, key


def test_bad_value_in_a_later_chunk_is_named_with_its_row_and_column(tmp_path):
    frames = good_frames()
    frames["interactions"] = _set(_set(frames["interactions"], 110, "timestamp", 42), 104, "timestamp", 7)
    report, got, summary = streamed(frames, CFG, tmp_path)
    assert report["success"] is False
    entry = got[("interactions", "expect_column_values_to_be_between", "timestamp")]
    assert entry[:3] == (False, 120, 2) and entry[4] == [7, 42]
    line = next(x for x in summary.splitlines() if "expect_column_values_to_be_between" in x)
    assert "column='timestamp'" in line
    assert re.search(r"2 of 120 rows unexpected .*e\.g\. 7, 42 \(rows 104, 110\)", line), line
    # Data Docs hold the first chunk's GX validation and every failing chunk's, named by their rows
    runs = {p.name for p in (tmp_path / "validation" / "docs" / "validations" / "interactions").iterdir()}
    assert runs == {"rows_0-49", "rows_100-119"}


def test_result_json_has_the_same_shape_as_a_single_batch_run(tmp_path):
    """Keys at every level equal between chunks of 50 rows and one chunk (the whole table in one batch)."""
    frames = good_frames()
    frames["interactions"] = _set(frames["interactions"], 110, "timestamp", 42)
    small, _, _ = streamed(frames, CFG, tmp_path / "a")
    whole, _, _ = streamed(frames, CFG, tmp_path / "b", chunk_rows=10**6)

    def shape(x):
        if isinstance(x, dict):
            return {k: shape(v) for k, v in x.items() if k != "data_dir"}
        if isinstance(x, list):
            return [shape(v) for v in x]
        return type(x).__name__

    assert shape(small) == shape(whole)
    assert set(small) == {"success", "statistics", "tables", "data_dir", "params", "great_expectations",
                          "result_format", "docs_index", "skipped", "expectations"}
    assert set(small["expectations"][0]) == {"suite", "table", "expectation_type", "kwargs", "success",
                                             "observed_value", "element_count", "unexpected_count",
                                             "unexpected_percent", "partial_unexpected_list", "error"}
    assert small["tables"]["interactions"] == {"rows": 120,
                                               "columns": ["user_id", "item_id", "timestamp", "behavior"]}


def test_hash_collisions_only_add_candidates_gx_decides(tmp_path, monkeypatch):
    """Every row hashing alike makes every row a duplicate candidate; GX still counts exactly the copies."""
    monkeypatch.setattr(validate, "_row_hash", lambda table, *a: np.zeros(table.num_rows, np.uint64))
    frames = good_frames()
    frames["interactions"] = _dup_last(frames["interactions"])
    _, got, _ = streamed(frames, CFG, tmp_path)
    assert got[("interactions", validate.DUPLICATES, None)][:3] == (False, 121, 2)
    _, got, _ = streamed(good_frames(), CFG, tmp_path / "good")
    assert got[("interactions", validate.DUPLICATES, None)][:3] == (True, 120, 0)


WORDS = ["", "a", "b", "ab", "ba", "abc", None, "a", "ab", "héllo", None, "1234567", "12345678",
         "a much longer identifier", "a much longer identifier", "1234567", "7654321"]


@pytest.mark.parametrize("fn", ["_string_hash", "_column_hash"])
def test_string_hash_equal_strings_equal_hashes(fn):
    h = getattr(validate, fn)(pa.array(WORDS))
    by_word = {}
    for w, v in zip(WORDS, h.tolist()):
        by_word.setdefault(w, set()).add(v)
    assert all(len(v) == 1 for v in by_word.values())  # equal (and null) values hash alike
    assert len({next(iter(v)) for v in by_word.values()}) == len(by_word)  # these distinct ones differ
    # a value hashes the same in any chunk: a slice (non-zero offset) hashes its own rows alike
    sliced = getattr(validate, fn)(pa.array(WORDS).slice(3, 11))
    assert sliced.tolist() == h[3:14].tolist()


def test_short_strings_pack_exactly_and_unpack():
    arr = pa.array(["", "a", "1234567", "ab", "héllo", "12345678"], pa.large_string())
    packed, short = validate._short_strings(arr)
    assert short.tolist() == [True, True, True, True, True, False]  # "héllo" is 6 bytes, the last 8
    assert validate._unpack_short(packed[short]).to_pylist() == ["", "a", "1234567", "ab", "héllo"]


def test_distinct_ids_over_chunks_match_pyarrow_unique():
    acc = validate._Distinct()
    chunks = [["u1", "u2", None, "a long user identifier"], ["u2", "u3", "a long user identifier", "x" * 7]]
    for c in chunks:
        acc.add(pa.array(c), pd.Series(c, dtype="str"))
    got = sorted(acc.values().to_pylist())
    assert got == sorted({v for c in chunks for v in c if v is not None})
    wrong = validate._Distinct()  # a wrongly typed key column is compared as text
    wrong.add(pa.array([5001, 5002, 5001]), pd.Series([5001, 5002, 5001]))
    assert sorted(wrong.values().to_pylist()) == ["5001", "5002"]
