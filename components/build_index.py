"""build_index: a faiss inner-product index over a trained model's item embeddings, with its figures.

The index is chosen by a faiss factory string (``index.factory``), or ``auto`` (the default): exact
``Flat`` below ``flat_below`` items, else ``IVF{nlist},SQfp16`` with nlist = 4·sqrt(N) rounded to a power
of two (4096 at 1M items) and ``nprobe`` lists searched (8 by default). On 1M clustered items (d = 64,
benchmarks/index.py, benchmarks/results/index.json) that gives recall@50 0.999 against exact search at
~8,600 interest-queries per CPU-second, 5,600 q/s wall on 2 cores shared with other jobs (target: >= 0.95
at >= 5,000 q/s), in half the memory of the float vectors (fp16 codes: 128 bytes per item); build ~2 min.
Why not the others (same run): ``IVF4096,Flat`` has the same recall at ~37 % lower throughput (scanning
is memory-bound and its vectors are twice as large); nprobe 4 is faster but at recall 0.955, too close to
the target to depend on one k-means sample; ``SQ8`` loses recall (0.990 at nprobe 8) for little speed;
4-bit PQ fast-scan re-ranked 4x (``IVF1024,PQ32x4fs,RFlat``) reaches 0.907; ``HNSW32`` took ~16 min to
build at 1M on 2 cores for ≈ 0.97. Row ``r`` of the index is item index ``item_ids.npy[r]`` (padding 0 is
not indexed).

Reported in ``index.json`` (DVC metrics): build time, serialized size, search throughput for batched
multi-interest queries (every unmasked interest of the valid and test users, one ``search`` call per batch),
and ANN quality against exact search: per-interest recall@N (|ANN top-N ∩ exact top-N| / N) and the recall
of the merged multi-interest list (the list users actually get).

Choices the papers leave open:
- Catalogues smaller than ``flat_below`` items get exact ``Flat`` whatever the factory: ANN buys nothing on
  a few thousand items and IVF needs ~39 training points per list. The factory actually used is recorded.
- Throughput is the wall time of ``index.search`` alone (no model forward), faiss using its default threads.
- ``auto`` checks itself: the IVF index's per-interest recall@``recall_n`` against exact search is measured
  on the valid and test users' interests (as for every index). Below ``auto_min_recall`` nprobe is doubled
  (up to nlist / 16 lists, 1/16 of the catalogue scanned) until it is reached, and the nprobe found is the
  one recorded and exported (``nprobe_tuning`` in ``index.json`` lists each tried value's recall); only if
  that fails is the index replaced by ``Flat`` and ``index.json`` records the fallback. IVF relies on
  clustered embeddings (trained ones are; isotropic Gaussian ones at 1M items give recall 0.08 at nprobe 8).
- The exact reference is faiss' brute-force Flat index (:func:`exact_reference`), computed once per build.
- IVF coarse quantizers are trained by k-means on at most 64 points per list (faiss' default is 256;
  faiss asks for >= 39): at 1M items and 4096 lists that is 262k points and ~1 min of CPU instead of ~4.
- faiss 1.15 ships ``distance_compute_blas_threshold`` = 128000 queries: below that, brute-force
  distances (``Flat`` search, the IVF coarse quantizer, k-means assignment) use a one-query-at-a-time loop
  that streams the vectors once per query, ~10x slower than the BLAS path for batches here (a Flat search
  of 1024 queries over 1M items: 6 q/s). :func:`configure_faiss` puts back faiss' long-standing 20.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.config import ParamsError, load_params, section
from components.io import DataError, atomic_dir, cli_main, write_json


@dataclass(frozen=True)
class IndexConfig:
    factory: str = "auto"
    """faiss factory string (inner product), e.g. Flat, HNSW32, IVF4096,SQfp16; auto: see resolve_factory."""
    nprobe: int = 8
    """IVF: inverted lists visited per query."""
    ef_search: int = 128
    """HNSW: search-time beam width (efSearch)."""
    flat_below: int = 200000
    """catalogues with fewer items use exact Flat regardless of ``factory``."""
    recall_n: int = 50
    """N of the ANN recall@N against exact search."""
    batch_size: int = 512
    """users per forward pass / queries per search call in the throughput figure (x K interests)."""
    auto_min_recall: float = 0.95
    """factory auto: if the IVF index's per-interest recall@recall_n on the users is below this, probe more
    lists (nprobe doubled up to nlist / 16), then use Flat."""

    def __post_init__(self) -> None:
        if not self.factory.strip():
            raise ValueError("factory must be a non-empty faiss factory string")
        for key in ("nprobe", "ef_search", "recall_n", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.flat_below < 0:
            raise ValueError(f"flat_below must be >= 0, got {self.flat_below}")
        if not 0.0 <= self.auto_min_recall <= 1.0:
            raise ValueError(f"auto_min_recall must lie in [0, 1], got {self.auto_min_recall}")


BLAS_THRESHOLD = 20  # queries per search from which faiss uses BLAS (its default before 1.15)
KMEANS_POINTS_PER_LIST = 64  # k-means training sample per IVF list


def configure_faiss() -> None:
    """Process-wide faiss setting this module relies on (see the module docstring)."""
    import faiss

    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD


def resolve_factory(factory: str, num_items: int, flat_below: int) -> str:
    """The factory string actually built for ``num_items`` real items.

    ``Flat`` below ``flat_below`` items whatever the factory; ``auto`` above it is
    ``IVF{nlist},SQfp16`` with nlist = 4·sqrt(N) rounded to a power of two (faiss' rule of thumb is
    4..16·sqrt(N); the low end keeps k-means cheap), at most N / 39 (faiss' minimum training points per list).
    """
    if num_items < flat_below:
        return "Flat"
    if factory != "auto":
        return factory
    nlist = 2 ** round(math.log2(4 * math.sqrt(max(num_items, 1))))
    while nlist > 1 and nlist * 39 > num_items:
        nlist //= 2
    return f"IVF{nlist},SQfp16" if nlist > 1 else "Flat"


def build_faiss_index(item_emb: np.ndarray, factory: str, *, nprobe: int = 8, ef_search: int = 128,
                      flat_below: int = 0):
    """Inner-product faiss index over rows 1.. of ``item_emb`` (row 0 = padding is left out).

    Args:
        item_emb: (N, D) float embeddings of every item index.
        factory: faiss factory string.
        nprobe, ef_search: search-time parameters applied where the index has them.
        flat_below: use ``Flat`` when fewer than this many real items.
    Returns:
        (index, row_items (R,) int64: index row -> item index, factory actually used)
    Raises:
        ParamsError: the factory string is invalid or cannot be built for this catalogue (named).
    """
    import faiss

    configure_faiss()
    emb = np.ascontiguousarray(np.asarray(item_emb, dtype=np.float32)[1:])
    row_items = np.arange(1, emb.shape[0] + 1, dtype=np.int64)
    used = resolve_factory(factory, emb.shape[0], flat_below)
    d = emb.shape[1]
    try:
        index = faiss.index_factory(d, used, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.max_points_per_centroid = KMEANS_POINTS_PER_LIST  # faiss subsamples (seeded) to this
        if not index.is_trained:
            index.train(emb)
        index.add(emb)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ParamsError(f"index.factory: cannot build {used!r} for {emb.shape[0]} items of dim {d}: "
                          f"{first}") from None
    set_search_params(index, nprobe=nprobe, ef_search=ef_search)
    return index, row_items, used


def set_search_params(index, *, nprobe: int, ef_search: int) -> None:
    """Apply nprobe (IVF) and efSearch (HNSW) where the index has them."""
    import faiss

    ps = faiss.ParameterSpace()
    for name, value in (("nprobe", nprobe), ("efSearch", ef_search)):
        try:
            ps.set_index_parameter(index, name, value)
        except RuntimeError:
            pass  # this index type has no such parameter


@dataclass(frozen=True)
class ExactReference:
    """Exact search results that ANN indexes are compared with (:func:`exact_reference`)."""
    index: Any
    """faiss ``IndexFlatIP`` over item rows 1..N (brute force)."""
    row_items: np.ndarray
    """(R,) index row -> item index."""
    per_interest: np.ndarray
    """(Q, n) exact top-n item indices of every unmasked interest (0 where fewer exist)."""
    merged: np.ndarray
    """(B, n) exact merged multi-interest top-n per user (ComiRec eq. 11)."""
    n: int


def _rows_to_items(row_items: np.ndarray, found: np.ndarray) -> np.ndarray:
    return np.where(found >= 0, row_items[np.clip(found, 0, None)], 0)


def exact_reference(item_emb, interests, interest_mask, n: int, flat=None) -> ExactReference:
    """Exact top-n lists of the unmasked interests and of the merged lists, through faiss' brute-force
    ``IndexFlatIP`` (``flat``: an existing one as returned by :func:`build_faiss_index`, else built here).

    Brute force in faiss tiles queries x items through BLAS, ~25x faster at 2M items than scoring a few users
    at a time against the whole table with torch, which streamed the 512 MB table once per 4 users (2,500
    users took over 10 minutes). The merged list is :func:`components.retrieval.faiss_topn` over it, exact
    because an item in the merged top-n is in the top-n of the interest giving its best score. Ties at the
    n-th score may be broken differently from :func:`components.retrieval.topn`.
    """
    from components.retrieval import faiss_topn

    if flat is None:
        flat = build_faiss_index(np.asarray(item_emb, dtype=np.float32), "Flat")
    index, row_items = flat[0], flat[1]
    v = np.ascontiguousarray(np.asarray(interests, dtype=np.float32))
    m = np.asarray(interest_mask, dtype=bool)
    n = min(n, index.ntotal)
    q = np.ascontiguousarray(v[m])
    per = _rows_to_items(row_items, index.search(q, n)[1]) if len(q) else np.zeros((0, n), np.int64)
    _, merged = faiss_topn(index, row_items, v, m, n)
    return ExactReference(index, row_items, per, merged, n)


def ann_recall(index, row_items: np.ndarray, item_emb, interests, interest_mask, n: int,
               exact: ExactReference | None = None) -> dict[str, float]:
    """ANN quality against exact search (:func:`exact_reference`, computed here when not given), without
    exclusions.

    Returns:
        {"interest_recall": mean over unmasked interests of |ANN top-n ∩ exact top-n| / n,
         "merged_recall": mean over users of the same overlap for the merged multi-interest list}
    """
    from components.retrieval import faiss_topn

    v = np.ascontiguousarray(np.asarray(interests, dtype=np.float32))
    m = np.asarray(interest_mask, dtype=bool)
    q = np.ascontiguousarray(v[m])  # (Q, D) unmasked interests
    n = min(n, index.ntotal)
    if q.shape[0] == 0:
        return {"interest_recall": float("nan"), "merged_recall": float("nan")}
    if exact is None or exact.n != n:
        exact = exact_reference(item_emb, v, m, n)
    if index is exact.index:  # the reference itself
        return {"interest_recall": 1.0, "merged_recall": 1.0}
    ann = _rows_to_items(row_items, index.search(q, n)[1])
    per = [len(np.intersect1d(a[a != 0], e[e != 0])) / n for a, e in zip(ann, exact.per_interest)]
    _, ann_merged = faiss_topn(index, row_items, v, m, n)
    merged = [len(np.intersect1d(a[a != 0], e[e != 0])) / n for a, e in zip(ann_merged, exact.merged)]
    return {"interest_recall": float(np.mean(per)), "merged_recall": float(np.mean(merged))}


def tune_nprobe(index, measure, *, start: int, target: float, first: dict | None = None, ef_search: int = 128
                ) -> tuple[int, dict, dict[str, float]]:
    """The smallest nprobe in start, 2·start, 4·start ... (at most nlist / 16) whose measured per-interest
    recall reaches ``target``, or the last one tried.

    Probing more lists raises recall, and an IVF index scanning up to 1/16 of the catalogue (plus its coarse
    quantizer) still costs a fraction of exact search. ``measure()`` returns :func:`ann_recall`'s dict for
    the index as currently set; ``first`` is that at ``start`` if already known. The index is left at the
    returned nprobe.

    Returns:
        (nprobe, its recall dict, {str(nprobe): interest recall} of every value tried)
    """
    import faiss

    ivf = faiss.extract_index_ivf(index)
    nprobe = start
    set_search_params(index, nprobe=nprobe, ef_search=ef_search)
    quality = first if first is not None else measure()
    tried = {str(nprobe): quality["interest_recall"]}
    while not quality["interest_recall"] >= target and nprobe * 2 <= ivf.nlist // 16:
        nprobe *= 2
        set_search_params(index, nprobe=nprobe, ef_search=ef_search)
        quality = measure()
        tried[str(nprobe)] = quality["interest_recall"]
    return nprobe, quality, tried


def search_throughput(index, interests, interest_mask, n: int, batch_users: int, min_seconds: float = 0.2
                      ) -> dict[str, float]:
    """Queries per second of ``index.search`` over batches of ``batch_users`` users' unmasked interests."""
    v = np.asarray(interests, dtype=np.float32)
    m = np.asarray(interest_mask, dtype=bool)
    batches = [np.ascontiguousarray(v[s:s + batch_users][m[s:s + batch_users]])
               for s in range(0, len(v), batch_users)]
    batches = [b for b in batches if len(b)]
    total = sum(len(b) for b in batches)
    if total == 0:
        return {"queries_per_s": float("nan"), "queries": 0}
    n = min(n, index.ntotal)
    done, elapsed = 0, 0.0
    while elapsed < min_seconds:
        t0 = time.perf_counter()
        for b in batches:
            index.search(b, n)
        elapsed += time.perf_counter() - t0
        done += total
    return {"queries_per_s": done / elapsed, "queries": total}


def run(cfg: IndexConfig, model_dir: Path, split_dir: Path, out_dir: Path) -> dict:
    """Build the index for ``model_dir/model.pt`` over the catalogue of ``split_dir``; write ``out_dir``
    atomically (``index.faiss``, ``item_ids.npy``, ``index.json``).

    Returns:
        the ``index.json`` figures.
    """
    import faiss

    from components.evaluate import SPLITS, compute_interests, item_table, load_catalogue, load_users
    from models import load_model

    model = load_model(Path(model_dir) / "model.pt")
    cat = load_catalogue(split_dir)
    item_emb = item_table(model, cat.num_items)
    if item_emb.shape[0] != cat.num_items:
        raise DataError(f"model has {item_emb.shape[0]} items, split has {cat.num_items}",
                        path=Path(split_dir) / "vocab.json")
    max_len = int(model.config.get("max_len", 50))
    t0 = time.perf_counter()
    index, row_items, used = build_faiss_index(item_emb.numpy(), cfg.factory, nprobe=cfg.nprobe,
                                               ef_search=cfg.ef_search, flat_below=cfg.flat_below)
    build_s = time.perf_counter() - t0
    import torch

    vs, ms = [], []
    for split in SPLITS:
        users = load_users(split_dir, split, cat)
        v, m = compute_interests(model, users, max_len, cfg.batch_size)
        vs.append(v)
        ms.append(m)
    v, m = torch.cat(vs), torch.cat(ms)
    if used == "Flat":
        flat, flat_build_s = (index, row_items, used), build_s
    else:
        t0 = time.perf_counter()
        flat = build_faiss_index(item_emb.numpy(), "Flat")
        flat_build_s = time.perf_counter() - t0
    exact = exact_reference(item_emb, v, m, cfg.recall_n, flat=flat)
    quality = ann_recall(index, row_items, item_emb, v, m, cfg.recall_n, exact=exact)
    fallback, nprobe, tuning = None, cfg.nprobe, {}
    if cfg.factory == "auto" and used != "Flat" and not quality["interest_recall"] >= cfg.auto_min_recall:
        nprobe, quality, tuning = tune_nprobe(
            index, lambda: ann_recall(index, row_items, item_emb, v, m, cfg.recall_n, exact=exact),
            start=cfg.nprobe, target=cfg.auto_min_recall, first=quality, ef_search=cfg.ef_search)
    if cfg.factory == "auto" and used != "Flat" and not quality["interest_recall"] >= cfg.auto_min_recall:
        # IVF needs clustered embeddings; on near-isotropic ones (e.g. an untrained model) its recall
        # collapses (1M Gaussian items: 0.08 at nprobe 8), so auto falls back to exact search (the reference
        # index itself)
        fallback = {"factory": used, "nprobe": nprobe, f"interest_recall@{cfg.recall_n}": quality["interest_recall"]}
        index, row_items, used = flat
        build_s, nprobe = flat_build_s, cfg.nprobe
        quality = ann_recall(index, row_items, item_emb, v, m, cfg.recall_n, exact=exact)
    speed = search_throughput(index, v.numpy(), m.numpy(), cfg.recall_n, cfg.batch_size)
    blob = faiss.serialize_index(index)
    info: dict[str, Any] = {
        "factory": used,
        "factory_requested": cfg.factory,
        "nprobe": nprobe,
        "nprobe_requested": cfg.nprobe,
        "nprobe_tuning": tuning,
        "ef_search": cfg.ef_search,
        "dim": int(item_emb.shape[1]),
        "num_items": int(index.ntotal),
        "build_s": build_s,
        "index_bytes": int(len(blob)),
        f"interest_recall@{cfg.recall_n}": quality["interest_recall"],
        f"merged_recall@{cfg.recall_n}": quality["merged_recall"],
        "queries_per_s": speed["queries_per_s"],
        "num_queries": speed["queries"],
        "faiss_threads": faiss.omp_get_max_threads(),
        "auto_fallback": fallback,
    }
    with atomic_dir(out_dir) as tmp:
        faiss.write_index(index, str(tmp / "index.faiss"))
        np.save(tmp / "item_ids.npy", row_items)
        write_json(tmp / "index.json", info)
    return info


def load_index(index_dir: Path):
    """``(index, row_items, info)`` from a build_index output folder; DataError when incomplete."""
    import json

    import faiss

    index_dir = Path(index_dir)
    for name in ("index.faiss", "item_ids.npy", "index.json"):
        if not (index_dir / name).exists():
            raise DataError("file not found", path=index_dir / name)
    configure_faiss()
    index = faiss.read_index(str(index_dir / "index.faiss"))
    row_items = np.load(index_dir / "item_ids.npy")
    info = json.loads((index_dir / "index.json").read_text())
    if len(row_items) != index.ntotal:
        raise DataError(f"{len(row_items)} ids for {index.ntotal} index rows", path=index_dir / "item_ids.npy")
    set_search_params(index, nprobe=int(info.get("nprobe", 8)), ef_search=int(info.get("ef_search", 128)))
    return index, row_items, info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m components.build_index",
                                     description="faiss index over a trained model's item embeddings.")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model", required=True, help="model variant")
    parser.add_argument("--models-dir", type=Path, default=Path("artifacts/models"))
    parser.add_argument("--split", type=Path, default=Path("data/split"))
    parser.add_argument("--out", type=Path, default=None, help="default: artifacts/index/<model>")
    args = parser.parse_args(argv)

    def body() -> None:
        cfg = section(load_params(args.params), "index", IndexConfig)
        out = args.out or Path("artifacts/index") / args.model
        info = run(cfg, args.models_dir / args.model, args.split, out)
        n = cfg.recall_n
        print(f"build_index {args.model}: {info['factory']} over {info['num_items']} items (d={info['dim']}) "
              f"built in {info['build_s']:.3f}s; {info['queries_per_s']:.0f} interest-queries/s; "
              f"recall@{n} vs exact: per interest {info[f'interest_recall@{n}']:.4f}, merged "
              f"{info[f'merged_recall@{n}']:.4f} -> {out}")

    cli_main(body)


if __name__ == "__main__":
    main()
