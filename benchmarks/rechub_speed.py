"""Training throughput side by side with torch-rechub 0.9.0: samples/s of the training step, ours vs the reference library's, measured in one run, 1 and 2 torch threads.

What is timed, for both sides alike: ``steps`` training steps (forward, sampled-softmax loss, backward, Adam
step) after ``warmup`` untimed ones, on batches that were gathered **before** the clock starts (the same
MovieLens-100K train-split batches and the same 50 negatives per step for both sides), wall clock around the
loop. Data loading, validation and the Lightning loop are not in this figure (``benchmarks/train_speed.py``
measures the product end to end; docs/RESULTS.md relates the two). Each (side, model, threads, repeat) runs
in its own subprocess; within a repeat, the two sides of a model run back to back and the order alternates
from repeat to repeat (ours first, then theirs first), so a slow spell of the shared machine hits both.

Setting (issue 12 part 2): batch 256, 50 sampled negatives shared by the batch, d = 64, K = 4, max_len 20,
sampled softmax over [positive, 50 negatives] (cross-entropy with the positive at column 0) on both sides.

Ours: the product's models and loss (``models.build_model`` with params.yaml's variant hyper-parameters,
``models.loss.sampled_softmax_loss``, fused Adam as ``components.task.RetrievalTask`` configures it), the
papers' variants (no harder negatives): youtube_dnn, mind, comirec_dr, comirec_sa, umi (UMI has no
torch-rechub peer; its figure is reported alone).

Theirs: torch-rechub 0.9.0's ``YoutubeDNN``, ``MIND``, ``ComirecDR``, ``ComirecSA`` as its MatchTrainer
trains them in list-wise mode (``mode=2``: ``CrossEntropyLoss(model(x), 0)``; Adam(lr 1e-3, weight decay
1e-5), its default). torch-rechub takes negatives as a per-row id feature, so the 50 shared ids are given to
every row (its item tower then gathers (B, 50, D)); that is its API, not a handicap we added. Profile fields
are its user features (64-d each: its EmbeddingLayer stacks features, so they must share the item dim; ours
use 16-d), the history a 64-d sequence feature sharing the item table. The wheel is
fetched with ``pip download --no-deps`` into ``benchmarks/out/wheels`` and imported from the unpacked folder
(never installed); its package ``__init__`` files (which import scikit-learn, not in our lock) are bypassed:
only ``basic.layers``/``basic.features``/``basic.initializers`` and the three matching model modules are
loaded, with ``utils.data.get_auto_embedding_dim`` (unused here: every dim is given) stubbed.

Known bugs of the reference, fixed here (they change its quality, two of them its speed), as subclasses:

- **MIND temperature**: ``MIND.forward`` never divides by ``temperature`` (YoutubeDNN does): cosine logits
  in [-1, 1] barely train. Fixed: ``forward(x) / temperature`` (0.02 as in its examples, all models).
- **torch.rand initialisations** (ComiRec-SA's ``W1``/``W2``, every model's ``convert_user_weight``): all
  positive uniform weights saturate the tanh and point every user vector the same way. Fixed: Xavier-normal.
- **ComiRec-DR's uninitialised weight**: ``CapsuleNetwork.w`` is ``torch.Tensor(...)`` (whatever memory held,
  NaN at times). Fixed: N(0, 1/D).
- **ComiRec-DR's slow bilinear map**: ``sum(w * e.unsqueeze(2), dim=3)`` materialises a (B, L, K*D, D) tensor
  (84 M floats per step here). Fixed: the same map as one batched matmul (its ``bilinear_type=1`` path fed by
  a module computing ``einsum('bld,lod->blo')``; the routing code is theirs, unchanged).

    .venv/bin/python benchmarks/rechub_speed.py                       # full run (~5 min): 1 and 2 threads
    .venv/bin/python benchmarks/rechub_speed.py --repeats 1 --steps 40 --out /tmp/r.json   # quick check
    (on a quiet box) .venv/bin/python benchmarks/rechub_speed.py    # recorded figures
    (on a quiet box) .venv/bin/python benchmarks/rechub_speed.py --models comirec_dr --merge   # one model again

``--merge`` re-measures some models into the existing results file: their runs and summary rows (at the
thread counts measured) replace the recorded ones, every other row stays as recorded, and the re-measurement
(command, date, load, seconds, note) is listed under ``updates``.

Writes ``benchmarks/results/train_speed_vs_rechub.json`` (per run samples/s, medians, ratio ours/theirs per
model and thread count, the paired per-repeat ratios) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULT = REPO / "benchmarks" / "results" / "train_speed_vs_rechub.json"
WHEELS = REPO / "benchmarks" / "out" / "wheels"
RECHUB_VERSION = "0.9.0"
#: our variant -> the torch-rechub class that is its peer (None: no peer)
PEERS = {"youtube_dnn": "YoutubeDNN", "mind": "MIND", "comirec_dr": "ComirecDR", "comirec_sa": "ComirecSA",
         "umi": None}
BATCH, NEGATIVES, DIM, K, MAX_LEN, PROFILE_DIM = 256, 50, 64, 4, 20, 16
TEMPERATURE = 0.02
TARGET_FACTOR = 2.0


# ------------------------------------------------------------------------------------- the reference
def rechub_dir() -> Path:
    """The unpacked torch-rechub wheel (downloaded and unpacked on first use; never installed)."""
    root = WHEELS / f"torch_rechub-{RECHUB_VERSION}"
    if (root / "torch_rechub" / "basic" / "layers.py").exists():
        return root
    wheels = sorted(WHEELS.glob(f"torch_rechub-{RECHUB_VERSION}-*.whl"))
    if not wheels:
        WHEELS.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", f"torch-rechub=={RECHUB_VERSION}",
                        "-d", str(WHEELS)], check=True)
        wheels = sorted(WHEELS.glob(f"torch_rechub-{RECHUB_VERSION}-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        z.extractall(root)
    return root


def import_rechub() -> types.SimpleNamespace:
    """torch-rechub's matching models and CapsuleNetwork, imported without its package ``__init__`` files.

    Those import every sub-package (trainers, utils) and with them scikit-learn, which the reference needs
    only for metrics and data utilities we do not use: empty package modules stand in for them, and
    ``utils.data`` is replaced by the one function ``basic.features`` imports from it (its formula copied).
    """
    import importlib

    import numpy as np

    base = rechub_dir() / "torch_rechub"
    for name, sub in (("torch_rechub", ""), ("torch_rechub.utils", "utils"), ("torch_rechub.models", "models"),
                      ("torch_rechub.models.matching", "models/matching")):
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.__path__ = [str(base / sub) if sub else str(base)]
            sys.modules[name] = mod
    if "torch_rechub.utils.data" not in sys.modules:
        data = types.ModuleType("torch_rechub.utils.data")
        data.get_auto_embedding_dim = lambda n: int(np.floor(6 * np.power(n, 0.25)))  # as utils/data.py
        sys.modules["torch_rechub.utils.data"] = data
    return types.SimpleNamespace(
        features=importlib.import_module("torch_rechub.basic.features"),
        layers=importlib.import_module("torch_rechub.basic.layers"),
        youtube=importlib.import_module("torch_rechub.models.matching.youtube_dnn"),
        mind=importlib.import_module("torch_rechub.models.matching.mind"),
        comirec=importlib.import_module("torch_rechub.models.matching.comirec"),
    )


def build_reference(arch: str, num_items: int, cardinalities: list[int]):
    """The torch-rechub model of ``arch`` with the documented fixes (module docstring)."""
    import torch
    from torch import nn

    rh = import_rechub()
    F_ = rh.features
    item = F_.SparseFeature("item", num_items, embed_dim=DIM, padding_idx=0)
    neg = F_.SequenceFeature("neg", num_items, embed_dim=DIM, pooling="concat", shared_with="item")
    # its EmbeddingLayer concatenates features along a new axis, so every field must have the item's dim
    profile = [F_.SparseFeature(f"p{c}", n, embed_dim=DIM) for c, n in enumerate(cardinalities)]

    def fix_rand_init(model):
        for mod in model.modules():  # torch.rand weights -> Xavier normal (all-positive init, see docstring)
            for pname in ("convert_user_weight", "W1", "W2"):
                p = getattr(mod, pname, None)
                if isinstance(p, nn.Parameter):
                    nn.init.xavier_normal_(p)
        return model

    if arch == "youtube_dnn":
        hist = F_.SequenceFeature("hist", num_items, embed_dim=DIM, pooling="mean", shared_with="item",
                                  padding_idx=0)
        return rh.youtube.YoutubeDNN(profile + [hist], [item], [neg], user_params={"dims": [128, DIM]},
                                     temperature=TEMPERATURE)
    hist = F_.SequenceFeature("hist", num_items, embed_dim=DIM, pooling="concat", shared_with="item",
                              padding_idx=0)

    class TemperatureFixed:
        """Divide the logits by ``temperature`` (MIND's forward forgets it; a no-op fix for the others,
        whose forward does not divide either)."""

        def forward(self, x):
            return super().forward(x) / self.temperature

    if arch == "mind":
        cls = type("MINDFixed", (TemperatureFixed, rh.mind.MIND), {})
        return fix_rand_init(cls(profile, [hist], [item], [neg], max_length=MAX_LEN, temperature=TEMPERATURE,
                                 interest_num=K, dynamic_interest=True))
    if arch == "comirec_sa":
        cls = type("ComirecSAFixed", (TemperatureFixed, rh.comirec.ComirecSA), {})
        return fix_rand_init(cls(profile, [hist], [item], [neg], temperature=TEMPERATURE, interest_num=K))
    if arch == "comirec_dr":
        cls = type("ComirecDRFixed", (TemperatureFixed, rh.comirec.ComirecDR), {})
        model = fix_rand_init(cls(profile, [hist], [item], [neg], max_length=MAX_LEN, temperature=TEMPERATURE,
                                  interest_num=K))
        caps = model.capsule
        with torch.no_grad():
            nn.init.normal_(caps.w, std=DIM ** -0.5)  # was uninitialised memory

        class PositionBilinear(nn.Module):
            """``sum(w[:, :L] * e.unsqueeze(2), dim=3)`` of CapsuleNetwork (bilinear_type 2) as one einsum:
            the same (B, L, K*D) maps without the (B, L, K*D, D) intermediate. Holds ``w`` itself, so the
            capsule's parameters (and Adam's state) are the same tensor."""

            def __init__(self, w):
                super().__init__()
                self.w = w

            def forward(self, e):
                return torch.einsum("bld,lod->blo", e, self.w[0, : e.shape[1]])

        caps.linear = PositionBilinear(caps.w)
        caps.bilinear_type = 1  # routes through self.linear(item_eb); logits still start at 0 (type > 0)
        return model
    raise ValueError(f"no torch-rechub peer for {arch!r}")


# ------------------------------------------------------------------------------------------ one run
def _batches(split: Path, steps: int, seed: int):
    """``steps`` training batches of the split (the product's PrefixDataset and shuffling) and the
    negatives of each step, drawn uniformly from 1..N-1 (the product's uniform sampler)."""
    import torch

    from components.train_data import EpochBatchSampler, PrefixDataset, load_split_meta, read_ragged
    from models.loss import NegativeSampler

    meta = load_split_meta(split)
    seqs = read_ragged(split / "train.parquet", "items", meta.num_items, meta.profiles.shape[0])
    ds = PrefixDataset(seqs, meta.profiles, MAX_LEN)
    sampler = EpochBatchSampler(len(ds), BATCH, seed=seed)
    out, epoch = [], 0
    while len(out) < steps:
        sampler.set_epoch(epoch)
        out += [ds[ids] for ids in sampler if len(ids) == BATCH]
        epoch += 1
    gen = torch.Generator().manual_seed(seed)
    neg = NegativeSampler("uniform", meta.num_items)
    return meta, out[:steps], [neg.sample(NEGATIVES, gen) for _ in range(steps)]


def child(side: str, variant: str, threads: int, steps: int, warmup: int, split: Path, params: Path) -> dict:
    """One measurement in this process: samples/s of ``steps`` timed training steps."""
    import torch
    import yaml

    from components.train import keep_freed_memory

    torch.set_num_threads(threads)
    keep_freed_memory()  # both sides: the product's allocator setting is process-wide, not model code
    torch.manual_seed(0)
    meta, batches, negs = _batches(split, warmup + steps, seed=0)
    variants = yaml.safe_load(params.read_text())["models"]
    entry = dict(variants[variant])
    arch = entry["arch"]
    if side in ("ours", "ours_compiled"):
        import models as M
        from models.loss import sampled_softmax_loss

        attention_pow = entry.pop("attention_pow", None)
        harder = entry.pop("harder_negatives", False)
        hp = {k: v for k, v in entry.items() if k != "arch"}
        net = M.build_model(arch, **hp, num_items=meta.num_items, num_categories=meta.num_categories,
                            profile_cardinalities=list(meta.profile_cardinalities), max_len=MAX_LEN)
        M.set_item_category(net, meta.item_category)
        net.train()
        if side == "ours_compiled":  # train.compile: the product's wrapper (user tower compiled, training only)
            from components.train import compile_user_tower

            compile_user_tower(net)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)  # as RetrievalTask.configure_optimizers

        def step(batch, neg):
            interests, imask = net.user_interests(batch["history"], batch["mask"], batch["profile"])
            pos = batch["target"]
            emb = net.item_embeddings(torch.cat([pos, neg]))
            loss = sampled_softmax_loss(interests, imask, pos, emb[: len(pos)], neg, emb[len(pos):],
                                        attention_pow=attention_pow, harder_negatives=harder)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss
    else:
        net = build_reference(arch, meta.num_items, list(meta.profile_cardinalities))
        net.train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-5)  # MatchTrainer's default
        criterion = torch.nn.CrossEntropyLoss()
        y = torch.zeros(BATCH, dtype=torch.long)
        inputs = []
        for batch, neg in zip(batches, negs):  # its input format, built before the clock starts
            x = {"hist": batch["history"], "item": batch["target"], "neg": neg.unsqueeze(0).expand(BATCH, -1)}
            x.update({f"p{c}": batch["profile"][:, c] for c in range(batch["profile"].shape[1])})
            inputs.append(x)
        batches = inputs

        def step(x, neg):  # MatchTrainer.train_one_epoch, mode 2, without its tqdm and .item() per step
            loss = criterion(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

    w0 = time.perf_counter()
    for i in range(warmup):
        step(batches[i], negs[i])
    warmup_s = time.perf_counter() - w0  # with compile: includes the compilation
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(warmup, warmup + steps):
        loss = step(batches[i], negs[i])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"side": side, "variant": variant, "threads": threads, "steps": steps, "warmup": warmup,
            "samples_per_s": steps * BATCH / wall, "samples_per_cpu_s": steps * BATCH / cpu,
            "wall_s": wall, "warmup_s": warmup_s, "final_loss": float(loss.detach()), "torch_threads": torch.get_num_threads()}


def _spawn(side: str, variant: str, threads: int, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--models", variant,
           "--threads", str(threads), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--split", str(args.split), "--params", str(args.params)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-2000:] + res.stderr[-4000:])
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict], variants: list[str], threads: list[int]) -> dict:
    """Medians per (variant, threads, side), ratio of the medians, and the per-repeat paired ratios."""
    out: dict = {}
    for v in variants:
        for t in threads:
            ours = [r for r in runs if r["variant"] == v and r["threads"] == t and r["side"] == "ours"]
            comp = [r for r in runs if r["variant"] == v and r["threads"] == t and r["side"] == "ours_compiled"]
            theirs = [r for r in runs if r["variant"] == v and r["threads"] == t and r["side"] == "theirs"]
            med = lambda rs, k: statistics.median(r[k] for r in rs) if rs else None  # noqa: E731
            row = {"ours_samples_per_s": med(ours, "samples_per_s"),
                   "ours_samples_per_cpu_s": med(ours, "samples_per_cpu_s"),
                   "theirs_samples_per_cpu_s": med(theirs, "samples_per_cpu_s"),
                   "theirs_samples_per_s": (statistics.median(r["samples_per_s"] for r in theirs)
                                            if theirs else None),
                   "ours_runs": [round(r["samples_per_s"]) for r in ours],
                   "theirs_runs": [round(r["samples_per_s"]) for r in theirs]}
            if comp:
                row["compiled_samples_per_s"] = statistics.median(r["samples_per_s"] for r in comp)
                row["compiled_runs"] = [round(r["samples_per_s"]) for r in comp]
                row["compiled_warmup_s"] = statistics.median(r["warmup_s"] for r in comp)
                row["eager_warmup_s"] = statistics.median(r["warmup_s"] for r in ours) if ours else None
                if ours:
                    row["compiled_over_eager"] = row["compiled_samples_per_s"] / row["ours_samples_per_s"]
            if ours and theirs:
                row["ratio"] = row["ours_samples_per_s"] / row["theirs_samples_per_s"]
                # per CPU-second of each process: what a busy shared machine distorts least (at 2 threads it
                # counts both threads' time, so it is a ratio of efficiency, not of throughput)
                row["ratio_cpu"] = row["ours_samples_per_cpu_s"] / row["theirs_samples_per_cpu_s"]
                paired = [a["samples_per_s"] / b["samples_per_s"] for a, b in zip(ours, theirs)]
                row["paired_ratios"] = [round(x, 3) for x in paired]
                row["meets_target"] = min(row["ratio"], statistics.median(paired)) >= TARGET_FACTOR
            out.setdefault(v, {})[str(t)] = row
    return out


def _without_note(args: list[str]) -> list[str]:
    """The command line with ``--note``'s text replaced by ``<note>`` (the note is recorded on its own)."""
    out, skip = [], False
    for a in args:
        if skip:
            out.append("<note>")
            skip = False
        elif a == "--note":
            out.append(a)
            skip = True
        elif a.startswith("--note="):
            out.append("--note=<note>")
        else:
            out.append(a)
    return out


def merge_results(old: dict, new: dict) -> dict:
    """``old`` (a results file) with ``new``'s models re-measured: runs and summary rows of the (variant,
    threads) pairs in ``new`` replace those of ``old``; everything else of ``old`` is kept, including its
    top-level command/machine/setting (they describe the run that produced the rows left as recorded). The
    re-measurement is appended to ``updates``. The settings must agree (batch, negatives, dims, steps...), so
    that the merged table compares like with like."""
    keys = ("batch_size", "num_negatives", "dim", "num_interests", "max_len", "steps", "warmup", "repeats")
    differ = {k: (old.get("setting", {}).get(k), new["setting"].get(k)) for k in keys
              if old.get("setting", {}).get(k) != new["setting"].get(k)}
    if differ:
        raise ValueError(f"cannot merge runs of another setting into the results file: {differ}")
    measured = {(r["variant"], r["threads"]) for r in new["runs"]}
    out = {**old, "runs": [r for r in old.get("runs", []) if (r["variant"], r["threads"]) not in measured]
           + new["runs"], "peers": {**old.get("peers", {}), **new["peers"]}}
    summary = {v: dict(rows) for v, rows in old.get("summary", {}).items()}
    for v, rows in new["summary"].items():
        summary.setdefault(v, {}).update(rows)
    out["summary"] = summary
    update = {k: new[k] for k in ("command", "machine", "date") if k in new}
    update["variants"] = sorted(new["summary"])
    update["threads"] = sorted({int(t) for rows in new["summary"].values() for t in rows})
    if new.get("note"):
        update["note"] = new["note"]
    out["updates"] = [*old.get("updates", []), update]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(PEERS), help="comma-separated variants of params.yaml")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before the clock starts")
    parser.add_argument("--split", type=Path, default=REPO / "data" / "split")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--sides", default="ours,theirs",
                        help="comma-separated: ours, theirs, ours_compiled (ours with train.compile)")
    parser.add_argument("--summarise-only", action="store_true", help="recompute the summary of --out")
    parser.add_argument("--merge", action="store_true",
                        help="replace only the measured models' rows of --out, keep the others (see docstring)")
    parser.add_argument("--note", default="", help="a note recorded with the results (with --merge: the update)")
    parser.add_argument("--child", choices=("ours", "theirs", "ours_compiled"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    variants = args.models.split(",")
    threads = [int(t) for t in args.threads.split(",")]
    if args.summarise_only:  # recompute the summary of an existing results file (after a code change)
        result = json.loads(args.out.read_text())
        result["summary"] = summarise(result["runs"], list(result["peers"]),
                                      sorted({r["threads"] for r in result["runs"]}))
        args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        return
    if args.child:
        print(json.dumps(child(args.child, variants[0], threads[0], args.steps, args.warmup, args.split,
                               args.params)))
        return

    from components.io import relative_paths

    arch = {v: json.loads(json.dumps(__import__("yaml").safe_load(args.params.read_text())["models"][v]))["arch"]
            for v in variants}
    load_before, t0 = os.getloadavg(), time.perf_counter()
    runs = []
    for rep in range(args.repeats):
        for t in threads:
            for v in variants:
                sides = [s for s in args.sides.split(",") if s != "theirs" or PEERS.get(arch[v])]
                if rep % 2:
                    sides.reverse()
                for side in sides:
                    r = _spawn(side, v, t, args)
                    r["repeat"] = rep
                    runs.append(r)
                    print(f"repeat {rep} threads {t} {v:<12} {side:<13} {r['samples_per_s']:9.0f} samples/s "
                          f"(warm-up {r['warmup_s']:.1f} s)", flush=True)
    summary = summarise(runs, variants, threads)
    result = {
        "command": " ".join(["python benchmarks/rechub_speed.py", *_without_note(argv if argv is not None
                                                                             else sys.argv[1:])]),
        "reference": f"torch-rechub {RECHUB_VERSION} (pip download --no-deps; fixes in the script docstring)",
        "timed": "training steps only (forward, loss, backward, Adam) on pre-gathered batches; wall clock",
        "setting": {"batch_size": BATCH, "num_negatives": NEGATIVES, "dim": DIM, "num_interests": K,
                    "max_len": MAX_LEN, "profile_dim_ours": PROFILE_DIM, "profile_dim_theirs": DIM, "temperature_theirs": TEMPERATURE,
                    "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
                    "split": str(args.split)},
        "target_factor": TARGET_FACTOR,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg(), "seconds": time.perf_counter() - t0},
        "peers": {v: PEERS.get(arch[v]) for v in variants},
        "summary": summary,
        "runs": runs,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if args.note:
        result["note"] = args.note
    result = relative_paths(result, REPO)
    if args.merge and args.out.exists():
        result = merge_results(json.loads(args.out.read_text()), result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"{'model':<12}{'threads':>8}{'ours':>10}{'theirs':>10}{'ratio':>8}  paired ratios")
    for v, by_t in summary.items():  # this run's rows only (with --merge, the file holds the others too)
        for t, r in by_t.items():
            ratio = f"{r['ratio']:8.2f}" if r.get("ratio") else "       -"
            theirs = f"{r['theirs_samples_per_s']:10.0f}" if r["theirs_samples_per_s"] else "         -"
            comp = (f"  compiled {r['compiled_samples_per_s']:.0f} ({r['compiled_over_eager']:.2f}x eager, warm-up "
                    f"{r['compiled_warmup_s']:.0f} s)" if r.get("compiled_samples_per_s") else "")
            print(f"{v:<12}{t:>8}{r['ours_samples_per_s']:10.0f}{theirs}{ratio}  {r.get('paired_ratios', '')}{comp}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
