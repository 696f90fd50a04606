"""Benchmark of training: per model at the default config on MovieLens-100K, the product's training throughput (what train.json records) and test quality.

For every model variant of ``train.models`` (or ``--models``) this runs the product path as DVC does —
``python -m components.train`` then ``python -m components.evaluate``, each in its own process so peak memory
is per model — and reports:

- training samples/s: ``train.json``'s ``samples_per_s``, i.e. training samples of an epoch divided by the
  wall time from Lightning's ``on_train_epoch_start`` to ``on_validation_epoch_start`` (EpochTimer in
  components/train.py), averaged over the epochs run. That interval holds everything the training loop
  does: building each batch in the process (numpy gathers of ``components.train_data``), negatives, forward,
  loss, backward, Adam, and Lightning's per-step loop overhead; not validation, not process start-up, not
  checkpoint writing. The first epoch's warm-up is included. Samples per CPU-second of the training process
  (``cpu_seconds_per_epoch``) are reported beside it: a busy shared machine inflates wall time far more;
- seconds per epoch (training part) and validation seconds per epoch, epochs run until early stopping;
- peak resident memory of the training process (and peak GPU memory on a GPU);
- test Recall/NDCG/HitRate@50 of the best checkpoint (components.evaluate, strong generalization);
- where the time goes: CPU milliseconds per training step by phase (batch gathering, user tower, item
  embeddings + loss, backward, Adam), measured in a plain loop with the trainer's own pieces.

How this relates to the other two throughput figures: ``benchmarks/rechub_speed.py`` (the side-by-side with
torch-rechub) times the training *step* alone on pre-gathered batches, without Lightning and batch building,
so it reads higher than this; ``artifacts/models/<variant>/train.json`` of a ``dvc repro`` is this same
measurement (same code), for however many epochs early stopping ran, on whatever else the machine was doing
then. The 23,810 samples/s for YouTube DNN that ``train_speed.json`` held until 2026-11-29 (recorded
2026-11-22) against ~45,000-58,000 in a later ``dvc repro`` was the same measurement on older code (before
fused Adam, the max-based interest selection and the allocator setting). Re-recorded on 2026-11-29 on a quiet
box (2 epochs, 1 thread): YouTube DNN 63,800 samples/s here, 73,000 in the ``train.json`` of the 10-model
``dvc repro -f`` run on the same box half an hour earlier (10 epochs: the first epoch's warm-up weighs less);
the bare step of ``rechub_speed.py`` 105,500: the difference is batch building and Lightning's loop.

Targets (issue 12): at least twice the reference library's throughput at equal threads, measured side by side
by ``benchmarks/rechub_speed.py`` (``reference_samples_per_s`` here are the issue's earlier 2-thread figures).

Data: ``--split`` (default ``data/split``, i.e. after ``make data`` and ``dvc repro split``). If that folder
does not exist, the canonical tables and the split are built from ``data/raw/ml-100k`` with the ingest and
split CLIs into ``benchmarks/out/train_speed/`` (ignored by git).

    .venv/bin/python benchmarks/train_speed.py                          # all models, params.yaml as is
    .venv/bin/python benchmarks/train_speed.py --models youtube_dnn,mind --threads 1
    .venv/bin/python benchmarks/train_speed.py --max-epochs 2 --no-eval --out /tmp/ts.json  # quick throughput
    .venv/bin/python benchmarks/train_speed.py --profile-only            # where a step's time goes
    # GPU (issue 12 part 4; benchmarks/gpu_train_speed.sh wraps this): every model at 2 batch sizes x 2 precisions
    python3 benchmarks/train_speed.py --accelerator gpu --batch-sizes 256,4096 --precisions 32-true,bf16-mixed \
        --max-epochs 2 --no-eval --no-profile --out $OUT/train_speed_gpu.json

Writes ``benchmarks/results/train_speed.json`` and prints a table. With several ``--batch-sizes`` /
``--precisions`` (or ``--devices``) the file holds one block per configuration under ``configs``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

from components.io import relative_paths

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out" / "train_speed"
RESULT = REPO / "benchmarks" / "results" / "train_speed.json"
PY = sys.executable

#: samples/s of the reference library on the 2-core machine (batch 256, 50 negatives, d = 64)
REFERENCE = {"youtube_dnn": 28_600, "mind": 15_900, "comirec_dr": 15_900, "comirec_sa": 13_100}
TARGET_FACTOR = 2.0


def _run(cmd: list[str], env: dict | None = None) -> float:
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-2000:] + res.stderr[-4000:])
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}")
    return time.perf_counter() - t


def ensure_split(split: Path, params_path: Path) -> Path:
    """``split`` if it exists, else build MovieLens-100K canonical tables + split under benchmarks/out."""
    if (split / "vocab.json").exists():
        return split
    canonical, built = OUT / "canonical", OUT / "split"
    if not (built / "vocab.json").exists():
        print(f"{split} not found: building MovieLens-100K into {OUT}", flush=True)
        _run([PY, "-m", "components.ingest", "run", "--params", str(params_path), "--out", str(canonical)])
        _run([PY, "-m", "components.split", "--params", str(params_path), "--data", str(canonical),
              "--out", str(built)])
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--split", type=Path, default=REPO / "data" / "split")
    parser.add_argument("--models", default=None, help="comma-separated variants (default: train.models)")
    parser.add_argument("--threads", type=int, default=None, help="train.num_threads (default: params)")
    parser.add_argument("--max-epochs", type=int, default=None, help="override train.max_epochs")
    parser.add_argument("--no-eval", action="store_true", help="skip the test metrics")
    parser.add_argument("--out", type=Path, default=RESULT,
                        help="results file (default benchmarks/results/train_speed.json); give another path for "
                             "quick runs that must not replace the published figures")
    parser.add_argument("--accelerator", default=None, help="train.accelerator (default: params)")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated train.batch_size values")
    parser.add_argument("--precisions", default=None, help="comma-separated train.precision values")
    parser.add_argument("--devices", type=int, default=None, help="train.devices (with --strategy ddp)")
    parser.add_argument("--strategy", default=None, help="train.strategy, e.g. ddp")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-phase CPU profile")
    parser.add_argument("--profile-only", action="store_true",
                        help="only the per-phase CPU profile of a training step (no training runs)")
    args = parser.parse_args()

    params = yaml.safe_load(args.params.read_text())
    if args.threads is not None:
        params["train"]["num_threads"] = args.threads
    if args.max_epochs is not None:
        params["train"]["max_epochs"] = args.max_epochs
    params["evaluate"]["faiss_check"] = False  # build_index's job; keeps the benchmark about training
    OUT.mkdir(parents=True, exist_ok=True)
    bench_params = OUT / "params.yaml"
    bench_params.write_text(yaml.safe_dump(params, sort_keys=False))
    split = ensure_split(args.split, bench_params)
    names = args.models.split(",") if args.models else list(params["train"]["models"])
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}

    if args.profile_only:  # printed, and merged into an existing results file
        prof = profile_phases(split, params, names)
        print_profile(prof)
        if args.out.exists():
            result = json.loads(args.out.read_text())
            result.setdefault("profile_cpu_ms_per_step", {}).update(prof)
            result["profile_load_average"] = os.getloadavg()
            args.out.write_text(json.dumps(relative_paths(result, REPO), indent=2, sort_keys=True) + "\n")
        return
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else [None]
    precisions = args.precisions.split(",") if args.precisions else [None]
    run_flags = []
    for key, value in (("accelerator", args.accelerator), ("devices", args.devices), ("strategy", args.strategy)):
        if value is not None:
            run_flags += [f"--trainer.{key}", str(value)]
            params["train"][key] = value
    load_before = os.getloadavg()
    configs = []
    for batch_size in batch_sizes:
        for precision in precisions:
            cfg_params = json.loads(json.dumps(params))
            if batch_size is not None:
                cfg_params["train"]["batch_size"] = batch_size
            if precision is not None:
                cfg_params["train"]["precision"] = precision
            cfg_path = OUT / f"params_b{batch_size}_{precision}.yaml"
            cfg_path.write_text(yaml.safe_dump(cfg_params, sort_keys=False))
            print(f"== batch_size {cfg_params['train']['batch_size']}, precision {cfg_params['train']['precision']}",
                  flush=True)
            rows = train_models(names, cfg_params, cfg_path, split, env, run_flags, evaluate=not args.no_eval)
            configs.append({"batch_size": cfg_params["train"]["batch_size"],
                            "precision": cfg_params["train"]["precision"], "models": rows})
            print_table(rows)
    if len(configs) == 1:
        rows = configs[0]["models"]
    result = {
        "command": " ".join(["python benchmarks/train_speed.py", *sys.argv[1:]]),
        "machine": machine_info(load_before),
        "config": {"train": params["train"], "models": {n: params["models"][n] for n in names},
                   "split": str(split)},
    }
    if len(configs) == 1:
        result["models"] = rows
    else:
        result["configs"] = configs
    if not args.no_profile:
        result["profile_cpu_ms_per_step"] = prof = profile_phases(split, params, names)
        print_profile(prof)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(relative_paths(result, REPO), indent=2, sort_keys=True) + "\n")
    print(f"load average before/after: {load_before} / {result['machine']['load_average_after']}")
    print(f"-> {args.out}")


def machine_info(load_before) -> dict:
    """CPU count, platform, load averages, and the GPUs torch sees (name, count) when there are any."""
    info = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_average_before": load_before, "load_average_after": os.getloadavg()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return info


def train_models(names: list[str], params: dict, bench_params: Path, split: Path, env: dict, run_flags: list[str],
                 *, evaluate: bool) -> dict:
    """Train (and optionally evaluate) each variant with the product CLIs; one row of figures per variant."""
    rows = {}
    for name in names:
        model_dir, eval_dir = OUT / "models" / name, OUT / "eval" / name
        print(f"training {name} ...", flush=True)
        _run([PY, "-m", "components.train", "--params", str(bench_params), "--model", name, "--split", str(split),
              "--out", str(model_dir), *run_flags], env)
        train = json.loads((model_dir / "train.json").read_text())
        row = {k: train.get(k) for k in ("arch", "samples_per_s", "seconds_per_epoch", "cpu_seconds_per_epoch",
                                         "val_seconds_per_epoch", "epochs", "best_epoch", "peak_rss_mb",
                                         "peak_gpu_mb", "train_samples", "torch_threads", "wall_seconds",
                                         "best_val_recall@50")}
        cpu = train.get("cpu_seconds_per_epoch") or 0.0
        row["samples_per_cpu_s"] = train["train_samples"] / cpu if cpu > 0 else None
        ref = REFERENCE.get(params["models"][name]["arch"])
        row["reference_samples_per_s"] = ref
        row["target_samples_per_s"] = ref * TARGET_FACTOR if ref else None
        row["speedup_vs_reference"] = train["samples_per_s"] / ref if ref else None
        row["compiled"] = train.get("compiled", False)
        row["world_size"] = train.get("world_size", 1)
        if evaluate:
            print(f"evaluating {name} ...", flush=True)
            _run([PY, "-m", "components.evaluate", "--params", str(bench_params), "--model", name, "--split",
                  str(split), "--models-dir", str(OUT / "models"), "--out", str(eval_dir)], env)
            metrics = json.loads((eval_dir / "metrics.json").read_text())
            for m in ("recall", "ndcg", "hitrate"):
                row[f"test_{m}@50"] = metrics.get(f"test.{m}@50")
                row[f"test_{m}@50_ci"] = [metrics.get(f"test.{m}@50_ci_low"), metrics.get(f"test.{m}@50_ci_high")]
        rows[name] = row
    return rows


def profile_phases(split: Path, params: dict, names: list[str], steps: int = 60) -> dict:
    """CPU milliseconds per training step by phase — batch gathering, user tower, item embeddings + loss,
    backward, Adam — for each model at its params, in a plain loop with the trainer's own pieces.

    Process CPU time (not wall) so a busy machine distorts it less; the Lightning loop adds its own few
    percent on top (compare ``cpu_seconds_per_epoch`` of train.json).
    """
    import torch

    import models as M
    from components.config import from_dict
    from components.train import ModelConfig, TrainConfig, keep_freed_memory
    from components.train_data import EpochBatchSampler, PrefixDataset, load_split_meta, read_ragged
    from models.loss import NegativeSampler, sampled_softmax_loss

    keep_freed_memory()  # as components.train.run does
    meta = load_split_meta(split)
    seqs = read_ragged(split / "train.parquet", "items", meta.num_items, meta.profiles.shape[0])
    out = {}
    for name in names:
        mc = ModelConfig.from_params(params, name)
        cfg = mc.train_config(from_dict(TrainConfig, params["train"], "train"))
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(0)
        net = M.build_model(mc.arch, **mc.hparams, num_items=meta.num_items, num_categories=meta.num_categories,
                            profile_cardinalities=list(meta.profile_cardinalities), max_len=cfg.max_len)
        if not M.is_trainable(net):
            continue
        M.set_item_category(net, meta.item_category)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, fused=True)
        ds = PrefixDataset(seqs, meta.profiles, cfg.max_len)
        sampler = NegativeSampler(cfg.sampler, meta.item_counts if cfg.sampler != "uniform" else meta.num_items)
        gen = torch.Generator().manual_seed(0)
        batches = iter(EpochBatchSampler(len(ds), cfg.batch_size, seed=0))
        phases = dict.fromkeys(("batch", "user_tower", "items_and_loss", "backward", "adam"), 0.0)
        n = 0
        for step in range(steps + 10):
            t = [time.process_time()]
            try:
                batch = ds[next(batches)]
            except StopIteration:
                break
            t.append(time.process_time())
            interests, imask = net.user_interests(batch["history"], batch["mask"], batch["profile"])
            t.append(time.process_time())
            pos = batch["target"]
            neg = sampler.sample(cfg.num_negatives, gen)
            emb = net.item_embeddings(torch.cat([pos, neg]))
            loss = sampled_softmax_loss(interests, imask, pos, emb[: len(pos)], neg, emb[len(pos):],
                                        attention_pow=mc.attention_pow, harder_negatives=mc.harder_negatives)
            t.append(time.process_time())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t.append(time.process_time())
            opt.step()
            t.append(time.process_time())
            if step >= 10:  # warm-up excluded
                for k, a, b in zip(phases, t[:-1], t[1:]):
                    phases[k] += b - a
                n += 1
        out[name] = {k: 1e3 * v / max(n, 1) for k, v in phases.items()}
        out[name]["total"] = sum(out[name].values())
        out[name]["samples_per_cpu_s"] = cfg.batch_size / (out[name]["total"] / 1e3)
    return out


def print_profile(prof: dict) -> None:
    keys = ("batch", "user_tower", "items_and_loss", "backward", "adam", "total")
    print("CPU ms per step: " + " ".join(f"{k:>15}" for k in keys) + f"{'samples/cpu-s':>15}")
    for name, p in prof.items():
        print(f"{name:<16}" + " ".join(f"{p[k]:15.2f}" for k in keys) + f"{p['samples_per_cpu_s']:15.0f}")


def print_table(rows: dict) -> None:
    head = (f"{'model':<13}{'samples/s':>10}{'/cpu-s':>9}{'2x ref':>9}{'s/epoch':>9}{'epochs':>7}"
            f"{'peak MB':>9}{'R@50':>8}{'NDCG@50':>9}{'HR@50':>8}")
    print(head)
    print("-" * len(head))
    for name, r in rows.items():
        def f(v, fmt):
            width = int(fmt.split(".")[0].rstrip("dfs") or 0)
            return format(v, fmt) if isinstance(v, (int, float)) else "-".rjust(width)
        if r.get("arch") == "most_popular":  # "trained" by counting: no throughput to speak of
            r = {**r, "samples_per_s": None, "samples_per_cpu_s": None, "seconds_per_epoch": None}
        print(f"{name:<13}{f(r['samples_per_s'], '10.0f')}{f(r['samples_per_cpu_s'], '9.0f')}"
              f"{f(r['target_samples_per_s'], '9.0f')}{f(r['seconds_per_epoch'], '9.2f')}{f(r['epochs'], '7d')}"
              f"{f(r['peak_rss_mb'], '9.0f')}{f(r.get('test_recall@50'), '8.4f')}"
              f"{f(r.get('test_ndcg@50'), '9.4f')}{f(r.get('test_hitrate@50'), '8.4f')}")


if __name__ == "__main__":
    main()
