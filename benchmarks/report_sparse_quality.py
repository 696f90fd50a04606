"""The ``sparse_quality`` section of docs/RESULTS.md (benchmarks/sparse_quality.py, issue 12 part 1): test
Recall@50 of every model trained with dense Adam and with sparse gradients + lazy Adam, side by side, the
difference against the committed (dense) run and whether it is within the issue's +-0.01."""
from __future__ import annotations

import math
from typing import Any


def _f(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.{digits}f}"
    return str(x)


def section(data: dict[str, Any], img, rel: str, save, plt_fn) -> list[str]:
    """The ``benchmarks/report.py`` plug-in entry point."""
    tol = data.get("tolerance_recall@50", 0.01)
    head = ["model", "committed R@50", "adam (rerun) R@50", "sparse_adam R@50", "sparse CI", "Δ vs committed", "Δ vs adam rerun",
            f"within ±{tol}", "best val adam / sparse", "train CPU s/epoch adam / sparse"]
    rows = []
    for v, r in (data.get("models") or {}).items():
        c, a, s = r.get("committed") or {}, r.get("adam") or {}, r.get("sparse_adam") or {}
        ci = (s.get("test.recall@50_ci_low"), s.get("test.recall@50_ci_high"))
        rows.append([r.get("label", v), _f(c.get("test.recall@50")), _f(a.get("test.recall@50")),
                     _f(s.get("test.recall@50")), f"[{_f(ci[0])}, {_f(ci[1])}]" if None not in ci else "–",
                     _f(r.get("delta_recall@50")), _f(r.get("delta_vs_adam_rerun")), _f(r.get("within_tolerance")),
                     f"{_f(a.get('train.best_val_recall@50'))} / {_f(s.get('train.best_val_recall@50'))}",
                     f"{_f(a.get('train.cpu_seconds_per_epoch'), 2)} / {_f(s.get('train.cpu_seconds_per_epoch'), 2)}"])
    out = [data.get("what", ""), "",
           "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|",
           *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]
    seeds = [(r.get("label", v), seed, o) for v, r in (data.get("models") or {}).items()
             for seed, o in (r.get("other_seeds") or {}).items()]
    if seeds:
        out += ["", "Other seeds (same params otherwise):", "",
                "| model | seed | adam test R@50 | sparse_adam test R@50 | Δ | adam best val | sparse_adam best val |",
                "|---|---|---|---|---|---|---|"]
        for label, seed, o in seeds:
            t, b = o.get("test.recall@50") or {}, o.get("best_val_recall@50") or {}
            d = (t.get("sparse_adam") - t.get("adam")) if None not in (t.get("adam"), t.get("sparse_adam")) else None
            out.append(f"| {label} | {seed} | {_f(t.get('adam'))} | {_f(t.get('sparse_adam'))} | {_f(d)} | "
                       f"{_f(b.get('adam'))} | {_f(b.get('sparse_adam'))} |")
    if data.get("note"):
        out += ["", data["note"]]
    out += ["", f"Command: `{data.get('command', '')}` ({data.get('date_utc', '')})."]
    return out
