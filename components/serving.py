"""Serving: answer recommendation requests from an exported bundle, and assign users to A/B arms.

:class:`Recommender` loads a bundle written by :mod:`components.export` (format 2, :mod:`components.bundle`:
safetensors weights, ONNX user tower, item embeddings, vocabularies, faiss index — every file's sha256 checked
by :func:`components.bundle.verify` before anything is read, nothing executable loaded) and answers
``recommend(history_item_ids, profile, n, diversity_lambda=0.0) -> [(item_id, score), ...]`` with exactly the
maths of :mod:`components.evaluate`: the same padding (:func:`components.retrieval.pad_histories`), the same
retrieval (:func:`components.retrieval.retrieve`), the same history exclusion — so its answers for a
valid/test user equal evaluate's list for that user (tested).

Request handling (choices the papers leave open):
- item ids are the original ids (str; ints are accepted and compared as str); unknown ids are ignored and
  counted in ``stats["unknown_items"]``;
- an empty or all-unknown history gets the most popular items (train counts, ties by lower item index),
  counted in ``stats["fallbacks"]``; the score is the train count;
- ``profile`` is a mapping field -> original value; a missing field or unknown value is index 0 ("<unk>"),
  an unknown *field* is a malformed request;
- malformed requests raise :class:`RequestError` (a ``ValueError``) with a message naming the argument;
- ``n`` larger than the catalogue returns the whole catalogue; items excluded as history are never returned;
- with ``use_index=True`` and λ = 0 retrieval goes through the bundle's faiss index (the approximate path
  for huge catalogues); λ > 0 always uses exact per-interest retrieval (Algorithm 2 needs its candidates);
- ``backend="torch"`` (default) rebuilds the user tower from the project's model classes and the bundle's
  safetensors weights; ``backend="onnx"`` runs the bundle's ``user_tower.onnx`` in ONNX Runtime (the same
  interests within 1e-5, checked at export; lists can differ only where two scores are that close).

Thread safety: one ``Recommender`` may serve many threads at once. Requests share only read-only state
(tensors, tables, the tower in eval mode, an ONNX Runtime session — ``run`` is thread-safe); ``stats`` is
updated under a lock once per call, and the lazily packed item tables are filled under the same lock.

The single-user exact path (λ = 0, no index) is the latency-critical one and has its own code,
:meth:`Recommender._exact_one`, with the same answer as :func:`components.retrieval.topn` (tested against
evaluate's lists). Profile of one request (100k items, K = 4, D = 64, one core; benchmarks/serving.py):
the K×N score block is ~70 % of the time and memory-bound (the 25.6 MB item table is streamed once per
request), so:
- scores come from MKL's *packed* sgemm (``torch.ops.mkl._mkl_linear`` with the item table packed once at
  load for K rows): ~3.7 ms instead of ~5 ms for ``torch.matmul``, which re-packs the table on every call.
  The packed product is bit-identical to ``torch.matmul`` (same MKL micro-kernel and summation order); this
  is checked at load on probe vectors and the plain product is used if it ever differs or MKL is absent;
- top-n by a block-max threshold instead of ``torch.topk``: the n-th largest of the per-block maxima
  (blocks of 256 items) is a lower bound of the n-th largest score, so every item of the top-n (ties
  included) scores at least that; only those few dozen candidates are sorted (score desc, index asc —
  the tie rule of :func:`components.retrieval.stable_topk`). Exact, ~0.2 ms instead of ~0.7 ms.
Batches of users (λ = 0, no index) take :meth:`Recommender._exact_batch`, the same answer as
:func:`components.retrieval.topn` bit for bit: the catalogue is walked in chunks of 8192 items (product, max
over K, into per-thread scratch buffers that stay in cache instead of a fresh (B·K, N) block), the top-n by the
block threshold for the whole batch at once, and with ``score_threads`` > 1 the chunks are shared with helper
threads (one batch on both cores of the 2-core box). Thread CPU, 100k items, one thread, same run on a busy
box: 8 users 13.2 ms instead of 15.7 ms, 16 users 21.8 instead of 27.4, 32 users 33 instead of 58. λ > 0 and
the index path keep :func:`components.retrieval.retrieve`. Threads that call a Recommender should set
``torch.set_num_threads`` themselves (the service's threads do): a fresh thread's first MKL products run
with MKL's default thread count, which splits small products differently and changes their last bit.

:class:`ABSpec` is the A/B experiment spec (``ab.json`` next to the bundles): deterministic bucketing
``sha256(salt \\x1f user_id)`` → first 8 bytes big-endian mod ``num_buckets``; buckets below
``round(treatment_share * num_buckets)`` get the treatment. hashlib, not ``hash()``: stable across processes,
machines and Python versions.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from components.io import DataError, read_json, read_parquet


class RequestError(ValueError):
    """A malformed recommendation request; the message names the offending argument."""


class Recommender:
    """Recommendations from one bundle; safe to call from several threads (see the module docstring)."""

    def __init__(self, *, tower, item_emb, item_ids: np.ndarray, item_category: np.ndarray,
                 train_count: np.ndarray, profile_fields: list[str], profile_values: dict[str, list[str]],
                 max_len: int, exclude_history: bool, manifest: dict[str, Any] | None = None,
                 index=None, row_items: np.ndarray | None = None, score_threads: int = 1):
        import torch

        self.tower = tower
        self.item_emb = item_emb                          # (N, D) float32 tensor, row 0 padding
        self.item_ids = item_ids                          # (N,) original ids, "" for padding
        self.item_category = torch.as_tensor(item_category, dtype=torch.long)
        self.index_of = {str(i): k for k, i in enumerate(item_ids) if k > 0}
        order = np.lexsort((np.arange(len(train_count)), -np.asarray(train_count)))
        self.popular = [int(k) for k in order if k > 0]   # most popular first, ties by lower index
        self.train_count = np.asarray(train_count)
        self.profile_fields = list(profile_fields)
        self.profile_index = {f: {str(v): j for j, v in enumerate(profile_values.get(f, []))}
                              for f in self.profile_fields}
        self.max_len = int(max_len)
        self.exclude_history = bool(exclude_history)
        self.manifest = manifest or {}
        self.index, self.row_items = index, row_items
        self.backend = "torch"  # what runs the tower: "torch" or "onnx" (set by load)
        self.stats = {"requests": 0, "unknown_items": 0, "unknown_profile_values": 0, "fallbacks": 0}
        self._lock = threading.Lock()  # guards stats and _packed
        self._packed: dict[int, Any] = {}  # rows -> MKL-packed item table, or None where packing is unusable
        # the fused batch path (_exact_batch): query rows -> chunked product verified bit-equal to the batched one
        self._chunk_ok: dict[int, bool] = {}
        self._tls = threading.local()  # per-thread scratch buffers of _exact_batch (no allocation per request)
        self.score_threads = max(1, int(score_threads))
        self._helpers = None  # ThreadPoolExecutor(score_threads - 1), made on first use

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    # --------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, bundle_dir: str | Path, *, use_index: bool = False, backend: str = "torch",
             onnx_threads: int | None = None, score_threads: int = 1, max_batch: int = 32) -> "Recommender":
        """Load a bundle folder (format 2, see :mod:`components.bundle`), verified first.

        Args:
            bundle_dir: the bundle folder.
            use_index: serve λ = 0 requests through the bundle's faiss index.
            backend: "torch" (the model rebuilt from the project's classes + safetensors weights) or "onnx"
                (``user_tower.onnx`` in ONNX Runtime).
            onnx_threads: ONNX Runtime intra-op threads; None = ``torch.get_num_threads()``.
            score_threads: threads that score one batch's catalogue together (see :meth:`_exact_batch`).
            max_batch: the warm-up verifies the fused batch product for batches of up to this many users.
        Raises:
            DataError: an unknown format, a missing, unexpected, truncated or altered file (named), or a
                file that does not parse as its data format.
            ValueError: an unknown backend.
        """
        import torch

        from components import bundle as B

        if backend not in B.BACKENDS:
            raise ValueError(f"backend must be one of {B.BACKENDS}, got {backend!r}")
        bundle_dir = Path(bundle_dir)
        manifest = B.verify(bundle_dir)  # before anything else of the bundle is read
        vocab = read_json(bundle_dir / "vocab.json", required=("num_items",))
        num_items = int(vocab["num_items"])
        emb = B.load_item_table(bundle_dir, num_items)
        items = read_parquet(bundle_dir / "items.parquet", ["item_idx", "item_id", "category_idx", "train_count"])
        ids = np.full(num_items, "", dtype=object)
        cats = np.zeros(num_items, dtype=np.int64)
        counts = np.zeros(num_items, dtype=np.int64)
        idx = items["item_idx"].to_numpy(np.int64)
        if len(idx) and (idx.min() < 1 or idx.max() >= num_items):
            raise DataError(f"item_idx outside [1, {num_items})", path=bundle_dir / "items.parquet",
                            column="item_idx")
        ids[idx] = items["item_id"].astype(str).to_numpy(dtype=object)
        cats[idx] = items["category_idx"].to_numpy(np.int64)
        counts[idx] = items["train_count"].to_numpy(np.int64)
        if backend == "torch":
            tower = B.tower_module(B.load_model(bundle_dir, manifest))
        else:
            tower = B.OnnxTower(bundle_dir / B.ONNX_TOWER, threads=onnx_threads or torch.get_num_threads())
        index = row_items = None
        if use_index:
            from components.build_index import load_index

            index, row_items, _ = load_index(bundle_dir)
        rec = cls(tower=tower, item_emb=emb, item_ids=ids, item_category=cats, train_count=counts,
                  profile_fields=list(vocab.get("profile_fields", [])),
                  profile_values=dict(vocab.get("profile_values", {})), max_len=int(manifest["max_len"]),
                  exclude_history=bool(manifest.get("exclude_history", True)), manifest=manifest,
                  index=index, row_items=row_items, score_threads=score_threads)
        rec.backend = backend
        if index is None:
            rec.warm_up(max_batch=max_batch)
        return rec

    # ------------------------------------------------------------------------------------------- requests
    def recommend(self, history_item_ids: Sequence[str | int], profile: Mapping[str, Any] | None = None,
                  n: int = 10, diversity_lambda: float = 0.0) -> list[tuple[str, float]]:
        """Top-``n`` ``(item_id, score)`` for one user, best first.

        Args:
            history_item_ids: the user's behaviours, oldest first (original item ids).
            profile: optional {field: value} with original values (e.g. {"gender": "F"}).
            n: list length (>= 1).
            diversity_lambda: λ of ComiRec's controllable aggregation (eq. 12), >= 0.
        Raises:
            RequestError: malformed arguments.
        """
        return self.recommend_batch([history_item_ids], [profile], n, diversity_lambda)[0]

    def recommend_batch(self, histories: Sequence[Sequence[str | int]],
                        profiles: Sequence[Mapping[str, Any] | None] | None = None, n: int = 10,
                        diversity_lambda: float = 0.0) -> list[list[tuple[str, float]]]:
        """:meth:`recommend` for many users at once (one forward pass, one retrieval block)."""
        import torch

        from components.retrieval import faiss_topn, pad_exclusions, pad_histories, retrieve

        if isinstance(histories, (str, bytes)) or not isinstance(histories, Sequence):
            raise RequestError(f"histories must be a list of item-id lists, got {type(histories).__name__}")
        if profiles is None:
            profiles = [None] * len(histories)
        if isinstance(profiles, Mapping) or len(profiles) != len(histories):
            raise RequestError("profiles must be a list with one entry (mapping or None) per history")
        n = self._check_n(n)
        lam = self._check_lambda(diversity_lambda)
        counts = {"requests": len(histories), "unknown_items": 0, "unknown_profile_values": 0, "fallbacks": 0}
        encoded = [self._encode_history(h, counts) for h in histories]
        prof = torch.tensor([self._encode_profile(p, counts) for p in profiles], dtype=torch.long).reshape(
            len(histories), len(self.profile_fields))
        results: list[list[tuple[str, float]] | None] = [None] * len(histories)
        live = [b for b, h in enumerate(encoded) if h]
        for b, h in enumerate(encoded):
            if not h:
                counts["fallbacks"] += 1
                results[b] = [(str(self.item_ids[k]), float(self.train_count[k])) for k in self.popular[:n]]
        with self._lock:  # a well-formed request is counted once, whole
            for key, value in counts.items():
                self.stats[key] += value
        if live:
            hists = [encoded[b] for b in live]
            history, mask = pad_histories(hists, self.max_len)
            with torch.no_grad():
                interests, imask = self.tower(history, mask, prof[live])
            if len(live) == 1 and lam == 0 and self.index is None:
                scores, items = self._exact_one(interests[0], imask[0], hists[0], n)
                results[live[0]] = [(str(self.item_ids[i]), s) for s, i in zip(scores, items)]
                return results  # type: ignore[return-value]
            if lam == 0 and self.index is None and self._fused_ok(interests.shape[0] * interests.shape[1]):
                for j, (vals, idx) in zip(live, self._exact_batch(interests, imask, hists, n)):
                    results[j] = [(str(self.item_ids[i]), s) for s, i in zip(vals, idx)]
                return results  # type: ignore[return-value]
            exclude = pad_exclusions(hists) if self.exclude_history else None
            if self.index is not None and lam == 0:
                scores, items = faiss_topn(self.index, self.row_items, interests.numpy(), imask.numpy(), n,
                                           None if exclude is None else exclude.numpy())
                scores, items = torch.from_numpy(scores), torch.from_numpy(items)
            else:
                scores, items = retrieve(interests.float(), imask.bool(), self.item_emb, n, exclude=exclude,
                                         diversity_lambda=lam, item_category=self.item_category)
            for j, b in enumerate(live):
                results[b] = [(str(self.item_ids[int(i)]), float(s))
                              for s, i in zip(scores[j].tolist(), items[j].tolist())
                              if i != 0 and s != float("-inf")]
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------------------ single-user exact path
    def _exact_one(self, interests, interest_mask, history: list[int], n: int) -> tuple[list[float], list[int]]:
        """Exact merged top-``n`` of one user: :func:`components.retrieval.topn` for a batch of one.

        Args:
            interests: (K, D) float tensor; interest_mask: (K,) bool tensor; history: item indices to
                exclude (when the bundle excludes history); n: list length (<= number of real items).
        Returns:
            (scores, item indices), best first, -inf entries (fewer than n items left) dropped.
        """
        import torch

        v = interests.float().contiguous()
        with torch.no_grad():
            scores = self._scores(v)[: v.shape[0]]  # (K, N): eq. (11)'s e_i^T v_u^(k), as evaluate computes it
            if not bool(interest_mask.all()):
                scores = scores.masked_fill(~interest_mask.unsqueeze(-1), NEG_INF)
            best = scores.amax(dim=0) if scores.shape[0] > 1 else scores[0].clone()  # eq. (11): max over k
        b = best.numpy()  # numpy from here: indexing a few dozen entries costs ~1 µs, not ~20 µs
        b[0] = NEG_INF  # padding
        if self.exclude_history and history:
            b[history] = NEG_INF
        vals, idx = block_topn(b, n)
        keep = (vals != NEG_INF) & (idx != 0)  # fewer than n items left: drop the -inf tail
        return vals[keep].tolist(), idx[keep].tolist()

    def _scores(self, v):
        """(K, D) interests -> (K, N) scores, bit-equal to the rows of evaluate's batched product.

        A one-row product goes through MKL's matrix-vector kernel, whose rounding differs from the
        matrix-matrix kernel evaluate's batches use (measured: every D for 1 row, D >= 64 for 2 rows), so
        the block is padded with zero rows to at least ``_MIN_ROWS``.
        """
        import torch

        rows = max(v.shape[0], _MIN_ROWS)
        if rows > v.shape[0]:
            v = torch.cat([v, v.new_zeros(rows - v.shape[0], v.shape[1])])
        packed = self._packed_table(rows)
        if packed is None:
            out = torch.matmul(v, self.item_emb.T)
        else:
            out = torch.ops.mkl._mkl_linear(v, packed, self.item_emb, None, rows)
        return out  # (rows, N); the caller keeps its K rows

    # ------------------------------------------------------------------------------ batch exact path (fused)
    def _exact_batch(self, interests, interest_mask, histories: list[list[int]], n: int
                     ) -> list[tuple[list[float], list[int]]]:
        """Exact merged top-``n`` of a batch: :func:`components.retrieval.topn`'s answer, computed without
        materialising the (B·K, N) score block.

        :func:`~components.retrieval.topn` multiplies all B·K interests with the whole table at once: a
        (B·K, N) float block (12.8 MB for 8 users at 100k items, freshly allocated, page-faulted and written to
        memory), then reads it back for the max over K and again for ``torch.topk``. Here the catalogue is
        walked in chunks of ``_CHUNK`` items: the (B·K, chunk) product lands in a per-thread scratch buffer
        that stays in L2, its max over K goes straight into a reused (B, N) buffer, and the top-n is taken
        from that by the block threshold of :func:`block_topn` (vectorised over the batch). Measured on
        the 100k-item bundle, one thread: 8 users 10.8 ms instead of 18.8 ms, 32 users 34 ms instead of
        121 ms (thread CPU).

        Identity: every score is the same MKL matrix-matrix micro-kernel's dot product over D, whichever
        chunk or batch it is computed in — checked at load on probe vectors for each query-row count
        (:meth:`_fused_ok`; the plain path is used if any bit differs), and tested against
        :func:`~components.retrieval.topn`. Ties are ordered as :func:`~components.retrieval.stable_topk`
        does (score desc, index asc).

        With ``score_threads`` > 1 helper threads take chunks from the same counter as the calling thread
        (work-sharing: a helper busy with another batch takes none, so no batch waits for another's work);
        each chunk writes its own columns of the (B, N) buffer, so the answer does not depend on who scored
        which chunk.
        """
        import torch

        out: list[tuple[list[float], list[int]]] = []
        step = max(1, _FUSED_MAX_USERS)
        for start in range(0, interests.shape[0], step):
            out += self._exact_group(interests[start:start + step], interest_mask[start:start + step],
                                     histories[start:start + step], n)
        return out

    def _exact_group(self, interests, interest_mask, histories, n):
        import torch

        b, k, d = interests.shape
        size = self.item_emb.shape[0]
        q = interests.reshape(b * k, d).float().contiguous()
        rows = max(b * k, _MIN_ROWS)
        if rows > b * k:  # too few rows send MKL to another kernel (see _scores): pad with zero rows
            q = torch.cat([q, q.new_zeros(rows - b * k, d)])
        best = self._scratch("best", b * size).view(b, size)
        masked = None if bool(interest_mask.all()) else (~interest_mask).reshape(-1).nonzero().squeeze(1)
        chunks = (size + _CHUNK - 1) // _CHUNK
        counter = itertools.count()  # next() on it is atomic under the GIL: each chunk is taken once
        emb = self.item_emb

        def work() -> None:
            buf = self._scratch("chunk", rows * _CHUNK)
            with torch.no_grad():
                while (i := next(counter)) < chunks:
                    lo, hi = i * _CHUNK, min((i + 1) * _CHUNK, size)
                    scores = buf[: rows * (hi - lo)].view(rows, hi - lo)
                    torch.matmul(q, emb[lo:hi].T, out=scores)  # eq. (11)'s e_i^T v_u^(k)
                    if masked is not None:
                        scores.index_fill_(0, masked, NEG_INF)
                    torch.amax(scores[: b * k].view(b, k, hi - lo), dim=1, out=best[:, lo:hi])  # max over k

        helpers = []
        if self.score_threads > 1 and chunks > 1:
            pool = self._helper_pool()
            helpers = [pool.submit(work) for _ in range(self.score_threads - 1)]
        work()
        for h in helpers:
            if not h.cancel():  # not started: it never will; started: it is finishing one of our chunks
                h.result()
        best[:, 0] = NEG_INF  # padding
        if self.exclude_history:
            for row, hist in enumerate(histories):
                if hist:
                    best[row, hist] = NEG_INF
        return batch_topn(best, n)

    def _scratch(self, name: str, numel: int):
        """A float32 buffer of ``numel`` elements owned by the calling thread (grown, never shrunk)."""
        import torch

        buf = getattr(self._tls, name, None)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(max(numel, 1), dtype=torch.float32)
            setattr(self._tls, name, buf)
        return buf[:numel]

    def close(self) -> None:
        """Stop the scoring helper threads (a replaced bundle); later batches are scored by the caller alone."""
        with self._lock:
            pool, self._helpers, self.score_threads = self._helpers, None, 1
        if pool is not None:
            pool.shutdown(wait=False)

    def _helper_pool(self):
        if self._helpers is None:
            import torch

            with self._lock:
                if self._helpers is None:
                    # the helpers run MKL with the creating thread's intra-op thread count: a new thread's first
                    # products otherwise use MKL's default (all cores), which splits small products differently
                    # and changes their rounding (measured: 6-row products off by 1 ulp against the batch)
                    self._helpers = ThreadPoolExecutor(self.score_threads - 1, thread_name_prefix="rec-score",
                                                       initializer=torch.set_num_threads,
                                                       initargs=(torch.get_num_threads(),))
        return self._helpers

    def _fused_ok(self, rows: int) -> bool:
        """Whether the chunked product for ``rows`` query rows is bit-equal to the batched one (checked once
        per row count, under the lock; False for a non-float32 table)."""
        rows = max(rows, _MIN_ROWS)
        ok = self._chunk_ok.get(rows)
        if ok is None:
            with self._lock:
                if rows not in self._chunk_ok:
                    self._chunk_ok.update(check_chunked_product(self.item_emb, [rows]))
                ok = self._chunk_ok[rows]
        return ok

    def warm_up(self, num_interests: int | None = None, max_batch: int = 32) -> None:
        """Pack the item table for ``num_interests`` rows (default: the tower's K), run the tower once, and
        verify the fused batch product for batches of 2..``max_batch`` users, so the first request does not
        pay for packing, checks or the tower's first-call allocations."""
        import torch

        from components.retrieval import pad_histories

        if self.num_items < 1:
            return
        history, mask = pad_histories([[1]], self.max_len)
        prof = torch.zeros(1, len(self.profile_fields), dtype=torch.long)
        with torch.no_grad():
            for _ in range(3):
                interests, _ = self.tower(history, mask, prof)
        k = int(num_interests or interests.shape[1])
        self._packed_table(max(k, _MIN_ROWS))
        want = sorted({max(b * k, _MIN_ROWS) for b in range(2, max(2, int(max_batch)) + 1)} - set(self._chunk_ok))
        if want:
            checked = check_chunked_product(self.item_emb, want)
            with self._lock:
                self._chunk_ok.update(checked)

    def _packed_table(self, rows: int):
        """The item table packed for ``rows`` query rows (made once, under the lock), or None."""
        packed = self._packed.get(rows, _MISSING)
        if packed is _MISSING:
            with self._lock:
                if rows not in self._packed:
                    self._packed[rows] = pack_item_table(self.item_emb, rows)
                packed = self._packed[rows]
        return packed

    # ------------------------------------------------------------------------------------------ validation
    def _encode_history(self, history: Any, counts: dict[str, int] | None = None) -> list[int]:
        """Item indices of the known ids; unknown ones are counted in ``counts`` (the caller's, per call)."""
        counts = {"unknown_items": 0} if counts is None else counts
        if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
            raise RequestError(f"history_item_ids must be a list of item ids, got {type(history).__name__}")
        out = []
        for pos, item in enumerate(history):
            if isinstance(item, bool) or not isinstance(item, (str, Integral)):
                raise RequestError(f"history_item_ids[{pos}] must be an item id (str or int), got "
                                   f"{type(item).__name__} {item!r}")
            k = self.index_of.get(str(item))
            if k is None:
                counts["unknown_items"] += 1
            else:
                out.append(k)
        return out

    def _encode_profile(self, profile: Any, counts: dict[str, int] | None = None) -> list[int]:
        """Profile value indices (0 = unknown, counted in ``counts``)."""
        counts = {"unknown_profile_values": 0} if counts is None else counts
        if profile is None:
            return [0] * len(self.profile_fields)
        if not isinstance(profile, Mapping):
            raise RequestError(f"profile must be a mapping field -> value or None, got {type(profile).__name__}")
        unknown = sorted(set(map(str, profile)) - set(self.profile_fields))
        if unknown:
            raise RequestError(f"profile: unknown field(s) {unknown} (known: {self.profile_fields})")
        out = []
        for f in self.profile_fields:
            value = profile.get(f)
            if value is None:
                out.append(0)
                continue
            j = self.profile_index[f].get(str(value), 0)
            if j == 0:
                counts["unknown_profile_values"] += 1
            out.append(j)
        return out

    def _check_n(self, n: Any) -> int:
        if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
            raise RequestError(f"n must be a positive integer, got {n!r}")
        return min(int(n), self.num_items)

    @staticmethod
    def _check_lambda(lam: Any) -> float:
        if isinstance(lam, bool) or not isinstance(lam, Real) or not math.isfinite(lam) or lam < 0:
            raise RequestError(f"diversity_lambda must be a finite number >= 0, got {lam!r}")
        return float(lam)


# ------------------------------------------------------------------------------------------ exact helpers
NEG_INF = float("-inf")
_MISSING = object()
_BLOCK = 256  # items per block of the top-n threshold (block_topn)
_MIN_ROWS = 4  # the single-user score block is padded to at least this many rows (Recommender._scores)
# MKL's packed buffer reserves ~10x the table in address space (only ~1x is touched: +25 MB RSS for a
# 25.6 MB table); above 256 MB of table (1M items at D = 64) packing is skipped — use the index path there.
_PACK_MAX_BYTES = 1 << 28
_CHUNK = 8192  # items per chunk of the fused batch product (Recommender._exact_group): (rows, chunk) stays in L2
_FUSED_MAX_USERS = 64  # users per fused group: bounds the (users, N) buffer (25.6 MB at 100k items)


def block_topn(scores, n: int):
    """Exact top-``n`` of a 1-D float32 tensor, sorted by (score desc, index asc).

    The same answer as :func:`components.retrieval.stable_topk` on one row. Threshold: split the scores
    into blocks of ``_BLOCK``; ``n`` distinct blocks have a maximum >= t, the n-th largest block maximum, so
    at least ``n`` scores are >= t and the n-th largest score is >= t. Every item of the top-n (ties at the
    boundary included) therefore scores >= t; only those candidates are sorted. (numpy for the candidate
    scan and the sort: ``np.flatnonzero`` is ~8x faster than ``torch.nonzero`` on 100k floats.)

    Returns:
        values (min(n, len),) float32, indices (min(n, len),) int64 numpy arrays.
    """
    import torch

    s = scores.numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    size = s.shape[0]
    n = min(n, size)
    blocks = size // _BLOCK
    if n < 1:
        return s[:0], np.zeros(0, dtype=np.int64)
    if blocks >= n:
        t = torch.from_numpy(s[: blocks * _BLOCK]).view(blocks, _BLOCK).amax(dim=1)
        if blocks * _BLOCK < size:  # the tail is a block of its own
            t = torch.cat([t, torch.from_numpy(s[blocks * _BLOCK:]).amax().reshape(1)])
        t = float(torch.kthvalue(t, t.shape[0] - n + 1).values)  # n-th largest block maximum
        cand = np.flatnonzero(s >= t)  # ascending indices
    else:
        cand = np.arange(size)
    vals = s[cand]
    order = np.argsort(-vals, kind="stable")[:n]  # stable: lower index first on ties
    return vals[order], cand[order]


def batch_topn(best, n: int) -> list[tuple[list[float], list[int]]]:
    """:func:`block_topn` for every row of a (B, N) float32 tensor at once: per row the exact top-``n``
    (score desc, index asc), -inf entries and index 0 dropped, as (values, indices) lists.

    The same threshold argument as :func:`block_topn`, per row: the n-th largest of the row's block maxima
    (blocks of ``_BLOCK``) is a lower bound of its n-th largest score; all candidates of the batch are found
    with one comparison and sorted with one ``np.lexsort`` by (row, -score, index).
    """
    import torch

    b, size = best.shape
    n = min(n, size)
    if b == 0 or n < 1:
        return [([], []) for _ in range(b)]
    blocks = size // _BLOCK
    if blocks >= n:
        bm = best[:, : blocks * _BLOCK].view(b, blocks, _BLOCK).amax(dim=2)
        if blocks * _BLOCK < size:  # the tail is a block of its own
            bm = torch.cat([bm, best[:, blocks * _BLOCK:].amax(dim=1, keepdim=True)], dim=1)
        t = torch.kthvalue(bm, bm.shape[1] - n + 1, dim=1).values  # (B,) n-th largest block maximum
        cand = (best >= t.unsqueeze(1)).nonzero().numpy()  # (M, 2) row-major: rows, then ascending index
        r, c = cand[:, 0], cand[:, 1]
    else:
        r, c = np.divmod(np.arange(b * size), size)
    s = best.numpy()[r, c]
    order = np.lexsort((c, -s, r))  # by row, then score desc, then index asc (the stable_topk tie rule)
    r, c, s = r[order], c[order], s[order]
    starts = np.searchsorted(r, np.arange(b + 1))
    out = []
    for row in range(b):
        lo = starts[row]
        hi = min(starts[row + 1], lo + n)
        vals, idx = s[lo:hi], c[lo:hi]
        keep = (vals != NEG_INF) & (idx != 0)
        out.append((vals[keep].tolist(), idx[keep].tolist()))
    return out


def check_chunked_product(item_emb, row_counts) -> dict[int, bool]:
    """For each query-row count: is the fused path's chunked product (``_CHUNK`` items at a time, into a
    scratch buffer) bit-equal to the rows of one batched ``torch.matmul`` as evaluate computes it?

    Probe vectors (fixed seed, plus rows of the table itself) through both; False for every count if the
    table is not a 2-D float32 tensor. The reference is a product of at least 64 rows (evaluate scores
    users in large batches).
    """
    import torch

    counts = sorted(set(int(r) for r in row_counts))
    if item_emb.dtype != torch.float32 or item_emb.dim() != 2 or not counts:
        return {r: False for r in counts}
    size, dim = item_emb.shape
    gen = torch.Generator().manual_seed(1)
    scale = float(item_emb.abs().mean()) or 1.0
    top = max(64, max(counts))
    probe = torch.randn(top, dim, generator=gen) / scale
    probe[: min(16, top)] = item_emb[torch.arange(min(16, top)) % max(size, 1)]
    out: dict[int, bool] = {}
    # the reference over the whole catalogue at once where it fits in 512 MB, else in slabs of 64 chunks
    slab = max(1, size if top * size <= (1 << 27) else _CHUNK * 64)
    with torch.no_grad():
        for lo_slab in range(0, size, slab):
            hi_slab = min(lo_slab + slab, size)
            ref = torch.matmul(probe.unsqueeze(0), item_emb[lo_slab:hi_slab].T)[0]  # (top, slab), one batch
            for rows in counts:
                if out.get(rows) is False:
                    continue
                buf = torch.empty(rows * _CHUNK)
                ok = True
                for lo in range(lo_slab, hi_slab, _CHUNK):
                    hi = min(lo + _CHUNK, size)
                    got = buf[: rows * (hi - lo)].view(rows, hi - lo)
                    torch.matmul(probe[:rows], item_emb[lo:hi].T, out=got)
                    ok = ok and torch.equal(got, ref[:rows, lo - lo_slab: hi - lo_slab])
                out[rows] = ok
    return {r: out.get(r, True) for r in counts}


def pack_item_table(item_emb, rows: int):
    """The item table packed by MKL for products with ``rows`` query rows, or None where unusable.

    ``torch.matmul`` packs its right operand on every call; packing once saves ~25 % of a single-user
    request. The packed product must equal, bit for bit, the rows of the batched ``torch.matmul`` that
    :func:`components.retrieval.merged_scores` computes in evaluation (serving must reproduce evaluate's
    lists exactly, ties included): checked here on probe vectors (fixed seed, and rows of the table
    itself) against one product of >= 64 rows; None (use torch.matmul) if MKL is absent, the table is not
    float32 or larger than ``_PACK_MAX_BYTES``, or any bit differs.
    """
    import torch

    mkl = getattr(torch.ops, "mkl", None)
    if (item_emb.dtype != torch.float32 or item_emb.dim() != 2 or rows < 1 or not torch.backends.mkl.is_available()
            or mkl is None or not hasattr(mkl, "_mkl_linear") or item_emb.numel() * 4 > _PACK_MAX_BYTES):
        return None
    try:
        packed = mkl._mkl_reorder_linear_weight(item_emb, rows)
        gen = torch.Generator().manual_seed(0)
        scale = float(item_emb.abs().mean()) or 1.0
        size = max(64, 2 * rows)
        probe = torch.cat([torch.randn(size - 16, item_emb.shape[1], generator=gen) / scale,
                           item_emb[torch.arange(16) % item_emb.shape[0]]])
        ref = torch.matmul(probe.unsqueeze(0), item_emb.T)[0]  # a batch, as evaluate computes it
        for start in range(0, size - rows + 1, max(rows, 16)):
            got = mkl._mkl_linear(probe[start: start + rows].contiguous(), packed, item_emb, None, rows)
            if not torch.equal(got, ref[start: start + rows]):
                return None
    except RuntimeError:
        return None
    return packed


# ---------------------------------------------------------------------------------------------- A/B spec
@dataclass(frozen=True)
class ABSpec:
    """A/B experiment: control = the champion bundle, treatment = the candidate bundle."""

    salt: str
    num_buckets: int
    treatment_share: float
    control: dict[str, Any] = field(default_factory=dict)     # {"bundle": name, "model": variant, ...}
    treatment: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.salt:
            raise ValueError("salt must be a non-empty string")
        if self.num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, got {self.num_buckets}")
        if not 0.0 <= self.treatment_share <= 1.0:
            raise ValueError(f"treatment_share must lie in [0, 1], got {self.treatment_share}")

    @property
    def treatment_buckets(self) -> int:
        return round(self.treatment_share * self.num_buckets)

    def bucket(self, user_id: str | int) -> int:
        """Deterministic bucket in [0, num_buckets) of a user id (its str form)."""
        digest = hashlib.sha256(f"{self.salt}\x1f{user_id}".encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.num_buckets

    def assign(self, user_id: str | int) -> str:
        """"treatment" or "control"."""
        return "treatment" if self.bucket(user_id) < self.treatment_buckets else "control"

    def to_dict(self) -> dict[str, Any]:
        return {"salt": self.salt, "num_buckets": self.num_buckets, "treatment_share": self.treatment_share,
                "treatment_buckets": self.treatment_buckets, "control": self.control,
                "treatment": self.treatment,
                "bucketing": "bucket = int.from_bytes(sha256(salt + '\\x1f' + str(user_id)).digest()[:8], "
                             "'big') % num_buckets; treatment iff bucket < treatment_buckets"}

    @classmethod
    def load(cls, path: str | Path) -> "ABSpec":
        d = read_json(Path(path))
        try:
            return cls(salt=d["salt"], num_buckets=int(d["num_buckets"]),
                       treatment_share=float(d["treatment_share"]), control=d.get("control", {}),
                       treatment=d.get("treatment", {}))
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"not an A/B spec ({exc})", path=path) from None


