"""benchmarks/report_serving_http.py: the serving_http section of RESULTS.md, on a small hand-written result."""
from __future__ import annotations

import json

from benchmark_modules import load

section = load("report_serving_http")
report = load("report")


def _level(rps, p99, cpu_ms, loop_ms=None, others=0.5):
    out = {"requests": 100, "requests_per_s": rps, "p50_ms": p99 / 2, "p99_ms": p99, "mean_ms": p99 / 2,
           "server_cpu_cores": 0.9, "client_cpu_cores": 0.05, "server_cpu_ms_per_request": cpu_ms,
           "others_cpu_cores": others}
    if loop_ms is not None:
        out["cpu_ms_per_request"] = {"worker": cpu_ms - loop_ms - 0.1, "event_loop": loop_ms, "other": 0.1,
                                     "client": 0.2}
        out["batch_size_mean"], out["queue_wait_ms_mean"] = 3.5, 1.25
    return out


DATA = {"config": {"items": 100000, "interests": 4, "dim": 64, "n": 50, "requests_per_level": 100, "client": "c"},
        "runs": {"batch": {"levels": {"1": _level(150.0, 12.0, 6.5, 1.1), "8": _level(520.5, 24.5, 3.1, 0.5)}}},
        "before": {"ref": "HEAD~1", "commit": "abc1234",
                   "runs": {"batch": {"levels": {"8": _level(300.0, 44.0, 3.6, others=1.25)}}}},
        "best": {"config": "batch", "concurrency": 8, "requests_per_s": 520.5}, "default_config": "batch",
        "targets": {"p99_ms_at_8": 25.0, "requests_per_s": 500.0}, "target_p99_met": True, "target_rps_met": True,
        "timed": "what is timed", "machine": {"cpus": 2, "python": "3.11", "load_avg_1m_before": 1.0,
                                              "load_avg_1m_after": 2.0}}


def test_section_renders_targets_levels_split_and_before_after():
    text = "\n".join(section.serving_http_section(DATA))
    assert "**24.50 ms** (target ≤ 25.00 ms: met)" in text
    assert "**520.5 req/s** (batch at concurrency 8; target ≥ 500.0: met)" in text
    assert "- timed: what is timed" in text
    # the level row: req/s, p50, p99, mean, cores, CPU ms/req, worker = 3.1 - 0.5 - 0.1, loop, other, client, batch
    assert "| batch | 8 | 520.5 | 12.25 | 24.50 | 12.25 | 0.90 | 3.10 | 2.50 | 0.50 | 0.10 | 0.20 | 3.50 | 1.25 | 0.50 |" \
        in text
    # before/after: only levels measured on both sides; the earlier version has no split ("–")
    assert "`abc1234`" in text
    assert "| batch | 8 | 300.0 | 520.5 | 44.00 | 24.50 | 3.60 | 3.10 | – | 0.50 | 1.25 | 0.50 |" in text
    assert "| batch | 1 | 300.0" not in text
    # the earlier default against today's, when they differ
    two = {**DATA, "before": {**DATA["before"], "default_config": "old", "runs": {"old": DATA["before"]["runs"]["batch"]}}}
    assert "| default: old before, batch after | 8 | 300.0 | 520.5 |" in "\n".join(section.serving_http_section(two))
    # an old file without the split: client CPU derived from client cores / throughput (0.05 / 300 s = 0.17 ms)
    assert "| batch | 8 | 300.0 | 22.00 | 44.00 | 22.00 | 0.90 | 3.60 | – | – | – | 0.17 | – | – | 1.25 |" in text


def test_event_loop_profile_shares():
    data = {**DATA, "event_loop_profile": {"config": "batch", "concurrency": 8, "total_ms_per_request": 2.0,
                                           "ms_per_request": {"http": 0.5, "framework": 1.5}}}
    text = "\n".join(section.serving_http_section(data))
    assert text.index("| framework | 1.50 | 75.00 |") < text.index("| http | 0.50 | 25.00 |")


def test_missed_target_and_report_dispatch(tmp_path):
    data = {**DATA, "target_p99_met": False, "before": None}
    assert "target ≤ 25.00 ms: missed" in "\n".join(section.serving_http_section(data))
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "serving_http.json").write_text(json.dumps(DATA))
    text = report.render(tmp_path / "res", tmp_path / "RESULTS.md", tmp_path / "img", plots=False)
    assert "## serving_http" in text and "### Before and after" in text and "target ≤ 25.00 ms: met" in text
