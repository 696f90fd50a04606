"""The ``train_speed_vs_rechub`` section of docs/RESULTS.md: ours vs torch-rechub 0.9.0, side by side
(``benchmarks/rechub_speed.py``), and the ``train.compile`` on/off figures when the same script recorded them.

Every figure comes from ``benchmarks/results/train_speed_vs_rechub.json``; what is timed is quoted from the
producing script's docstring, so the text cannot drift from the code.
"""
from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
LABELS = {"youtube_dnn": "YouTube DNN", "mind": "MIND", "comirec_dr": "ComiRec-DR", "comirec_sa": "ComiRec-SA",
          "umi": "UMI"}


def _cell(x: Any, fmt: str = ",.0f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, float)):
        return format(x, fmt)
    return str(x).replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def script_text(script: str = "rechub_speed.py") -> str:
    """The producing script's docstring (empty when the script is missing)."""
    path = REPO / "benchmarks" / script
    try:
        return ast.get_docstring(ast.parse(path.read_text())) or ""
    except (OSError, SyntaxError):
        return ""


def _paragraph(doc: str, starts: str) -> str:
    for block in doc.split("\n\n"):
        if block.lstrip().startswith(starts):
            return " ".join(line.strip() for line in block.splitlines())
    return ""


def comparison_rows(data: dict) -> list[list[str]]:
    target = data.get("target_factor", 2.0)
    rows = []
    for variant, by_threads in data.get("summary", {}).items():
        for threads, r in sorted(by_threads.items(), key=lambda kv: int(kv[0])):
            ratio = r.get("ratio")
            rows.append([LABELS.get(variant, variant), threads, _cell(r.get("ours_samples_per_s")),
                         _cell(r.get("theirs_samples_per_s")), _cell(ratio, ".2f"),
                         ", ".join(f"{x:.2f}" for x in r.get("paired_ratios", [])) or "–",
                         _cell(r.get("ratio_cpu"), ".2f"),
                         ("–" if ratio is None else ("yes" if r.get("meets_target") else f"no (< {target:g}×)"))])
    return rows


def compile_rows(data: dict) -> list[list[str]]:
    rows = []
    for variant, by_threads in data.get("summary", {}).items():
        for threads, r in sorted(by_threads.items(), key=lambda kv: int(kv[0])):
            if r.get("compiled_samples_per_s") is None:
                continue
            rows.append([LABELS.get(variant, variant), threads, _cell(r.get("ours_samples_per_s")),
                         _cell(r.get("compiled_samples_per_s")), _cell(r.get("compiled_over_eager"), ".2f"),
                         _cell(r.get("compiled_warmup_s"), ".1f"), _cell(r.get("eager_warmup_s"), ".1f")])
    return rows


def update_lines(data: dict) -> list[str]:
    """One paragraph per later re-measurement merged into the file (``rechub_speed.py --merge``): which rows
    it replaced, when, with what command, and how loaded the machine was."""
    out = []
    for u in data.get("updates", []):
        m = u.get("machine", {})
        models = ", ".join(LABELS.get(v, v) for v in u.get("variants", []))
        threads = " and ".join(str(t) for t in u.get("threads", []))
        out += [f"Rows of {models} at {threads} thread(s) re-measured {u.get('date', '(date not recorded)')} "
                f"(`{u.get('command', '?')}`; load average before/after "
                f"{_cell((m.get('load_average_before') or [None])[0], '.2f')} / "
                f"{_cell((m.get('load_average_after') or [None])[0], '.2f')}, "
                f"{_cell(m.get('seconds'), '.0f')} s); the other rows are the run above. {u.get('note', '')}".rstrip(),
                ""]
    return out


def section(data: dict, img_dir: Path, rel: str, save: Callable, plt_fn: Callable) -> list[str]:
    doc = script_text()
    out = [doc.split("\n\n")[0].replace("\n", " "), ""] if doc else []
    for start in ("What is timed", "Setting", "Ours:", "Theirs:", "Known bugs"):
        para = _paragraph(doc, start)
        if para:
            out += [para, ""]
    blocks = doc.split("\n\n")
    known = [k for k, b in enumerate(blocks) if b.lstrip().startswith("Known bugs")]
    if known and known[0] + 1 < len(blocks):
        bullets = blocks[known[0] + 1].strip().lstrip("-").split("\n- ")
        out += ["- " + " ".join(b.split()) for b in bullets] + [""]
    machine = data.get("machine", {})
    setting = data.get("setting", {})
    out += [f"Run: {setting.get('repeats', '?')} repeats × {setting.get('steps', '?')} timed steps after "
            f"{setting.get('warmup', '?')} warm-up steps per run; load average before/after "
            f"{_cell((machine.get('load_average_before') or [None])[0], '.2f')} / "
            f"{_cell((machine.get('load_average_after') or [None])[0], '.2f')} on {machine.get('cpu_count', '?')} "
            f"cores ({_cell(machine.get('seconds'), '.0f')} s in all). {data.get('note', '')}".rstrip(), ""]
    out += update_lines(data)
    rows = comparison_rows(data)
    if rows:
        out += _table(["model", "threads", "ours samples/s", "torch-rechub samples/s", "ratio (medians)",
                       "paired ratios per repeat", "ratio per CPU-second", f"≥ {data.get('target_factor', 2):g}×"],
                      rows)
        out += ["", "UMI has no torch-rechub peer: its row shows our figure alone. \"ratio per CPU-second\" divides "
                    "each side's samples per CPU-second of its own process (robust to a busy machine; at 2 threads "
                    "it counts both threads)."]
    crow = compile_rows(data)
    if crow:
        out += ["", "`train.compile` (our user tower through torch.compile, training only), same harness:", ""]
        out += _table(["model", "threads", "eager samples/s", "compiled samples/s", "compiled / eager",
                       "compiled warm-up s (incl. compilation)", "eager warm-up s"], crow)
    return out
