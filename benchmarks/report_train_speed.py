"""The ``train_speed`` section of docs/RESULTS.md (also ``train_speed_2threads`` and ``train_speed_gpu*`` via
thin modules): the product's end-to-end training throughput from ``benchmarks/train_speed.py``.

What ``samples/s`` times, and how it relates to the side-by-side figures of ``benchmarks/rechub_speed.py`` and
to ``train.json`` of a pipeline run, is quoted from the producing script's docstring, so the text follows the
code. A file with several configurations (GPU: batch sizes x precisions) gets one table per configuration.
"""
from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
COLUMNS = [("samples/s", "samples_per_s", ",.0f"), ("samples/CPU-s", "samples_per_cpu_s", ",.0f"),
           ("train s/epoch", "seconds_per_epoch", ".2f"), ("val s/epoch", "val_seconds_per_epoch", ".2f"),
           ("epochs", "epochs", "d"), ("threads", "torch_threads", "d"), ("peak RSS MB", "peak_rss_mb", ",.0f"),
           ("peak GPU MB", "peak_gpu_mb", ",.0f"), ("test R@50", "test_recall@50", ".4f")]


def _cell(x: Any, fmt: str) -> str:
    if x is None or isinstance(x, bool) or (isinstance(x, float) and math.isnan(x)):
        return "–"
    try:
        return format(x, fmt)
    except (TypeError, ValueError):
        return str(x)


def _doc() -> str:
    try:
        return ast.get_docstring(ast.parse((REPO / "benchmarks" / "train_speed.py").read_text())) or ""
    except (OSError, SyntaxError):
        return ""


def timing_text(doc: str) -> list[str]:
    """The docstring's bullet on what samples/s times and its paragraph relating the three figures."""
    out = []
    for block in doc.split("\n\n"):
        for item in block.split("\n- "):
            item = item.lstrip("- ")
            if item.startswith("training samples/s"):
                out.append("What samples/s times: " + " ".join(item.split())[len("training samples/s: "):].rstrip(";") + ".")
        if block.startswith("How this relates"):
            out.append(" ".join(block.split()))
    return out


def models_table(rows: dict) -> list[str]:
    cols = [c for c in COLUMNS if any(r.get(c[1]) is not None for r in rows.values())]
    head = ["model", *[c[0] for c in cols]]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for name, r in rows.items():
        if r.get("arch") == "most_popular":  # "trained" by counting: no throughput to speak of
            r = {k: v for k, v in r.items() if k not in ("samples_per_s", "samples_per_cpu_s", "seconds_per_epoch")}
        lines.append("| " + " | ".join([name, *[_cell(r.get(k), f) for _, k, f in cols]]) + " |")
    return lines


def section(data: dict, img_dir: Path, rel: str, save: Callable, plt_fn: Callable) -> list[str]:
    return body(data, explain=True)


def body(data: dict, explain: bool) -> list[str]:
    """The section's lines; ``explain`` adds what samples/s times (once per report is enough)."""
    out = []
    if explain:
        for para in timing_text(_doc()):
            out += [para, ""]
    else:
        out += ["Timed as in the train_speed section above.", ""]
    machine = data.get("machine", {})
    train = data.get("config", {}).get("train", {})
    out += [f"Run: {machine.get('cpu_count', '?')} cores{', GPUs ' + ', '.join(machine['gpus']) if machine.get('gpus') else ''}, "
            f"load average before/after {_cell((machine.get('load_average_before') or [None])[0], '.2f')} / "
            f"{_cell((machine.get('load_average_after') or [None])[0], '.2f')}; accelerator "
            f"{train.get('accelerator', 'cpu')}, max_epochs {train.get('max_epochs', '?')}. "
            f"{data.get('note', '')}".rstrip(), ""]
    if "models" in data:
        out += models_table(data["models"])
    for cfg in data.get("configs", []):
        out += ["", f"batch size {cfg.get('batch_size')}, precision {cfg.get('precision')}:", ""]
        out += models_table(cfg.get("models", {}))
    prof = data.get("profile_cpu_ms_per_step")
    if prof:
        keys = ("batch", "user_tower", "items_and_loss", "backward", "adam", "total")
        out += ["", "CPU milliseconds per training step by phase (plain loop with the trainer's pieces, after "
                    "10 warm-up steps):", "",
                "| model | " + " | ".join(keys) + " | samples/CPU-s |", "|" + "|".join("---" for _ in range(len(keys) + 2)) + "|"]
        for name, p in prof.items():
            out.append(f"| {name} | " + " | ".join(_cell(p.get(k), ".2f") for k in keys)
                       + f" | {_cell(p.get('samples_per_cpu_s'), ',.0f')} |")
    return out
