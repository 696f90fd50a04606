"""Benchmark of how training time and memory scale (issue 6, "Speed, memory and scale"), on the real training path.

Every figure runs the product's own code: the split is built by ``components.ingest`` / ``components.split``
(CLIs), batches come from ``components.train_data.SplitDataModule``, the model from ``models.build_model`` and
the step is ``components.train.make_task``'s ``RetrievalTask.training_step`` (sampled softmax of models/loss.py,
fused Adam) driven by a Lightning ``Trainer``. Only the stopping rule differs from ``components.train.run``:
a fixed number of steps (``--warmup`` unmeasured, then ``--steps`` measured) instead of epochs, with no
validation, checkpoint or logger (``run`` has no step limit; epochs would not fit a shared 2-core machine).

Sweeps (one fresh subprocess per configuration, so peak memory never accumulates; the parent reads the
child's own ``ru_maxrss`` through ``os.wait4``, i.e. RUSAGE_CHILDREN of exactly that child):

- ``history_length``: L = train.max_len in {20, 50, 100, 200} for MIND, ComiRec-SA and YouTube DNN
  (MovieLens-100K split: train sequences median 66, max 648 items, 16 % of train users have >= 200);
- ``num_interests``: K in {1, 2, 4, 8} for MIND and ComiRec-DR (MovieLens-100K, L = train.max_len);
- ``catalogue_size``: 10k, 100k, 500k, 2M items for every model (YouTube DNN, MIND, ComiRec-DR, ComiRec-SA,
  UMI; ``--catalogue-models``) with sampled softmax (num_negatives uniform negatives over the whole
  catalogue), once per embedding optimizer (``--optimizers``: ``adam`` = dense gradients and Adam over every
  row, ``sparse_adam`` = sparse gradients and lazy Adam on the rows a step used; issue 12), side by side in
  one run. Choice: the catalogue is the MovieLens-100K split's items padded with never-seen items up to N
  (the model's ``num_items``, its routing-init table and the sampler all use N; the padded items get
  category 0). What grows with N is the embedding table, its dense gradient and Adam's two moment tables,
  which is exactly the cost the issue asks about; the data stays the same. A re-run replaces only the rows
  of the (model, optimizer, N) it measures, so the sweep can be recorded one model at a time.
  ``catalogue_targets`` (written with the sweep) checks issue 12's targets per model and optimizer: samples/s
  at the largest N >= 50 % of that at the smallest, and peak RSS <= 2.5 x the item table's bytes + 1 GB;
- ``num_users``: synthetic data (components.synthetic through ``ingest``, ``source: synthetic``) at 10k,
  100k and 1M users, then ``split``; MIND at the default config. Besides samples/s it records the data
  module's memory: the resident-set growth of ``SplitDataModule.setup()`` and the exact bytes of the arrays
  it keeps, each divided by the number of train interactions (O(interactions) means this stays flat);
- ``dynamic_k`` (not a training sweep): MIND's eq. 9 dynamic K vs fixed K at serving time on the
  MovieLens-100K valid+test users (their real history lengths, truncated to L): mean active interests (the
  number of ANN queries per user) and ``user_interests`` latency, batch 1 and batch 512, eval mode.

Each row records ``load_avg_1m`` (before, after) so readers can judge the noise: the machine is shared.
``samples_per_s`` is wall clock over the measured steps (data + forward + backward + Adam);
``samples_per_cpu_s`` uses the process CPU time of the same span, which a busy machine inflates far less.
``s_per_epoch`` = (train samples of the split) / samples_per_s: an extrapolation, not a timed epoch.

    .venv/bin/python benchmarks/speed.py                                  # everything (~25 min on 2 cores at load ~11)
    .venv/bin/python benchmarks/speed.py --sweeps history_length,dynamic_k --steps 30
    .venv/bin/python benchmarks/speed.py --print                          # the table of the saved JSON
    .venv/bin/python benchmarks/speed.py --plot                           # redraw the PNGs from it

Writes ``benchmarks/results/speed.json`` and ``benchmarks/results/img/speed_<sweep>.png``.
Work files (splits) go to ``benchmarks/out/speed/`` (ignored by git) and are reused when present.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from components.io import relative_paths

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out" / "speed"
RESULT = REPO / "benchmarks" / "results" / "speed.json"
IMG = REPO / "benchmarks" / "results" / "img"
PY = sys.executable

HISTORY_LENGTHS = [20, 50, 100, 200]
HISTORY_MODELS = ["mind", "comirec_sa", "youtube_dnn"]
NUM_INTERESTS = [1, 2, 4, 8]
INTEREST_MODELS = ["mind", "comirec_dr"]
CATALOGUE_SIZES = [10_000, 100_000, 500_000, 2_000_000]
CATALOGUE_MODELS = ["youtube_dnn", "mind", "comirec_dr", "comirec_sa", "umi"]
EMBEDDING_OPTIMIZERS = ["adam", "sparse_adam"]
NUM_USERS = [10_000, 100_000, 1_000_000]
SWEEPS = ["history_length", "num_interests", "catalogue_size", "num_users", "dynamic_k"]
#: synthetic data of the users sweep (ingest.synthetic keys); mean length ~ a short-history service
USERS_SYNTHETIC = {"num_items": 50_000, "num_categories": 100, "interests_per_user": 4, "mean_length": 20.0,
                   "min_length": 8, "noise": 0.1, "popularity_skew": 0.8, "save_ground_truth": False}


# ------------------------------------------------------------------------------------------ measurement
def current_rss_mb() -> float:
    """Resident set size of this process now (Linux /proc), MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux), MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_measured(cmd: list[str], *, env: dict | None = None) -> dict:
    """Run ``cmd``; return its exit status, output, wall time and *its own* peak RSS (MB) and CPU seconds.

    The child is reaped with ``os.wait4``, whose rusage is exactly that child's (RUSAGE_CHILDREN would be the
    maximum over every child waited for so far: a small configuration after a big one would inherit its peak).
    """
    import tempfile

    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fo, stderr=fe, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen not to wait again
        fo.seek(0), fe.seek(0)
        out, err = fo.read(), fe.read()
    return {"rc": proc.returncode, "stdout": out, "stderr": err, "wall_s": time.perf_counter() - t0,
            "peak_rss_mb": usage.ru_maxrss / 1024.0, "cpu_s": usage.ru_utime + usage.ru_stime}


def model_params(params: dict, variant: str, *, max_len: int | None = None,
                 num_interests: int | None = None, embedding_optimizer: str | None = None) -> dict:
    """A copy of ``params`` with ``models.<variant>`` (and ``train.max_len`` / ``train.embedding_optimizer``)
    changed for one configuration."""
    p = copy.deepcopy(params)
    if embedding_optimizer is not None:
        p["train"]["embedding_optimizer"] = embedding_optimizer
    if max_len is not None:
        p["train"]["max_len"] = max_len
    if num_interests is not None:
        p["models"][variant]["num_interests"] = num_interests
    return p


def measure_training(params: dict, variant: str, split_dir: Path, *, steps: int, warmup: int,
                     num_items: int | None = None, data_memory: bool = False) -> dict:
    """Time ``steps`` training steps of ``variant`` (after ``warmup``) through the product's Lightning module.

    Args:
        params: a whole params dict (``seed``, ``train``, ``models``).
        variant: key of ``models``.
        split_dir: a split directory.
        steps, warmup: measured and unmeasured optimizer steps.
        num_items: catalogue size N >= the split's (padded with unseen items, see the module docstring).
        data_memory: also measure the data module's memory (RSS growth of ``setup``, exact array bytes).
    Returns:
        a flat dict of figures (see :func:`main`'s JSON description in the module docstring).
    """
    import numpy as np
    import pytorch_lightning as pl
    import torch

    import models as M
    from components.config import section
    from components.train import ModelConfig, TrainConfig, make_task
    from components.train_data import SplitDataModule, load_split_meta
    from models.loss import NegativeSampler

    seed = int(params["seed"])
    variant_cfg = ModelConfig.from_params(params, variant)
    cfg = variant_cfg.train_config(section(params, "train", TrainConfig))
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    pl.seed_everything(seed, workers=True, verbose=False)
    meta = load_split_meta(split_dir)
    n_items = meta.num_items if num_items is None else int(num_items)
    if n_items < meta.num_items:
        raise ValueError(f"num_items {n_items} is below the split's {meta.num_items}")
    hparams = {**variant_cfg.hparams, "num_items": n_items, "num_categories": meta.num_categories,
               "profile_cardinalities": list(meta.profile_cardinalities), "max_len": cfg.max_len}
    net = M.build_model(variant_cfg.arch, **hparams)
    category = np.zeros(n_items, dtype=np.int64)
    category[: meta.num_items] = meta.item_category  # padded (never seen) items: category 0
    M.set_item_category(net, category)
    if cfg.sampler != "uniform":
        raise ValueError("speed sweeps use the uniform sampler (the catalogue padding has no counts)")
    sampler = NegativeSampler("uniform", n_items)
    task = make_task(net, sampler, num_items=n_items, num_negatives=cfg.num_negatives, lr=cfg.lr,
                     weight_decay=cfg.weight_decay, attention_pow=variant_cfg.attention_pow,
                     harder_negatives=variant_cfg.harder_negatives, log_q=False,
                     in_batch=cfg.in_batch_negatives,
                     batch_sampler_q=NegativeSampler("popularity", meta.item_counts), seed=seed, show_every=0,
                     embedding_optimizer=cfg.embedding_optimizer)
    dm = SplitDataModule(split_dir, meta, max_len=cfg.max_len, batch_size=cfg.batch_size,
                         eval_batch_size=cfg.eval_batch_size, seed=seed, num_workers=cfg.num_workers)
    rss0 = current_rss_mb()
    t0 = time.perf_counter()
    dm.setup("fit")  # idempotent: the Trainer's own setup call reuses these tables
    setup_s = time.perf_counter() - t0
    out: dict[str, Any] = {}
    ds = dm.train_set
    interactions = int(len(ds.seqs.values))
    if data_memory:
        kept = (ds.seqs.values.nbytes + ds.seqs.offsets.nbytes + ds.seqs.user_idx.nbytes + ds.target_pos.nbytes)
        v = dm.valid_set
        for r in (v.history, v.targets):
            kept += r.values.nbytes + r.offsets.nbytes + r.user_idx.nbytes
        kept += meta.profiles.nbytes + meta.item_category.nbytes + meta.item_counts.nbytes
        growth = current_rss_mb() - rss0
        out.update({"data_setup_s": setup_s, "data_rss_growth_mb": growth,
                    "data_array_mb": kept / 2**20,
                    "data_bytes_per_interaction": kept / interactions,
                    "data_rss_bytes_per_interaction": growth * 2**20 / interactions})

    class StepTimer(pl.Callback):
        def __init__(self):
            self.marks: list[tuple[int, float, float]] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.marks.append((trainer.global_step, time.perf_counter(), time.process_time()))

    timer = StepTimer()
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision=cfg.precision, max_steps=warmup + steps,
                         max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         deterministic=cfg.deterministic, callbacks=[timer], use_distributed_sampler=False,
                         default_root_dir=OUT / "lightning")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, datamodule=dm)
    marks = timer.marks
    if len(marks) != warmup + steps:
        raise RuntimeError(f"expected {warmup + steps} steps, Lightning ran {len(marks)}")
    # from the end of the last warm-up step to the end of the last step: `steps` whole steps incl. data
    start = marks[warmup - 1] if warmup > 0 else None
    if start is None:
        raise ValueError("warmup must be >= 1 (the first step's end is the clock's start)")
    wall = marks[-1][1] - start[1]
    cpu = marks[-1][2] - start[2]
    samples = steps * cfg.batch_size
    sps = samples / wall
    n_params = sum(p.numel() for p in net.parameters())
    out.update({
        "arch": variant_cfg.arch, "embedding_optimizer": cfg.embedding_optimizer, "max_len": cfg.max_len, "num_interests": hparams.get("num_interests"),
        "num_items": n_items, "split_items": meta.num_items, "batch_size": cfg.batch_size,
        "num_negatives": cfg.num_negatives, "steps": steps, "warmup": warmup, "torch_threads": torch.get_num_threads(),
        "s_per_step": wall / steps, "samples_per_s": sps, "samples_per_cpu_s": samples / cpu if cpu > 0 else None,
        "train_samples": len(ds), "train_interactions": interactions, "s_per_epoch": len(ds) / sps,
        "parameters": n_params, "parameter_mb": sum(p.numel() * p.element_size() for p in net.parameters()) / 2**20,
        "item_table_mb": net.items.item.weight.numel() * net.items.item.weight.element_size() / 2**20,
        "worker_peak_rss_mb": peak_rss_mb(),
    })
    return out


def dynamic_k_serving(params: dict, split_dir: Path, *, max_lens: list[int], ks: list[int],
                      repeats: int = 100) -> list[dict]:
    """MIND eq. 9 dynamic K vs fixed K on the valid+test users of ``split_dir`` (eval mode, no grad).

    Returns one row per (L, K, dynamic): mean/min active interests, the share of users below K, and the
    median ``user_interests`` latency for one user and per user in batches of 512.
    """
    import numpy as np
    import torch

    import models as M
    from components.train import ModelConfig
    from components.train_data import EvalUsers, load_split_meta

    torch.set_num_threads(max(int(params["train"].get("num_threads", 1)), 1))
    meta = load_split_meta(split_dir)
    rows = []
    for L in max_lens:
        users = [EvalUsers(split_dir / f"{s}.parquet", meta, L) for s in ("valid", "test")]
        batches = [u[np.arange(len(u))] for u in users]
        hist = torch.cat([b["history"] for b in batches])
        mask = torch.cat([b["mask"] for b in batches])
        prof = torch.cat([b["profile"] for b in batches])
        n_users = len(hist)
        lengths = mask.sum(1)
        for K in ks:
            for dynamic in (True, False):
                p = copy.deepcopy(params)
                p["models"]["mind"].update(num_interests=K, dynamic_interests=dynamic)
                v = ModelConfig.from_params(p, "mind")
                net = M.build_model(v.arch, **{**v.hparams, "num_items": meta.num_items,
                                               "num_categories": meta.num_categories,
                                               "profile_cardinalities": list(meta.profile_cardinalities),
                                               "max_len": L})
                M.set_item_category(net, meta.item_category)
                net.eval()
                with torch.no_grad():
                    _, imask = net.user_interests(hist, mask, prof)
                    active = imask.sum(1).double()
                    one, per = [], []
                    for r in range(repeats):
                        i = r % n_users
                        t = time.perf_counter()
                        net.user_interests(hist[i:i + 1], mask[i:i + 1], prof[i:i + 1])
                        one.append(time.perf_counter() - t)
                    for r in range(max(repeats // 4, 3)):
                        a = (r * 512) % max(n_users - 512, 1)
                        t = time.perf_counter()
                        net.user_interests(hist[a:a + 512], mask[a:a + 512], prof[a:a + 512])
                        per.append((time.perf_counter() - t) / min(512, n_users))
                rows.append({"max_len": L, "num_interests": K, "dynamic": dynamic, "users": n_users,
                             "mean_history_length": float(lengths.double().mean()),
                             "mean_active_interests": float(active.mean()), "min_active_interests": int(active.min()),
                             "share_below_k": float((active < K).double().mean()),
                             "latency_one_user_ms_p50": 1000 * float(np.median(one)),
                             "latency_per_user_batch512_us_p50": 1e6 * float(np.median(per)),
                             "load_avg_1m": os.getloadavg()[0]})
    return rows


# --------------------------------------------------------------------------------------------- data prep
def _cli(args: list[str], env: dict) -> dict:
    res = run_measured([PY, *args], env=env)
    if res["rc"] != 0:
        sys.stderr.write(res["stdout"][-2000:] + res["stderr"][-4000:])
        raise SystemExit(f"failed ({res['rc']}): {' '.join(args)}")
    return res


def prepare_split(name: str, params: dict, ingest_overrides: dict, env: dict) -> tuple[Path, dict]:
    """``benchmarks/out/speed/<name>/split`` built by the ingest and split CLIs (reused if present)."""
    base = OUT / name
    split = base / "split"
    info_path = base / "prep.json"
    if (split / "vocab.json").exists() and info_path.exists():
        return split, json.loads(info_path.read_text())
    base.mkdir(parents=True, exist_ok=True)
    p = copy.deepcopy(params)
    for k, v in ingest_overrides.items():
        if isinstance(v, dict):
            p["ingest"][k] = {**p["ingest"].get(k, {}), **v}
        else:
            p["ingest"][k] = v
    ppath = base / "params.yaml"
    ppath.write_text(yaml.safe_dump(p, sort_keys=False))
    print(f"building {name} data ...", flush=True)
    ing = _cli(["-m", "components.ingest", "run", "--params", str(ppath), "--out", str(base / "canonical")], env)
    spl = _cli(["-m", "components.split", "--params", str(ppath), "--data", str(base / "canonical"),
                "--out", str(split)], env)
    info = {"ingest": {"wall_s": ing["wall_s"], "peak_rss_mb": ing["peak_rss_mb"],
                       "log": ing["stdout"].strip().splitlines()[-1:]},
            "split": {"wall_s": spl["wall_s"], "peak_rss_mb": spl["peak_rss_mb"],
                      "log": spl["stdout"].strip().splitlines()[-1:]}}
    info_path.write_text(json.dumps(info, indent=2))
    return split, info


# ---------------------------------------------------------------------------------------------- driver
def _worker(spec_json: str) -> None:
    spec = json.loads(spec_json)
    params = spec["params"]
    if spec["kind"] == "train":
        res = measure_training(params, spec["variant"], Path(spec["split"]), steps=spec["steps"],
                               warmup=spec["warmup"], num_items=spec.get("num_items"),
                               data_memory=spec.get("data_memory", False))
    else:
        res = {"rows": dynamic_k_serving(params, Path(spec["split"]), max_lens=spec["max_lens"], ks=spec["ks"])}
    print("RESULT " + json.dumps(res), flush=True)


def measure_in_child(spec: dict, env: dict) -> dict:
    """Run one configuration in a fresh process; add its peak RSS, CPU time and the load average."""
    load0 = os.getloadavg()[0]
    res = run_measured([PY, str(Path(__file__).resolve()), "--worker", json.dumps(spec)], env=env)
    load1 = os.getloadavg()[0]
    if res["rc"] != 0:
        sys.stderr.write(res["stderr"][-4000:])
        return {"error": f"exit {res['rc']}: {res['stderr'].strip().splitlines()[-1:]}",
                "peak_rss_mb": res["peak_rss_mb"], "load_avg_1m": [load0, load1]}
    line = [ln for ln in res["stdout"].splitlines() if ln.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    out.update({"peak_rss_mb": res["peak_rss_mb"], "process_wall_s": res["wall_s"], "process_cpu_s": res["cpu_s"],
                "load_avg_1m": [load0, load1]})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--sweeps", default=",".join(SWEEPS), help=f"comma-separated subset of {SWEEPS}")
    parser.add_argument("--steps", type=int, default=40, help="measured training steps per configuration")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured steps before them")
    parser.add_argument("--users", default=",".join(map(str, NUM_USERS)), help="num_users sweep values")
    parser.add_argument("--catalogue", default=",".join(map(str, CATALOGUE_SIZES)), help="catalogue sizes")
    parser.add_argument("--catalogue-models", default=",".join(CATALOGUE_MODELS),
                        help="model variants of the catalogue sweep")
    parser.add_argument("--optimizers", default=",".join(EMBEDDING_OPTIMIZERS),
                        help="train.embedding_optimizer values of the catalogue sweep (side by side)")
    parser.add_argument("--note", default="", help="recorded with this run (e.g. how busy the machine was)")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--print", action="store_true", help="print the table of --out and exit")
    parser.add_argument("--plot", action="store_true", help="redraw the PNGs from --out and exit")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args.worker)
    if args.print:
        return print_table(json.loads(args.out.read_text()))
    if args.plot:
        return print("\n".join(str(p) for p in plot(json.loads(args.out.read_text()))))

    params = yaml.safe_load(args.params.read_text())
    params["train"]["num_threads"] = params["train"].get("num_threads") or 1
    sweeps = args.sweeps.split(",")
    unknown = set(sweeps) - set(SWEEPS)
    if unknown:
        parser.error(f"unknown sweep(s) {sorted(unknown)}")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(params["train"]["num_threads"])}
    result: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    result.setdefault("sweeps", {})
    result["machine"] = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                         "python": platform.python_version(), "load_avg_at_start": list(os.getloadavg()),
                         "torch_threads": params["train"]["num_threads"],
                         "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    # the command that regenerates every figure; "runs" lists the invocations that wrote this file (a sweep
    # subset re-run replaces only its own sweeps)
    result["command"] = f".venv/bin/python benchmarks/speed.py --steps {args.steps} --warmup {args.warmup}"
    result.setdefault("runs", []).append({
        "command": "benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "sweeps": sweeps, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **({"note": args.note} if args.note else {})})
    result["config"] = {"steps": args.steps, "warmup": args.warmup,
                        "batch_size": params["train"]["batch_size"],
                        "num_negatives": params["train"]["num_negatives"], "sampler": params["train"]["sampler"],
                        "default_max_len": params["train"]["max_len"],
                        "models": {m: params["models"][m] for m in ("youtube_dnn", "mind", "comirec_dr", "comirec_sa",
                                                                    "umi")}}
    result.setdefault("data", {})

    def train_spec(p, variant, split, **kw):
        return {"kind": "train", "params": p, "variant": variant, "split": str(split), "steps": args.steps,
                "warmup": args.warmup, **kw}

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(relative_paths(result, REPO), indent=2) + "\n")
        os.replace(tmp, args.out)

    ml = None
    if {"history_length", "num_interests", "catalogue_size", "dynamic_k"} & set(sweeps):
        ml, info = prepare_split("ml100k", params, {"source": "movielens-100k"}, env)
        result["data"]["ml100k"] = info

    if "history_length" in sweeps:
        rows = []
        for variant in HISTORY_MODELS:
            for L in HISTORY_LENGTHS:
                print(f"history_length: {variant} L={L}", flush=True)
                r = measure_in_child(train_spec(model_params(params, variant, max_len=L), variant, ml), env)
                rows.append({"model": variant, "value": L, **r})
        result["sweeps"]["history_length"] = rows
        save()
    if "num_interests" in sweeps:
        rows = []
        for variant in INTEREST_MODELS:
            for K in NUM_INTERESTS:
                print(f"num_interests: {variant} K={K}", flush=True)
                r = measure_in_child(train_spec(model_params(params, variant, num_interests=K), variant, ml), env)
                rows.append({"model": variant, "value": K, **r})
        result["sweeps"]["num_interests"] = rows
        save()
    if "catalogue_size" in sweeps:
        # rows of other (model, optimizer, N) are kept; rows of an older format (no optimizer recorded: the
        # dense Adam of before issue 12) are replaced by this run's
        keep = [r for r in result["sweeps"].get("catalogue_size", []) if "embedding_optimizer" in r]
        for variant in args.catalogue_models.split(","):
            for n in [int(x) for x in args.catalogue.split(",")]:
                for opt in args.optimizers.split(","):  # adjacent in time: dense vs sparse under the same load
                    print(f"catalogue_size: {variant} {opt} N={n}", flush=True)
                    r = measure_in_child(train_spec(model_params(params, variant, embedding_optimizer=opt),
                                                    variant, ml, num_items=n), env)
                    keep = [k for k in keep if (k["model"], k.get("embedding_optimizer"), k["value"])
                            != (variant, opt, n)]
                    keep.append({"model": variant, "value": n, **r, "embedding_optimizer": opt})
                    result["sweeps"]["catalogue_size"] = sorted(
                        keep, key=lambda k: (k["model"], k["embedding_optimizer"], k["value"]))
                    save()
        result["catalogue_targets"] = catalogue_targets(result["sweeps"]["catalogue_size"])
        save()
    if "dynamic_k" in sweeps:
        print("dynamic_k: mind serving", flush=True)
        r = measure_in_child({"kind": "dynamic_k", "params": params, "split": str(ml),
                              "max_lens": [20, 50, 200], "ks": [4, 8]}, env)
        result["dynamic_k"] = r
        save()
    if "num_users" in sweeps:
        rows = []
        for n in [int(x) for x in args.users.split(",")]:
            split, info = prepare_split(f"users_{n}", params, {"source": "synthetic", "synthetic": {
                **USERS_SYNTHETIC, "num_users": n}}, env)
            result["data"][f"users_{n}"] = info
            print(f"num_users: mind U={n}", flush=True)
            r = measure_in_child(train_spec(params, "mind", split, data_memory=True), env)
            rows.append({"model": "mind", "value": n, "synthetic": {**USERS_SYNTHETIC, "num_users": n}, **r})
            result["sweeps"]["num_users"] = rows
            save()
    plot(result)
    print_table(result)
    print(f"-> {args.out}")


def catalogue_targets(rows: list[dict]) -> dict:
    """Issue 12's targets per (model, optimizer) of the catalogue sweep: samples/s at the largest N over that
    at the smallest (target >= 0.5, the same optimizer's; also given against dense Adam's at the smallest N, and
    per CPU-second),
    and peak RSS at the largest N against 2.5 x the item table's bytes + 1 GB (MB = 2**20 bytes)."""
    out: dict[str, Any] = {}
    ok = [r for r in rows if "error" not in r]
    for model in sorted({r["model"] for r in ok}):
        for opt in sorted({r["embedding_optimizer"] for r in ok if r["model"] == model}):
            rs = sorted((r for r in ok if r["model"] == model and r["embedding_optimizer"] == opt),
                        key=lambda r: r["value"])
            if len(rs) < 2:
                continue
            small, big = rs[0], rs[-1]
            dense_small = next((r for r in ok if r["model"] == model and r["embedding_optimizer"] == "adam"
                                and r["value"] == small["value"]), None)
            ratio = big["samples_per_s"] / small["samples_per_s"]
            limit = 2.5 * big["item_table_mb"] + 1024.0
            out[f"{model}/{opt}"] = {
                "model": model, "embedding_optimizer": opt, "small_n": small["value"], "large_n": big["value"],
                "samples_per_s_small": small["samples_per_s"], "samples_per_s_large": big["samples_per_s"],
                "throughput_ratio": ratio, "throughput_target_met": ratio >= 0.5,
                # the same ratio in samples per CPU-second of the process: far less sensitive to a busy machine
                "throughput_ratio_cpu": (big["samples_per_cpu_s"] / small["samples_per_cpu_s"]
                                         if big.get("samples_per_cpu_s") and small.get("samples_per_cpu_s") else None),
                "ratio_to_dense_small": (big["samples_per_s"] / dense_small["samples_per_s"]
                                         if dense_small else None),
                "item_table_mb": big["item_table_mb"], "peak_rss_mb_large": big["peak_rss_mb"],
                "memory_limit_mb": limit, "memory_target_met": big["peak_rss_mb"] <= limit}
    return out


# ------------------------------------------------------------------------------------------ plot / table
def plot(result: dict) -> list[Path]:
    """One PNG per sweep: samples/s (left) and peak RSS (right) against the swept value, a line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    written = []
    labels = {"history_length": "history length L", "num_interests": "K (interests)",
              "catalogue_size": "catalogue size (items)", "num_users": "users (synthetic)"}
    for sweep, rows in result.get("sweeps", {}).items():
        rows = [r for r in rows if "error" not in r]
        if not rows:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for i, model in enumerate(sorted({_line(r) for r in rows})):
            rs = sorted((r for r in rows if _line(r) == model), key=lambda r: r["value"])
            x, c = [r["value"] for r in rs], f"C{i}"
            axes[0].plot(x, [r["samples_per_s"] for r in rs], "o-", color=c, label=f"{model} (wall clock)")
            axes[0].plot(x, [r["samples_per_cpu_s"] for r in rs], "x--", color=c, alpha=0.6,
                         label=f"{model} (per CPU-second)")
            axes[1].plot(x, [r["peak_rss_mb"] for r in rs], "o-", color=c, label=model)
        for ax in axes:
            ax.set_xlabel(labels.get(sweep, sweep))
            if sweep in ("catalogue_size", "num_users"):
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("training samples/s")
        axes[0].set_yscale("log")
        axes[1].set_ylabel("peak RSS of the process (MB)")
        axes[0].legend(fontsize=7)
        axes[1].legend(fontsize=7)
        loads = [v for r in rows for v in r["load_avg_1m"]]
        fig.suptitle(f"training cost vs {labels.get(sweep, sweep)} (1 thread; 1-min load avg "
                     f"{min(loads):.1f}-{max(loads):.1f} on {result['machine']['cpu_count']} cores)", fontsize=9)
        fig.tight_layout()
        path = IMG / f"speed_{sweep}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _line(r: dict) -> str:
    """A sweep row's line in the plots/table: the model, and its embedding optimizer when recorded."""
    opt = r.get("embedding_optimizer")
    return r["model"] if opt is None else f"{r['model']} {opt}"


def print_table(result: dict) -> None:
    head = f"{'sweep':<15}{'model':<24}{'value':>9}{'samples/s':>10}{'/cpu-s':>8}{'ms/step':>9}{'s/epoch':>9}{'peak MB':>9}{'load':>11}"
    print(head)
    print("-" * len(head))
    for sweep, rows in result.get("sweeps", {}).items():
        for r in rows:
            if "error" in r:
                print(f"{sweep:<15}{_line(r):<24}{r['value']:>9}  ERROR {r['error']}")
                continue
            extra = ""
            if "data_bytes_per_interaction" in r:
                extra = (f"  data: {r['data_bytes_per_interaction']:.1f} B/interaction kept, "
                         f"{r['data_rss_bytes_per_interaction']:.1f} B/interaction RSS growth, "
                         f"{r['train_interactions']} interactions")
            load = "{:.1f}/{:.1f}".format(*r["load_avg_1m"])
            print(f"{sweep:<15}{_line(r):<24}{r['value']:>9}{r['samples_per_s']:>10.0f}"
                  f"{r['samples_per_cpu_s']:>8.0f}{1000 * r['s_per_step']:>9.1f}{r['s_per_epoch']:>9.1f}"
                  f"{r['peak_rss_mb']:>9.0f}{load:>11}{extra}")
    targets = result.get("catalogue_targets") or {}
    if targets:
        print()
        print(f"{'catalogue targets':<30}{'N':>17}{'samples/s':>20}{'ratio':>7}{'/cpu':>6}{'peak MB':>9}"
              f"{'limit MB':>9}  met")
        for name, t in targets.items():
            print(f"{name:<30}{t['small_n']:>8}->{t['large_n']:<8}{t['samples_per_s_small']:>10.0f}->"
                  f"{t['samples_per_s_large']:<8.0f}{t['throughput_ratio']:>7.2f}"
                  f"{t.get('throughput_ratio_cpu') or float('nan'):>6.2f}{t['peak_rss_mb_large']:>9.0f}"
                  f"{t['memory_limit_mb']:>9.0f}  {t['throughput_target_met']}/{t['memory_target_met']}")
    dk = result.get("dynamic_k", {})
    if dk.get("rows"):
        print()
        print(f"{'MIND serving':<14}{'L':>5}{'K':>4}{'dynamic':>9}{'active':>8}{'<K share':>10}{'1 user ms':>11}{'us/user@512':>13}")
        for r in dk["rows"]:
            print(f"{'':<14}{r['max_len']:>5}{r['num_interests']:>4}{str(r['dynamic']):>9}"
                  f"{r['mean_active_interests']:>8.2f}{r['share_below_k']:>10.3f}"
                  f"{r['latency_one_user_ms_p50']:>11.2f}{r['latency_per_user_batch512_us_p50']:>13.1f}")


if __name__ == "__main__":
    main()
