"""Benchmark on planted-interest synthetic data (issue 6): do multi-interest models win where interests are many,
and do their interests recover the planted ones?

Data: components.synthetic (through the real ingest and split steps), for every planted interest count in
``--interests`` (default 1, 2, 4, 8) and noise ratio in ``--noise`` (default 0.05, 0.3): 600 users, 400 items
in 40 categories, ~30 interactions per user, users split 60/20/20 (strong generalization, 80 % history).

Models (components.train.run, the product trainer): YouTube DNN (one interest) vs MIND, ComiRec-DR,
ComiRec-SA with K = 4 whatever the planted count (the protocol's K; the sweep shows what happens when the
data has fewer or more interests than K). All with D = 8, item = id + category embedding, 4 epochs, batch
128, 20 uniform negatives, lr 0.01. Why D = 8: with 40 near-orthogonal category directions a 64-d single
vector could still be their sum; a small D is where one vector cannot point at several categories at once,
the premise of MIND §1 and ComiRec §3 (tests/components/test_planted.py makes the same choice).

Measured on the test users:
- Recall@50 (history excluded; components.train's validation code = the evaluator's definition);
- purity: each non-noise history behaviour (of the max_len the model sees) goes to the interest with the
  largest coupling coefficient (``model.coupling_coefficients``: MIND/ComiRec-DR routing weights, ComiRec-SA
  attention); purity = share of behaviours whose interest's majority planted label is their own, pooled over
  users; ``purity_shuffled`` = the same after shuffling assignments within each user (same cluster sizes);
- NMI: per user, normalised mutual information (arithmetic mean of the entropies) between that assignment
  and the planted labels, averaged over users whose planted labels are not all equal (undefined otherwise:
  with 1 planted interest NMI is reported as null).

Data seed 1, training seed 0 (``--seed``). Writes ``benchmarks/results/planted.json`` and prints a table.

    .venv/bin/python benchmarks/planted.py                       # full sweep (a few minutes on 2 cores)
    .venv/bin/python benchmarks/planted.py --interests 4 --noise 0.05 --models youtube_dnn,mind
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OUT = REPO / "benchmarks" / "out" / "planted"
RESULT = REPO / "benchmarks" / "results" / "planted.json"
DATA_SEED = 1
DIM = 8
K = 4
MODELS = {
    "youtube_dnn": ("youtube_dnn", {"dim": DIM}, None),
    "mind": ("mind", {"dim": DIM, "num_interests": K}, 2.0),
    "comirec_dr": ("comirec_dr", {"dim": DIM, "num_interests": K, "use_category": True}, None),
    "comirec_sa": ("comirec_sa", {"dim": DIM, "num_interests": K, "use_category": True}, None),
}


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information 2 I(a; b) / (H(a) + H(b)) of two labelings; NaN if both are constant."""
    a = np.unique(np.asarray(a), return_inverse=True)[1]
    b = np.unique(np.asarray(b), return_inverse=True)[1]
    n = len(a)
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1.0)
    p = joint / n
    pa, pb = p.sum(1), p.sum(0)

    def h(q):
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    ha, hb = h(pa), h(pb)
    if ha + hb == 0:
        return float("nan")
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum())
    return 2.0 * mi / (ha + hb)


def purity_hits(assign: np.ndarray, labels: np.ndarray) -> int:
    """Behaviours whose cluster's majority label is their own."""
    return int(sum(np.unique(labels[assign == k], return_counts=True)[1].max() for k in np.unique(assign)))


def make_data(root: Path, interests: int, noise: float) -> tuple[Path, Path]:
    from components.ingest import IngestConfig, run as ingest
    from components.split import SplitConfig, run as split_run
    from components.synthetic import SyntheticConfig

    canonical, split = root / "canonical", root / "split"
    if not (split / "stats.json").exists():
        syn = SyntheticConfig(num_users=600, num_items=400, num_categories=40, interests_per_user=interests,
                              mean_length=30, min_length=10, noise=noise, save_ground_truth=True)
        ingest(IngestConfig(source="synthetic", synthetic=syn), canonical, seed=DATA_SEED)
        split_run(SplitConfig(ratios=(0.6, 0.2, 0.2)), canonical, split, seed=DATA_SEED)
    return canonical, split


def planted_labels(canonical: Path, split: Path, users) -> list[np.ndarray]:
    """Per test user, the planted interest (-1 = noise) of each whole-history item, in time order."""
    import pandas as pd

    items = pd.read_parquet(split / "items.parquet")[["item_idx", "item_id"]]
    uid = pd.read_parquet(split / "users.parquet")[["user_idx", "user_id"]]
    gt = pd.read_parquet(canonical / "ground_truth.parquet")
    gt = gt.merge(items, on="item_id").merge(uid, on="user_id").sort_values(["user_idx", "timestamp", "item_id"])
    by_user = {u: g for u, g in gt.groupby("user_idx")}
    h = users.history
    labels = []
    for r, u in enumerate(h.user_idx):
        seq = h.values[h.offsets[r]:h.offsets[r + 1]]
        g = by_user[u]
        if not np.array_equal(g["item_idx"].to_numpy()[: len(seq)], seq):
            raise RuntimeError(f"ground truth of user_idx {u} does not start with its history")
        labels.append(g["interest"].to_numpy()[: len(seq)])
    return labels


def score(model, users, labels, num_items: int, seed: int) -> dict:
    import torch

    from components.train import _retrieval_recall

    batch = users[np.arange(len(users))]
    model.eval()
    with torch.no_grad():
        s, c = _retrieval_recall(model, batch, model.item_embeddings(torch.arange(num_items)), 50)
        out = {"recall@50": float(s / c)}
        if not hasattr(model, "coupling_coefficients"):
            return out
        w = model.coupling_coefficients(batch["history"], batch["mask"], batch["profile"])  # (B, K, L)
    assign = w.argmax(dim=1).numpy()  # (B, L): interest of each behaviour
    mask = batch["mask"].numpy()
    rng = np.random.default_rng(seed)
    hit = hit_shuf = total = 0
    nmis = []
    for b, lab in enumerate(labels):
        n = int(mask[b].sum())
        lab, a = lab[-n:], assign[b, :n]  # the model sees the most recent max_len items, left-aligned
        keep = lab >= 0
        lab, a = lab[keep], a[keep]
        if len(lab) == 0:
            continue
        hit += purity_hits(a, lab)
        hit_shuf += purity_hits(rng.permutation(a), lab)
        total += len(lab)
        if len(np.unique(lab)) > 1:
            nmis.append(nmi(a, lab))
    out.update({"purity": hit / total, "purity_shuffled": hit_shuf / total,
                "nmi": float(np.mean(nmis)) if nmis else None, "nmi_users": len(nmis)})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--interests", default="1,2,4,8")
    ap.add_argument("--noise", default="0.05,0.3")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)

    import torch

    import models as M
    from components.io import write_json
    from components.train import ModelConfig, TrainConfig, run as train
    from components.train_data import EvalUsers, load_split_meta

    torch.set_num_threads(1)
    cfg = TrainConfig(max_len=20, max_epochs=args.epochs, batch_size=128, num_negatives=20, lr=0.01,
                      patience=args.epochs, progress_refresh=0, num_threads=1)
    names = [m.strip() for m in args.models.split(",")]
    rows = []
    t_all = time.perf_counter()
    for k in [int(x) for x in args.interests.split(",")]:
        for noise in [float(x) for x in args.noise.split(",")]:
            root = OUT / f"k{k}_noise{noise}"
            canonical, split = make_data(root, k, noise)
            meta = load_split_meta(split)
            users = EvalUsers(split / "test.parquet", meta, cfg.max_len)
            labels = planted_labels(canonical, split, users)
            for name in names:
                arch, hp, pow_ = MODELS[name]
                mc = ModelConfig(name=name, arch=arch, hparams=hp, attention_pow=pow_)
                t0 = time.perf_counter()
                train(cfg, mc, split, root / "models" / name, seed=args.seed)
                model = M.load_model(root / "models" / name / "model.pt")
                row = {"interests": k, "noise": noise, "model": name, **score(model, users, labels, meta.num_items, args.seed),
                       "test_users": len(users), "seconds": round(time.perf_counter() - t0, 1)}
                shutil.rmtree(root / "models" / name, ignore_errors=True)
                rows.append(row)
                print({k2: (round(v, 4) if isinstance(v, float) else v) for k2, v in row.items()}, flush=True)
    write_json(args.out, {
        "meta": {"command": "python benchmarks/planted.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "synthetic": {"num_users": 600, "num_items": 400, "num_categories": 40, "mean_length": 30,
                               "min_length": 10, "split_ratios": [0.6, 0.2, 0.2], "data_seed": DATA_SEED},
                 "train": {"max_len": cfg.max_len, "epochs": cfg.max_epochs, "batch_size": cfg.batch_size,
                           "num_negatives": cfg.num_negatives, "lr": cfg.lr, "dim": DIM, "K": K,
                           "seed": args.seed},
                 "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                 "wall_s": round(time.perf_counter() - t_all, 1),
                 "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
