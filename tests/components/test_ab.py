"""A/B: assignment shares and stability over many ids; the analysis command's figures against hand-computed ones."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import pytest

from components.ab import analyse, load_exposures, load_outcomes, main
from components.io import DataError
from components.serving import ABSpec
from test_evaluate import ROOT


@pytest.mark.parametrize("share", [0.1, 0.5, 0.73])
def test_assignment_share_within_one_percent_over_100k_ids_and_stable(share):
    spec = ABSpec(salt="ab-share", num_buckets=10_000, treatment_share=share)
    ids = [f"user-{i}" for i in range(100_000)]
    arms = [spec.assign(u) for u in ids]
    assert abs(arms.count("treatment") / len(ids) - share) <= 0.01
    assert [spec.assign(u) for u in ids[:5000]] == arms[:5000]  # stable per user


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def logs(tmp_path):
    """4 control users (2 convert), 5 treatment users (4 convert), one user in both arms (dropped), a click
    before the first exposure (not counted) and a click on an item not served (counted unless served-only)."""
    t0 = "2026-01-01T00:00:00+00:00"
    t1 = "2026-01-01T00:05:00+00:00"
    exp = []
    for u in ("c1", "c2", "c3", "c4"):
        exp.append({"user": u, "arm": "control", "bundle": "A", "time": t1, "items": ["x", "y"]})
    for u in ("t1", "t2", "t3", "t4", "t5"):
        exp.append({"user": u, "arm": "treatment", "bundle": "B", "time": t1, "items": ["x", "z"]})
    exp.append({"user": "t1", "arm": "treatment", "bundle": "B", "time": t1, "items": ["w"]})  # twice: one user
    exp.append({"user": "both", "arm": "control", "bundle": "A", "time": t1, "items": ["x"]})
    exp.append({"user": "both", "arm": "treatment", "bundle": "B", "time": t1, "items": ["x"]})
    out = [
        {"user": "c1", "time": "2026-01-01T00:06:00Z", "item": "x"},
        {"user": "c1", "time": "2026-01-01T00:07:00Z", "item": "y"},   # c1: 2 outcomes
        {"user": "c2", "time": "2026-01-01T00:06:00Z", "item": "q"},   # c2: not a served item
        {"user": "c3", "time": t0, "item": "x"},                       # before exposure: not counted
        {"user": "t1", "time": "2026-01-01T00:06:00Z", "item": "w"},   # served in t1's 2nd exposure
        {"user": "t2", "time": "2026-01-01T00:06:00Z", "item": "z"},
        {"user": "t3", "time": "2026-01-01T00:06:00Z", "item": "x"},
        {"user": "t3", "time": "2026-01-01T00:08:00Z", "item": "x"},
        {"user": "t4", "time": "2026-01-01T00:06:00Z", "item": "z"},
        {"user": "both", "time": "2026-01-01T00:06:00Z", "item": "x"},
        {"user": "never-exposed", "time": "2026-01-01T00:06:00Z", "item": "x"},
    ]
    return _write_jsonl(tmp_path / "exp.jsonl", exp), _write_jsonl(tmp_path / "out.jsonl", out), out


def _normal_ci(values, z=1.959963984540054):
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n), (mean - z * math.sqrt(var / n), mean + z * math.sqrt(var / n))


def test_conversion_per_arm_and_difference_match_a_hand_computation(logs):
    exp, out, _ = logs
    r = analyse(load_exposures(exp), load_outcomes(out), metric="conversion")
    control, treatment = [1, 1, 0, 0], [1, 1, 1, 1, 0]  # c3's click predates exposure; t5 never clicked
    for arm, values in (("control", control), ("treatment", treatment)):
        mean, se, ci = _normal_ci(values)
        assert r["arms"][arm]["users"] == len(values)
        assert r["arms"][arm]["mean"] == pytest.approx(mean)
        assert r["arms"][arm]["ci"] == pytest.approx(list(ci))
    (mc, sc, _), (mt, st, _) = _normal_ci(control), _normal_ci(treatment)
    se = math.sqrt(sc ** 2 + st ** 2)
    d = r["difference"]
    assert d["treatment_minus_control"] == pytest.approx(mt - mc)
    assert d["ci"] == pytest.approx([mt - mc - 1.959963984540054 * se, mt - mc + 1.959963984540054 * se])
    assert d["relative_lift"] == pytest.approx((mt - mc) / mc)
    assert r["users_in_both_arms"] == 1 and r["exposures"] == 12


def test_outcomes_per_user_served_only_and_parquet_outcomes(logs, tmp_path):
    exp, out, rows = logs
    pq = tmp_path / "out.parquet"
    pd.DataFrame(rows).to_parquet(pq, index=False)
    a = analyse(load_exposures(exp), load_outcomes(out), metric="outcomes_per_user")
    b = analyse(load_exposures(exp), load_outcomes(pq), metric="outcomes_per_user")
    assert a == b
    assert a["arms"]["control"]["mean"] == pytest.approx((2 + 1 + 0 + 0) / 4)
    assert a["arms"]["treatment"]["mean"] == pytest.approx((1 + 1 + 2 + 1 + 0) / 5)
    s = analyse(load_exposures(exp), load_outcomes(out), metric="outcomes_per_user", served_items_only=True)
    assert s["arms"]["control"]["mean"] == pytest.approx((2 + 0 + 0 + 0) / 4)  # c2's item q was not served
    assert s["arms"]["treatment"]["mean"] == pytest.approx((1 + 1 + 2 + 1 + 0) / 5)  # t1's w: 2nd exposure


def test_cli_prints_and_writes_the_report_and_rejects_bad_input(logs, tmp_path, capsys):
    exp, out, _ = logs
    main(["--exposures", str(exp), "--outcomes", str(out), "--out", str(tmp_path / "r.json")])
    printed = capsys.readouterr().out
    assert "treatment - control" in printed and "control:" in printed
    assert json.loads((tmp_path / "r.json").read_text())["arms"]["control"]["users"] == 4
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"user": "u", "arm": "blue", "time": 0}])
    with pytest.raises(DataError, match=r"bad.jsonl, column 'arm'"):
        load_exposures(bad)
    with pytest.raises(DataError, match=r"column 'user'"):
        load_outcomes(_write_jsonl(tmp_path / "o.jsonl", [{"who": "u"}]))
    with pytest.raises(DataError, match=r"column 'time'"):
        load_outcomes(_write_jsonl(tmp_path / "t.jsonl", [{"user": "u", "time": "yesterday-ish"}]))
    r = subprocess.run([sys.executable, "-m", "components.ab", "--exposures", str(bad), "--outcomes", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "column 'arm'" in r.stderr
