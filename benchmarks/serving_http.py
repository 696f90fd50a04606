"""Load test of the HTTP service (``python -m components.serve``): throughput and latency at concurrency 1, 8, 32.

Set-up (issue 11): the 100k-item synthetic bundle of ``benchmarks/serving.py`` (MIND, K = 4 interests all
active, D = 64, random init) exported with ``components.export.build_bundle``; the service is started as its
own process on a free localhost port (``--bundle``, no polling) and driven over real HTTP/1.1 from this process
(asyncio streams; ``C`` keep-alive connections each sending its next request as soon as the previous answer
arrives; httpx's async client was tried first and itself stalled at concurrency 8 and 32).
Requests: ``POST /recommend`` with a random history of 5..50 known items, n = 50, no profile.

Per server configuration and concurrency level: requests/s over a fixed number of requests (after a
warm-up), p50/p99 latency as the client sees it, and the CPU the server process used (cores = CPU seconds /
wall seconds, from psutil; and CPU ms per request, which a busy shared machine inflates far less than
latency) and the client's own. Configurations compared (the batcher's choices):
``batch`` (the service's default: 2 threads per bundle, each answering the requests queued while it was busy,
up to 32, waiting up to 1 ms for more under load, with one ``recommend_batch`` whose catalogue scoring is shared
by 2 threads, ``--score-threads 2``; uvicorn on httptools + uvloop), ``batch_1score`` (the same, scored by the
answering thread alone), ``batch_h11`` (the same on uvicorn's pure-Python h11 parser and asyncio's loop),
``batch_nowait`` (no 1 ms wait), the same with 1 thread (and with 1 thread of 2 torch threads),
``loop`` (1 thread, requests taken together but answered by ``recommend`` one by one) and ``none``
(max_batch = 1: one thread hop per request). ``--before REF`` also runs the service as of commit REF (its
default flags, ``batch_nowait``) against the same bundle and client, right before the same config here.

The machine is shared: other jobs (niced, in other PID namespaces, invisible to ps) take up to
1.5 of the 2 cores at times; each level records the CPU every other process used meanwhile
(``others_cpu_cores``, from /proc/stat) so a slow level can be told from a slow service.
Targets on the 2-core box: p99 <= 25 ms at concurrency 8, >= 500 requests/s at the best level.

    .venv/bin/python benchmarks/serving_http.py                          # 100k items, 2000 requests per level
    .venv/bin/python benchmarks/serving_http.py --items 20000 --requests 300 --results /tmp/x.json  # quick

Outputs: the bundle under ``benchmarks/out/serving_http/`` (ignored by git); figures printed and written to
``benchmarks/results/serving_http.json``.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TARGET_P99_MS_AT_8 = 25.0
TARGET_RPS = 500.0


def build_bundle_100k(out: Path, items: int, dim: int, interests: int, max_len: int, seed: int) -> Path:
    """The serving benchmark's synthetic catalogue + random MIND, exported as a bundle."""
    import torch

    import models
    from benchmarks.serving import make_catalogue
    from components.export import ExportPaths, build_bundle

    shutil.rmtree(out, ignore_errors=True)
    split = make_catalogue(out, items, 100, seed)
    torch.manual_seed(seed)
    model = models.build_model("mind", num_items=items, num_categories=100, profile_cardinalities=[],
                               max_len=max_len, dim=dim, num_interests=interests, dynamic_interests=False)
    (out / "models" / "mind").mkdir(parents=True)
    models.save_model(model, out / "models" / "mind" / "model.pt")
    paths = ExportPaths(models_dir=out / "models", eval_dir=out / "eval", index_dir=out / "index",
                        split_dir=split, bundles_dir=out / "bundles")
    return build_bundle("mind", paths, {}, {}, {"passed": True, "note": "benchmark"}, "benchmark")


def source_at(ref: str, dest: Path) -> Path:
    """The project's ``components`` and ``models`` packages as of git ``ref``, extracted under ``dest`` (to run
    an earlier version of the service against the same bundle and client)."""
    import io
    import tarfile

    tar = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", ref, "components", "models"],
                         check=True, capture_output=True).stdout
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(dest, filter="data")
    return dest


def start_server(bundle: Path, extra: list[str], root: Path = REPO) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "components.serve", "--bundle", str(bundle), "--port", "0",
                             "--poll-s", "0", *extra], cwd=root, stdout=subprocess.PIPE, text=True,
                            # OMP_WAIT_POLICY as the Makefile and the image set it (idle OpenMP threads sleep
                            # instead of spinning on the 2 shared cores)
                            env={"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONPATH": str(root)})
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    url = line.split("listening on ")[1].split()[0]
    import httpx

    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(url + "/v2/health/ready", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("server never became ready")
        time.sleep(0.1)


async def _connection(host: str, port: int, bodies, latencies: list[float]) -> None:
    """One keep-alive HTTP/1.1 connection sending ``POST /recommend`` bodies one after another (asyncio
    streams: a few µs of client CPU per request, where httpx's async client stalled at concurrency 8+)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for body in bodies:
            payload = json.dumps(body).encode()
            t = time.perf_counter()
            writer.write(b"POST /recommend HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            data = await reader.readexactly(length)
            latencies.append(time.perf_counter() - t)
            if status != 200:
                raise RuntimeError(f"{status}: {data[:200]!r}")
    finally:
        writer.close()


async def drive(url: str, bodies: list[dict], concurrency: int) -> tuple[list[float], float]:
    """Send every body over ``concurrency`` connections; (latencies s, wall s). Any non-200 raises."""
    host, port = url.split("//")[1].rsplit(":", 1)
    latencies: list[float] = []
    it = iter(bodies)  # shared: each connection takes the next body when its previous answer arrived
    t0 = time.perf_counter()
    await asyncio.gather(*(_connection(host, int(port), it, latencies) for _ in range(concurrency)))
    return latencies, time.perf_counter() - t0


def _scrape(url: str) -> dict[str, float]:
    """Sums of the service's own counters that split its CPU: worker-thread CPU, queue wait, batch sizes."""
    import httpx

    want = ("mir_worker_cpu_seconds_total", "mir_queue_wait_seconds_sum", "mir_queue_wait_seconds_count",
            "mir_batch_size_sum", "mir_batch_size_count", "mir_gc_pause_seconds_sum", "mir_gc_pause_seconds_count")
    out: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in want:
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return {k: out.get(k, math.nan) for k in want}  # NaN: a service version without that metric


def _cpu(proc) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _busy(t) -> float:
    """Machine-wide busy CPU seconds (every process), steal included: CPU this benchmark could not have."""
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)


def _loop_thread_cpu(proc) -> float:
    """CPU seconds of the server's main thread: uvicorn's event loop (HTTP parsing, FastAPI, validation,
    JSON, asyncio, the batcher); its thread id is the process id."""
    return next((t.user_time + t.system_time for t in proc.threads() if t.id == proc.pid), float("nan"))


def measure(url: str, pid: int, bodies: list[dict], levels: list[int], warmup: int, client_nice: int = 0) -> dict:
    """Per concurrency level: throughput, client-side latency, and where the CPU went.

    Timed: from just before a request's bytes are written to its connection until its whole response has
    been read (``time.perf_counter`` in the client), for ``len(bodies) - warmup`` requests per level;
    throughput = requests / wall time of the level. CPU split of the server process (per request, ms):
    ``worker`` = the worker threads answering batches (the service's ``mir_worker_cpu_seconds``: encoding,
    user tower, retrieval, building the lists), ``event_loop`` = the main thread (HTTP/1.1 parsing in h11,
    FastAPI routing, body validation, orjson, asyncio, the batcher, metrics), ``other`` = the rest of the
    process (torch/ONNX intra-op helper threads, the GC of other threads); the client's CPU (this process,
    which shares the 2 cores) and the CPU every other process on the machine used meanwhile are recorded
    beside it.
    """
    import psutil

    server = psutil.Process(pid)
    asyncio.run(drive(url, bodies[:warmup], 8))
    out = {}
    for c in levels:
        m0, cpu0, loop0, me0, box0 = _scrape(url), _cpu(server), _loop_thread_cpu(server), time.process_time(), \
            psutil.cpu_times()
        old_nice = os.getpriority(os.PRIO_PROCESS, 0)
        if client_nice:
            os.setpriority(os.PRIO_PROCESS, 0, old_nice + client_nice)
        try:
            lat, wall = asyncio.run(drive(url, bodies[warmup:], c))
        finally:
            if client_nice:
                with contextlib.suppress(PermissionError):  # lowering niceness back needs privileges
                    os.setpriority(os.PRIO_PROCESS, 0, old_nice)
        cpu1, loop1, me1, box1, m1 = _cpu(server), _loop_thread_cpu(server), time.process_time(), psutil.cpu_times(), \
            _scrape(url)
        ms = np.asarray(lat) * 1e3
        n = len(lat)
        server_s, loop_s = cpu1 - cpu0, loop1 - loop0
        worker_s = m1["mir_worker_cpu_seconds_total"] - m0["mir_worker_cpu_seconds_total"]
        box_s = _busy(box1) - _busy(box0)
        waits = m1["mir_queue_wait_seconds_count"] - m0["mir_queue_wait_seconds_count"]
        batches = m1["mir_batch_size_count"] - m0["mir_batch_size_count"]
        nan_none = lambda x: None if math.isnan(x) else x  # noqa: E731
        out[str(c)] = {"requests": n, "requests_per_s": n / wall,
                       "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                       "mean_ms": float(ms.mean()),
                       "server_cpu_cores": server_s / wall,
                       "client_cpu_cores": (me1 - me0) / wall,
                       "others_cpu_cores": max(0.0, box_s - server_s - (me1 - me0)) / wall,
                       # load-independent: server CPU per request, and how it splits
                       "server_cpu_ms_per_request": 1e3 * server_s / n,
                       "cpu_ms_per_request": {"worker": nan_none(1e3 * worker_s / n),
                                              "event_loop": 1e3 * loop_s / n,
                                              "other": nan_none(1e3 * (server_s - worker_s - loop_s) / n),
                                              "worker_and_other": 1e3 * (server_s - loop_s) / n,
                                              "client": 1e3 * (me1 - me0) / n},
                       "queue_wait_ms_mean": nan_none(1e3 * (m1["mir_queue_wait_seconds_sum"]
                                                             - m0["mir_queue_wait_seconds_sum"]) / max(waits, 1)),
                       "batch_size_mean": (m1["mir_batch_size_sum"] - m0["mir_batch_size_sum"]) / max(batches, 1),
                       "gc_pause_ms_total": nan_none(1e3 * (m1["mir_gc_pause_seconds_sum"]
                                                            - m0["mir_gc_pause_seconds_sum"])),
                       "gc_collections": nan_none(m1["mir_gc_pause_seconds_count"] - m0["mir_gc_pause_seconds_count"])}
    return out


#: event-loop profile categories: (label, substrings of a cProfile entry "file:line(function)")
PROFILE_CATEGORIES = [
    ("HTTP/1.1 (uvicorn, h11)", ("uvicorn/", "/h11/")),
    ("framework (FastAPI, Starlette routing and middleware)", ("fastapi/", "starlette/", "anyio/")),
    ("validation (pydantic-core)", ("pydantic",)),
    ("JSON (orjson)", ("orjson",)),
    ("socket send/recv", ("of '_socket.socket' objects",)),
    ("asyncio (event loop, futures, tasks)", ("asyncio/", "selectors.py", "epoll", "contextvars", "_asyncio")),
    ("thread hand-off (executor, queue)", ("concurrent/futures", "threading.py", "_queue", "_thread")),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("service code (components/serve.py)", ("components/serve.py",)),
    ("GC", ("gc_", "gc.collect")),
]


def profile_split(path: Path, requests: int) -> dict:
    """The event loop thread's CPU (cProfile with a thread-CPU clock; own time per function, grouped by
    library) in ms per request; "other" holds what no category names (builtins such as isinstance)."""
    import pstats

    stats = pstats.Stats(str(path)).stats  # {(file, line, func): (cc, nc, tottime, cumtime, callers)}
    out = {label: 0.0 for label, _ in PROFILE_CATEGORIES}
    out["other"] = 0.0
    for (file, line, func), (_, _, tottime, _, _) in stats.items():
        key = f"{file}:{line}({func})"
        label = next((lab for lab, subs in PROFILE_CATEGORIES if any(s in key for s in subs)), "other")
        out[label] += tottime
    total = sum(out.values())
    return {"requests": requests, "total_ms_per_request": 1e3 * total / requests,
            "ms_per_request": {k: 1e3 * v / requests for k, v in out.items()}}


CONFIGS = {  # name -> serve CLI flags (after --threads, so a config may override it)
    "batch": ["--batch-mode", "batch", "--max-batch", "32", "--workers", "2", "--max-wait-ms", "1"],  # default
    "batch_1score": ["--batch-mode", "batch", "--max-batch", "32", "--workers", "2", "--max-wait-ms", "1",
                     "--score-threads", "1"],
    "batch_h11": ["--batch-mode", "batch", "--max-batch", "32", "--workers", "2", "--max-wait-ms", "1",
                  "--http", "h11", "--loop", "asyncio"],
    "batch_nowait": ["--batch-mode", "batch", "--max-batch", "32", "--workers", "2", "--max-wait-ms", "0"],
    "batch_1worker": ["--batch-mode", "batch", "--max-batch", "32", "--workers", "1", "--max-wait-ms", "1"],
    "batch_1worker_2threads": ["--batch-mode", "batch", "--max-batch", "32", "--workers", "1", "--max-wait-ms", "1",
                               "--threads", "2"],
    "loop": ["--batch-mode", "loop", "--max-batch", "32", "--workers", "1", "--max-wait-ms", "0"],
    "none": ["--batch-mode", "loop", "--max-batch", "1", "--workers", "1", "--max-wait-ms", "0"],
}
#: the default flags of the service before the 1 ms batching wait (what --before measures by default)
BEFORE_CONFIGS = ["batch_nowait"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--interests", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--requests", type=int, default=2000, help="per concurrency level")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server's worker")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "serving_http")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "serving_http.json")
    parser.add_argument("--client-nice", type=int, default=0,
                        help="raise the load generator's niceness by this much while it drives the server")
    parser.add_argument("--custom", metavar="FLAGS", help="also run a config 'custom' with these serve flags")
    parser.add_argument("--reuse-bundle", action="store_true", help="keep a bundle already built under --out")
    parser.add_argument("--before", metavar="GIT_REF",
                        help="also measure the service as of this commit (same bundle and client), for the configs "
                             "of --before-configs, each right before the same config of this tree; recorded under "
                             "'before'")
    parser.add_argument("--profile", action="store_true",
                        help="also run the default config once more at concurrency 8 with the event loop under "
                             "cProfile (thread CPU clock) and record its split by library (profile overhead "
                             "inflates Python-heavy parts: read it as shares)")
    parser.add_argument("--before-configs", nargs="+", choices=sorted(CONFIGS), default=BEFORE_CONFIGS)
    parser.add_argument("--note", help="a remark recorded with the results (e.g. how busy the box was)")
    args = parser.parse_args(argv)
    configs = {name: CONFIGS[name] for name in args.configs}
    if args.custom:
        configs["custom"] = args.custom.split()

    t0 = time.perf_counter()
    built = sorted((args.out / "bundles").glob("*/manifest.json")) if args.reuse_bundle else []
    bundle = built[0].parent if built else build_bundle_100k(args.out, args.items, args.dim, args.interests,
                                                             args.max_len, args.seed)
    export_s = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed + 1)
    bodies = [{"history": [f"i{i}" for i in rng.integers(1, args.items, rng.integers(5, 51))], "n": args.n}
              for _ in range(args.warmup + args.requests)]
    load0 = os.getloadavg()[0]
    old_root = source_at(args.before, args.out / "before_src") if args.before else None
    runs, before = {}, {}
    for name, flags in configs.items():
        for root, into in ((old_root, before), (REPO, runs)):
            if root is None or (into is before and name not in args.before_configs):
                continue
            proc, url = start_server(bundle, ["--threads", str(args.threads)] + flags, root)
            try:
                into[name] = {"flags": flags, "levels": measure(url, proc.pid, bodies, args.levels, args.warmup,
                                                                args.client_nice)}
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    profile = None
    if args.profile:
        prof_path = args.out / "event_loop.prof"
        flags = configs.get("batch", CONFIGS["batch"])
        proc, url = start_server(bundle, ["--threads", str(args.threads), *flags, "--profile", str(prof_path)])
        try:
            measure(url, proc.pid, bodies, [8], args.warmup, args.client_nice)
        finally:
            proc.send_signal(signal.SIGINT)  # uvicorn re-raises it after shutdown: the stats are written first
            proc.wait(timeout=60)
        # requests the profiler saw: warm-up, the level, and the 4 /metrics scrapes (counted as requests)
        profile = {"config": "batch", "concurrency": 8, **profile_split(prof_path, len(bodies) + 4)}
    best = max(((n, c, r["requests_per_s"]) for n, run in runs.items() for c, r in run["levels"].items()),
               key=lambda x: x[2])
    default = runs.get("batch") or next(iter(runs.values()))
    p99_8 = default["levels"].get("8", {}).get("p99_ms")
    result = {
        "config": {"items": args.items, "dim": args.dim, "interests": args.interests, "max_len": args.max_len,
                   "n": args.n, "requests_per_level": args.requests, "warmup": args.warmup,
                   "server_threads": args.threads, "model": "mind (random init, dynamic_interests=false)",
                   "client": "asyncio streams in one process, one keep-alive HTTP/1.1 connection per concurrent user"},
        "timed": "client side: from just before a request's bytes are written to its keep-alive connection "
                 "until its whole response is read (perf_counter), every request of a level after a warm-up "
                 "of --warmup requests at concurrency 8; requests_per_s = requests / wall time of the level; "
                 "CPU from psutil (process, its main thread) and the service's mir_worker_cpu_seconds",
        "client_nice": args.client_nice,
        **({"note": args.note} if args.note else {}),
        "runs": runs,
        "best": {"config": best[0], "concurrency": int(best[1]), "requests_per_s": best[2]},
        "default_config": "batch",
        "targets": {"p99_ms_at_8": TARGET_P99_MS_AT_8, "requests_per_s": TARGET_RPS},
        "target_p99_met": p99_8 is not None and p99_8 <= TARGET_P99_MS_AT_8,
        "target_rps_met": best[2] >= TARGET_RPS,
        "export_s": export_s,
        **({"event_loop_profile": profile} if profile else {}),
        **({"before": {"ref": args.before, "default_config": "batch_nowait", "commit": subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", args.before], capture_output=True,
            text=True).stdout.strip(), "runs": before}} if args.before else {}),
        "command": "python benchmarks/serving_http.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "load_avg_1m_before": round(load0, 2),
                    "load_avg_1m_after": round(os.getloadavg()[0], 2), "python": platform.python_version()},
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(f"serving over HTTP, {args.items} items, K={args.interests}, D={args.dim}, n={args.n}, "
          f"{args.requests} requests per level (targets: p99 <= {TARGET_P99_MS_AT_8} ms at 8, >= {TARGET_RPS} req/s)")
    for name, run in [*((f"{n}@{args.before}", r) for n, r in before.items()), *runs.items()]:
        for c, r in run["levels"].items():
            print(f"  {name:>22} c={c:>2}: {r['requests_per_s']:7.1f} req/s, p50 {r['p50_ms']:6.2f} ms, "
                  f"p99 {r['p99_ms']:6.2f} ms, server CPU {r['server_cpu_cores']:.2f} cores "
                  f"({r['server_cpu_ms_per_request']:.2f} ms/request: " + ", ".join(
                      f"{k} {v:.2f}" for k, v in r["cpu_ms_per_request"].items() if v is not None) +
                  f"), batch {r['batch_size_mean']:.1f}, queue {r['queue_wait_ms_mean'] or math.nan:.2f} ms, "
                  f"others {r['others_cpu_cores']:.2f} cores, GC {r['gc_pause_ms_total'] or math.nan:.1f} ms")
    if profile:
        print(f"  event loop under cProfile, {profile['total_ms_per_request']:.2f} ms/request: " + ", ".join(
            f"{k} {v:.3f}" for k, v in sorted(profile["ms_per_request"].items(), key=lambda kv: -kv[1])))
    print(f"  best: {best[0]} at c={best[1]}: {best[2]:.1f} req/s; load avg {result['machine']['load_avg_1m_after']} "
          f"-> {args.results}")
    return result


if __name__ == "__main__":
    main()
