"""A Taobao-scale run on one box: 1M users, 2M items, up to 100M interactions, every step as DVC runs it.

Synthetic data with planted interests (components.synthetic through ``ingest``), then per size:

1. ``ingest`` -> ``validate`` -> ``split``: each through its own CLI in a fresh subprocess, exactly as
   benchmarks/data_path.py runs them (its :func:`data_path.run_step`: wall time around the subprocess, peak
   RSS from ``os.wait4``'s ``ru_maxrss``; the commands from :func:`data_path.data_steps`).
2. ``sample``: an evaluation view of the split (in this process): train.parquet and the side tables linked,
   ``test.parquet`` reduced to ``--test-users`` (10,000) sampled test users and ``valid.parquet`` to
   ``--valid-users`` (scoring every valid user against 2M items would dominate the run and is not the point);
   a second, smaller view (``--index-users``) for build_index, whose recall check is exact search too.
3. ``train``: a fixed number of steps on the full catalogue. ``components.train`` has no step bound (only
   ``max_epochs``; one epoch of 80M samples is hours here), so this script's ``train-worker`` subcommand
   builds the model, :class:`components.task.RetrievalTask` and :class:`components.train_data.SplitDataModule`
   from the same params as ``components.train._fit`` does and drives them with a Lightning
   ``Trainer(max_steps=warmup + steps, limit_val_batches=0)``; throughput is timed over the steps after the
   warm-up (samples/s, CPU s per step), setup (reading 80M training interactions) separately; peak RSS of
   the whole subprocess. ``--optimizer`` sets ``train.embedding_optimizer`` (``sparse_adam`` by default).
   The model is saved like components.train saves it, so the next steps read it unchanged.
4. ``build_index``: ``python -m components.build_index`` (factory ``auto``: IVF over the catalogue, with its
   recall@50 against exact search on the index view's users, build time and queries/s).
5. ``evaluate``: ``python -m components.evaluate`` on the sampled users: exact retrieval over all items and
   the same metrics through the IVF index (``evaluate.faiss_factory`` = the factory build_index chose),
   the gap reported.

Sizes keep 1M users and 2M items and vary the mean sequence length (10, 50, 100 -> ~10M, 50M, 100M
interactions), so the growth with interactions is read at a fixed catalogue.

    .venv/bin/python benchmarks/scale.py --sizes 10M                      # exploratory
    (on a quiet box) .venv/bin/python benchmarks/scale.py --sizes 10M 50M 100M
    .venv/bin/python benchmarks/scale.py --sizes 100M --skip-train --force   # data path only, re-measured
    (on a quiet box) .venv/bin/python benchmarks/scale.py --sizes 100M --data-only --keep --force
    .venv/bin/python benchmarks/scale.py --sizes 100M --reuse-data       # then the rest on its kept split

Resumable: a size already completed in ``benchmarks/results/scale.json`` is skipped unless ``--force``; the
results file is rewritten after every size. Outputs go to ``benchmarks/out/scale/<size>/`` (ignored by git);
the big intermediates are deleted when a size is done (``--keep`` keeps them).
Targets (issue 12): the data path at 100M in <= 5 minutes and <= 8 GB peak on 2 cores; IVF recall@50 >= 0.95.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if str(REPO / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO / "benchmarks"))

import yaml  # noqa: E402

from data_path import _dir_mb, data_steps, run_step_logged, synthetic_params  # noqa: E402

TARGET_DATA_WALL_S = 300.0
TARGET_DATA_PEAK_MB = 8 * 1024.0
TARGET_RECALL = 0.95

BASE = dict(users=1_000_000, items=2_000_000, categories=1000, interests=4, min_length=8, noise=0.1, skew=0.8)
SIZES = {"10M": 10.0, "50M": 50.0, "100M": 100.0}  # name -> mean interactions per user (1M users)
MODEL = "mind"  # multi-interest (K = 4); item = mean of id and category embeddings (MIND §3.2)


def size_config(name: str, users: int | None = None, items: int | None = None) -> dict:
    """Synthetic generator settings of size ``name`` ("10M" ... or "<n>k" for tests: mean length from it)."""
    cfg = dict(BASE)
    if users:
        cfg["users"] = users
    if items:
        cfg["items"] = items
    if name in SIZES:
        cfg["mean_length"] = SIZES[name]
    else:  # e.g. "50k": total interactions over the users
        n = float(name[:-1]) * {"k": 1e3, "M": 1e6}[name[-1]]
        cfg["mean_length"] = max(n / cfg["users"], float(cfg["min_length"]))
    return cfg


# --- sample -----------------------------------------------------------------------------------------------

def sample_view(split: Path, view: Path, *, test_users: int, valid_users: int, seed: int) -> dict:
    """An evaluation view of ``split`` in ``view``: everything linked, valid/test reduced to sampled users."""
    import numpy as np
    import pyarrow.parquet as pq

    if view.exists():
        shutil.rmtree(view)
    view.mkdir(parents=True)
    counts = {}
    for f in split.iterdir():
        if f.name in ("valid.parquet", "test.parquet"):
            continue
        os.symlink(f.resolve(), view / f.name)
    rng = np.random.default_rng(seed)
    for name, n in (("valid", valid_users), ("test", test_users)):
        table = pq.read_table(split / f"{name}.parquet")
        rows = np.sort(rng.choice(table.num_rows, size=min(n, table.num_rows), replace=False))
        pq.write_table(table.take(rows), view / f"{name}.parquet")
        counts[name] = {"users": int(len(rows)), "of": int(table.num_rows)}
    return counts


# --- train worker -------------------------------------------------------------------------------------------

def train_worker(argv: list[str]) -> None:
    """Fixed-step training through the project's task and data module (see the module docstring, step 3)."""
    p = argparse.ArgumentParser(prog="scale.py train-worker")
    p.add_argument("--params", type=Path, required=True)
    p.add_argument("--model", default=MODEL)
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    args = p.parse_args(argv)

    import resource

    import pytorch_lightning as pl
    import torch

    import models as M
    from components.config import load_params, section, to_dict
    from components.io import write_json
    from components.task import RetrievalTask
    from components.train import ModelConfig, TrainConfig, keep_freed_memory
    from components.train_data import SplitDataModule, load_split_meta

    t_start = time.perf_counter()
    params = load_params(args.params)
    variant = ModelConfig.from_params(params, args.model)
    cfg = variant.train_config(section(params, "train", TrainConfig))
    seed = int(params["seed"])
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    keep_freed_memory()
    pl.seed_everything(seed, workers=True, verbose=False)
    meta = load_split_meta(args.split)
    hparams = {**variant.hparams, "num_items": meta.num_items, "num_categories": meta.num_categories,
               "profile_cardinalities": list(meta.profile_cardinalities), "max_len": cfg.max_len}
    net = M.build_model(variant.arch, **hparams)
    M.set_item_category(net, meta.item_category)
    task = RetrievalTask(arch=variant.arch, model_hparams=dict(net.config), num_negatives=cfg.num_negatives,
                         lr=cfg.lr, weight_decay=cfg.weight_decay, sampler=cfg.sampler,
                         embedding_optimizer=cfg.embedding_optimizer,
                         in_batch_negatives=cfg.in_batch_negatives, attention_pow=variant.attention_pow,
                         harder_negatives=variant.harder_negatives, seed=seed, show_every=0, model=net,
                         item_counts=meta.item_counts)
    dm = SplitDataModule(args.split, meta, max_len=cfg.max_len, batch_size=cfg.batch_size,
                         eval_batch_size=cfg.eval_batch_size, seed=seed, num_workers=cfg.num_workers)

    class StepTimer(pl.Callback):
        """Wall and CPU time of the steps after ``warmup`` (the first steps pay allocation and caches)."""

        def __init__(self):
            self.first = self.t0 = self.c0 = self.t1 = self.c1 = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.first is None:
                self.first = time.perf_counter()
            if trainer.global_step == args.warmup and self.t0 is None:
                self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_train_end(self, trainer, pl_module):
            self.t1, self.c1 = time.perf_counter(), time.process_time()

    timer = StepTimer()
    trainer = pl.Trainer(accelerator=cfg.accelerator, devices=1, precision=cfg.precision,
                         max_steps=args.warmup + args.steps, max_epochs=-1, limit_val_batches=0,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                         deterministic=cfg.deterministic, callbacks=[timer], default_root_dir=args.out)
    trainer.fit(task, datamodule=dm)
    steps = trainer.global_step - args.warmup
    wall = timer.t1 - timer.t0
    summary = {
        "variant": args.model, "arch": variant.arch, "embedding_optimizer": cfg.embedding_optimizer,
        "batch_size": cfg.batch_size, "num_negatives": cfg.num_negatives, "torch_threads": torch.get_num_threads(),
        "num_items": meta.num_items, "train_samples": len(dm.train_set), "warmup_steps": args.warmup,
        "steps": steps, "steps_wall_s": wall, "samples_per_s": steps * cfg.batch_size / wall,
        "ms_per_step": 1e3 * wall / steps, "cpu_ms_per_step": 1e3 * (timer.c1 - timer.c0) / steps,
        "setup_s": timer.first - t_start,  # params, split meta, model, 80M training interactions read
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "item_table_mb": meta.num_items * int(net.config.get("dim", 64)) * 4 / 2**20,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    extra = {"variant": args.model, "num_items": meta.num_items, "num_categories": meta.num_categories,
             "profile_fields": list(meta.profile_fields), "profile_cardinalities": list(meta.profile_cardinalities),
             "max_len": cfg.max_len, "train": to_dict(cfg),
             "model": {"arch": variant.arch, "harder_negatives": variant.harder_negatives,
                       "attention_pow": variant.attention_pow, "hparams": dict(variant.hparams),
                       "overrides": dict(variant.overrides)},
             "seed": seed, "fixed_steps": args.warmup + args.steps}
    M.save_model(net.cpu(), args.out / "model.pt", extra=extra)
    write_json(args.out / "train.json", summary)
    print(f"train-worker {args.model}: {steps} steps after {args.warmup} warm-up, "
          f"{summary['samples_per_s']:.0f} samples/s, {summary['ms_per_step']:.1f} ms/step, "
          f"setup {summary['setup_s']:.1f} s, peak RSS {summary['peak_rss_mb']:.0f} MB")


# --- one size -----------------------------------------------------------------------------------------------

DATA_KEYS = ("data_path", "ingest_stats", "split_stats", "interactions", "output_mb", "validation")


def run_size(name: str, args, params_base: dict, previous: dict | None = None) -> dict:
    """Every step of one size; returns its results block (``completed`` False where a step failed).

    With ``args.reuse_data`` the data path is not run again: its steps and figures are taken from
    ``previous`` (this size's recorded ``--data-only --keep`` block) and its kept split is used, so the data
    path can be timed on a quiet machine and the longer train/index/evaluate steps run afterwards.
    """
    work = args.work / name
    reuse = None
    if args.reuse_data:
        if not (previous and previous.get("data_only") and previous.get("completed")):
            raise SystemExit(f"--reuse-data: no completed --data-only record of {name} in {args.results}")
        if not (work / "split" / "stats.json").exists():
            raise SystemExit(f"--reuse-data: {work / 'split'} is gone (run --data-only with --keep)")
        reuse = previous
        for folder in ("split_eval", "split_index", "models", "index", "eval"):
            shutil.rmtree(work / folder, ignore_errors=True)
    elif work.exists():
        shutil.rmtree(work)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    size = size_config(name, args.users, args.items)
    params = synthetic_params(params_base, size, args.seed)
    params["train"] = {**params.get("train", {}), "embedding_optimizer": args.optimizer,
                       "num_threads": args.threads}
    params["evaluate"] = {**params.get("evaluate", {}), "bootstrap_samples": 200, "lambda_sweep": [0.0],
                          "heatmap_users": 0, "batch_size": 256}
    params_path = work / "params.yaml"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))

    canonical, validation, split = work / "canonical", work / "validation", work / "split"
    view, models_dir, index_dir, eval_dir = work / "split_eval", work / "models", work / "index", work / "eval"
    steps: list[dict] = []
    block = {"size": name, "config": size, "steps": steps, "completed": False}

    def step(label, cmd):
        res = run_step_logged(f"scale {name}", label, cmd, work / "logs", width=11)
        steps.append(res)
        return res["returncode"] == 0

    if reuse is not None:
        steps.extend(reuse["steps"][:3])
        block.update({k: reuse[k] for k in DATA_KEYS if k in reuse})
        block["data_path_recorded_at"] = reuse.get("recorded_at")
        block["data_path_machine"] = reuse.get("machine")
        return _rest(name, args, block, params, params_path, work, step)
    for label, cmd in data_steps(params_path, canonical, validation, split):
        if not step(label, cmd):
            return block
    data = steps[:3]
    block["data_path"] = {"wall_s": round(sum(s["wall_s"] for s in data), 1),
                          "cpu_s": round(sum(s["cpu_s"] for s in data), 1),
                          "peak_rss_mb": max(s["peak_rss_mb"] for s in data)}
    block["ingest_stats"] = json.loads((canonical / "stats.json").read_text())
    block["split_stats"] = json.loads((split / "stats.json").read_text())
    block["interactions"] = block["ingest_stats"].get("interactions")
    block["output_mb"] = {"canonical": _dir_mb(canonical), "split": _dir_mb(split)}
    validation_report = json.loads((validation / "result.json").read_text())
    block["validation"] = {"success": validation_report["success"],
                           "expectations": validation_report["statistics"]["evaluated"]}
    print(f"[scale {name}] data path {block['data_path']['wall_s']} s wall, peak "
          f"{block['data_path']['peak_rss_mb']} MB; {block['interactions']} interactions", flush=True)
    if not args.keep:
        shutil.rmtree(canonical, ignore_errors=True)
    if args.data_only:
        block["completed"] = True
        return block
    return _rest(name, args, block, params, params_path, work, step)


def _rest(name: str, args, block: dict, params: dict, params_path: Path, work: Path, step) -> dict:
    """run_size after the data path: sample, train, build_index, evaluate."""
    validation, split = work / "validation", work / "split"
    view, models_dir, index_dir, eval_dir = work / "split_eval", work / "models", work / "index", work / "eval"
    t0 = time.perf_counter()
    block["sample"] = sample_view(split, view, test_users=args.test_users, valid_users=args.valid_users,
                                  seed=args.seed)
    # build_index's recall check scores its users' interests exactly against every item: a smaller sample
    index_view = work / "split_index"
    block["sample"]["index"] = sample_view(split, index_view, test_users=args.index_users,
                                           valid_users=args.index_users // 4, seed=args.seed + 1)
    block["sample"]["wall_s"] = round(time.perf_counter() - t0, 1)

    py = sys.executable
    steps_n, warmup = (0, 1) if args.skip_train else (args.steps, args.warmup)
    if not step("train", [py, str(Path(__file__).resolve()), "train-worker", "--params", str(params_path),
                          "--model", MODEL, "--split", str(view), "--out", str(models_dir / MODEL),
                          "--steps", str(max(steps_n, 1)), "--warmup", str(warmup)]):
        return block
    block["train"] = json.loads((models_dir / MODEL / "train.json").read_text())
    block["train"]["skipped"] = bool(args.skip_train)
    if not step("build_index", [py, "-m", "components.build_index", "--params", str(params_path), "--model", MODEL,
                                "--models-dir", str(models_dir), "--split", str(index_view),
                                "--out", str(index_dir)]):
        return block
    index = json.loads((index_dir / "index.json").read_text())
    block["index"] = {k: v for k, v in index.items() if not isinstance(v, list)}
    # evaluate through the very IVF factory and nprobe build_index chose (exact retrieval beside it)
    params["evaluate"]["faiss_factory"] = index.get("factory", "Flat")
    params["evaluate"]["faiss_nprobe"] = int(index.get("nprobe", 16))
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    if not step("evaluate", [py, "-m", "components.evaluate", "--params", str(params_path), "--model", MODEL,
                             "--models-dir", str(models_dir), "--split", str(view), "--out", str(eval_dir)]):
        return block
    metrics = json.loads((eval_dir / "metrics.json").read_text()) if (eval_dir / "metrics.json").exists() else {}
    block["evaluate"] = {k: v for k, v in metrics.items()
                         if k.startswith("test.") and ("@50" in k or "num_users" in k)
                         or k.startswith("faiss") or "gap" in k}
    block["completed"] = True
    if not args.keep:
        for folder in (split, view, index_view, validation):
            shutil.rmtree(folder, ignore_errors=True)
    return block


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train-worker"]:
        train_worker(argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), help="10M 50M 100M (or e.g. 50k for a smoke test)")
    p.add_argument("--users", type=int, default=None, help=f"users (default {BASE['users']})")
    p.add_argument("--items", type=int, default=None, help=f"items (default {BASE['items']})")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--steps", type=int, default=200, help="timed training steps after the warm-up")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--optimizer", default="sparse_adam", choices=["adam", "sparse_adam"],
                   help="train.embedding_optimizer")
    p.add_argument("--threads", type=int, default=1, help="train.num_threads (torch threads of the training)")
    p.add_argument("--skip-train", action="store_true", help="one step only: the model the index/evaluation use")
    p.add_argument("--data-only", action="store_true", help="ingest -> validate -> split only")
    p.add_argument("--test-users", type=int, default=10_000)
    p.add_argument("--valid-users", type=int, default=500)
    p.add_argument("--index-users", type=int, default=2_000,
                   help="test users (and a quarter as many valid users) of build_index's recall check")
    p.add_argument("--force", action="store_true", help="re-run sizes already completed in the results file")
    p.add_argument("--keep", action="store_true", help="keep the outputs of each size")
    p.add_argument("--reuse-data", action="store_true",
                   help="skip ingest/validate/split: take them from the size's recorded --data-only --keep run")
    p.add_argument("--params", type=Path, default=REPO / "params.yaml")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "scale")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "scale.json")
    args = p.parse_args(argv)

    from components.io import relative_paths

    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    results.setdefault("sizes", {})
    params_base = yaml.safe_load(args.params.read_text())
    ok = True
    for name in args.sizes:
        old = results["sizes"].get(name)
        if old and old.get("completed") and not args.force and not (old.get("data_only") and not args.data_only):
            print(f"[scale {name}] already in {args.results} (use --force to re-run)")
            continue
        block = run_size(name, args, params_base, old)
        block["data_only"] = bool(args.data_only)
        command = "benchmarks/scale.py " + " ".join(argv)
        block["command"] = (f"{old['command']} ; then {command}" if args.reuse_data and old.get("command")
                            else command)
        block["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                            "load_avg_1m_end": round(os.getloadavg()[0], 2)}
        block["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        results["sizes"][name] = block
        ok &= block["completed"]
        results["targets"] = {"data_path_wall_s": TARGET_DATA_WALL_S, "data_path_peak_rss_mb": TARGET_DATA_PEAK_MB,
                              "index_recall_at_50": TARGET_RECALL}
        results["command"] = "benchmarks/scale.py " + " ".join(argv)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(relative_paths(results, REPO), indent=2) + "\n")
        print(f"[scale {name}] written to {args.results}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
