"""Benchmark of the serving path: ``Recommender.recommend`` latency for one user and batch throughput.

Set-up (issue 4): a MIND user tower with K = 4 interests (all active: ``dynamic_interests: false``, the
worst case), D = 64, over a synthetic catalogue of 100k items, exported through ``components.export``'s
``build_bundle`` (TorchScript tower + item embeddings) and loaded with ``Recommender.load`` — the exact
path production uses. One core: ``torch.set_num_threads(1)`` and ``faiss.omp_set_num_threads(1)``.

Paths: exact (the default, identical to evaluate), the same through the previous exact path
(``retrieval.topn`` for one user: the before/after figure on the same requests and load), exact with
λ = 0.25 (controllable aggregation), and the approximate HNSW index path (`use_index=True`).

The exact single-user path (``Recommender._exact_one``): MKL-packed scores + block-threshold top-n; the
per-stage profile (``profile_exact_cpu_ms``) times each stage and what it replaced on the same requests.

Requests: random histories of 5..50 known items (the tower sees the most recent ``max_len`` = 20), no
profile, n = 50. Single-request latency is measured per call (``perf_counter``) after a warm-up, and also as
the calling thread's CPU time (``thread_time``), which a busy shared machine inflates far less than wall
time. Batch throughput: ``recommend_batch`` over 256 users per call. Target: p99 <= 10 ms.

    .venv/bin/python benchmarks/serving.py                 # 100k items, 1000 requests
    .venv/bin/python benchmarks/serving.py --items 20000 --requests 200   # quick check

Outputs: the bundle under ``benchmarks/out/serving/`` (ignored by git); figures printed and written to
``benchmarks/results/serving.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TARGET_P99_MS = 10.0


def make_catalogue(out: Path, num_items: int, num_categories: int, seed: int) -> Path:
    """items.parquet + vocab.json of a synthetic split (all that a bundle needs from the split)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    split = out / "split"
    split.mkdir(parents=True, exist_ok=True)
    idx = np.arange(1, num_items)
    cats = rng.integers(1, num_categories, num_items - 1)
    pd.DataFrame({"item_idx": idx, "item_id": [f"i{i}" for i in idx], "category": [f"c{c}" for c in cats],
                  "category_idx": cats, "train_count": rng.zipf(1.5, num_items - 1).clip(max=10**6)}
                 ).to_parquet(split / "items.parquet", index=False)
    (split / "vocab.json").write_text(json.dumps({
        "num_items": num_items, "num_categories": num_categories, "profile_fields": [],
        "profile_cardinalities": [], "profile_values": {}, "protocol": "strong_generalization"}))
    return split


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


def profile_exact(rec, histories: list[list[str]], n: int) -> dict[str, dict[str, float]]:
    """Thread-CPU p50/p99 (ms) of each stage of one exact single-user request, and of what each fast stage
    replaced (``retrieval.topn`` for a batch of one: ``torch.matmul`` + ``stable_topk``), on the same
    requests."""
    import torch

    from components.retrieval import merged_scores, pad_exclusions, pad_histories, stable_topk, topn
    from components.serving import block_topn

    prof = torch.zeros(1, len(rec.profile_fields), dtype=torch.long)
    stages: dict[str, list[float]] = {}

    def clock(name, fn, *a):
        c = time.thread_time()
        r = fn(*a)
        stages.setdefault(name, []).append(time.thread_time() - c)
        return r

    def forward(h, m):
        with torch.no_grad():
            return rec.tower(h, m, prof)

    for hist in histories:
        enc = clock("encode + pad", lambda: (lambda e: (e, pad_histories([e], rec.max_len)))(
            rec._encode_history(hist)))
        e, (h, m) = enc
        v, vm = clock("user tower (TorchScript)", forward, h, m)
        sc = clock("scores: packed MKL (K, N)", lambda: rec._scores(v[0])[: v.shape[1]])
        clock("* scores: torch.matmul (K, N)", lambda: torch.matmul(v, rec.item_emb.T))
        best = clock("max over interests + exclusion", lambda: _merge(sc, e))
        clock("top-n: block threshold", block_topn, best, n)
        s2 = merged_scores(v, vm, rec.item_emb)
        clock("* top-n: stable_topk (torch.topk)", stable_topk, s2, n)
        clock("whole exact retrieval (_exact_one)", rec._exact_one, v[0], vm[0], e, n)
        with torch.no_grad():
            clock("* whole exact retrieval (retrieval.topn)", topn, v, vm, rec.item_emb, n, pad_exclusions([e]))
    return {k: {"p50": percentile_ms(t, 50), "p99": percentile_ms(t, 99)} for k, t in stages.items()}


def _previous_exact_one(self, interests, interest_mask, history, n):
    """What the single-user exact path did before the fast path: ``retrieval.topn`` for a batch of one
    (``torch.matmul`` re-packing the table, ``stable_topk``), for the before/after row of the benchmark."""
    from components.retrieval import pad_exclusions, topn

    ex = pad_exclusions([history]) if self.exclude_history else None
    s, i = topn(interests.unsqueeze(0).float(), interest_mask.unsqueeze(0).bool(), self.item_emb, n, ex)
    pairs = [(a, b) for a, b in zip(s[0].tolist(), i[0].tolist()) if b != 0 and a != float("-inf")]
    return [a for a, _ in pairs], [b for _, b in pairs]


def _merge(scores, history):
    import torch

    best = scores.amax(dim=0)
    best[0] = float("-inf")
    if history:
        best[torch.as_tensor(history, dtype=torch.long)] = float("-inf")
    return best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--interests", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ann-factory", default="HNSW32", help="index for the approximate path")
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "serving")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "serving.json")
    args = parser.parse_args(argv)

    import faiss
    import torch

    import models
    from components.export import ExportPaths, build_bundle
    from components.serving import Recommender

    shutil.rmtree(args.out, ignore_errors=True)
    split = make_catalogue(args.out, args.items, 100, args.seed)
    torch.manual_seed(args.seed)
    model = models.build_model("mind", num_items=args.items, num_categories=100, profile_cardinalities=[],
                               max_len=args.max_len, dim=args.dim, num_interests=args.interests,
                               dynamic_interests=False)
    (args.out / "models" / "mind").mkdir(parents=True)
    models.save_model(model, args.out / "models" / "mind" / "model.pt")
    paths = ExportPaths(models_dir=args.out / "models", eval_dir=args.out / "eval", index_dir=args.out / "index",
                        split_dir=split, bundles_dir=args.out / "bundles")
    # an HNSW index in the bundle for the approximate path (the exact path ignores it)
    from components.build_index import build_faiss_index
    from components.evaluate import item_table

    t0 = time.perf_counter()
    index, rows, used = build_faiss_index(item_table(model, args.items).numpy(), args.ann_factory,
                                          ef_search=args.ef_search)
    index_build_s = time.perf_counter() - t0
    (args.out / "index" / "mind").mkdir(parents=True)
    faiss.write_index(index, str(args.out / "index" / "mind" / "index.faiss"))
    np.save(args.out / "index" / "mind" / "item_ids.npy", rows)
    (args.out / "index" / "mind" / "index.json").write_text(json.dumps(
        {"factory": used, "nprobe": 16, "ef_search": args.ef_search}))
    t0 = time.perf_counter()
    bundle = build_bundle("mind", paths, {}, {}, {"passed": True, "note": "benchmark"}, "benchmark")
    export_s = time.perf_counter() - t0

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    rec = Recommender.load(bundle)
    ann = Recommender.load(bundle, use_index=True)
    rng = np.random.default_rng(args.seed + 1)
    histories = [[f"i{i}" for i in rng.integers(1, args.items, rng.integers(5, 51))]
                 for _ in range(args.requests + 50)]
    out: dict = {}
    previous = Recommender.load(bundle)  # the same bundle served by the previous exact path (before/after)
    previous._exact_one = types.MethodType(_previous_exact_one, previous)
    for name, r, lam in (("exact", rec, 0.0), ("exact_previous_path", previous, 0.0),
                         ("exact_lambda_0.25", rec, 0.25), (args.ann_factory, ann, 0.0)):
        for h in histories[:50]:  # warm-up
            r.recommend(h, None, args.n, lam)
        wall, cpu = [], []
        for h in histories[50:]:
            t, c = time.perf_counter(), time.thread_time()
            r.recommend(h, None, args.n, lam)
            cpu.append(time.thread_time() - c)
            wall.append(time.perf_counter() - t)
        out[name] = {
            "p50_ms": percentile_ms(wall, 50), "p99_ms": percentile_ms(wall, 99), "mean_ms": 1e3 * float(np.mean(wall)),
            "cpu_p50_ms": percentile_ms(cpu, 50), "cpu_p99_ms": percentile_ms(cpu, 99)}
    profile = profile_exact(rec, histories[50:], args.n)
    batch = histories[: args.batch]
    rec.recommend_batch(batch, None, args.n)
    reps, t = 0, time.perf_counter()
    while time.perf_counter() - t < 3.0:
        rec.recommend_batch(batch, None, args.n)
        reps += 1
    batch_s = (time.perf_counter() - t) / reps
    result = {
        "config": {"items": args.items, "dim": args.dim, "interests": args.interests, "max_len": args.max_len,
                   "n": args.n, "requests": args.requests, "batch": args.batch, "threads": 1,
                   "model": "mind (random init, dynamic_interests=false)"},
        "single_request": out,
        "profile_exact_cpu_ms": profile,
        "batch_users_per_s": args.batch / batch_s,
        "batch_ms": 1e3 * batch_s,
        "export_s": export_s,
        "ann_index_build_s": index_build_s,
        "target_p99_ms": TARGET_P99_MS,
        "target_met": out["exact"]["p99_ms"] <= TARGET_P99_MS,
        "target_met_cpu_time": out["exact"]["cpu_p99_ms"] <= TARGET_P99_MS,
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                    "python": platform.python_version(), "torch": torch.__version__},
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(f"serving, {args.items} items, K={args.interests}, D={args.dim}, n={args.n}, 1 thread "
          f"(target p99 <= {TARGET_P99_MS} ms), wall / thread-CPU ms:")
    for name, s in out.items():
        print(f"  {name:>18}: p50 {s['p50_ms']:.2f} / {s['cpu_p50_ms']:.2f}, p99 {s['p99_ms']:.2f} / "
              f"{s['cpu_p99_ms']:.2f}")
    print("  profile of the exact path, thread-CPU ms p50 / p99 (* = the stage it replaced):")
    for name, v in profile.items():
        print(f"    {name:>40}: {v['p50']:.3f} / {v['p99']:.3f}")
    print(f"  batch of {args.batch} (exact): {result['batch_users_per_s']:.0f} users/s; "
          f"load avg {result['machine']['load_avg_1m']} on {os.cpu_count()} cpus -> {args.results}")
    return result


if __name__ == "__main__":
    main()
