"""Quality of sparse embedding training (issue 12 part 1): test metrics of every model trained with
``train.embedding_optimizer: adam`` (dense gradients, Adam over every row each step) against the sparse modes
(``sparse_adam``: lazy Adam on the rows a step used; ``rowwise_adagrad``: FBGEMM/TorchRec's row-wise Adagrad,
optionally with its own ``train.embedding_lr``), same params, seed and split (MovieLens-100K), side by side,
and the committed DVC run's figures (``artifacts/eval/<variant>/metrics.json``, dense Adam, seed 2026) beside
them.

What runs is the product's CLIs, exactly as ``dvc repro`` runs them, once per (mode, seed) with a params copy
whose only changes are ``train.embedding_optimizer`` (+ ``train.embedding_lr``) and ``seed``::

    python -m components.train    --params P --model V --split SPLIT --out WORK/seed<S>/<mode>/models/V
    python -m components.evaluate --params P --model V --split SPLIT --models-dir WORK/seed<S>/<mode>/models \\
        --out WORK/seed<S>/<mode>/eval/V

``SPLIT`` is ``data/split`` (the committed split, made with seed 2026). Another seed changes the model's
initialisation and the negatives, not the split (re-splitting would change the test users, and with them the
dense baseline). ``--wrap`` puts a command prefix before every subprocess (e.g. ``--wrap nice`` on a shared
machine); a (mode, seed, variant) whose ``metrics.json`` exists is not run again (resumable).

A mode is ``NAME`` or ``NAME@LR`` (``LR`` = ``train.embedding_lr``; e.g. ``rowwise_adagrad@0.03``).

The issue's criterion: test Recall@50 of a sparse mode within +-0.01 of today's (dense) per model, or the
difference explained. The test set is ~94 users, so the per-user bootstrap CI of each figure (evaluate's
``_ci_low``/``_ci_high``) is recorded too, to judge whether a difference is beyond noise. Every run is kept in
``runs`` (one row per variant, mode, seed), merged with the file's earlier runs (a new run of the same key
replaces the old row); ``summary`` holds, per variant and mode, the test Recall@50 difference against dense
Adam of the same seed, per seed and on average.

    .venv/bin/python benchmarks/sparse_quality.py --modes adam,sparse_adam,rowwise_adagrad@0.03 --seed 2026
    .venv/bin/python benchmarks/sparse_quality.py --modes rowwise_adagrad@0.03 --variants mind,umi --seed 2027
    .venv/bin/python benchmarks/sparse_quality.py --collect    # only read the work folder back

k-fold (``--kfold``): 94 test users cannot resolve +-0.01, so a sparse mode is also compared with dense Adam on
the 10-fold strong-generalization benchmark of benchmarks/quality.py (943 test users pooled, each a test user
in exactly one fold): the sparse mode trains each fold at the variant's k-fold setting (its fold-0 choice,
quality_kfold.json's ``overrides``), seed 2026, 10-epoch budget, exactly as ``quality.py --stage kfold`` runs
(its ``_train_and_evaluate``, with ``KFOLD_TRAIN`` set to the sparse mode); the dense Adam records are
quality.py's own (``benchmarks/out/quality/runs/kf10_f*/<variant>/<setting>/seed2026.json``, or
``--kfold-dense-rerun`` retrains the dense side too). The per-user test Recall@50 of both are paired
(benchmarks/kfold_stats.py: paired bootstrap interval of the mean difference, Wilcoxon signed-rank)::

    .venv/bin/python benchmarks/sparse_quality.py --kfold --modes rowwise_adagrad@0.1 --variants mind,umi

Writes ``benchmarks/results/sparse_quality.json`` (rendered by benchmarks/report_sparse_quality.py).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "sparse_quality.json"
METRICS = ("test.recall@50", "test.recall@50_ci_low", "test.recall@50_ci_high", "test.ndcg@50",
           "test.hitrate@50", "test.recall@20")
TRAIN_KEYS = ("best_val_recall@50", "best_epoch", "epochs", "cpu_seconds_per_epoch")
TOLERANCE = 0.01
DEFAULT_SEED = 2026
VARIANTS = "youtube_dnn,mind,mind_hn,comirec_dr,comirec_dr_hn,comirec_sa,comirec_sa_hn,umi,umi_hn"


def parse_mode(mode: str) -> tuple[str, float | None]:
    """``NAME`` or ``NAME@LR`` -> (embedding_optimizer, embedding_lr or None)."""
    name, _, lr = mode.partition("@")
    return name, (float(lr) if lr else None)


def mode_params(params: dict, mode: str, seed: int) -> dict:
    """A copy of ``params`` training with ``mode`` and ``seed``."""
    name, lr = parse_mode(mode)
    p = json.loads(json.dumps(params))
    p["seed"] = seed
    p["train"]["embedding_optimizer"] = name
    if lr is not None:
        p["train"]["embedding_lr"] = lr
    return p


def run_mode(params_path: Path, mode: str, seed: int, variants: list[str], work: Path, wrap: list[str]) -> None:
    """Train and evaluate ``variants`` with ``mode`` and ``seed`` into ``work/seed<seed>/<mode>``."""
    base = work / f"seed{seed}" / mode
    p = base / "params.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(mode_params(yaml.safe_load(params_path.read_text()), mode, seed), sort_keys=False))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for v in variants:
        if (base / "eval" / v / "metrics.json").exists():
            continue
        for cmd in (["-m", "components.train", "--params", str(p), "--model", v, "--split", "data/split",
                     "--out", str(base / "models" / v)],
                    ["-m", "components.evaluate", "--params", str(p), "--model", v, "--split", "data/split",
                     "--models-dir", str(base / "models"), "--out", str(base / "eval" / v)]):
            t0 = time.time()
            subprocess.run([*wrap, sys.executable, *cmd], cwd=REPO, env=env, check=True,
                           stdout=subprocess.DEVNULL)
            print(f"{mode} seed {seed} {v} {cmd[1].split('.')[-1]}: {time.time() - t0:.0f} s wall", flush=True)


def read_run(eval_dir: Path, train_dir: Path | None) -> dict | None:
    """The metrics of one evaluated run (None if it has none)."""
    ev = eval_dir / "metrics.json"
    if not ev.exists():
        return None
    m = json.loads(ev.read_text())
    row = {"label": m.get("label"), **{k: m.get(k) for k in METRICS}}
    tr = train_dir / "train.json" if train_dir else None
    if tr and tr.exists():
        t = json.loads(tr.read_text())
        row.update({f"train.{k}": t.get(k) for k in TRAIN_KEYS})
    return row


def collect(work: Path) -> list[dict]:
    """Every evaluated run under ``work/seed<S>/<mode>/eval/<variant>``."""
    rows = []
    for seed_dir in sorted(work.glob("seed*")):
        seed = int(seed_dir.name[4:])
        for mode_dir in sorted(p for p in seed_dir.iterdir() if p.is_dir()):
            name, lr = parse_mode(mode_dir.name)
            for ev in sorted((mode_dir / "eval").glob("*")):
                r = read_run(ev, mode_dir / "models" / ev.name)
                if r is not None:
                    rows.append({"variant": ev.name, "mode": mode_dir.name, "embedding_optimizer": name,
                                 "embedding_lr": lr, "seed": seed, **r})
    return rows


def committed_rows(committed: Path, variants: list[str]) -> list[dict]:
    """The committed DVC run's figures (dense Adam, seed 2026) as rows of mode ``committed``."""
    rows = []
    for v in variants:
        r = read_run(committed / v, None)
        if r is not None:
            rows.append({"variant": v, "mode": "committed", "embedding_optimizer": "adam", "embedding_lr": None,
                         "seed": DEFAULT_SEED, **r})
    return rows


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` rows with the ones of the same (variant, mode, seed) replaced by ``new``'s."""
    key = lambda r: (r["variant"], r["mode"], r["seed"])  # noqa: E731
    out = {key(r): r for r in old}
    out.update({key(r): r for r in new})
    return sorted(out.values(), key=lambda r: (r["variant"], r["mode"], r["seed"]))


def summarise(runs: list[dict]) -> dict:
    """Per variant and sparse mode: test R@50 minus dense Adam's (same seed; for seed 2026 the committed
    figure when there is one, which is the issue's 'today's'), per seed and the mean over seeds."""
    by = {(r["variant"], r["mode"], r["seed"]): r for r in runs}
    out: dict = {}
    for (v, mode, seed), r in sorted(by.items()):
        if mode in ("adam", "committed"):
            continue
        base = by.get((v, "committed", seed)) or by.get((v, "adam", seed))
        if base is None or r.get("test.recall@50") is None:
            continue
        d = r["test.recall@50"] - base["test.recall@50"]
        e = out.setdefault(v, {}).setdefault(mode, {"delta_recall@50": {}, "delta_best_val_recall@50": {}})
        e["delta_recall@50"][str(seed)] = d
        bv, rv = base.get("train.best_val_recall@50"), r.get("train.best_val_recall@50")
        if bv is None:  # the committed row has no train.json here: the dense rerun's
            bv = (by.get((v, "adam", seed)) or {}).get("train.best_val_recall@50")
        if bv is not None and rv is not None:
            e["delta_best_val_recall@50"][str(seed)] = rv - bv
    for v, modes in out.items():
        for mode, e in modes.items():
            ds = list(e["delta_recall@50"].values())
            e["seeds"] = len(ds)
            e["mean_delta_recall@50"] = statistics.fmean(ds)
            e["seed2026_within_tolerance"] = (abs(e["delta_recall@50"][str(DEFAULT_SEED)]) <= TOLERANCE
                                              if str(DEFAULT_SEED) in e["delta_recall@50"] else None)
            e["mean_within_tolerance"] = abs(e["mean_delta_recall@50"]) <= TOLERANCE
    return out


# ------------------------------------------------------------------------------------------------- k-fold
def _bench(name: str):
    """A module of benchmarks/ by name: benchmarks/ is not a package, so its folder goes on ``sys.path``
    (as scale.py imports data_path)."""
    import importlib

    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    return importlib.import_module(name)


def kfold_setting(q, variant: str) -> str:
    """The quality.py GRID point ``variant`` trains at in the k-fold benchmark (its fold-0 choice)."""
    over = json.loads(q.KFOLD_RESULT.read_text())["models"][variant]["overrides"]
    return next(name for name, g in q.GRID.items() if g == over)


def kfold_record_path(work: Path, variant: str, mode: str, fold: int) -> Path:
    return work / "kfold" / mode / variant / f"kf10_f{fold}.json"


def kfold_one(variant: str, mode: str, fold: int, work: Path, params_path: Path) -> None:
    """Train + evaluate ``variant`` on fold ``fold`` with ``mode`` (quality.py's k-fold run, its setting)."""
    from components.config import load_params

    q = _bench("quality")
    name, lr = parse_mode(mode)
    q.OUT = work / "kfold" / "_tmp"  # where the weights go while the run lasts (the fold splits stay in DATA)
    q.KFOLD_TRAIN = {"embedding_optimizer": name, **({"embedding_lr": lr} if lr is not None else {})}
    path = kfold_record_path(work, variant, mode, fold)
    q._train_and_evaluate(load_params(params_path), q.fold_protocol(q.KFOLDS, fold), variant,
                          kfold_setting(q, variant), DEFAULT_SEED, path, max_epochs=q.BUDGET_EPOCHS, threads=1)
    record = json.loads(path.read_text())  # quality.py's record does not say which optimizer trained it
    record["train_overrides"] = q.KFOLD_TRAIN
    path.write_text(json.dumps(record, indent=2) + "\n")


def run_kfold(variants: list[str], modes: list[str], work: Path, params_path: Path, wrap: list[str],
              folds: list[int]) -> None:
    """Every (mode, variant, fold) not yet recorded, one subprocess each."""
    q = _bench("quality")
    for f in folds:
        q.prepare_fold_split(json.loads(json.dumps(_load_params(params_path))), q.KFOLDS, f)
    for mode in modes:
        for f in folds:
            for v in variants:
                if kfold_record_path(work, v, mode, f).exists():
                    continue
                t0 = time.time()
                subprocess.run([*wrap, sys.executable, __file__, "--kfold-one", f"{v},{mode},{f}",
                                "--work", str(work), "--params", str(params_path)], cwd=REPO, check=True,
                               env={**os.environ, "PYTHONWARNINGS": "ignore"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                print(f"kfold {mode} {v} fold {f}: {time.time() - t0:.0f} s wall", flush=True)


def _load_params(path: Path) -> dict:
    from components.config import load_params

    return load_params(path)


def dense_kfold_record(q, variant: str, fold: int, work: Path) -> Path:
    """quality.py's dense Adam record of ``variant`` on ``fold`` (or this script's dense rerun, if made)."""
    rerun = kfold_record_path(work, variant, "adam", fold)
    if rerun.exists():
        return rerun
    return q.run_path(q.fold_protocol(q.KFOLDS, fold), variant, kfold_setting(q, variant), DEFAULT_SEED)


def kfold_compare(variants: list[str], work: Path) -> dict:
    """Per variant and sparse mode: the folds both sides have, per-user test Recall@50 pooled over them,
    dense vs sparse paired (kfold_stats.paired_test; Δ = sparse − dense), per-fold means beside."""
    q, ks = _bench("quality"), _bench("kfold_stats")
    import numpy as np

    out: dict = {}
    modes = sorted(p.name for p in (work / "kfold").glob("*") if p.is_dir() and p.name not in ("_tmp", "adam"))
    for v in variants:
        for mode in modes:
            folds, dense_u, sparse_u, per_fold = [], [], [], {}
            dense_src = set()
            for f in range(q.KFOLDS):
                sp, dp = kfold_record_path(work, v, mode, f), dense_kfold_record(q, v, f, work)
                if not (sp.exists() and dp.exists()):
                    continue
                s, d = json.loads(sp.read_text()), json.loads(dp.read_text())
                su, du = s["per_user"], d["per_user"]
                if su["user_id"] != du["user_id"]:
                    raise ValueError(f"{v} fold {f}: dense and {mode} scored other users")
                folds.append(f)
                dense_src.add("rerun" if dp.is_relative_to(work) else "quality.py")
                dense_u += du["recall@50"]
                sparse_u += su["recall@50"]
                per_fold[str(f)] = {"adam": float(np.mean(du["recall@50"])), mode: float(np.mean(su["recall@50"]))}
            if not folds:
                continue
            a, b = np.asarray(dense_u), np.asarray(sparse_u)
            idx = ks.resample_index(len(a))
            out.setdefault(v, {})[mode] = {
                "folds": folds, "users": len(a), "dense_records": sorted(dense_src),
                "setting": kfold_setting(q, v), "adam_recall@50": float(a.mean()),
                "sparse_recall@50": float(b.mean()), "paired": ks.paired_test(a, b, idx),
                "per_fold_recall@50": per_fold}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--variants", default=VARIANTS)
    ap.add_argument("--modes", default="adam,sparse_adam,rowwise_adagrad",
                    help="NAME or NAME@EMBEDDING_LR, comma-separated")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "sparse_quality")
    ap.add_argument("--collect", action="store_true", help="only read the work folder back")
    ap.add_argument("--wrap", default="", help="command prefix for every run (shell words), e.g. 'nice'")
    ap.add_argument("--committed", type=Path, default=REPO / "artifacts" / "eval")
    ap.add_argument("--note", default=None, help="replace the file's note (a sentence recorded with the figures)")
    ap.add_argument("--out", type=Path, default=RESULT)
    ap.add_argument("--kfold", action="store_true", help="the 10-fold paired comparison instead of the split")
    ap.add_argument("--folds", default="0,1,2,3,4,5,6,7,8,9", help="with --kfold: the folds to run")
    ap.add_argument("--kfold-dense-rerun", action="store_true", help="with --kfold: also retrain dense Adam")
    ap.add_argument("--kfold-one", default=None, help=argparse.SUPPRESS)  # VARIANT,MODE,FOLD (a worker)
    args = ap.parse_args(argv)
    variants = args.variants.split(",")
    if args.kfold_one:
        v, mode, fold = args.kfold_one.split(",")
        return kfold_one(v, mode, int(fold), args.work, args.params)
    if args.kfold and not args.collect:
        modes = args.modes.split(",") + (["adam"] if args.kfold_dense_rerun else [])
        run_kfold(variants, modes, args.work, args.params, shlex.split(args.wrap),
                  [int(f) for f in args.folds.split(",")])
    elif not args.collect:
        for mode in args.modes.split(","):
            run_mode(args.params, mode, args.seed, variants, args.work, wrap=shlex.split(args.wrap))
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = merge(old.get("runs", []), committed_rows(args.committed, VARIANTS.split(",")) + collect(args.work))
    result = {
        "what": "test metrics (MovieLens-100K, ~94 test users) of each model trained with dense Adam vs the "
                "sparse modes of train.embedding_optimizer (sparse_adam = lazy Adam, rowwise_adagrad = "
                "FBGEMM/TorchRec row-wise Adagrad; '@LR' = train.embedding_lr), same params/split, per seed; "
                "'committed' = artifacts/eval of the committed dvc run (dense Adam, seed 2026)",
        "command": ".venv/bin/python benchmarks/sparse_quality.py --modes MODES --seed SEED [--variants V,...]",
        "tolerance_recall@50": TOLERANCE,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": old.get("note", "") if args.note is None else args.note,
        **{k: old[k] for k in ("previous_note", "commands", "tuning") if k in old},
        "summary": summarise(runs),
        "kfold": kfold_compare(VARIANTS.split(","), args.work) or old.get("kfold", {}),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for v, modes in result["summary"].items():
        for mode, e in modes.items():
            ds = ", ".join(f"{s}: {d:+.4f}" for s, d in e["delta_recall@50"].items())
            print(f"{v:<14} {mode:<24} test R@50 delta vs adam {ds} (mean {e['mean_delta_recall@50']:+.4f})")
    for v, modes in result["kfold"].items():
        for mode, e in modes.items():
            t = e["paired"]
            print(f"{v:<14} {mode:<24} k-fold ({len(e['folds'])} folds, {e['users']} users) adam "
                  f"{e['adam_recall@50']:.4f} vs {e['sparse_recall@50']:.4f}: diff {t['mean_diff']:+.4f} "
                  f"[{t['ci_low']:+.4f}, {t['ci_high']:+.4f}] Wilcoxon p {t['wilcoxon_p']:.3g}")
    print(f"-> {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")


if __name__ == "__main__":
    main()
