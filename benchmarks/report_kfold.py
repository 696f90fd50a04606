"""The ``quality_kfold`` section of docs/RESULTS.md: the 10-fold strong-generalization benchmark of
``benchmarks/quality.py --stage kfold`` (issue 13) — every user tested once, per-model means over all users
with user-bootstrap intervals, the pairwise paired-test matrix on per-user Recall@50 (table + heatmap PNG)
and the papers' findings judged by the paired tests.

Kept out of ``benchmarks/report.py`` (which only dispatches to :func:`kfold_section`, passing its ``save``
and ``_plt`` helpers). Every figure comes from ``benchmarks/results/quality_kfold.json``; the verdict rule is
``benchmarks/kfold_stats.py``'s, quoted from the file's meta.
"""
from __future__ import annotations

import math
from typing import Any, Callable

SIG = "*"


def _f(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x).replace("|", "\\|")


def _p(p: float | None) -> str:
    if p is None:
        return "–"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(c if isinstance(c, str) else _f(c) for c in row) + " |" for row in rows)]


def _ci(m: dict | None) -> str:
    if not m:
        return "–"
    return f"{m['mean']:.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}]"


def significant(pair: dict, alpha: float) -> bool:
    """Both paired tests separate the two models: the bootstrap interval excludes 0 and Wilcoxon p < α."""
    return (pair["ci_low"] > 0 or pair["ci_high"] < 0) and pair["wilcoxon_p"] < alpha


def ordered_models(data: dict) -> dict[str, dict]:
    """``models`` in ``meta.variants`` order (the JSON file's keys are sorted), any others after."""
    models = data.get("models", {})
    order = [v for v in data.get("meta", {}).get("variants", []) if v in models]
    return {v: models[v] for v in order + [v for v in models if v not in order]}


def diff_matrix(data: dict) -> tuple[list[str], list[list[dict | None]]]:
    """Variants in display order and M[i][j] = the test of "row i vs column j" as Δ = mean(row − col)
    (the stored pair, flipped when it was stored the other way round); None on the diagonal."""
    variants = list(ordered_models(data))
    pos = {v: i for i, v in enumerate(variants)}
    mat: list[list[dict | None]] = [[None] * len(variants) for _ in variants]
    for p in data.get("pairwise", []):
        i, j = pos.get(p["a"]), pos.get(p["b"])
        if i is None or j is None:
            continue
        # stored: mean(b − a); row b vs column a is the same test, row a vs column b the mirror
        mat[j][i] = {**p, "d": p["mean_diff"], "lo": p["ci_low"], "hi": p["ci_high"]}
        mat[i][j] = {**p, "d": -p["mean_diff"], "lo": -p["ci_high"], "hi": -p["ci_low"]}
    return variants, mat


def heatmap(data: dict, img, rel: str, save: Callable, plt_fn: Callable) -> str:
    variants, mat = diff_matrix(data)
    labels = [data["models"][v].get("label", v) for v in variants]
    alpha = data.get("meta", {}).get("alpha", 0.05)
    n = len(variants)
    plt = plt_fn()
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * n, 0.8 + 0.6 * n))
    grid = [[(100 * c["d"] if c else 0.0) for c in row] for row in mat]
    lim = max([abs(x) for row in grid for x in row] + [1e-9])
    im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim)
    for i in range(n):
        for j in range(n):
            c = mat[i][j]
            if c is None:
                continue
            mark = SIG if significant({"ci_low": c["lo"], "ci_high": c["hi"], "wilcoxon_p": c["wilcoxon_p"]},
                                      alpha) else ""
            ax.text(j, i, f"{100 * c['d']:+.1f}{mark}", ha="center", va="center", fontsize=7,
                    color="white" if abs(grid[i][j]) > 0.6 * lim else "black")
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("column model")
    ax.set_ylabel("row model")
    fig.colorbar(im, ax=ax, fraction=0.046, label="Δ Recall@50 ×100 (row − column)")
    users = data.get("meta", {}).get("users")
    ax.set_title(f"Paired Δ Recall@50 ×100 (row − column), {users} users\n{SIG}: paired bootstrap CI excludes 0 "
                 f"and Wilcoxon p < {alpha}", fontsize=8)
    return save(fig, img, "quality_kfold_pairwise.png", rel)


def headline(data: dict) -> str:
    """One sentence: the best model by mean and how the paired tests separate it from the runner-up."""
    models = {v: m for v, m in data.get("models", {}).items() if m.get("recall@50")}
    if not models:
        return "No k-fold results yet."
    meta = data.get("meta", {})
    order = sorted(models, key=lambda v: -models[v]["recall@50"]["mean"])
    best, lab = order[0], (lambda v: models[v].get("label", v))
    text = (f"**Headline ({len(meta.get('folds_complete', []))} of {meta.get('k')} folds, {meta.get('users')} test "
            f"users, each tested once):** {lab(best)} has the highest mean test Recall@50, "
            f"{_ci(models[best]['recall@50'])}")
    if len(order) > 1:
        second = order[1]
        pair = next((p for p in data.get("pairwise", []) if {p["a"], p["b"]} == {best, second}), None)
        if pair:
            sign = 1 if pair["b"] == best else -1
            lo, hi = sorted((sign * pair["ci_low"], sign * pair["ci_high"]))
            sep = "separated" if significant(pair, meta.get("alpha", 0.05)) else "not separated"
            text += (f"; next is {lab(second)} ({models[second]['recall@50']['mean']:.4f}), paired Δ = "
                     f"{sign * pair['mean_diff']:+.4f} [{lo:+.4f}, {hi:+.4f}], Wilcoxon p = {_p(pair['wilcoxon_p'])}: "
                     f"{sep} by the paired tests")
    return text + "."


def kfold_section(data: dict, img, rel: str, save: Callable, plt_fn: Callable) -> list[str]:
    meta = data.get("meta", {})
    models = ordered_models(data)
    alpha = meta.get("alpha", 0.05)
    out = [headline(data), ""]
    k = meta.get("k")
    done = meta.get("folds_complete", [])
    out.append(f"Protocol: MovieLens-100K, {meta.get('protocol', '?')}; every variant trained once per fold "
               f"(seed {meta.get('seed')}, at most {meta.get('budget_epochs')} epochs, early stopping on the fold's "
               f"valid users) and scored on the fold's test users. Folds complete: {len(done)} of {k}"
               + (f" (missing runs: {meta.get('folds_incomplete')})" if meta.get("folds_incomplete") else "")
               + f"; {meta.get('users')} test users pooled. Grid: {meta.get('grid')} — {meta.get('grid_note', '')}. "
               f"Intervals: {meta.get('bootstrap', {}).get('samples')}-sample percentile bootstrap over users "
               f"({meta.get('bootstrap', {}).get('confidence')}).")
    if len(done) < (k or 0):
        out.append(f"\n**Only {len(done)} of {k} folds finished: {meta.get('users')} users, not every user.**")
    # per-model table
    rows = []
    for v, m in models.items():
        per_fold = list((m.get("per_fold_recall@50") or {}).values())
        rows.append([m.get("label", v), f"`{v}`", str(m.get("users")), _ci(m.get("recall@50")),
                     _ci(m.get("recall@20")), _ci(m.get("ndcg@50")), _ci(m.get("hitrate@50")),
                     f"{min(per_fold):.3f}–{max(per_fold):.3f}" if per_fold else "–",
                     _f(m.get("fold0_valid_recall@50")), str(len(m.get("capped", [])))])
    out += ["", f"### {k}-fold table: mean over all test users [{meta.get('bootstrap', {}).get('confidence')} "
                "user-bootstrap interval]", ""]
    out += _table(["model", "variant", "users", "Recall@50", "Recall@20", "NDCG@50", "HitRate@50",
                   "per-fold Recall@50 (min–max)", "fold 0 valid Recall@50", "folds still improving at the cap"],
                  rows)
    # pairwise matrix
    variants, mat = diff_matrix(data)
    if variants and data.get("pairwise"):
        labels = [models[v].get("label", v) for v in variants]
        out += ["", "### Pairwise paired tests on per-user Recall@50", "",
                f"Cell = Δ = mean over users of (row − column) Recall@50 ×100; {SIG} = the paired bootstrap "
                f"interval of Δ excludes 0 **and** the Wilcoxon signed-rank p < {alpha} (two-sided, unadjusted; "
                "Holm-adjusted p per pair in the list below).", ""]
        mrows = []
        for i, v in enumerate(variants):
            cells = []
            for j in range(len(variants)):
                c = mat[i][j]
                if c is None:
                    cells.append("·")
                    continue
                sig = significant({"ci_low": c["lo"], "ci_high": c["hi"], "wilcoxon_p": c["wilcoxon_p"]}, alpha)
                cells.append(f"{100 * c['d']:+.1f}{SIG if sig else ''}")
            mrows.append([labels[i], *cells])
        out += _table(["row − column", *labels], mrows)
        out += ["", heatmap(data, img, rel, save, plt_fn), ""]
        prow = []
        for p in data["pairwise"]:
            prow.append([models[p["b"]].get("label", p["b"]), models[p["a"]].get("label", p["a"]),
                         f"{p['mean_diff']:+.4f}", f"[{p['ci_low']:+.4f}, {p['ci_high']:+.4f}]", _p(p["wilcoxon_p"]),
                         _p(p.get("holm_p")), f"{p['b_better']} / {p['a_better']} / {p['ties']}",
                         "yes" if significant(p, alpha) else "no"])
        out += ["<details><summary>Every pair: Δ, interval, p-values, per-user wins</summary>", ""]
        out += _table(["B", "A", "Δ = mean(B − A)", "paired bootstrap CI", "Wilcoxon p", "Holm p",
                       "users B better / A better / tied", "separated"], prow)
        out += ["", "</details>"]
    # verdicts
    claims = data.get("claims", [])
    if claims:
        out += ["", "### The papers' findings, judged by the paired tests", "",
                "Rule (benchmarks/kfold_stats.py): \"A < B\" **holds** when the paired bootstrap interval of "
                f"mean(B − A) lies above 0 and Wilcoxon p < {alpha}; **does not hold** when the interval lies "
                "below 0 and p < α; otherwise **within noise**. \"B reaches about A\" does not hold only when B is "
                "below A by that rule. The papers' figures come from other data sets: what transfers is the "
                "ordering, not the level.", ""]
        crow = []
        for c in claims:
            t = c.get("test")
            ev = "–" if not t else (f"{models[c['lower']]['recall@50']['mean']:.4f} → "
                                    f"{models[c['higher']]['recall@50']['mean']:.4f}: Δ = {t['mean_diff']:+.4f} "
                                    f"[{t['ci_low']:+.4f}, {t['ci_high']:+.4f}], p = {_p(t['wilcoxon_p'])}, "
                                    f"{t['b_better']}/{t['a_better']}/{t['ties']} users up/down/tied")
            crow.append([c["paper"], c["claim"], f"**{c['verdict']}**" if c["verdict"] != "not run" else "not run",
                         ev])
        out += _table(["paper", "claim", "verdict", "evidence (Recall@50, lower → higher)"], crow)
        counts = {v: sum(c["verdict"] == v for c in claims) for v in ("holds", "does not hold", "within noise",
                                                                       "not run")}
        out += ["", "Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + "."]
    return out
