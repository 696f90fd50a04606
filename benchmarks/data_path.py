"""Benchmark of the data path ingest -> validate -> split on planted-interest synthetic data.

Each step runs through its own CLI in a fresh subprocess (``python -m components.<step>``), exactly as DVC
runs it; wall time is measured around the subprocess and peak memory is the subprocess's maximum resident
set size from ``os.wait4`` (its ``ru_maxrss``, which covers its waited-for children too). Steps run one after
another, so the path's peak is the largest step peak.

    .venv/bin/python benchmarks/data_path.py            # 1M users, 200k items, ~50M interactions
    .venv/bin/python benchmarks/data_path.py --small    # 20k users, 10k items, ~1M interactions (quick check)

``ingest`` with ``source: synthetic`` *is* the generator at scale (streamed in chunks of users).
``--with-log-ingest`` also times ``ingest`` with ``source: parquet`` reading the generated interactions as a
user's own log (an extra figure, not part of the path). Outputs go to ``benchmarks/out/data_path/``
(ignored by git); the figures are printed and written to ``benchmarks/results/data_path.json``. Targets
(issue 2): the whole path under 10 minutes and under 12 GB peak on a 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from components.io import relative_paths

REPO = Path(__file__).resolve().parents[1]
TARGET_WALL_S = 600.0
TARGET_PEAK_MB = 12 * 1024.0

FULL = dict(users=1_000_000, items=200_000, categories=200, interests=4, mean_length=50.0, min_length=8,
            noise=0.1, skew=0.8)
SMALL = dict(users=20_000, items=10_000, categories=50, interests=4, mean_length=50.0, min_length=8,
             noise=0.1, skew=0.8)


def run_step(name: str, cmd: list[str], log_dir: Path) -> dict:
    """Run ``cmd`` in a subprocess; wall time, peak RSS (MB) and exit status."""
    log = log_dir / f"{name}.log"
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO), "DVC_NO_ANALYTICS": "1",
                                     "GX_ANALYTICS_ENABLED": "False"})
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    rc = os.waitstatus_to_exitcode(status)
    proc.returncode = rc
    tail = log.read_text().strip().splitlines()[-3:]
    return {"step": name, "wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "returncode": rc, "log_tail": tail,
            # 1-minute load average before/after: other work on the machine inflates wall time, not cpu_s
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "command": " ".join(cmd[1:])}


def run_step_logged(prefix: str, name: str, cmd: list[str], log_dir: Path, width: int = 9) -> dict:
    """:func:`run_step` with a progress line before and a figures line after (the log tail on failure)."""
    print(f"[{prefix}] {name} ...", flush=True)
    res = run_step(name, cmd, log_dir)
    print(f"[{prefix}] {name:{width}s} wall {res['wall_s']:7.1f} s  peak RSS {res['peak_rss_mb']:8.1f} MB  "
          f"cpu {res['cpu_s']:7.1f} s  exit {res['returncode']}  load {res['load_avg_1m']}", flush=True)
    if res["returncode"] != 0:
        print("\n".join(res["log_tail"]), file=sys.stderr)
    return res


def _dir_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1) if path.exists() else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="quick check: 20k users, 10k items, ~1M interactions")
    for key, val in FULL.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=type(val), default=None,
                       help=f"synthetic {key} (full default {val}, small {SMALL[key]})")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--ground-truth", action="store_true", help="also write ground_truth.parquet")
    p.add_argument("--with-log-ingest", action="store_true",
                   help="extra: time ingest of the generated interactions as a parquet user log")
    p.add_argument("--params", type=Path, default=REPO / "params.yaml",
                   help="project params; validate/split sections are used as they are")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "data_path")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "data_path.json")
    p.add_argument("--keep", action="store_true", help="keep the outputs (default: delete them at the end)")
    args = p.parse_args(argv)

    size = dict(SMALL if args.small else FULL)
    for key in size:
        val = getattr(args, key)
        if val is not None:
            size[key] = val
    work = args.work
    if work.exists():
        shutil.rmtree(work)
    (work / "logs").mkdir(parents=True)

    params = synthetic_params(yaml.safe_load(args.params.read_text()), size, args.seed, args.ground_truth)
    params_path = work / "params.yaml"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))

    canonical, validation, split = work / "canonical", work / "validation", work / "split"
    steps = data_steps(params_path, canonical, validation, split)
    results = []
    for name, cmd in steps:
        res = run_step_logged("data_path", name, cmd, work / "logs")
        results.append(res)
        if res["returncode"] != 0:
            break
    extra = []
    if args.with_log_ingest and results[0]["returncode"] == 0:
        log_params = dict(params)
        log_params["ingest"] = {"source": "parquet", "path": str(canonical / "interactions.parquet")}
        lp = work / "params_log.yaml"
        lp.write_text(yaml.safe_dump(log_params, sort_keys=False))
        res = run_step("ingest_parquet_log", [sys.executable, "-m", "components.ingest", "run", "--params", str(lp),
                                              "--out", str(work / "canonical_from_log")], work / "logs")
        extra.append(res)
        print(f"[data_path] (extra) ingest of a parquet log: wall {res['wall_s']:.1f} s  "
              f"peak RSS {res['peak_rss_mb']:.1f} MB  exit {res['returncode']}", flush=True)

    stats = {}
    for name, folder in (("ingest", canonical), ("split", split)):
        f = folder / "stats.json"
        if f.exists():
            stats[name] = json.loads(f.read_text())
    ok = all(r["returncode"] == 0 for r in results) and len(results) == len(steps)
    total = round(sum(r["wall_s"] for r in results), 1)
    total_cpu = round(sum(r["cpu_s"] for r in results), 1)
    peak = max(r["peak_rss_mb"] for r in results)
    report = {
        "config": {**size, "seed": args.seed, "ground_truth": bool(args.ground_truth), "small": args.small},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "steps": results, "extra": extra,
        "total_wall_s": total, "total_cpu_s": total_cpu, "max_peak_rss_mb": peak,
        "output_mb": {"canonical": _dir_mb(canonical), "validation": _dir_mb(validation), "split": _dir_mb(split)},
        "interactions": stats.get("ingest", {}).get("interactions"),
        "ingest_stats": stats.get("ingest"), "split_stats": stats.get("split"),
        "targets": {"total_wall_s": TARGET_WALL_S, "peak_rss_mb": TARGET_PEAK_MB},
        "completed": ok,
        "within_targets": ok and total < TARGET_WALL_S and peak < TARGET_PEAK_MB,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(relative_paths(report, REPO), indent=2) + "\n")
    print(f"[data_path] total {total:.1f} s wall, {total_cpu:.1f} s cpu (target < {TARGET_WALL_S:.0f} s wall), "
          f"max peak RSS {peak:.1f} MB "
          f"(target < {TARGET_PEAK_MB:.0f}); interactions {report['interactions']}; "
          f"{'within targets' if report['within_targets'] else 'MISSED a target or a step failed'}")
    print(f"[data_path] figures written to {args.results}")
    if not args.keep:
        for folder in (canonical, validation, split, work / "canonical_from_log"):
            shutil.rmtree(folder, ignore_errors=True)
    return 0 if ok else 1


def synthetic_params(params: dict, size: dict, seed: int, ground_truth: bool = False) -> dict:
    """``params`` (a parsed params.yaml) with ``seed`` and an ``ingest`` section generating ``size``
    (keys of :data:`FULL`) with components.synthetic."""
    params = dict(params)
    params["seed"] = seed
    params["ingest"] = {"source": "synthetic", "synthetic": {
        "num_users": size["users"], "num_items": size["items"], "num_categories": size["categories"],
        "interests_per_user": size["interests"], "mean_length": float(size["mean_length"]),
        "min_length": size["min_length"], "noise": size["noise"], "popularity_skew": size["skew"],
        "save_ground_truth": bool(ground_truth)}}
    return params


def data_steps(params_path: Path, canonical: Path, validation: Path, split: Path) -> list[tuple[str, list[str]]]:
    """(name, command) of ingest -> validate -> split, each through its own CLI as dvc.yaml runs it."""
    py = sys.executable
    return [
        ("ingest", [py, "-m", "components.ingest", "run", "--params", str(params_path), "--out", str(canonical)]),
        ("validate", [py, "-m", "components.validate", "--params", str(params_path), "--data", str(canonical),
                      "--out", str(validation)]),
        ("split", [py, "-m", "components.split", "--params", str(params_path), "--data", str(canonical),
                   "--out", str(split)]),
    ]


if __name__ == "__main__":
    raise SystemExit(main())
