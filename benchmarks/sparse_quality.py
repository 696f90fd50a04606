"""Quality of sparse embedding training (issue 12 part 1): test metrics of every model trained with
``train.embedding_optimizer: adam`` (dense gradients, Adam over every row each step) and ``sparse_adam``
(sparse gradients, lazy Adam on the rows a step used), same params, seed and split (MovieLens-100K), side by
side, and the committed DVC run's figures (``artifacts/eval/<variant>/metrics.json``, dense Adam) beside them.

What runs is the product's CLIs, exactly as ``dvc repro`` runs them, once per mode with a params copy whose
only change is ``train.embedding_optimizer``::

    python -m components.train    --params P --model V --split data/split --out WORK/<mode>/models/V
    python -m components.evaluate --params P --model V --split data/split --models-dir WORK/<mode>/models \\
        --out WORK/<mode>/eval/V

The issue's criterion: test Recall@50 of sparse_adam within +-0.01 of today's (dense) per model, or the
difference explained. The test set is ~94 users, so the per-user bootstrap CI of each figure (evaluate's
``_ci_low``/``_ci_high``) is recorded too, to judge whether a difference is beyond noise.

    .venv/bin/python benchmarks/sparse_quality.py                      # train + evaluate both modes (slow)
    .venv/bin/python benchmarks/sparse_quality.py --collect WORK        # only read WORK/<mode>/... back
    .venv/bin/python benchmarks/sparse_quality.py --collect WORK --seed-dirs 2027=W2,2028=W3   # + other seeds

Writes ``benchmarks/results/sparse_quality.json`` (rendered by benchmarks/report_sparse_quality.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "sparse_quality.json"
MODES = ("adam", "sparse_adam")
METRICS = ("test.recall@50", "test.recall@50_ci_low", "test.recall@50_ci_high", "test.ndcg@50",
           "test.hitrate@50", "test.recall@20")
TRAIN_KEYS = ("best_val_recall@50", "best_epoch", "epochs", "samples_per_s", "cpu_seconds_per_epoch",
              "peak_rss_mb")
TOLERANCE = 0.01


def run_mode(params_path: Path, mode: str, variants: list[str], work: Path) -> None:
    """Train and evaluate ``variants`` with ``train.embedding_optimizer = mode`` into ``work/<mode>``."""
    params = yaml.safe_load(params_path.read_text())
    params["train"]["embedding_optimizer"] = mode
    p = work / f"params_{mode}.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for v in variants:
        for cmd in (["-m", "components.train", "--params", str(p), "--model", v, "--split", "data/split",
                     "--out", str(work / mode / "models" / v)],
                    ["-m", "components.evaluate", "--params", str(p), "--model", v, "--split", "data/split",
                     "--models-dir", str(work / mode / "models"), "--out", str(work / mode / "eval" / v)]):
            subprocess.run([sys.executable, *cmd], cwd=REPO, env=env, check=True)


def collect(work: Path, variants: list[str], committed: Path) -> dict:
    """The figures of ``work/<mode>/{models,eval}/<variant>`` and the committed eval beside them."""
    rows = {}
    for v in variants:
        row: dict = {}
        for mode in MODES:
            ev = work / mode / "eval" / v / "metrics.json"
            tr = work / mode / "models" / v / "train.json"
            if not ev.exists():
                continue
            m = json.loads(ev.read_text())
            t = json.loads(tr.read_text()) if tr.exists() else {}
            row[mode] = {**{k: m.get(k) for k in METRICS}, **{f"train.{k}": t.get(k) for k in TRAIN_KEYS}}
            row["label"] = m.get("label", v)
        c = committed / v / "metrics.json"
        if c.exists():
            m = json.loads(c.read_text())
            row["committed"] = {k: m.get(k) for k in METRICS}
        base = (row.get("committed") or row.get("adam") or {}).get("test.recall@50")
        sp = (row.get("sparse_adam") or {}).get("test.recall@50")
        rerun = (row.get("adam") or {}).get("test.recall@50")
        if base is not None and sp is not None:
            row["delta_recall@50"] = sp - base  # the criterion: against today's committed figure
            row["within_tolerance"] = abs(sp - base) <= TOLERANCE
        if rerun is not None and sp is not None:  # against dense Adam on the same code, same run
            row["delta_vs_adam_rerun"] = sp - rerun
        if row.get("adam") and row.get("committed"):
            row["dense_rerun_reproduces_committed"] = (row["adam"]["test.recall@50"]
                                                       == row["committed"]["test.recall@50"])
        rows[v] = row
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--variants", default="youtube_dnn,mind,comirec_dr,comirec_sa,umi,comirec_sa_hn")
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "sparse_quality")
    ap.add_argument("--collect", type=Path, default=None, help="only read an existing work folder back")
    ap.add_argument("--committed", type=Path, default=REPO / "artifacts" / "eval")
    ap.add_argument("--seed-dirs", default="", help="more seeds already run: SEED=WORK,... (same layout as "
                    "--work; collected per model under 'other_seeds')")
    ap.add_argument("--note", default="", help="a sentence recorded with the figures (e.g. the box's load)")
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)
    variants = args.variants.split(",")
    work = args.collect or args.work
    if args.collect is None:
        for mode in MODES:
            run_mode(args.params, mode, variants, work)
    result = {
        "what": "test metrics (MovieLens-100K, ~94 test users) of each model trained with dense Adam vs sparse "
                "gradients + lazy Adam (train.embedding_optimizer), same params/seed/split; 'committed' = "
                "artifacts/eval of the committed dvc run (dense Adam)",
        "command": ".venv/bin/python benchmarks/sparse_quality.py",
        "tolerance_recall@50": TOLERANCE,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": args.note,
        "models": collect(work, variants, args.committed),
    }
    for item in filter(None, args.seed_dirs.split(",")):
        seed, path = item.split("=", 1)
        for v, r in collect(Path(path), variants, Path("/nonexistent")).items():
            got = {m: (r.get(m) or {}).get("test.recall@50") for m in MODES}
            val = {m: (r.get(m) or {}).get("train.best_val_recall@50") for m in MODES}
            if any(x is not None for x in got.values()):
                result["models"][v].setdefault("other_seeds", {})[seed] = {
                    "test.recall@50": got, "best_val_recall@50": val}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for v, r in result["models"].items():
        f = lambda mode: (r.get(mode) or {}).get("test.recall@50")  # noqa: E731
        print(f"{v:<16} committed {f('committed')}  adam {f('adam')}  sparse_adam {f('sparse_adam')}  "
              f"delta {r.get('delta_recall@50')}")
    print(f"-> {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")


if __name__ == "__main__":
    main()
