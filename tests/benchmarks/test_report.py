"""benchmarks/quality.py's aggregation over seeds and benchmarks/report.py's rendering, on small fake results.

No training: run records are written by hand in the shape ``quality.one_run`` caches, so this stays fast.
The bootstrap intervals are checked against distributions worked out by hand (resampling 2 or 3 seeds).
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


quality = _load("quality")
report = _load("report")


# ------------------------------------------------------------------------------------------ aggregation
def test_mean_and_sample_std_over_seeds():
    agg = quality.aggregate({2026: 0.1, 2027: 0.3, 2028: 0.2})
    assert agg["mean"] == pytest.approx(0.2)
    assert agg["std"] == pytest.approx(0.1)  # ddof = 1: sqrt((0.01 + 0.01 + 0) / 2)
    assert agg["n"] == 3
    assert agg["per_seed"] == {"2026": 0.1, "2027": 0.3, "2028": 0.2}
    assert 0.1 <= agg["ci_low"] <= agg["mean"] <= agg["ci_high"] <= 0.3


def test_one_seed_has_no_std_and_a_point_interval():
    agg = quality.aggregate({2026: 0.25})
    assert agg["mean"] == 0.25 and math.isnan(agg["std"])
    assert agg["ci_low"] == agg["ci_high"] == 0.25


def test_bootstrap_of_two_seeds_matches_the_binomial_by_hand():
    # resampling {0, 1} twice: the mean is 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the 2.5 % and
    # 97.5 % quantiles of the bootstrap distribution are 0 and 1
    lo, hi = quality.seed_bootstrap_ci([0.0, 1.0], samples=20_000)
    assert (lo, hi) == (0.0, 1.0)
    # {0, 0, 1}: mean k/3 with k ~ Bin(3, 1/3); P(k = 3) = 1/27 > 2.5 %, P(k = 0) = 8/27 -> (0, 1);
    # at 90 % confidence the upper 5 % point: P(k >= 2) = 7/27 > 5 % and P(k = 3) < 5 % -> 2/3
    assert quality.seed_bootstrap_ci([0.0, 0.0, 1.0], samples=20_000) == (0.0, 1.0)
    lo, hi = quality.seed_bootstrap_ci([0.0, 0.0, 1.0], samples=20_000, confidence=0.90)
    assert lo == 0.0 and hi == pytest.approx(2 / 3)


def test_bootstrap_interval_is_shift_equivariant_and_seeded():
    x = np.array([0.21, 0.25, 0.22, 0.27, 0.24])
    lo, hi = quality.seed_bootstrap_ci(x)
    lo2, hi2 = quality.seed_bootstrap_ci(x + 1.0)
    assert lo2 == pytest.approx(lo + 1.0) and hi2 == pytest.approx(hi + 1.0)
    assert quality.seed_bootstrap_ci(x) == (lo, hi)
    assert lo < x.mean() < hi
    assert quality.seed_bootstrap_ci([0.3] * 4) == (0.3, 0.3)


def fake_run(variant, seed, recall, valid, *, setting="default", protocol="sg"):
    metrics = {"valid.num_users": 94, "test.num_users": 94}
    for split, r in (("test", recall), ("valid", valid)):
        for m in quality.METRICS:
            v = r if m == "recall@50" else r / 2
            metrics[f"{split}.{m}"] = v
            metrics[f"{split}.{m}_ci_low"] = v - 0.04
            metrics[f"{split}.{m}_ci_high"] = v + 0.04
    sweep = [{"lambda": lam, "test.recall@50": recall * (1 - 0.05 * lam), "test.diversity@50": 0.5 * (1 + lam)}
             for lam in (0.0, 0.5, 1.0)]
    return {"protocol": protocol, "variant": variant, "setting": setting, "seed": seed, "metrics": metrics,
            "lambda_sweep": sweep, "train": {"epochs": 7}, "train_wall_s": 12.0, "overrides": {}}


def test_aggregate_runs_per_metric_and_user_interval():
    runs = [fake_run("mind", 2026, 0.30, 0.31), fake_run("mind", 2027, 0.34, 0.33)]
    agg = quality.aggregate_runs(runs)
    assert set(agg) == set(quality.METRICS)
    assert agg["recall@50"]["mean"] == pytest.approx(0.32)
    assert agg["recall@50"]["std"] == pytest.approx(math.sqrt(0.0008))
    assert agg["recall@50"]["user_ci"] == pytest.approx([0.28, 0.36])
    assert agg["ndcg@20"]["mean"] == pytest.approx(0.16)
    assert quality.aggregate_runs(runs, ("recall@50",), "valid")["recall@50"]["mean"] == pytest.approx(0.32)


def test_setting_is_chosen_on_valid_never_on_test():
    runs = [fake_run("mind", 2026, 0.40, 0.30, setting="default"),   # better on test, worse on valid
            fake_run("mind", 2026, 0.20, 0.35, setting="lr3e-3"),
            fake_run("umi", 2026, 0.30, 0.30, setting="lr3e-3"),      # a tie keeps the first grid point
            fake_run("umi", 2026, 0.30, 0.30, setting="default"),
            fake_run("umi", 2027, 0.90, 0.99, setting="lr3e-3")]      # not the tuning seed
    chosen = quality.chosen_settings(runs, ["mind", "umi"], 2026)
    assert chosen["mind"]["setting"] == "lr3e-3"
    assert chosen["umi"]["setting"] == "default"


# -------------------------------------------------------------------------------------------- rendering
def test_verdicts():
    a = {"mean": 0.20, "std": 0.01, "n": 5}
    b = {"mean": 0.30, "std": 0.01, "n": 5}
    assert report.verdict(a, b)[0] == "holds"
    assert report.verdict(b, a)[0] == "does not hold"
    c = {"mean": 0.205, "std": 0.02, "n": 5}
    assert report.verdict(a, c)[0] == "within noise"
    # one seed each: the user-bootstrap intervals are the noise (half-width 0.04 -> se 0.0204 each)
    one = {"mean": 0.20, "n": 1, "user_ci": [0.16, 0.24]}
    two = {"mean": 0.25, "n": 1, "user_ci": [0.21, 0.29]}
    assert report.verdict(one, two)[0] == "within noise"
    assert report.verdict(one, {**two, "mean": 0.30})[0] == "holds"
    assert report.verdict(None, two)[0] == "not run"


@pytest.fixture()
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(quality, "OUT", tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "commands.jsonl").write_text(
        json.dumps({"time": "t", "command": "python benchmarks/quality.py --seeds 2026,2027"}) + "\n")
    runs = []
    for seed, jitter in ((2026, 0.0), (2027, 0.01)):
        runs += [fake_run("most_popular", seed, 0.2009, 0.2010),
                 fake_run("youtube_dnn", seed, 0.26 + jitter, 0.27),
                 fake_run("mind", seed, 0.31 + jitter, 0.30),
                 fake_run("umi", seed, 0.38 + jitter, 0.37)]
    runs.append(fake_run("mind", 2026, 0.10, 0.10, protocol="loo"))
    res_dir = tmp_path / "results"
    res_dir.mkdir()
    (res_dir / "quality.json").write_text(json.dumps(quality.build_result(runs, 2026, False)))
    (res_dir / "planted.json").write_text(json.dumps({"meta": {"command": "python benchmarks/planted.py"}, "rows": [
        {"interests": k, "noise": nz, "model": m, "recall@50": 0.1 * k, "purity": 0.8 if m != "youtube_dnn" else None,
         "purity_shuffled": 0.6 if m != "youtube_dnn" else None, "nmi": 0.5 if m != "youtube_dnn" and k > 1 else None}
        for k in (1, 2) for nz in (0.05, 0.3) for m in ("youtube_dnn", "mind")]}))
    (res_dir / "serving.json").write_text(json.dumps({
        "machine": {"cpus": 2}, "target_met": False,
        "models": [{"model": "mind", "samples_per_s": 30000.0}, {"model": "umi", "samples_per_s": 20000.5}],
        "single_request": {"exact": {"p50_ms": 1.5, "p99_ms": 3.25}, "HNSW32": {"p50_ms": 1.0, "p99_ms": 2.0}}}))
    return res_dir


def test_report_renders_every_result_file(results, tmp_path):
    out, img = tmp_path / "docs" / "RESULTS.md", tmp_path / "docs" / "img"
    text = report.render(results, out, img)
    assert out.read_text() == text
    for section in ("## quality", "## planted", "## serving"):
        assert section in text
    # commands come from the files (or the script of the same name)
    assert "python benchmarks/quality.py --seeds 2026,2027" in text
    assert "python benchmarks/planted.py" in text
    assert "python benchmarks/serving.py" in text  # no command in the file: its script
    # headline: mean ± std over the two seeds, targets judged from the numbers
    assert "| UMI | 0.3850 ± 0.0071 | 2 |" in text
    assert "| MostPopular | 0.205 ± 0.02 | 0.2009 ± 0.0000 | met |" in text
    assert "| YouTube DNN | ≥ 0.25 | 0.2650 ± 0.0071 | met |" in text
    assert "ComiRec-DR | ≥ 0.3 | – | not run |" in text
    assert "best model (→ UMI, chosen on valid)" in text and "0.3850 ± 0.0071 | met |" in text
    assert "| UMI Table 2 | MIND < YouTube DNN | does not hold |" in text
    assert "Leave-one-out not run for: MostPopular, YouTube DNN, UMI." in text
    # generic section: scalars, records, dict of records
    assert "| target_met | no |" in text
    assert "| mind | 30000.0000 |" in text or "| mind | 3e+04 |" in text or "| mind | 30,000.0 |" in text
    assert "| HNSW32 | 1.0000 | 2.0000 |" in text
    for png in ("quality_recall50.png", "quality_lambda.png", "planted_recall.png", "planted_nmi.png"):
        assert (img / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(img/{png})" in text
    assert (img / "serving_models.png").exists()


def test_report_skips_a_broken_file(results, tmp_path):
    (results / "index.json").write_text("{not json")
    text = report.render(results, tmp_path / "R.md", tmp_path / "img")
    assert "`index.json` is not valid JSON" in text and "## quality" in text
    (results / "index.json").write_text(json.dumps({"rows": [{"name": "a", "qps": 1.0}]}))
    (results / "nosuchscript.json").write_text(json.dumps({"x": 1}))
    text = report.render(results, tmp_path / "R.md", tmp_path / "img")
    assert "## index" in text and "(no benchmarks/nosuchscript.py found)" in text
