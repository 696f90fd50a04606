"""benchmarks/quality.py's aggregation over seeds and benchmarks/report.py's rendering, on small fake results.

No training: run records are written by hand in the shape ``quality.one_run`` caches, so this stays fast.
The bootstrap intervals are checked against distributions worked out by hand (resampling 2 or 3 seeds).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmark_modules import load

REPO = Path(__file__).resolve().parents[2]


quality = load("quality")
report = load("report")


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


def fake_run(variant, seed, recall, valid, *, setting="default", protocol="sg", half=0.04, epochs=7,
             best_epoch=None, max_epochs=10):
    """A cached run record as quality.one_run writes it; every test metric = recall (recall@50) or recall / 2,
    each with a user-bootstrap interval of half-width ``half``."""
    metrics = {"valid.num_users": 94, "test.num_users": 94}
    for split, r in (("test", recall), ("valid", valid)):
        for m in quality.METRICS:
            v = r if m == "recall@50" else r / 2
            metrics[f"{split}.{m}"] = v
            metrics[f"{split}.{m}_ci_low"] = v - half
            metrics[f"{split}.{m}_ci_high"] = v + half
    sweep = [{"lambda": lam, "test.recall@50": recall * (1 - 0.05 * lam), "test.diversity@50": 0.5 * (1 + lam)}
             for lam in (0.0, 0.25, 1.0)]
    return {"protocol": protocol, "variant": variant, "setting": setting, "seed": seed, "metrics": metrics,
            "lambda_sweep": sweep, "max_epochs": max_epochs, "train_wall_s": 12.0, "overrides": {},
            "train": {"epochs": epochs, "best_epoch": epochs - 3 if best_epoch is None else best_epoch}}


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


# -------------------------------------------------------------------------------------------- verdicts
def agg(mean, *, n=1, half=0.04, seed_ci=None):
    """An aggregated metric as quality.json holds it: user interval of half-width ``half``; seed interval
    ``seed_ci`` when n >= 2."""
    m = {"mean": mean, "n": n, "user_ci": [mean - half, mean + half]}
    if n > 1:
        m["ci_low"], m["ci_high"] = seed_ci
        m["std"] = 0.01
    return m


def test_ordering_verdict_against_the_user_noise():
    # one seed each: only the user half-width h (mean of the two) decides
    assert report.verdict(agg(0.30), agg(0.35))[0] == "holds"            # Δ = 0.05 > h = 0.04
    assert report.verdict(agg(0.35), agg(0.30))[0] == "does not hold"
    assert report.verdict(agg(0.30), agg(0.33))[0] == "within noise"     # Δ = 0.03 ≤ h
    # the same Δ flips when the users' interval narrows: h = (0.02 + 0.02) / 2 vs (0.02 + 0.06) / 2
    assert report.verdict(agg(0.30, half=0.02), agg(0.33, half=0.02))[0] == "holds"
    assert report.verdict(agg(0.30, half=0.02), agg(0.33, half=0.06))[0] == "within noise"
    assert report.verdict(None, agg(0.3))[0] == "not run"


def test_ordering_verdict_against_the_seed_intervals():
    lo = agg(0.30, n=5, seed_ci=(0.29, 0.31))
    hi = agg(0.36, n=5, seed_ci=(0.35, 0.37))
    assert report.verdict(lo, hi)[0] == "holds"
    v, ev = report.verdict(lo, {**hi, "ci_low": 0.305})                  # seed intervals overlap: noise
    assert v == "within noise" and "seed CIs overlap" in ev
    # disjoint seed intervals do not make a difference smaller than h count
    v, ev = report.verdict(lo, agg(0.33, n=5, seed_ci=(0.325, 0.335)))
    assert v == "within noise" and "|Δ| ≤ h" in ev and "disjoint" in ev
    # one side with a single seed: only h applies (its point interval is no seed interval)
    one = {**agg(0.36), "ci_low": 0.36, "ci_high": 0.36}
    assert report.verdict({**lo, "ci_high": 0.40}, one)[0] == "holds"


def test_reaches_is_same_level_or_above():
    assert report.reaches(agg(0.39), agg(0.40))[0] == "holds"            # within noise of the reference
    assert report.reaches(agg(0.50), agg(0.40))[0] == "holds"            # above it
    assert report.reaches(agg(0.30), agg(0.40))[0] == "does not hold"    # below beyond noise


# -------------------------------------------------------------------------------------------- rendering
def cells(text: str, start: str) -> list[str]:
    """The cells of the first table row of ``text`` that starts with ``start``."""
    line = next(line for line in text.splitlines() if line.startswith(start))
    return [c.strip() for c in line.strip("|").split(" | ")]


SPEED = {"command": "python benchmarks/speed.py",
         "config": {"default_max_len": 20, "models": {"mind": {"num_interests": 4}}},
         "dynamic_k": {"rows": [
             {"max_len": 20, "num_interests": k, "dynamic": dyn, "users": 188, "mean_history_length": 19.5,
              "mean_active_interests": float(4 if dyn else k), "min_active_interests": 4,
              "share_below_k": float(dyn and k > 4), "latency_one_user_ms_p50": 1.5,
              "latency_per_user_batch512_us_p50": 120.0}
             for k in (4, 8) for dyn in (True, False)]}}


def sweep_runs(variant, key, curve, base="lr3e-3"):
    """One run per sweep value (seed 2026); the params.yaml value's point is the chosen run itself."""
    return [fake_run(variant, 2026, r, r + 0.01, setting=quality.sweep_setting(base, key, value))
            for value, r in curve.items() if value != quality.MODEL_DEFAULT[(variant, key)]]


@pytest.fixture()
def results(tmp_path):
    with pytest.MonkeyPatch.context() as monkeypatch:
        return _results(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One render of the full fixture, shared by the tests that only read it (a render takes seconds)."""
    tmp_path = tmp_path_factory.mktemp("rendered")
    with pytest.MonkeyPatch.context() as monkeypatch:
        res = _results(tmp_path, monkeypatch)
    out, img = tmp_path / "docs" / "RESULTS.md", tmp_path / "docs" / "img"
    return report.render(res, out, img), out, img


def _results(tmp_path, monkeypatch):
    monkeypatch.setattr(quality, "OUT", tmp_path / "cache")
    for k, value in ((("comirec_dr_hn", "num_interests"), 4), (("comirec_sa_hn", "num_interests"), 4),
                     (("mind_hn", "routing_sigma"), 1.0), (("mind_hn", "attention_pow"), 2.0)):
        monkeypatch.setitem(quality.MODEL_DEFAULT, k, value)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "commands.jsonl").write_text(
        json.dumps({"time": "t", "command": "python benchmarks/quality.py --seeds 2026,2027"}) + "\n")
    runs = [fake_run("youtube_dnn", 2026, 0.24, 0.25, setting="default")]     # the other grid point
    for seed, jitter in ((2026, 0.0), (2027, 0.01)):
        runs += [fake_run("most_popular", seed, 0.2009, 0.2010),
                 fake_run("youtube_dnn", seed, 0.26 + jitter, 0.27, setting="lr3e-3",
                          epochs=10 if seed == 2027 else 7, best_epoch=9 if seed == 2027 else None),
                 fake_run("mind", seed, 0.31 + jitter, 0.30),
                 fake_run("umi_hn", seed, 0.38 + jitter, 0.37),
                 fake_run("mind", seed, 0.12 + jitter, 0.11, protocol="loo"),
                 fake_run("youtube_dnn", seed, 0.15 + jitter, 0.14, protocol="loo", setting="lr3e-3")]
    # sweeps (seed 2026): ComiRec-DR+HN flat in K, ComiRec-SA+HN not; MIND+HN flat in σ, rising in p
    runs += [fake_run("comirec_dr_hn", 2026, 0.38, 0.40, setting="lr3e-3"),
             fake_run("comirec_sa_hn", 2026, 0.36, 0.42, setting="lr3e-3"),
             fake_run("mind_hn", 2026, 0.38, 0.39, setting="lr3e-3")]
    runs += sweep_runs("comirec_dr_hn", "num_interests", {2: 0.37, 4: 0.38, 6: 0.385, 8: 0.38})
    runs += sweep_runs("comirec_sa_hn", "num_interests", {2: 0.30, 4: 0.36, 6: 0.41, 8: 0.40})
    runs += sweep_runs("mind_hn", "routing_sigma", {0.1: 0.37, 1.0: 0.38, 5.0: 0.39})
    runs += sweep_runs("mind_hn", "attention_pow", {0.0: 0.20, 1.0: 0.30, 2.0: 0.38, None: 0.45})
    res_dir = tmp_path / "results"
    res_dir.mkdir()
    (res_dir / "quality.json").write_text(json.dumps(quality.build_result(runs, 2026, False)))
    (res_dir / "speed.json").write_text(json.dumps(SPEED))
    (res_dir / "planted.json").write_text(json.dumps({"meta": {"command": "python benchmarks/planted.py"}, "rows": [
        {"interests": k, "noise": nz, "model": m, "recall@50": 0.1 * k, "purity": 0.8 if m != "youtube_dnn" else None,
         "purity_shuffled": 0.6 if m != "youtube_dnn" else None, "nmi": 0.5 if m != "youtube_dnn" and k > 1 else None}
        for k in (1, 2) for nz in (0.05, 0.3) for m in ("youtube_dnn", "mind")]}))
    (res_dir / "serving.json").write_text(json.dumps({
        "machine": {"cpus": 2}, "target_met": False,
        "models": [{"model": "mind", "samples_per_s": 30000.0}, {"model": "umi", "samples_per_s": 20000.5}],
        "single_request": {"exact": {"p50_ms": 1.5, "p99_ms": 3.25}, "HNSW32": {"p50_ms": 1.0, "p99_ms": 2.0}}}))
    return res_dir


def test_report_renders_every_result_file(rendered):
    text, out, img = rendered
    assert out.read_text() == text
    for section in ("## quality", "## planted", "## serving", "## speed"):
        assert section in text
    # commands come from the files (or the script of the same name)
    assert "python benchmarks/quality.py --seeds 2026,2027" in text
    assert "python benchmarks/planted.py" in text
    assert "python benchmarks/serving.py" in text  # no command in the file: its script
    # generic section: scalars, records, dict of records
    assert "| target_met | no |" in text
    assert "| HNSW32 | 1.0000 | 2.0000 |" in text
    for png in ("quality_recall50.png", "quality_lambda.png", "quality_sweep_K.png", "quality_sweep_sigma.png",
                "quality_sweep_p.png", "planted_recall.png", "planted_nmi.png"):
        assert (img / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(img/{png})" in text
    assert (img / "serving_models.png").exists()


def test_headline_targets_and_tuning(rendered):
    text = rendered[0]
    # headline: mean ± std over the two seeds, seed count, both intervals, per-seed values, epochs with ‡
    row = cells(text, "| UMI+HN | 0.3850 ± 0.0071 |")
    assert row[2] == "2" and row[3] == "[0.3800, 0.3900]" and row[4] == "[0.3450, 0.4250]"
    assert row[5] == "0.3800, 0.3900"
    row = cells(text, "| YouTube DNN | 0.2650 ± 0.0071 |")
    assert row[-1] == "7/10, 10/10 ‡"   # seed 2027 used its 10 epochs and was best at the last one
    assert "YouTube DNN sg lr3e-3 seed 2027" in text
    # the papers' figures beside ours, for the same model
    assert cells(text, "| MIND | 0.3150 ± 0.0071 | 0.1575 ± 0.0035 |")[3:] == ["22.415", "7.638 / 8.155"]
    assert cells(text, "| UMI+HN | 0.3850 ± 0.0071 | 0.1925 ± 0.0035 |")[3:] == ["27.805", "–"]
    # targets judged from the mean over seeds, with the number of seeds
    assert cells(text, "| MostPopular | 0.205 ± 0.02 |")[2:] == ["0.2009 ± 0.0000", "2", "met"]
    assert cells(text, "| YouTube DNN | ≥ 0.25 |")[2:] == ["0.2650 ± 0.0071", "2", "met"]
    assert cells(text, "| ComiRec-DR (→ ComiRec-DR+HN, the only variant run) |")[2:] == ["0.3800", "1", "met"]
    assert cells(text, "| ComiRec-SA (→ ComiRec-SA+HN, the only variant run) |")[-1] == "met"
    assert cells(text, "| MIND (→ MIND+HN, chosen on valid) |")[-1] == "met"  # both run: MIND+HN valid 0.39 > 0.30
    # the best model is chosen on valid (ComiRec-SA+HN 0.42 > UMI 0.37), not on test (UMI 0.385 > 0.36)
    assert cells(text, "| best model (→ ComiRec-SA+HN, chosen on valid) |")[2:] == ["0.3600", "1", "**missed**"]
    assert "Targets missed: best model (→ ComiRec-SA+HN, chosen on valid): 0.3600" in text
    # tuning: both grid points, the chosen one bold
    row = cells(text, "| YouTube DNN | 0.2500")
    assert row[2].startswith("**0.2700**") and row[3] == "lr3e-3"
    # leave-one-out table beside the headline, with its own seeds
    row = cells(text, "| MIND | 0.3150 ± 0.0071 | 2 | 0.1250 ± 0.0071 |")
    assert row[4] == "2" and row[5] == "[0.1200, 0.1300]" and row[6] == "[0.0850, 0.1650]"
    assert "Leave-one-out not run (yet) for: MostPopular, MIND+HN, ComiRec-DR+HN, ComiRec-SA+HN, UMI+HN." in text
    assert "### All metrics, test users, leave_one_out" in text
    # loo flips the MIND / YouTube DNN order of strong generalization (0.125 < 0.155 but 0.315 > 0.265)
    assert "highest test Recall@50 YouTube DNN 0.1550 ± 0.0071" in text
    assert "agrees with strong generalization for 0 of 1 pairs" in text
    assert "ComiRec Table 3 under leave-one-out (multi-interest model beats YouTube DNN, same rule): " \
           "within noise: MIND." in text   # 0.125 vs 0.155: |Δ| = 0.03 ≤ h = 0.04


def test_sweep_tables_and_verdicts(rendered):
    text = rendered[0]
    # K table: every K, the params.yaml point marked, the paper's Table 4 beside ours
    row = cells(text, "| ComiRec-SA+HN | 2 |")
    assert row[2:5] == ["0.3100", "0.3000", "[0.2600, 0.3400]"] and row[-1] == "8.835 / 9.935 (ComiRec-SA)"
    assert cells(text, "| ComiRec-SA+HN | 4 ✓ |")[3] == "0.3600"   # the chosen run itself
    assert cells(text, "| MIND+HN | ∞ |")[3] == "0.4500"
    # K: SA+HN spreads 0.11 > h = 0.04 -> sensitive; DR+HN spreads 0.015 -> within noise
    assert cells(text, "| ComiRec Table 4 | ComiRec-SA+HN")[3] == "holds"
    assert cells(text, "| ComiRec Table 4 | ComiRec-DR+HN")[3] == "within noise"
    # σ: spread 0.02 ≤ h -> robust; p: 0 worse than every p ≥ 1, and 1 -> ∞ rises beyond noise
    assert cells(text, "| MIND Fig. 3 | MIND+HN: robust to σ")[3] == "holds"
    assert cells(text, "| MIND Fig. 3 | MIND+HN: p = 0 worse")[3] == "holds"
    row = cells(text, "| MIND Fig. 3 | MIND+HN: larger p better")
    assert row[3] == "holds" and "monotone" in row[1]
    # dynamic K from speed.json: no saving at the default K = 4, half the ANN queries at K = 8
    assert cells(text, "| MIND §4.3 | dynamic K cuts serving cost vs fixed K = 4 (the default)")[3] == "does not hold"
    row = cells(text, "| MIND §4.3 | dynamic K cuts serving cost vs fixed K = 8")
    assert row[3] == "holds" and "50% saved" in row[4]
    assert cells(text, "| 20 | 8 | 188 |")[4:7] == ["4.00", "8.00", "50%"]
    # UMI Table 2 orderings from the seeds: MIND (0.315) is above YouTube DNN (0.265) beyond noise
    assert cells(text, "| UMI Table 2 | MIND < YouTube DNN |")[3] == "does not hold"
    assert cells(text, "| UMI Table 2 | UMI+HN best (YouTube DNN < UMI+HN) |")[3] == "holds"
    assert cells(text, "| ComiRec Table 5 |")[3] == "holds"


def test_verdicts_flip_with_the_numbers(results, tmp_path):
    data = json.loads((results / "quality.json").read_text())
    sigma = data["sweeps"]["sigma"]["variants"]["mind_hn"]
    sigma[0]["test.recall@50"] = 0.20                                         # σ = 0.1 far below: not robust
    k_dr = data["sweeps"]["K"]["variants"]["comirec_dr_hn"]
    k_dr[0]["test.recall@50"] = 0.30                                          # K = 2 far below: sensitive
    p = data["sweeps"]["p"]["variants"]["mind_hn"]
    p[0]["test.recall@50"] = 0.29                                             # p = 0 within h of p = 1
    for pt in (sigma[0], k_dr[0], p[0]):                                      # its user interval moves with it
        pt["test.recall@50_ci"] = [pt["test.recall@50"] - 0.04, pt["test.recall@50"] + 0.04]
    mind = data["results"]["mind"]["sg"]["recall@50"]
    mind.update(mean=0.28, ci_low=0.275, ci_high=0.285, user_ci=[0.24, 0.32])  # now at YouTube DNN's level
    for v, sw in data["lambda_sweep"].items():                              # λ: recall falls faster than
        for row in sw:                                                        # diversity rises, for MIND only
            if v == "mind":
                row["recall@50"] *= 1 - row["lambda"]
    (results / "quality.json").write_text(json.dumps(data))
    text = report.render(results, tmp_path / "R.md", tmp_path / "img", plots=False)
    row = cells(text, "| ComiRec Table 5 |")
    assert row[3] == "holds for 4/5 models" and "MIND: R -26%, D +25%;" in row[4]
    assert cells(text, "| MIND Fig. 3 | MIND+HN: robust to σ")[3] == "does not hold"
    assert cells(text, "| ComiRec Table 4 | ComiRec-DR+HN")[3] == "holds"
    assert cells(text, "| MIND Fig. 3 | MIND+HN: p = 0 worse")[3] == "within noise"
    assert cells(text, "| UMI Table 2 | MIND < YouTube DNN |")[3] == "within noise"


def test_partial_results_render(results, tmp_path):
    (results / "speed.json").unlink()
    data = json.loads((results / "quality.json").read_text())
    for key in ("sweeps", "lambda_sweep", "tuning"):
        del data[key]
    for v in data["results"].values():
        v.pop("loo", None)
    (results / "quality.json").write_text(json.dumps(data))
    text = report.render(results, tmp_path / "R.md", tmp_path / "img", plots=False)
    assert "Not run yet: no `loo` results in quality.json." in text
    assert cells(text, "| MIND §4.3 |")[3] == "not run"
    assert cells(text, "| ComiRec Table 4 |")[3] == "not run"
    assert cells(text, "| MIND Fig. 3 | robust to σ")[3] == "not run"
    (results / "quality.json").write_text(json.dumps({"meta": {}}))
    text = report.render(results, tmp_path / "R.md", tmp_path / "img", plots=False)
    assert "## quality" in text and "| UMI Table 2 | MIND < YouTube DNN |" in text


def test_report_skips_a_broken_file(results, tmp_path):
    (results / "index.json").write_text("{not json")
    text = report.render(results, tmp_path / "R.md", tmp_path / "img", plots=False)
    assert "`index.json` is not valid JSON" in text and "## quality" in text
    (results / "index.json").write_text(json.dumps({"rows": [{"name": "a", "qps": 1.0}]}))
    (results / "nosuchscript.json").write_text(json.dumps({"x": 1}))
    text = report.render(results, tmp_path / "R.md", tmp_path / "img", plots=False)
    assert "## index" in text and "(no benchmarks/nosuchscript.py found)" in text
    assert not (tmp_path / "img").exists()  # plots=False: tables only


def test_end_to_end_section_orders_phases_and_judges_the_dvc_repro_target():
    end_to_end_section = report.end_to_end_section

    def data(repro_s):
        return {"phases": {"dvc_repro": {"command": "make repro", "rc": 0, "wall_s": repro_s, "cpu_s": 1.0,
                                         "peak_rss_mb": 500.0},
                           "setup": {"command": "make setup", "rc": 0, "wall_s": 100.0, "cpu_s": 90.0,
                                     "peak_rss_mb": 300.0}},
                "make_repro": {"wall_s": 100.0 + repro_s, "cpu_s": 91.0, "peak_rss_mb": 500.0},
                "target_dvc_repro_s": 600.0, "target_met": repro_s <= 600.0,
                "models": {"mind": {"train": {"epochs": 3}, "test": {"test.recall@50": 0.4}},
                           "_gate": {"candidate": "mind", "passed": False, "rules": []}}}

    text = "\n".join(end_to_end_section(data(650.0)))
    assert text.index("| setup |") < text.index("| dvc_repro |")
    assert "**missed**" in text and "BLOCKED" in text and "| mind | 3 |" in text and "_gate" not in text
    assert "**met**" in "\n".join(end_to_end_section(data(550.0)))
