"""Benchmark of the whole job from a fresh clone: ``make repro`` with set-up included, and ``dvc repro`` alone.

Issue 6 ("End to end"): wall time and peak memory of ``make repro`` from a fresh clone (virtual env from
the pinned lock, MovieLens-100K fetch and verification, then the DVC pipeline), and of ``dvc repro`` alone.
Target: ``dvc repro`` <= 10 minutes for the default model set on 2 cores.

Method: ``git clone`` of this repository's HEAD (the committed state, what CI and users get) into a scratch
folder, then three timed phases in that clone, each run by a small wrapper process so its figures are its
own: ``make setup`` (venv + lock), ``make data`` (fetch + verify) and ``make repro`` (set-up and data are
no-ops by then, so this phase is ``dvc repro``). Per phase: wall seconds, CPU seconds of the whole process
tree (user + system of every waited-for descendant), and the peak resident set of the largest single process
(``ru_maxrss`` of the wrapper's children, which Linux reports as the largest descendant's peak). The pip
cache of this machine is used (no network beyond the package registry is needed). The per-stage wall times
come from the clone's DVC metrics (``artifacts/models/*/train.json``), and the test metrics of every model
(``artifacts/eval/*/metrics.json``) and the gate's verdict are copied so the figures can be checked against
``benchmarks/results/quality.json`` (its seed-2026 runs use the same settings).

    .venv/bin/python benchmarks/end_to_end.py       # clone, set up, fetch, repro

Writes ``benchmarks/results/end_to_end.json``; the scratch clone is kept under ``benchmarks/out/e2e/``
(git-ignored) for inspection and removed at the start of the next run.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OUT = REPO / "benchmarks" / "out" / "e2e"
RESULT = REPO / "benchmarks" / "results" / "end_to_end.json"
TARGET_DVC_REPRO_S = 600.0

# Runs one command and prints {"rc", "wall_s", "cpu_s", "peak_rss_mb"} of it (and its descendants) as JSON on
# the last line of stderr: a fresh small interpreter, so the peak is not inherited from a big parent.
_WRAPPER = r"""
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.call(sys.argv[1:])
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stderr.write("\n" + json.dumps({"rc": rc, "wall_s": time.perf_counter() - t0,
                 "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mb": ru.ru_maxrss / 1024}) + "\n")
"""


def timed(cmd: list[str], cwd: Path, log: Path, env: dict[str, str]) -> dict:
    """Run ``cmd`` in ``cwd`` under the wrapper; its output goes to ``log``; return the wrapper's figures."""
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], cwd=cwd, env=env, stdout=fh,
                              stderr=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    with open(log, "a") as fh:
        fh.write("\n".join(lines[:-1]) + "\n")
    stats = json.loads(lines[-1])
    stats["command"] = " ".join(cmd)
    stats["log"] = str(log.relative_to(REPO))
    return stats


def model_figures(clone: Path) -> dict:
    """Training summary, test metrics and the gate's verdict that the clone's pipeline produced."""
    art = clone / "artifacts"
    out: dict[str, dict] = {}
    for train in sorted(art.glob("models/*/train.json")):
        data = json.loads(train.read_text())
        out.setdefault(train.parent.name, {})["train"] = {
            k: data.get(k) for k in ("epochs", "best_epoch", "best_val_recall@50", "wall_seconds",
                                     "cpu_seconds_per_epoch", "samples_per_s", "peak_rss_mb")}
    for metrics in sorted(art.glob("eval/*/metrics.json")):
        data = json.loads(metrics.read_text())
        out.setdefault(metrics.parent.name, {})["test"] = {
            k: data.get(k) for k in ("test.recall@20", "test.recall@50", "test.ndcg@50", "test.hitrate@50",
                                     "test.recall@50_ci_low", "test.recall@50_ci_high")}
    gate = art / "bundles" / "gate.json"
    if gate.exists():
        g = json.loads(gate.read_text())
        out["_gate"] = {"candidate": g.get("candidate"), "passed": g.get("passed"), "rules": g.get("rules")}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.strip()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    clone = OUT / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    load_before = os.getloadavg()
    phases: dict[str, dict] = {}
    phases["setup"] = timed(["make", "setup"], clone, OUT / "setup.log", env)
    phases["data"] = timed(["make", "data"], clone, OUT / "data.log", env)
    phases["dvc_repro"] = timed(["make", "repro"], clone, OUT / "repro.log", env)
    total = {k: sum(p[k] for p in phases.values()) for k in ("wall_s", "cpu_s")}
    total["peak_rss_mb"] = max(p["peak_rss_mb"] for p in phases.values())
    result = {
        "command": "python benchmarks/end_to_end.py",
        "commit": head, "uncommitted_changes_ignored": bool(dirty),
        "phases": phases, "make_repro": total,
        "target_dvc_repro_s": TARGET_DVC_REPRO_S,
        "target_met": phases["dvc_repro"]["rc"] == 0 and phases["dvc_repro"]["wall_s"] <= TARGET_DVC_REPRO_S,
        "models": model_figures(clone),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_before": [round(x, 2) for x in load_before],
                    "load_avg_after": [round(x, 2) for x in os.getloadavg()]},
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    from components.io import write_json

    write_json(args.out, result)
    for name, p in phases.items():
        print(f"{name:10s} rc {p['rc']}  wall {p['wall_s']:7.1f} s  cpu {p['cpu_s']:7.1f} s  "
              f"peak {p['peak_rss_mb']:7.1f} MB")
    print(f"make repro (all phases): wall {total['wall_s']:.1f} s, cpu {total['cpu_s']:.1f} s, "
          f"peak {total['peak_rss_mb']:.1f} MB; dvc repro target <= {TARGET_DVC_REPRO_S:.0f} s: "
          f"{'met' if result['target_met'] else 'missed'}")
    print(f"wrote {args.out}")
    if any(p["rc"] != 0 for p in phases.values()):
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
