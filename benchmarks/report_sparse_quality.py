"""The ``sparse_quality`` section of docs/RESULTS.md (benchmarks/sparse_quality.py, issue 12 part 1): test
Recall@50 of every model trained with dense Adam and with the sparse embedding modes (lazy Adam, row-wise
Adagrad, each optionally with its own ``train.embedding_lr``), side by side per seed on the 8:1:1 split, the
difference against dense Adam of the same seed and whether it is within the issue's +-0.01, and the paired
10-fold comparison (943 users) where it was run."""
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


def _d(x: Any) -> str:
    return "–" if x is None else f"{x:+.4f}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|",
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def section(data: dict[str, Any], img, rel: str, save, plt_fn) -> list[str]:
    """The ``benchmarks/report.py`` plug-in entry point."""
    tol = data.get("tolerance_recall@50", 0.01)
    runs = data.get("runs") or []
    by = {(r["variant"], r["mode"], r["seed"]): r for r in runs}
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    labels = {r["variant"]: r.get("label") or r["variant"] for r in runs}
    modes = sorted({r["mode"] for r in runs if r["mode"] not in ("adam", "committed")})
    out = [data.get("what", ""), ""]

    # seed 2026: one column per mode (test R@50 and its difference to the committed dense figure)
    seed = 2026
    head = ["model", "committed (dense) R@50", "adam rerun R@50", *[f"{m} R@50 (Δ)" for m in modes]]
    rows = []
    for v in variants:
        c = by.get((v, "committed", seed)) or by.get((v, "adam", seed))
        if c is None:
            continue
        base = c.get("test.recall@50")
        cells = [labels[v], _f(base), _f((by.get((v, "adam", seed)) or {}).get("test.recall@50"))]
        for m in modes:
            r = by.get((v, m, seed))
            if r is None or r.get("test.recall@50") is None:
                cells.append("–")
                continue
            d = r["test.recall@50"] - base
            cells.append(f"{_f(r['test.recall@50'])} ({_d(d)}{'' if abs(d) <= tol else ' ✗'})")
        rows.append(cells)
    out += [f"Seed {seed} (the committed run's seed), test Recall@50; Δ = mode − committed dense figure, "
            f"✗ = outside ±{tol}:", "", *_table(head, rows)]

    # best validation Recall@50 (what any tuning of embedding_lr was chosen on)
    head = ["model", "adam", *modes]
    rows = []
    for v in variants:
        cells = [labels[v], _f((by.get((v, "adam", seed)) or {}).get("train.best_val_recall@50"))]
        cells += [_f((by.get((v, m, seed)) or {}).get("train.best_val_recall@50")) for m in modes]
        if any(c != "–" for c in cells[1:]):
            rows.append(cells)
    if rows:
        out += ["", f"Seed {seed}, best validation Recall@50 (the early-stopping figure; what embedding_lr was "
                "chosen on):", "", *_table(head, rows)]

    # embedding_lr tuning (validation only)
    tun = data.get("tuning") or {}
    rows = [[opt, lr, _f(e.get("mind")), _f(e.get("umi")), _f(e.get("mean")),
             "yes" if lr == t.get("chosen_embedding_lr") else ""]
            for opt, t in tun.items() if isinstance(t, dict)
            for lr, e in (t.get("best_val_recall@50") or {}).items()]
    if rows:
        out += ["", tun.get("what", "") + ":", "",
                *_table(["mode", "embedding_lr", "MIND best val", "UMI best val", "mean", "chosen"], rows)]

    # other seeds: each sparse run against dense Adam of the same seed
    rows = []
    for (v, m, s), r in sorted(by.items()):
        if s == seed or m in ("adam", "committed"):
            continue
        a = by.get((v, "adam", s))
        d = (r["test.recall@50"] - a["test.recall@50"]) if a and a.get("test.recall@50") is not None else None
        rows.append([labels[v], str(s), m, _f((a or {}).get("test.recall@50")), _f(r.get("test.recall@50")), _d(d),
                     _f((a or {}).get("train.best_val_recall@50")), _f(r.get("train.best_val_recall@50"))])
    if rows:
        out += ["", "Other seeds (init and negatives; same split):", "",
                *_table(["model", "seed", "mode", "adam test R@50", "mode test R@50", "Δ", "adam best val",
                         "mode best val"], rows)]

    # mean over seeds
    rows = []
    for v, ms in (data.get("summary") or {}).items():
        for m, e in ms.items():
            if e.get("seeds", 0) > 1:
                rows.append([labels.get(v, v), m, str(e["seeds"]),
                             ", ".join(f"{s}: {_d(x)}" for s, x in e["delta_recall@50"].items()),
                             _d(e["mean_delta_recall@50"]), _f(e["mean_within_tolerance"])])
    if rows:
        out += ["", "Mean over seeds of Δ test Recall@50 (mode − dense Adam, same seed):", "",
                *_table(["model", "mode", "seeds", "Δ per seed", "mean Δ", f"mean within ±{tol}"], rows)]

    # k-fold paired comparison
    rows = []
    for v, ms in (data.get("kfold") or {}).items():
        for m, e in ms.items():
            t = e["paired"]
            rows.append([labels.get(v, v), m, f"{len(e['folds'])} ({e['users']})", _f(e["adam_recall@50"]),
                         _f(e["sparse_recall@50"]), _d(t["mean_diff"]), f"[{_d(t['ci_low'])}, {_d(t['ci_high'])}]",
                         f"{t['wilcoxon_p']:.3g}", f"{t['b_better']} / {t['a_better']} / {t['ties']}"])
    if rows:
        out += ["", "10-fold strong generalization (benchmarks/quality.py's folds and settings, seed 2026), per-user "
                "test Recall@50 pooled over the folds run, paired (Δ = mode − dense Adam; 95 % paired bootstrap "
                "interval; two-sided Wilcoxon signed-rank):", "",
                *_table(["model", "mode", "folds (users)", "adam R@50", "mode R@50", "Δ", "95 % CI of Δ",
                         "Wilcoxon p", "users mode better / worse / tied"], rows)]
    for key in ("note", "previous_note"):
        if data.get(key):
            out += ["", ("Earlier note: " if key == "previous_note" else "") + data[key]]
    cmds = data.get("commands") or [data.get("command", "")]
    out += ["", "Commands: " + "; ".join(f"`{c}`" for c in cmds) + f" ({data.get('date_utc', '')})."]
    return out
