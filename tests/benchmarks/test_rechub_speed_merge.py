"""benchmarks/rechub_speed.py --merge: re-measured models replace only their own rows of the results file, the
re-measurement is listed under ``updates`` and rendered in RESULTS.md, and runs of another setting are refused."""
from __future__ import annotations

import pytest
from benchmark_modules import load

SETTING = {"batch_size": 256, "num_negatives": 50, "dim": 64, "num_interests": 4, "max_len": 20, "steps": 150,
           "warmup": 20, "repeats": 1}


def _run(side, variant, threads, sps):
    return {"side": side, "variant": variant, "threads": threads, "samples_per_s": sps, "samples_per_cpu_s": sps,
            "warmup_s": 0.1}


def _results(rs, runs, variants, threads, **extra):
    return {"runs": runs, "summary": rs.summarise(runs, variants, threads), "setting": dict(SETTING),
            "peers": {v: "X" for v in variants}, "command": "python benchmarks/rechub_speed.py",
            "machine": {"load_average_before": [0.5], "load_average_after": [0.7], "seconds": 60.0,
                        "cpu_count": 2}, "target_factor": 2.0, **extra}


def test_merge_replaces_only_the_remeasured_rows_and_records_the_update():
    rs = load("rechub_speed")
    old = _results(rs, [_run("ours", "mind", 1, 30_000), _run("theirs", "mind", 1, 12_000),
                        _run("ours", "comirec_dr", 1, 15_000), _run("theirs", "comirec_dr", 1, 9_000),
                        _run("ours", "comirec_dr", 2, 25_000), _run("theirs", "comirec_dr", 2, 15_000)],
                   ["mind", "comirec_dr"], [1, 2], note="OLD-NOTE")
    new = _results(rs, [_run("ours", "comirec_dr", 1, 24_000), _run("theirs", "comirec_dr", 1, 10_000)],
                   ["comirec_dr"], [1], date="2026-11-29 18:00 UTC", note="NEW-NOTE",
                   command="python benchmarks/rechub_speed.py --models comirec_dr --threads 1 --merge")
    merged = rs.merge_results(old, new)
    assert merged["summary"]["mind"] == old["summary"]["mind"]  # untouched model
    assert merged["summary"]["comirec_dr"]["2"] == old["summary"]["comirec_dr"]["2"]  # untouched thread count
    assert merged["summary"]["comirec_dr"]["1"]["ratio"] == pytest.approx(2.4)
    assert merged["summary"]["comirec_dr"]["1"]["meets_target"] is True
    assert sorted((r["variant"], r["threads"], r["samples_per_s"]) for r in merged["runs"]) == [
        ("comirec_dr", 1, 10_000), ("comirec_dr", 1, 24_000), ("comirec_dr", 2, 15_000), ("comirec_dr", 2, 25_000),
        ("mind", 1, 12_000), ("mind", 1, 30_000)]
    assert merged["command"] == old["command"] and merged["note"] == "OLD-NOTE"
    (u,) = merged["updates"]
    assert u["variants"] == ["comirec_dr"] and u["threads"] == [1] and u["note"] == "NEW-NOTE"
    assert u["date"] == "2026-11-29 18:00 UTC" and "--merge" in u["command"]
    assert len(rs.merge_results(merged, new)["updates"]) == 2  # later merges append
    text = "\n".join(load("report_train_speed_vs_rechub").section(merged, None, "img", None, None))
    assert "| ComiRec-DR | 1 | 24,000 | 10,000 | 2.40 | 2.40 | 2.40 | yes |" in text
    assert "| ComiRec-DR | 2 | 25,000 | 15,000 | 1.67 |" in text and "| MIND | 1 | 30,000 | 12,000 | 2.50 |" in text
    assert "Rows of ComiRec-DR at 1 thread(s) re-measured 2026-11-29 18:00 UTC" in text and "NEW-NOTE" in text
    assert "OLD-NOTE" in text


def test_merge_refuses_another_setting():
    rs = load("rechub_speed")
    old = _results(rs, [_run("ours", "mind", 1, 30_000)], ["mind"], [1])
    new = _results(rs, [_run("ours", "mind", 1, 30_000)], ["mind"], [1])
    new["setting"]["steps"] = 40
    with pytest.raises(ValueError, match="steps"):
        rs.merge_results(old, new)


def test_recorded_command_leaves_the_note_out():
    rs = load("rechub_speed")
    assert rs._without_note(["--models", "comirec_dr", "--note", "a long note", "--merge"]) == [
        "--models", "comirec_dr", "--note", "<note>", "--merge"]
    assert rs._without_note(["--note=x y"]) == ["--note=<note>"]
