"""serve: the HTTP retrieval service — Open Inference Protocol v2 plus a plain JSON ``POST /recommend``.

    python -m components.serve --bundle artifacts/bundles/<name>               # one bundle, fixed
    python -m components.serve --registry                                      # the registry's prod, hot-reloaded
    python -m components.serve --ab artifacts/export/ab.json --bundles-dir artifacts/bundles \\
        --exposure-log exposures.jsonl                                         # the A/B test, served

A FastAPI app on uvicorn (the kserve package cannot be installed with our lock, so the protocol is
implemented here). Endpoints:

- ``GET /v2/health/live`` (200 while the process runs), ``GET /v2/health/ready`` (200 only once every arm's
  bundle is loaded and warmed up, 503 before), ``GET /v2``, ``GET /v2/models/{name}``,
  ``GET /v2/models/{name}/ready``, ``POST /v2/models/{name}/infer`` (Open Inference Protocol v2, so KServe
  and Triton clients work; tensors below), ``POST /v2/repository/models/{name}/load`` (admin: re-resolve
  what to serve now, instead of waiting for the next poll);
- ``POST /recommend`` ``{"history": [...], "profile": {...}?, "n": 10, "diversity_lambda": 0.0,
  "user_id": "..."?}`` → ``{"items": [...], "scores": [...], "arm": ..., "bundle": ...}``;
- ``GET /metrics`` (Prometheus): requests by endpoint/arm/status, a latency histogram, fallbacks and unknown
  items per arm, batch sizes, reloads, readiness.

Infer tensors: inputs ``history`` BYTES ``[B, L]`` (or ``[L]`` for one user; ``""`` is padding),
``user_id`` BYTES ``[B]`` (required with an A/B spec), ``profile.<field>`` BYTES ``[B]`` (optional,
``""`` = missing); request parameters ``n`` (int, default 10) and ``diversity_lambda`` (float, default 0).
Outputs ``item_id`` BYTES ``[B, n]``, ``score`` FP32 ``[B, n]`` (rows shorter than ``n`` — a tiny
catalogue minus the history — are padded with ``""`` / 0.0), ``arm`` and ``bundle`` BYTES ``[B]``.

Bad requests get a 4xx whose body ``{"error": ...}`` names the field: body validation 422, what
:class:`components.serving.RequestError` rejects (unknown profile field, ...) and malformed tensors 400,
unknown model 404, not ready 503. A bad request fails alone, never its batch, and never the worker.

Batching: each loaded bundle has a small thread pool (``workers``, default 2: one batch per core of the
2-core box) fed by an asyncio queue; whenever a thread is free the batcher takes every request queued
meanwhile (up to ``max_batch``) and, under load (the previous batch or the queue held more than one user),
waits up to ``max_wait_ms`` (default 1) for more; then it answers them in one thread hop — ``recommend_batch``
per (n, λ) group (``batch_mode="batch"``, the default) or ``recommend`` per request (``"loop"``). Either way
the lists equal ``components.evaluate``'s. Batching pays on the 100k-item bundle (K = 4, D = 64, one thread,
thread-CPU per user): 5 ms one by one, 2.3 ms in batches of 4, 1.85 ms in batches of 8, 1.4 ms in batches
of 16 — one pass over the 25.6 MB item table serves the whole batch. The 1 ms wait is what lets the 8 users
of concurrency 8 meet in one batch (on a quiet box mean batch 3-4 without it, ~8 with it, and server CPU per
request 2.9 -> 2.2 ms; on a busy box queues form anyway and the gain shrinks; benchmarks/serving_http.py). ``split_min`` (off by default) splits a big batch over
the free threads instead; measured, it cost more CPU per user than it saved in latency. What pays instead is
sharing one batch's *scoring* among threads: ``score_threads`` (default 2) threads take 8192-item chunks of
the catalogue from one counter (``Recommender._exact_batch``), so the batch that holds all 8 users of
concurrency 8 runs on both cores instead of one (a helper busy with another batch takes no chunks: nothing
waits for it). uvicorn runs httptools and uvloop when installed (``--http``/``--loop``; the lock has both).

What to serve is a pluggable *resolver*: a function returning a :class:`Resolution` (arm → bundle folder,
optional :class:`~components.serving.ABSpec`): :func:`fixed_bundle`, :func:`registry_prod` (the registry's
``prod`` version, :mod:`components.registry`), :func:`pointer_file` (a JSON ``{"bundle": name}`` file, e.g. a
mounted ConfigMap) and :func:`ab_spec` (export's ``ab.json``); anything else plugs in with
``--resolver module:function``. The service polls the resolver every ``poll_s``; when the answer changes
it loads and warms the new bundles fully, then swaps the served set in one assignment. Requests already
queued finish on the old bundle (its worker drains its queue, then stops); none is dropped.

A/B: the arm is ``ABSpec.assign(user_id)`` (salted sha256 bucket); every served user is appended to the
exposure log as one JSON line ``{"user", "arm", "bundle", "time", "items"}`` (``components.ab`` analyses it).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import gc
import importlib
import json
import logging
import math
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import orjson
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError

from components.io import DataError, cli_main, read_json
from components.serving import ABSpec, Recommender, RequestError

log = logging.getLogger("components.serve")
DEFAULT_MODEL_NAME = "mir"
MAX_N = 10_000  # the longest list a request may ask for


# ------------------------------------------------------------------------------------ what to serve
@dataclass(frozen=True)
class Resolution:
    """What the service should serve: arm name -> bundle folder, and the A/B spec when there are two arms."""

    bundles: dict[str, Path]
    spec: ABSpec | None = None

    def key(self) -> tuple:
        spec = None if self.spec is None else json.dumps(self.spec.to_dict(), sort_keys=True, default=str)
        return tuple(sorted((a, str(Path(b).resolve())) for a, b in self.bundles.items())), spec


Resolver = Callable[[], Resolution]


def _check_bundle(path: Path, where: Path | None = None) -> Path:
    if not (path / "manifest.json").exists():
        raise DataError("not a bundle folder (no manifest.json)", path=where or path)
    return path


def fixed_bundle(bundle_dir: str | Path) -> Resolver:
    """Serve one bundle folder, always (arm "production")."""
    bundle_dir = Path(bundle_dir)
    return lambda: Resolution({"production": _check_bundle(bundle_dir)})


def pointer_file(path: str | Path, bundles_dir: str | Path | None = None) -> Resolver:
    """Serve the bundle a JSON pointer file names (``{"bundle": "<name>", ...}``; the name is relative to
    ``bundles_dir``, default the pointer's folder), arm "production". Replace the file atomically to promote."""
    path = Path(path)
    root = Path(bundles_dir) if bundles_dir is not None else path.parent

    def resolve() -> Resolution:
        ptr = read_json(path, required=("bundle",))
        return Resolution({"production": _check_bundle(root / str(ptr["bundle"]), where=path)})

    return resolve


def registry_prod(location: str | Path | None = None, root: str | Path = ".") -> Resolver:
    """Serve the registry's production version (:mod:`components.registry`, GTO; imported only when used):
    a standalone registry ``location``, or the project repository at ``root`` when None."""

    def resolve() -> Resolution:
        from components.registry import RegistryError, open_registry

        try:
            reg = open_registry(location, root)
            version = reg.prod()
            if version is None:
                raise DataError(f"the registry has no {reg.stage} version yet", path=reg.repo)
            return Resolution({"production": reg.bundle_path(version)})
        except RegistryError as exc:
            raise DataError(str(exc)) from None

    return resolve


def ab_spec(ab_path: str | Path, bundles_dir: str | Path | None = None) -> Resolver:
    """Serve the control and treatment bundles of an ``ab.json`` (bundle names relative to ``bundles_dir``,
    default: the folder of ``ab.json``)."""
    ab_path = Path(ab_path)
    root = Path(bundles_dir) if bundles_dir is not None else ab_path.parent

    def resolve() -> Resolution:
        raw = read_json(ab_path)
        if isinstance(raw, dict) and raw.get("active") is False:
            raise DataError(f"the A/B test is not active ({raw.get('reason', 'no reason given')})", path=ab_path)
        spec = ABSpec.load(ab_path)
        bundles = {}
        for arm in ("control", "treatment"):
            name = getattr(spec, arm).get("bundle")
            if not name:
                raise DataError(f"{arm} has no 'bundle'", path=ab_path)
            bundles[arm] = _check_bundle(root / name, where=ab_path)
        return Resolution(bundles, spec)

    return resolve


def resolver_from_string(spec: str) -> Resolver:
    """``module:function`` -> that function (it must take no arguments and return a :class:`Resolution`)."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise DataError(f"--resolver must be module:function, got {spec!r}")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise DataError(f"--resolver {spec!r}: {exc}") from None


# ------------------------------------------------------------------------------------------- metrics
class Metrics:
    """The Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("mir_requests", "Served users by endpoint, arm and HTTP status",
                                ["endpoint", "arm", "status"], registry=r)
        self.latency = Histogram("mir_request_latency_seconds", "Request latency (handler, seconds)",
                                 ["endpoint", "arm"],
                                 buckets=(.001, .002, .004, .006, .008, .01, .015, .02, .025, .035, .05, .075,
                                          .1, .25, .5, 1.0, 2.5), registry=r)
        self.fallbacks = Counter("mir_fallbacks", "Users answered with popular items (empty/unknown history)",
                                 ["arm"], registry=r)
        self.unknown_items = Counter("mir_unknown_items", "Unknown item ids ignored in histories", ["arm"],
                                     registry=r)
        self.batch_size = Histogram("mir_batch_size", "Users per worker batch", ["arm"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.queue_wait = Histogram("mir_queue_wait_seconds", "Time a user waited in the batcher's queue until "
                                    "its batch went to a worker thread", ["arm"],
                                    buckets=(.0005, .001, .002, .004, .008, .016, .032, .064, .128, .5), registry=r)
        self.worker_cpu = Counter("mir_worker_cpu_seconds", "CPU time of the worker threads answering batches "
                                  "(encoding, user tower, retrieval, lists; torch/ONNX intra-op threads beyond "
                                  "the calling one not included)", ["arm"], registry=r)
        self.gc_pause = Histogram("mir_gc_pause_seconds", "Pauses of Python's cyclic garbage collector (every "
                                  "thread stops meanwhile)", ["generation"],
                                  buckets=(.0001, .0005, .001, .005, .01, .05, .1, .25, .5), registry=r)
        self.reloads = Counter("mir_reloads", "Changes of the served bundles", ["outcome"], registry=r)
        self.ready = Gauge("mir_ready", "1 once every arm is loaded and warmed up", registry=r)
        self.bundle = Gauge("mir_bundle_info", "The bundle each arm serves (value 1)", ["arm", "bundle"],
                            registry=r)


# ------------------------------------------------------------------------------------------- workers
@dataclass
class Job:
    history: list
    profile: dict | None
    n: int
    lam: float
    future: asyncio.Future = field(repr=False, default=None)  # type: ignore[assignment]
    queued: float = 0.0  # loop.time() when submitted


def _set_torch_threads(count: int | None) -> None:
    if count:
        import torch

        torch.set_num_threads(int(count))


class Closed(RuntimeError):
    """The worker was replaced by a reload; resubmit to the current one."""


class Worker:
    """One loaded bundle: a Recommender, its threads, and the batcher that feeds them."""

    def __init__(self, arm: str, bundle_dir: Path, rec: Recommender, metrics: Metrics, *, max_batch: int,
                 max_wait_ms: float, batch_mode: str, threads: int = 1, split_min: int = 0,
                 torch_threads: int | None = None):
        self.arm, self.bundle_dir, self.rec, self.metrics = arm, Path(bundle_dir), rec, metrics
        self.bundle = self.bundle_dir.name
        self.max_batch, self.max_wait = max(1, int(max_batch)), max(0.0, max_wait_ms) / 1e3
        self.batch_mode = batch_mode
        self.threads = max(1, int(threads))  # batches answered at once (Recommender is thread-safe)
        self.split_min = max(0, int(split_min))  # > 0: a batch of >= 2 * split_min users is split over free threads
        # each thread sets torch's (MKL's) intra-op thread count itself: a new thread's first products otherwise run
        # with MKL's default count, which splits small products differently and changes their rounding
        self.executor = ThreadPoolExecutor(self.threads, thread_name_prefix=f"rec-{arm}",
                                           initializer=_set_torch_threads, initargs=(torch_threads,))
        self._stats_lock = threading.Lock()
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.closed = False
        self._stats = dict(rec.stats)

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.arm}")

    def submit(self, job: Job) -> asyncio.Future:
        """Queue a job (synchronously: no await between choosing this worker and queueing)."""
        if self.closed:
            raise Closed(self.bundle)
        loop = asyncio.get_running_loop()
        job.future, job.queued = loop.create_future(), loop.time()
        self.queue.put_nowait(job)
        return job.future

    def close(self) -> None:
        """Stop taking jobs; the batcher answers everything already queued, then ends."""
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.threads)
        running: set[asyncio.Task] = set()
        stop = False
        last = 1  # users in the previous batch
        while not stop:
            await slots.acquire()  # a batch forms when a thread is free to answer it
            first = await self.queue.get()
            jobs = [] if first is None else [first]
            stop = first is None
            # wait for more only under load (the previous batch, or the queue, held more than one user): a lone
            # user at concurrency 1 does not pay max_wait
            wait = self.max_wait if (last > 1 or self.queue.qsize() > 0) else 0.0
            deadline = loop.time() + wait
            while not stop and len(jobs) < self.max_batch:
                try:
                    job = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self.queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                if job is None:
                    stop = True
                else:
                    jobs.append(job)
            if stop:  # drain: nothing is queued after the close sentinel except what raced it
                while not self.queue.empty():
                    job = self.queue.get_nowait()
                    if job is not None:
                        jobs.append(job)
            if jobs:
                last = len(jobs)
                now, waited = loop.time(), self.metrics.queue_wait.labels(self.arm)
                for job in jobs:
                    waited.observe(now - job.queued)
                parts = 1  # split a big batch over the threads that are free right now (acquire returns at once)
                while (self.split_min and parts < self.threads and len(jobs) >= (parts + 1) * self.split_min
                       and not slots.locked()):
                    await slots.acquire()
                    parts += 1
                for k in range(parts):
                    chunk = jobs[k * len(jobs) // parts:(k + 1) * len(jobs) // parts]
                    task = loop.create_task(self._dispatch(chunk, slots))
                    running.add(task)
                    task.add_done_callback(running.discard)
            else:
                slots.release()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        self.executor.shutdown(wait=False)
        self.rec.close()

    async def _dispatch(self, jobs: list[Job], slots: asyncio.Semaphore) -> None:
        try:
            try:
                outcomes = await asyncio.get_running_loop().run_in_executor(self.executor, self._answer, jobs)
            except BaseException as exc:  # noqa: BLE001 - never let the batcher die
                outcomes = [exc] * len(jobs)
            for job, out in zip(jobs, outcomes):
                if job.future.done():
                    continue
                if isinstance(out, BaseException):
                    job.future.set_exception(out)
                else:
                    job.future.set_result(out)
            self.metrics.batch_size.labels(self.arm).observe(len(jobs))
        finally:
            slots.release()

    def _answer(self, jobs: list[Job]) -> list:
        """Worker thread: results (or the exception) per job, in order."""
        cpu0 = time.thread_time()
        out: list = [None] * len(jobs)
        if self.batch_mode == "batch":
            groups: dict[tuple, list[int]] = {}
            for i, j in enumerate(jobs):
                groups.setdefault((j.n, j.lam), []).append(i)
            for (n, lam), idx in groups.items():
                try:
                    lists = self.rec.recommend_batch([jobs[i].history for i in idx], [jobs[i].profile for i in idx],
                                                     n, lam)
                    for i, lst in zip(idx, lists):
                        out[i] = lst
                except RequestError:  # one bad request: answer the group one by one so only it fails
                    for i in idx:
                        out[i] = self._one(jobs[i])
        else:
            for i, j in enumerate(jobs):
                out[i] = self._one(j)
        with self._stats_lock:  # threads answer batches concurrently: count each stats change once
            stats = dict(self.rec.stats)
            self.metrics.fallbacks.labels(self.arm).inc(stats["fallbacks"] - self._stats["fallbacks"])
            self.metrics.unknown_items.labels(self.arm).inc(stats["unknown_items"] - self._stats["unknown_items"])
            self._stats = stats
        self.metrics.worker_cpu.labels(self.arm).inc(time.thread_time() - cpu0)
        return out

    def _one(self, j: Job):
        try:
            return self.rec.recommend(j.history, j.profile, j.n, j.lam)
        except Exception as exc:  # noqa: BLE001 - the request's error, delivered to its caller
            return exc


@dataclass
class Served:
    """The set served right now; replaced as a whole by a reload."""

    workers: dict[str, Worker]
    spec: ABSpec | None
    key: tuple


# ---------------------------------------------------------------------------------------- the service
class Service:
    """State behind the app: the served set, reloads, the exposure log.

    Args:
        resolver: what to serve (see :data:`Resolver`).
        model_name: the Open Inference Protocol model name.
        exposure_log: JSON-lines file every served user is appended to (None: no log).
        poll_s: seconds between resolver polls (0: never poll; reload only through the admin endpoint).
        max_batch, max_wait_ms, batch_mode: the batcher (see the module docstring).
        num_threads: torch intra-op threads (None: leave as is).
        workers: threads per bundle answering batches at once (Recommender is thread-safe).
        score_threads: threads that score one batch's catalogue together (the answering thread plus
            ``score_threads - 1`` helpers taking chunks of the item table; ``Recommender._exact_batch``).
        freeze_gc: after each (re)load, collect once and ``gc.freeze()`` what is alive. Python's full
            collection walks every tracked object — ~230k once torch, FastAPI and a bundle are imported,
            163 ms measured on the 2-core box, all threads stopped — and one now and then lands in the latency
            tail; frozen objects are skipped, so later collections see only what requests allocate. The cost
            moves to the reload (one full collection, before the first one: before ready). Pauses are
            exported as ``mir_gc_pause_seconds``.
    """

    def __init__(self, resolver: Resolver, *, model_name: str = DEFAULT_MODEL_NAME,
                 exposure_log: str | Path | None = None, poll_s: float = 2.0, max_batch: int = 32,
                 max_wait_ms: float = 1.0, batch_mode: str = "batch", num_threads: int | None = 1,
                 workers: int = 2, freeze_gc: bool = True, split_min: int = 0, score_threads: int = 2):
        if batch_mode not in ("batch", "loop"):
            raise ValueError(f"batch_mode must be 'batch' or 'loop', got {batch_mode!r}")
        self.resolver, self.model_name, self.poll_s = resolver, model_name, poll_s
        self.max_batch, self.max_wait_ms, self.batch_mode = max_batch, max_wait_ms, batch_mode
        self.num_threads, self.workers, self.split_min = num_threads, workers, split_min
        self.score_threads = max(1, int(score_threads))
        self.metrics = Metrics()
        self.served: Served | None = None
        self.last_error: str | None = None
        self.exposure_path = Path(exposure_log) if exposure_log else None
        self._exposure = None
        self._reload_lock: asyncio.Lock | None = None
        self._tasks: list[asyncio.Task] = []
        self.freeze_gc = freeze_gc
        self._gc_t0 = 0.0
        self.profiler = None  # a cProfile.Profile: enabled on the event loop thread once first ready (--profile)

    @property
    def ready(self) -> bool:
        return self.served is not None

    # ----------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        if self.num_threads:
            import torch

            torch.set_num_threads(int(self.num_threads))
        if self.exposure_path is not None:
            self.exposure_path.parent.mkdir(parents=True, exist_ok=True)
            self._exposure = open(self.exposure_path, "a", encoding="utf-8")
        self._reload_lock = asyncio.Lock()
        gc.callbacks.append(self._on_gc)
        self._tasks.append(asyncio.get_running_loop().create_task(self._poll(), name="reload-poller"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.served is not None:
            for w in self.served.workers.values():
                w.close()
            for w in self.served.workers.values():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(w.task, 10)
        if self._exposure is not None:
            self._exposure.close()
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        if self.freeze_gc:
            gc.unfreeze()

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        else:
            self.metrics.gc_pause.labels(str(info.get("generation"))).observe(time.perf_counter() - self._gc_t0)

    async def _poll(self) -> None:
        while True:
            await self.reload()
            if not self.poll_s:
                if self.ready:
                    return
                await asyncio.sleep(1.0)  # not ready yet: keep trying to load
            else:
                await asyncio.sleep(self.poll_s)

    async def reload(self) -> bool:
        """Re-resolve; if the answer changed, load + warm the new bundles, then swap. True if swapped."""
        async with self._reload_lock:
            try:
                res = await asyncio.to_thread(self.resolver)
                key = res.key()
                if self.served is not None and key == self.served.key:
                    return False
                old = self.served
                by_path = {} if old is None else {str(w.bundle_dir.resolve()): w for w in old.workers.values()}
                workers: dict[str, Worker] = {}
                for arm, path in sorted(res.bundles.items()):
                    prev = by_path.get(str(Path(path).resolve()))
                    if prev is not None and prev.arm == arm:
                        workers[arm] = prev
                        continue
                    rec = await asyncio.to_thread(self._load, Path(path))
                    w = Worker(arm, Path(path), rec, self.metrics, max_batch=self.max_batch,
                               max_wait_ms=self.max_wait_ms, batch_mode=self.batch_mode, threads=self.workers,
                               split_min=self.split_min, torch_threads=self.num_threads)
                    w.start()
                    workers[arm] = w
            except Exception as exc:  # noqa: BLE001 - keep serving what we have; report and retry
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.metrics.reloads.labels("failed").inc()
                log.error("serve: could not load what to serve: %s", self.last_error)
                return False
            self.served = Served(workers, res.spec, key)  # the swap: one assignment
            self.last_error = None
            self.metrics.reloads.labels("loaded").inc()
            self.metrics.ready.set(1)
            self.metrics.bundle.clear()
            for arm, w in workers.items():
                self.metrics.bundle.labels(arm, w.bundle).set(1)
            if old is not None:
                for w in old.workers.values():
                    if w not in workers.values():
                        w.close()  # drains what is queued on it, then its thread ends
            if self.freeze_gc:  # see the class docstring; unfreeze first so a replaced bundle can be collected
                gc.unfreeze()
                gc.collect()
                gc.freeze()
            if self.profiler is not None and old is None:
                self.profiler.enable()  # this is the event loop's thread; start-up and loading stay out
            log.warning("serve: serving %s", {a: w.bundle for a, w in workers.items()})
            return True

    def _load(self, path: Path) -> Recommender:
        """Load and warm up one bundle (worker thread): the first real request pays nothing extra."""
        if self.num_threads:
            import torch

            torch.set_num_threads(int(self.num_threads))
        rec = Recommender.load(path, score_threads=self.score_threads, max_batch=self.max_batch)
        probe = [str(rec.item_ids[k]) for k in rec.popular[:5]]
        for _ in range(3):
            rec.recommend(probe, None, 10)
            rec.recommend_batch([probe, probe[:2]], None, 10)
        rec.stats.update({k: 0 for k in rec.stats})
        return rec

    # ------------------------------------------------------------------------------------ requests
    def arm_of(self, served: Served, user_id: Any) -> str:
        if served.spec is None:
            return next(iter(served.workers))
        if user_id is None or user_id == "":
            raise RequestError("user_id is required: this service runs an A/B test (arms are per user)")
        return served.spec.assign(str(user_id))

    async def recommend(self, history: list, profile: dict | None, n: int, lam: float, user_id: Any
                        ) -> tuple[list[tuple[str, float]], str, str]:
        """(list, arm, bundle) for one user; RequestError for a bad request, LookupError when not ready.
        The caller logs the exposure (:meth:`log_exposure`) once its whole response has succeeded."""
        for _ in range(3):
            served = self.served
            if served is None:
                raise LookupError("not ready: no model loaded yet")
            arm = self.arm_of(served, user_id)
            worker = served.workers[arm]
            try:
                fut = worker.submit(Job(history, profile, n, lam))
            except Closed:  # a reload swapped it out between our read and the submit: use the new one
                continue
            return await fut, arm, worker.bundle
        raise LookupError("the served models kept changing; retry")

    def log_exposure(self, user_id: Any, arm: str, bundle: str, result: list[tuple[str, float]]) -> None:
        if self._exposure is None:
            return
        rec = {"user": None if user_id is None else str(user_id), "arm": arm, "bundle": bundle,
               "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds"),
               "items": [i for i, _ in result]}
        self._exposure.write(orjson.dumps(rec).decode() + "\n")
        self._exposure.flush()


# -------------------------------------------------------------------------------------------- the app
class RecommendRequest(BaseModel):
    """Body of ``POST /recommend``; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")
    history: list[StrictStr | StrictInt] = Field(description="item ids, oldest first")
    profile: dict[str, StrictStr | StrictInt | None] | None = None
    n: StrictInt = Field(10, ge=1, le=MAX_N)
    diversity_lambda: StrictFloat | StrictInt = Field(0.0, ge=0, allow_inf_nan=False)
    user_id: StrictStr | StrictInt | None = None


_RECOMMEND_OPENAPI = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": RecommendRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}}


def json_response(obj: Any, status: int = 200) -> Response:
    """``obj`` as a JSON response, serialised by orjson (floats keep their shortest round-trip form, as with
    ``json``; several times faster than FastAPI's ``jsonable_encoder`` + ``json.dumps`` on score lists)."""
    try:
        body = orjson.dumps(obj)
    except TypeError:  # what orjson refuses and json writes: an int beyond 64 bits (a user_id echoed back)
        body = json.dumps(obj).encode()
    return Response(body, status_code=status, media_type="application/json")


def _field_errors(exc) -> str:
    parts = []
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        parts.append(f"{'.'.join(loc) or 'body'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(service: Service):
    """The FastAPI app around a :class:`Service` (uvicorn runs it; tests start it on a free port)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="multi-interest retrieval", lifespan=lifespan)
    m = service.metrics

    def error(status: int, message: str, endpoint: str, arm: str = "none") -> Response:
        m.requests.labels(endpoint, arm, str(status)).inc()
        return json_response({"error": message}, status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        endpoint = "infer" if request.url.path.endswith("/infer") else "recommend"
        return error(422, _field_errors(exc), endpoint)

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        if not service.ready:
            return JSONResponse({"ready": False, "error": service.last_error}, status_code=503)
        return {"ready": True}

    @app.get("/v2")
    async def server_metadata():
        return {"name": "multi-interest-retrieval", "version": "1", "extensions": ["model_repository"]}

    def _check_model(name: str) -> JSONResponse | None:
        if name != service.model_name:
            return JSONResponse({"error": f"unknown model {name!r} (this server serves {service.model_name!r})"},
                                status_code=404)
        return None

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str):
        if (bad := _check_model(name)) is not None:
            return bad
        served = service.served
        return {"name": name, "platform": "pytorch_torchscript+faiss",
                "versions": [] if served is None else [w.bundle for w in served.workers.values()],
                "arms": {} if served is None else {a: w.bundle for a, w in served.workers.items()},
                "inputs": [{"name": "history", "datatype": "BYTES", "shape": [-1, -1]},
                           {"name": "user_id", "datatype": "BYTES", "shape": [-1]},
                           {"name": "profile.<field>", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "item_id", "datatype": "BYTES", "shape": [-1, -1]},
                            {"name": "score", "datatype": "FP32", "shape": [-1, -1]},
                            {"name": "arm", "datatype": "BYTES", "shape": [-1]},
                            {"name": "bundle", "datatype": "BYTES", "shape": [-1]}],
                "parameters": {"n": "int, default 10", "diversity_lambda": "float >= 0, default 0"}}

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str):
        if (bad := _check_model(name)) is not None:
            return bad
        return JSONResponse({"name": name, "ready": service.ready}, status_code=200 if service.ready else 503)

    @app.post("/v2/repository/models/{name}/load")
    async def load(name: str):
        if (bad := _check_model(name)) is not None:
            return bad
        swapped = await service.reload()
        if not service.ready:
            return JSONResponse({"error": service.last_error}, status_code=503)
        return {"name": name, "reloaded": swapped, "error": service.last_error,
                "arms": {a: w.bundle for a, w in service.served.workers.items()}}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/recommend", openapi_extra=_RECOMMEND_OPENAPI)
    async def recommend(request: Request):
        # the body is parsed and validated in one pass by pydantic-core (model_validate_json) and the answer
        # written by orjson: FastAPI's own body parameter (json.loads, then validation) and its
        # jsonable_encoder walk of ~100 list entries were ~1/3 of the event loop's CPU per request (profiled)
        t0 = time.perf_counter()
        try:
            req = RecommendRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            return error(422, _field_errors(exc), "recommend")
        try:
            result, arm, bundle = await service.recommend(req.history, req.profile, req.n,
                                                          float(req.diversity_lambda), req.user_id)
        except RequestError as exc:
            return error(400, str(exc), "recommend")
        except LookupError as exc:
            return error(503, str(exc), "recommend")
        service.log_exposure(req.user_id, arm, bundle, result)
        m.requests.labels("recommend", arm, "200").inc()
        m.latency.labels("recommend", arm).observe(time.perf_counter() - t0)
        return json_response({"items": [i for i, _ in result], "scores": [s for _, s in result], "arm": arm,
                              "bundle": bundle, "user_id": req.user_id})

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request):
        t0 = time.perf_counter()
        if (bad := _check_model(name)) is not None:
            m.requests.labels("infer", "none", "404").inc()
            return bad
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:  # also invalid UTF-8
            return error(400, f"body: not valid JSON ({exc})", "infer")
        try:
            users, n, lam, request_id = parse_infer(body)
        except RequestError as exc:
            return error(400, str(exc), "infer")
        try:
            answers = await asyncio.gather(*(service.recommend(h, p, n, lam, u) for h, p, u in users))
        except RequestError as exc:
            return error(400, str(exc), "infer")
        except LookupError as exc:
            return error(503, str(exc), "infer")
        ids, scores = [], []
        for (_, _, user_id), (result, arm, bundle) in zip(users, answers):
            service.log_exposure(user_id, arm, bundle, result)
            m.requests.labels("infer", arm, "200").inc()
            ids += [i for i, _ in result] + [""] * (n - len(result))
            scores += [s for _, s in result] + [0.0] * (n - len(result))
        b = len(users)
        arms = {a[1] for a in answers}
        m.latency.labels("infer", arms.pop() if len(arms) == 1 else "mixed").observe(time.perf_counter() - t0)
        out = {"model_name": name, "model_version": ",".join(sorted({a[2] for a in answers})),
               "outputs": [{"name": "item_id", "datatype": "BYTES", "shape": [b, n], "data": ids},
                           {"name": "score", "datatype": "FP32", "shape": [b, n], "data": scores},
                           {"name": "arm", "datatype": "BYTES", "shape": [b], "data": [a[1] for a in answers]},
                           {"name": "bundle", "datatype": "BYTES", "shape": [b], "data": [a[2] for a in answers]}]}
        if request_id is not None:
            out["id"] = request_id
        return json_response(out)

    return app


def _flat(data: Any) -> list:
    if isinstance(data, list) and any(isinstance(x, list) for x in data):
        return [y for x in data for y in _flat(x)]
    return data


def parse_infer(body: Any) -> tuple[list[tuple[list, dict | None, Any]], int, float, Any]:
    """An Open Inference Protocol infer body -> ([(history, profile, user_id)], n, λ, id).

    Raises:
        RequestError: naming the input or parameter that is malformed.
    """
    if not isinstance(body, dict):
        raise RequestError("body: must be a JSON object with 'inputs'")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("inputs: must be a non-empty list of tensors")
    tensors: dict[str, tuple[list[int], list]] = {}
    for k, t in enumerate(inputs):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise RequestError(f"inputs[{k}]: must be an object with a 'name'")
        name, shape, data = t["name"], t.get("shape"), t.get("data")
        if t.get("datatype") != "BYTES":
            raise RequestError(f"inputs.{name}: datatype must be BYTES, got {t.get('datatype')!r}")
        if (not isinstance(shape, list) or not shape or len(shape) > 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
            raise RequestError(f"inputs.{name}: shape must be a list of 1 or 2 non-negative ints, got {shape!r}")
        data = _flat(data)
        if not isinstance(data, list) or len(data) != math.prod(shape):
            raise RequestError(f"inputs.{name}: data must hold prod(shape) = {math.prod(shape)} elements")
        if not all(isinstance(x, str) for x in data):
            raise RequestError(f"inputs.{name}: data must be strings (BYTES)")
        tensors[name] = (shape, data)
    if "history" not in tensors:
        raise RequestError("inputs.history: missing (BYTES [B, L] of item ids)")
    shape, data = tensors.pop("history")
    b, length = (1, shape[0]) if len(shape) == 1 else (shape[0], shape[1])
    if b < 1:
        raise RequestError("inputs.history: batch dimension must be >= 1")
    histories = [[x for x in data[i * length:(i + 1) * length] if x != ""] for i in range(b)]
    user_ids: list[Any] = [None] * b
    profiles: list[dict | None] = [None] * b
    for name, (shape, data) in tensors.items():
        if len(data) != b or len(shape) != 1:
            raise RequestError(f"inputs.{name}: shape must be [{b}] (one per history row), got {shape}")
        if name == "user_id":
            user_ids = list(data)
        elif name.startswith("profile."):
            f = name[len("profile."):]
            for i, v in enumerate(data):
                if v != "":
                    profiles[i] = {**(profiles[i] or {}), f: v}
        else:
            raise RequestError(f"inputs.{name}: unknown input (expected history, user_id, profile.<field>)")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError("parameters: must be an object")
    unknown = sorted(set(params) - {"n", "diversity_lambda"})
    if unknown:
        raise RequestError(f"parameters: unknown key(s) {unknown} (known: n, diversity_lambda)")
    n = params.get("n", 10)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise RequestError(f"parameters.n: must be an integer in [1, {MAX_N}], got {n!r}")
    lam = params.get("diversity_lambda", 0.0)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise RequestError(f"parameters.diversity_lambda: must be a finite number >= 0, got {lam!r}")
    return list(zip(histories, profiles, user_ids)), n, float(lam), body.get("id")


# ---------------------------------------------------------------------------------------------- server
def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free port, read it back with ``sock.getsockname()[1]``)."""
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP; without it uvicorn's
    # separate header/body writes wait for the client's delayed ACK (~40 ms per keep-alive request, measured)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class BackgroundServer:
    """uvicorn serving an app on an already bound socket, in a thread (tests, benchmarks).

    ``with BackgroundServer(app, sock) as url: ...`` starts it, waits until it accepts, and shuts it down.
    """

    def __init__(self, app, sock: socket.socket):
        import uvicorn

        self.sock = sock
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser (the KServe manifest's args are checked against it)."""
    p = argparse.ArgumentParser(prog="python -m components.serve", description=__doc__.split("\n")[0])
    what = p.add_argument_group("what to serve (one of)")
    what.add_argument("--bundle", type=Path, help="one bundle folder, served as is")
    what.add_argument("--ab", type=Path, help="ab.json: control and treatment bundles (needs --bundles-dir or "
                                              "the bundles next to it)")
    what.add_argument("--registry", nargs="?", const="", metavar="LOCATION",
                      help="the registry's prod version (no LOCATION: the project repository's registry)")
    what.add_argument("--pointer", type=Path, help='a JSON file {"bundle": name}, bundles in --bundles-dir')
    p.add_argument("--bundles-dir", type=Path, help="where --ab and --pointer bundle names live")
    what.add_argument("--resolver", help="module:function returning a components.serve.Resolution")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0: a free port (printed)")
    p.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    p.add_argument("--exposure-log", type=Path, help="append one JSON line per served user")
    p.add_argument("--poll-s", type=float, default=2.0, help="seconds between checks for a new model (0: never)")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=1.0,
                   help="under load, wait this long for more users before answering a batch (0: never)")
    p.add_argument("--batch-mode", choices=("loop", "batch"), default="batch")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--workers", type=int, default=2, help="threads per bundle answering batches at once")
    p.add_argument("--score-threads", type=int, default=2,
                   help="threads scoring one batch's catalogue together (1: the answering thread alone)")
    p.add_argument("--split-min", type=int, default=0,
                   help="split a batch of at least 2x this many users over the free worker threads (0: never)")
    p.add_argument("--switch-interval-ms", type=float, default=None,
                   help="the GIL switch interval (sys.setswitchinterval; Python's default 5 ms)")
    p.add_argument("--http", choices=("auto", "h11", "httptools"), default="auto",
                   help="uvicorn's HTTP/1.1 parser (auto: httptools when installed, else h11)")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                   help="the event loop (auto: uvloop when installed, else asyncio)")
    p.add_argument("--profile", type=Path, help="cProfile the event loop thread (CPU time), stats to this file "
                                                "at shutdown (benchmarks/serving_http.py --profile reads them)")
    p.add_argument("--no-freeze-gc", dest="freeze_gc", action="store_false",
                   help="do not gc.freeze() after loading (see Service)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def body() -> None:
        chosen = [x for x in (args.bundle, args.ab, args.resolver, args.registry, args.pointer) if x is not None]
        if len(chosen) > 1:
            raise DataError("give only one of --bundle, --ab, --registry, --pointer, --resolver")
        if args.bundle is not None:
            resolver = fixed_bundle(args.bundle)
        elif args.ab is not None:
            resolver = ab_spec(args.ab, args.bundles_dir)
        elif args.resolver is not None:
            resolver = resolver_from_string(args.resolver)
        elif args.registry is not None:
            resolver = registry_prod(args.registry or None)
        elif args.pointer is not None:
            resolver = pointer_file(args.pointer, args.bundles_dir)
        else:
            raise DataError("nothing to serve: give --bundle, --ab, --registry, --pointer or --resolver")
        resolver()  # fail now, with exit 2, on a missing bundle / bad ab.json
        if args.switch_interval_ms is not None:
            if not args.switch_interval_ms > 0:
                raise DataError(f"--switch-interval-ms must be > 0, got {args.switch_interval_ms}")
            sys.setswitchinterval(args.switch_interval_ms / 1e3)
        service = Service(resolver, model_name=args.model_name, exposure_log=args.exposure_log,
                          poll_s=args.poll_s, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                          batch_mode=args.batch_mode, num_threads=args.threads, workers=args.workers,
                          freeze_gc=args.freeze_gc, split_min=args.split_min,
                          score_threads=args.score_threads)
        if args.profile is not None:
            import cProfile

            service.profiler = cProfile.Profile(time.thread_time)  # CPU time, not wall: idle waits cost nothing
        import uvicorn

        try:
            sock = bind(args.host, args.port)
        except OSError as exc:
            raise DataError(f"cannot listen on {args.host}:{args.port} ({exc})") from None
        host, port = sock.getsockname()[:2]
        print(f"serve: listening on http://{host}:{port} (model {args.model_name!r})", flush=True)
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
        server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning", access_log=False,
                                               http=args.http, loop=args.loop))
        try:
            server.run(sockets=[sock])
        finally:
            if service.profiler is not None:
                service.profiler.disable()
                service.profiler.dump_stats(args.profile)

    cli_main(body)


if __name__ == "__main__":
    main()
