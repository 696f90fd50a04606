"""The end-to-end benchmark's measuring parts: the per-phase wrapper and the artifact summary."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from benchmark_modules import load

REPO = Path(__file__).resolve().parents[2]
e2e = load("end_to_end")


@pytest.fixture
def log_dir():
    # timed() names its log relative to the repo: keep the logs inside it, in a git-ignored scratch folder
    d = REPO / "benchmarks" / "out" / "test_e2e"
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_timed_reports_rc_cpu_and_the_peak_of_the_largest_child(log_dir, tmp_path):
    # a child that holds ~300 MB resident and burns some CPU, then exits 3
    code = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); s = sum(range(3_000_000)); raise SystemExit(3)"
    stats = e2e.timed([sys.executable, "-c", code], tmp_path, log_dir / "a.log", dict(os.environ))
    assert stats["rc"] == 3
    assert stats["peak_rss_mb"] >= 300
    assert stats["peak_rss_mb"] < 2000  # not inherited from this (torch-loaded) pytest process
    assert stats["cpu_s"] > 0 and stats["wall_s"] >= stats["cpu_s"] * 0.5


def test_timed_keeps_the_commands_output_in_its_log(log_dir, tmp_path):
    code = "import sys; print('to-stdout'); print('to-stderr', file=sys.stderr)"
    stats = e2e.timed([sys.executable, "-c", code], tmp_path, log_dir / "b.log", dict(os.environ))
    text = (REPO / stats["log"]).read_text()
    assert stats["rc"] == 0 and "to-stdout" in text and "to-stderr" in text


def test_model_figures_reads_train_eval_and_gate(tmp_path):
    art = tmp_path / "artifacts"
    (art / "models" / "mind").mkdir(parents=True)
    (art / "eval" / "mind").mkdir(parents=True)
    (art / "bundles").mkdir(parents=True)
    (art / "models" / "mind" / "train.json").write_text(json.dumps({"epochs": 7, "best_epoch": 4, "wall_seconds": 12.5}))
    (art / "eval" / "mind" / "metrics.json").write_text(json.dumps({"test.recall@50": 0.41, "test.ndcg@50": 0.28}))
    (art / "bundles" / "gate.json").write_text(json.dumps({"candidate": "mind", "passed": False, "rules": []}))
    out = e2e.model_figures(tmp_path)
    assert out["mind"]["train"]["epochs"] == 7 and out["mind"]["train"]["wall_seconds"] == 12.5
    assert out["mind"]["test"]["test.recall@50"] == 0.41 and out["mind"]["test"]["test.recall@20"] is None
    assert out["_gate"] == {"candidate": "mind", "passed": False, "rules": []}
