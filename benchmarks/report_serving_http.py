"""The ``serving_http`` section of docs/RESULTS.md: the HTTP load test of ``benchmarks/serving_http.py``.

Kept out of ``benchmarks/report.py`` (which only dispatches to :func:`serving_http_section`) so that file does
not grow further. Every figure comes from ``benchmarks/results/serving_http.json``; the targets (issue 11) are
read from the file too. Files written before the CPU split was recorded render with "–" in those columns.
"""
from __future__ import annotations

import math
from typing import Any


def _cell(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:,.1f}" if abs(x) >= 100 else f"{x:.{digits}f}"
    return str(x).replace("|", "\\|")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)]


LEVEL_HEADER = ["config", "concurrency", "req/s", "p50 ms", "p99 ms", "mean ms", "server cores",
                "server CPU ms/req", "worker", "event loop", "other", "client CPU ms/req", "mean batch",
                "queue wait ms", "other processes, cores"]


def level_rows(runs: dict[str, Any]) -> list[list[Any]]:
    """One row per (config, concurrency level) of a ``runs`` block."""
    rows = []
    for name, run in runs.items():
        for c, r in run.get("levels", {}).items():
            split = r.get("cpu_ms_per_request") or {}
            rows.append([name, int(c), r.get("requests_per_s"), r.get("p50_ms"), r.get("p99_ms"), r.get("mean_ms"),
                         r.get("server_cpu_cores"), r.get("server_cpu_ms_per_request"), split.get("worker"),
                         split.get("event_loop"), split.get("other"),
                         split.get("client", _ms_per_request(r, "client_cpu_cores")), r.get("batch_size_mean"),
                         r.get("queue_wait_ms_mean"), r.get("others_cpu_cores")])
    return rows


def _ms_per_request(r: dict, cores_key: str) -> float | None:
    cores, rps = r.get(cores_key), r.get("requests_per_s")
    return None if cores is None or not rps else 1e3 * cores / rps


def serving_http_section(data: dict[str, Any]) -> list[str]:
    """Markdown lines for ``serving_http.json``."""
    targets = data.get("targets", {})
    p99_target, rps_target = targets.get("p99_ms_at_8"), targets.get("requests_per_s")
    default = data.get("default_config", "batch")
    runs = data.get("runs", {})
    at8 = runs.get(default, {}).get("levels", {}).get("8", {})
    best = data.get("best", {})
    cfg = data.get("config", {})
    out = [f"Catalogue {cfg.get('items', '?'):,} items, K = {cfg.get('interests')}, D = {cfg.get('dim')}, "
           f"n = {cfg.get('n')}, {cfg.get('requests_per_level')} requests per level; client: {cfg.get('client')}.",
           "",
           f"- p99 at concurrency 8 ({default}, the service's default): **{_cell(at8.get('p99_ms'))} ms** "
           f"(target ≤ {_cell(p99_target)} ms: {'met' if data.get('target_p99_met') else 'missed'})",
           f"- best throughput: **{_cell(best.get('requests_per_s'))} req/s** ({best.get('config')} at concurrency "
           f"{best.get('concurrency')}; target ≥ {_cell(rps_target)}: "
           f"{'met' if data.get('target_rps_met') else 'missed'})"]
    if data.get("note"):
        out += [f"- note: {data['note']}"]
    if data.get("timed"):
        out += [f"- timed: {data['timed']}"]
    out += ["- CPU per request (ms): *worker* = the threads answering batches (encoding, user tower, retrieval, "
            "lists); *event loop* = the server's main thread (HTTP parsing, routing, validation, JSON, asyncio, "
            "batcher); *other* = the rest of the server process; the load generator runs on the same cores "
            "(*client*), and *other processes* is what the rest of the machine used meanwhile (CPU the service "
            "could not have).", ""]
    out += _table(LEVEL_HEADER, level_rows(runs))
    before = data.get("before")
    if isinstance(before, dict) and before.get("runs"):
        ref = before.get("commit") or before.get("ref")
        out += ["", f"### Before and after (the service as of `{ref}`, same bundle, client and flags, measured "
                    "right before each config of this tree)", ""]
        rows = []
        pairs = [(name, name, run) for name, run in runs.items()]
        old_default = before.get("default_config")
        if old_default in before["runs"] and default in runs and old_default != default:
            pairs.insert(0, (f"default: {old_default} before, {default} after", old_default, runs[default]))
        for label, old_name, run in pairs:
            old = before["runs"].get(old_name, {}).get("levels", {})
            for c, r in run.get("levels", {}).items():
                o = old.get(c)
                if not o:
                    continue
                rows.append([label, int(c), o.get("requests_per_s"), r.get("requests_per_s"), o.get("p99_ms"),
                             r.get("p99_ms"), o.get("server_cpu_ms_per_request"), r.get("server_cpu_ms_per_request"),
                             (o.get("cpu_ms_per_request") or {}).get("event_loop"),
                             (r.get("cpu_ms_per_request") or {}).get("event_loop"),
                             o.get("others_cpu_cores"), r.get("others_cpu_cores")])
        out += _table(["config", "concurrency", "req/s before", "req/s after", "p99 ms before", "p99 ms after",
                       "server CPU ms/req before", "after", "event loop ms/req before", "after",
                       "other processes (cores) before", "after"], rows)
        out += ["", "All levels of the earlier version:", ""]
        out += _table(LEVEL_HEADER, level_rows(before["runs"]))
    prof = data.get("event_loop_profile")
    if isinstance(prof, dict) and prof.get("ms_per_request"):
        total = prof.get("total_ms_per_request") or sum(prof["ms_per_request"].values()) or 1.0
        out += ["", f"### Where the event loop's CPU goes ({prof.get('config')}, concurrency {prof.get('concurrency')}, "
                    "cProfile with a thread-CPU clock)", "",
                f"{_cell(total)} ms per request under the profiler, whose per-call overhead inflates "
                "function-heavy code several times over: read the shares, not the milliseconds.", ""]
        rows = [[k, v, 100 * v / total] for k, v in sorted(prof["ms_per_request"].items(), key=lambda kv: -kv[1])]
        out += _table(["part", "ms/request (profiled)", "share %"], rows)
    mach = data.get("machine", {})
    out += ["", f"Machine: {mach.get('cpus')} CPUs, Python {mach.get('python')}, load average (1 min) "
                f"{mach.get('load_avg_1m_before')} before / {mach.get('load_avg_1m_after')} after; load generator "
                f"niceness +{data.get('client_nice', 0)}."]
    return out


def section(data: dict[str, Any], img, rel: str, save, plt_fn) -> list[str]:
    """The ``benchmarks/report.py`` plug-in entry point."""
    return serving_http_section(data)
