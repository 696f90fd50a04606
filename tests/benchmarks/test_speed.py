"""benchmarks/speed.py's measurement helpers on a tiny synthetic split: structure and sanity, never wall-clock values.

- ``run_measured`` reports each child's *own* peak RSS (a small child after a big one is not charged the big
  one's peak, which RUSAGE_CHILDREN would do);
- ``measure_training`` drives the product's Lightning step for exactly warmup + steps steps and reports
  consistent figures (samples/s = batch * steps / (steps * s_per_step), epoch extrapolation, data bytes);
- ``dynamic_k_serving`` counts MIND's active interests by eq. 9, worked by hand for L = 3;
- ``plot`` writes one PNG per sweep.
"""
from __future__ import annotations

import copy
import math
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmark_modules import load

REPO = Path(__file__).resolve().parents[2]


speed = load("speed")


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory) -> Path:
    from components import ingest, split
    from components.synthetic import SyntheticConfig

    base = tmp_path_factory.mktemp("speed")
    syn = SyntheticConfig(num_users=120, num_items=60, num_categories=6, interests_per_user=2, mean_length=14,
                          min_length=8, save_ground_truth=False)
    ingest.run(ingest.IngestConfig(source="synthetic", synthetic=syn), base / "canonical", seed=7)
    split.run(split.SplitConfig(), base / "canonical", base / "split", seed=7)
    return base / "split"


@pytest.fixture(scope="module")
def params() -> dict:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["train"]["batch_size"] = 32
    p["train"]["num_negatives"] = 5
    p["train"]["num_threads"] = 1
    return p


def test_run_measured_reports_each_childs_own_peak():
    # Measured from a fresh, small parent as benchmarks/speed.py runs: Linux keeps a process's peak RSS across
    # fork+exec, so a child of this pytest process (torch already imported, ~500 MB) would start from our peak.
    probe = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from benchmarks import speed
big = speed.run_measured([sys.executable, "-c", "b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); print('ok')"])
small = speed.run_measured([sys.executable, "-c", "print('ok')"])
fail = speed.run_measured([sys.executable, "-c", "raise SystemExit(3)"])
print(json.dumps({"big": big, "small": small, "fail": fail}))
"""
    out = subprocess.run([sys.executable, "-c", probe, str(REPO)], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    big, small, fail = res["big"], res["small"], res["fail"]
    assert big["rc"] == 0 and big["stdout"].strip() == "ok"
    assert big["peak_rss_mb"] >= 200
    assert small["peak_rss_mb"] < 100  # not the big child's peak
    assert fail["rc"] == 3


def test_model_params_changes_only_the_copy(params):
    p = speed.model_params(params, "mind", max_len=50, num_interests=8)
    assert p["train"]["max_len"] == 50 and p["models"]["mind"]["num_interests"] == 8
    assert params["train"]["max_len"] == 20 and params["models"]["mind"]["num_interests"] == 4


def test_measure_training_structure_and_consistency(params, tiny_split):
    from components.train_data import load_split_meta

    meta = load_split_meta(tiny_split)
    r = speed.measure_training(params, "mind", tiny_split, steps=3, warmup=1, num_items=meta.num_items + 500,
                               data_memory=True)
    assert r["steps"] == 3 and r["warmup"] == 1 and r["batch_size"] == 32 and r["torch_threads"] == 1
    assert r["num_items"] == meta.num_items + 500 and r["split_items"] == meta.num_items
    for key in ("s_per_step", "samples_per_s", "samples_per_cpu_s", "s_per_epoch", "worker_peak_rss_mb"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["samples_per_s"] == pytest.approx(32 / r["s_per_step"])
    assert r["s_per_epoch"] == pytest.approx(r["train_samples"] / r["samples_per_s"])
    # every train interaction but each user's first is a sample
    assert 0 < r["train_samples"] < r["train_interactions"]
    # kept arrays: at least the int32 item and the int32 sample position per interaction
    assert r["data_bytes_per_interaction"] >= 8
    # padded catalogue: the embedding table has num_items rows of dim 64 (+ category table etc.)
    assert r["parameters"] >= (meta.num_items + 500) * 64


def test_measure_training_rejects_a_catalogue_below_the_split(params, tiny_split):
    with pytest.raises(ValueError, match="num_items"):
        speed.measure_training(params, "mind", tiny_split, steps=1, warmup=1, num_items=2)


def test_dynamic_k_counts_active_interests_by_eq9(params, tiny_split):
    rows = speed.dynamic_k_serving(params, tiny_split, max_lens=[3], ks=[4], repeats=2)
    assert [(r["max_len"], r["num_interests"], r["dynamic"]) for r in rows] == [(3, 4, True), (3, 4, False)]
    dyn, fixed = rows
    # L = 3: n in {1, 2, 3} -> floor(log2 n) in {0, 1, 1} -> K' = max(1, min(4, .)) = 1 for every user
    assert dyn["mean_active_interests"] == 1.0 and dyn["share_below_k"] == 1.0
    assert fixed["mean_active_interests"] == 4.0 and fixed["share_below_k"] == 0.0
    assert dyn["users"] == fixed["users"] > 0
    assert 1 <= dyn["mean_history_length"] <= 3
    assert dyn["latency_one_user_ms_p50"] > 0 and dyn["latency_per_user_batch512_us_p50"] > 0


def test_plot_writes_one_png_per_sweep(tmp_path, monkeypatch):
    monkeypatch.setattr(speed, "IMG", tmp_path)
    row = {"samples_per_s": 100.0, "samples_per_cpu_s": 200.0, "peak_rss_mb": 500.0, "load_avg_1m": [1.0, 2.0]}
    result = {"machine": {"cpu_count": 2}, "sweeps": {
        "history_length": [{"model": "mind", "value": v, **row} for v in (20, 50)],
        "catalogue_size": [{"model": "mind", "value": v, **row} for v in (10_000, 100_000)],
        "num_users": [{"model": "mind", "value": 10, "error": "exit 1", "load_avg_1m": [1.0, 1.0]}]}}
    written = speed.plot(result)
    assert sorted(p.name for p in written) == ["speed_catalogue_size.png", "speed_history_length.png"]
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
