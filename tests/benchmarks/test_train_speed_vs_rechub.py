"""benchmarks/rechub_speed.py's summary (medians, paired ratios, the 2x verdict) and the RESULTS.md sections
of train_speed_vs_rechub / train_speed_compile / train_speed, on hand-made run records."""
from __future__ import annotations

from benchmark_modules import load


def _run(side, variant, sps, cpu, threads=1, warmup_s=0.5):
    return {"side": side, "variant": variant, "threads": threads, "samples_per_s": sps, "samples_per_cpu_s": cpu,
            "warmup_s": warmup_s}


RUNS = [_run("ours", "mind", 30_000, 31_000), _run("theirs", "mind", 10_000, 10_000),
        _run("theirs", "mind", 16_000, 16_000), _run("ours", "mind", 28_000, 29_000),   # repeat 2: theirs first
        _run("ours", "comirec_dr", 15_000, 15_000), _run("theirs", "comirec_dr", 9_000, 9_000),
        _run("ours", "umi", 12_000, 12_500),
        _run("ours_compiled", "umi", 21_000, 22_000, warmup_s=80.0)]


def test_summary_ratios_and_verdict():
    rs = load("rechub_speed")
    s = rs.summarise(RUNS, ["mind", "comirec_dr", "umi"], [1])
    mind = s["mind"]["1"]
    assert mind["ours_samples_per_s"] == 29_000 and mind["theirs_samples_per_s"] == 13_000
    assert abs(mind["ratio"] - 29_000 / 13_000) < 1e-9
    assert mind["paired_ratios"] == [3.0, 1.75]  # runs paired in order: (30k, 10k), (28k, 16k)
    assert mind["meets_target"] is True  # min(2.23, median 2.375) >= 2
    assert s["comirec_dr"]["1"]["meets_target"] is False  # 1.67
    umi = s["umi"]["1"]
    assert "ratio" not in umi and umi["theirs_samples_per_s"] is None
    assert abs(umi["compiled_over_eager"] - 1.75) < 1e-9 and umi["compiled_warmup_s"] == 80.0


def test_sections_render_the_figures():
    rs = load("rechub_speed")
    data = {"summary": rs.summarise(RUNS, ["mind", "comirec_dr", "umi"], [1]), "target_factor": 2.0,
            "setting": {"repeats": 2, "steps": 100, "warmup": 20}, "machine": {"cpu_count": 2}, "note": "NOTE-X"}
    text = "\n".join(load("report_train_speed_vs_rechub").section(data, None, "img", None, None))
    assert "| MIND | 1 | 29,000 | 13,000 | 2.23 | 3.00, 1.75 |" in text and "NOTE-X" in text
    assert "| ComiRec-DR | 1 | 15,000 | 9,000 | 1.67 | 1.67 | 1.67 | no (< 2×) |" in text
    assert "Known bugs" in text and "MIND temperature" in text  # quoted from the script
    compiled = "\n".join(load("report_train_speed_compile").section(data, None, "img", None, None))
    assert "| UMI | 1 | 12,000 | 21,000 | 1.75 | 80.0 | 0.5 |" in compiled
    ts = {"models": {"youtube_dnn": {"samples_per_s": 40_000.0, "samples_per_cpu_s": 41_000.0, "epochs": 2}},
          "machine": {"cpu_count": 2}, "config": {"train": {"max_epochs": 2}}}
    text = "\n".join(load("report_train_speed").section(ts, None, "img", None, None))
    assert "What samples/s times:" in text and "on_validation_epoch_start" in text
    assert "| youtube_dnn | 40,000 | 41,000 | 2 |" in text
    assert "What samples/s times:" not in "\n".join(load("report_train_speed_2threads").section(ts, None, "", None, None))
