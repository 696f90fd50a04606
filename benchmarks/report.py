"""Render ``docs/RESULTS.md`` (tables) and ``docs/img/*.png`` (plots) from every ``benchmarks/results/*.json``.

Nothing in the report is typed by hand: every figure comes from a result file, and every section names the
command that produced its file (the file's own ``command`` / ``meta.command(s)`` when it records one, else the
benchmark script of the same name). ``quality.json`` and ``planted.json`` have dedicated sections (headline
table, targets, the papers' findings as holds / does not hold / within noise); any other result file
(data_path, train_speed, serving, index, speed, ...) is rendered generically: its scalars as a key/value
table, its lists of records and its dicts of records as tables, and one bar chart of its first records table.

    .venv/bin/python benchmarks/report.py                     # benchmarks/results -> docs/RESULTS.md, docs/img
    .venv/bin/python benchmarks/report.py --results DIR --out FILE --img DIR

Verdict rule for a paper's ordering "A < B" (declared here and in the report): d = mean(B) − mean(A) over the
seeds run; noise = sqrt(se_A² + se_B²) with se = std/sqrt(n) over seeds when both have ≥ 2 seeds, else the
half-widths of the evaluator's user-bootstrap 95 % intervals combined the same way (users are the larger
noise source with ~95 test users). |d| ≤ noise·1.96 → "within noise"; else "holds" if d > 0, "does not hold" if
d < 0. Both models are scored on the same test users, so this unpaired combination is conservative (a
paired bootstrap over users would be tighter; per-user results are not cached).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: issue 6 targets on test Recall@50 (strong generalization, mean over seeds)
TARGETS = {"most_popular": ("0.205 ± 0.02", lambda x: abs(x - 0.205) <= 0.02),
           "youtube_dnn": ("≥ 0.25", lambda x: x >= 0.25)}
MULTI = {"mind": ("mind", "mind+hn"), "comirec_dr": ("comirec_dr", "comirec_dr+hn"),
         "comirec_sa": ("comirec_sa", "comirec_sa+hn"), "umi": ("umi",)}
MULTI_TARGET = 0.30
BEST_TARGET = 0.37
REFERENCE_BEST = 0.336   # SINE in the reference library on this protocol (issue 6)
ORDER = ["quality", "planted", "train_speed", "speed", "data_path", "index", "serving"]


# ---------------------------------------------------------------------------------------------- helpers
def fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}" if abs(x) >= 10_000 else str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "–"
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
            return f"{x:.3g}"
        if abs(x) >= 100:
            return f"{x:,.1f}"
        if abs(x) >= 10:
            return f"{x:.2f}"
        return f"{x:.{digits}f}"
    s = str(x)
    return s.replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def pm(m: dict | None) -> str:
    """'mean ± std (n)'; std omitted for one seed."""
    if not m:
        return "–"
    if m.get("n", 1) > 1:
        return f"{m['mean']:.4f} ± {m['std']:.4f}"
    return f"{m['mean']:.4f}"


def is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (int, float, str, bool))


def command_of(name: str, data: Any) -> list[str]:
    """The command(s) that produced a result file, from the file itself where it says so."""
    if isinstance(data, dict):
        meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
        cmds = meta.get("commands")
        if cmds:
            return [c["command"] if isinstance(c, dict) else str(c) for c in cmds] + \
                   ([meta["command"]] if meta.get("command") else [])
        for src in (meta, data, data.get("config") if isinstance(data.get("config"), dict) else {}):
            if isinstance(src.get("command"), str):
                return [src["command"]]
    script = REPO / "benchmarks" / f"{name}.py"
    return [f"python benchmarks/{name}.py" if script.exists() else f"(no benchmarks/{name}.py found)"]


def script_summary(name: str) -> str:
    """First line of the producing script's docstring."""
    import ast

    script = REPO / "benchmarks" / f"{name}.py"
    if not script.exists():
        return ""
    try:
        doc = ast.get_docstring(ast.parse(script.read_text())) or ""
    except SyntaxError:
        return ""
    return doc.split("\n\n")[0].replace("\n", " ")


def script_block(name: str, start: str, end: str, keep_first: bool = False) -> str:
    """The part of the producing script's docstring after the line holding ``start`` (from ``start`` itself
    with ``keep_first``) up to ``end``."""
    import ast

    script = REPO / "benchmarks" / f"{name}.py"
    if not script.exists():
        return ""
    doc = ast.get_docstring(ast.parse(script.read_text())) or ""
    i = doc.find(start)
    j = doc.find(end, i)
    if i < 0:
        return ""
    return doc[i if keep_first else doc.find("\n", i) + 1: j if j > 0 else None].strip()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, img_dir: Path, name: str, rel: str) -> str:
    img_dir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(img_dir / name, dpi=110)
    _plt().close(fig)
    return f"![{name}]({rel}/{name})"


# -------------------------------------------------------------------------------------------- verdicts
def noise_of(a: dict, b: dict) -> float:
    """Combined standard error of two aggregated metrics (see the module docstring)."""
    if a.get("n", 1) > 1 and b.get("n", 1) > 1:
        return math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
    half = []
    for m in (a, b):
        ci = m.get("user_ci")
        half.append((ci[1] - ci[0]) / 2 / 1.96 if ci else 0.0)
    return math.sqrt(half[0] ** 2 + half[1] ** 2)


def verdict(lower: dict | None, higher: dict | None) -> tuple[str, str]:
    """Verdict for the claim mean(lower) < mean(higher), and the evidence string."""
    if not lower or not higher:
        return "not run", ""
    d = higher["mean"] - lower["mean"]
    z = noise_of(lower, higher) * 1.96
    ev = f"Δ = {d:+.4f} (±{z:.4f})"
    if abs(d) <= z:
        return "within noise", ev
    return ("holds", ev) if d > 0 else ("does not hold", ev)


# --------------------------------------------------------------------------------------------- quality
MODEL_ORDER = ["most_popular", "youtube_dnn", "mind", "mind+hn", "comirec_dr", "comirec_dr+hn", "comirec_sa",
               "comirec_sa+hn", "umi"]


def _ordered(d: dict) -> dict:
    rank = {v: i for i, v in enumerate(MODEL_ORDER)}
    return {k: d[k] for k in sorted(d, key=lambda k: (rank.get(k, len(rank)), k))}


def quality_section(data: dict, img: Path, rel: str) -> list[str]:
    res = _ordered(data.get("results", {}))
    meta = data.get("meta", {})
    labels = meta.get("labels", {})
    lab = lambda v: labels.get(v, v)  # noqa: E731
    sg = {v: p["sg"] for v, p in res.items() if "sg" in p}
    out = []
    users = meta.get("users", {})
    out.append(f"Dataset: {meta.get('dataset', '?')}; protocols: "
               + ", ".join(f"`{k}` = {v} (valid/test users: {users.get(k, {}).get('valid', '?')}/"
                           f"{users.get(k, {}).get('test', '?')})" for k, v in meta.get("protocols", {}).items())
               + f". Tuned on the valid users with seed {meta.get('tune_seed')}; reported on the test users. "
               f"Interval of the mean over seeds: {meta.get('bootstrap', {}).get('samples')}-sample percentile "
               f"bootstrap of the seeds ({meta.get('bootstrap', {}).get('confidence')}); "
               "`user CI` = the evaluator's per-run bootstrap over test users, averaged over seeds.")
    if meta.get("quick"):
        out.append("\n**QUICK MODE (2 epochs): smoke test, not results.**")

    # headline
    out.append("\n### Headline: test Recall@50 (strong generalization)\n")
    rows = []
    all_runs = data.get("all_runs", [])
    for v, p in sg.items():
        m = p.get("recall@50")
        if not m:
            continue
        ci = f"[{m['ci_low']:.4f}, {m['ci_high']:.4f}]" if m.get("n", 1) > 1 else "–"
        uci = m.get("user_ci")
        setting = (data.get("tuning", {}).get(v) or {}).get("setting", "default")
        used = [r for r in all_runs if r["variant"] == v and r["protocol"] == "sg" and r["setting"] == setting]
        epochs = ", ".join(f"{r.get('epochs')}/{r.get('max_epochs')}" + (" †" if r.get("truncated") else "")
                           for r in used)
        rows.append([lab(v), pm(m), str(m.get("n")), ci, f"[{uci[0]:.4f}, {uci[1]:.4f}]" if uci else "–",
                     pm(p.get("valid.recall@50")), setting, epochs or "–"])
    out.append(table(["model", "test Recall@50 (mean ± std)", "seeds", "seed CI of mean", "user CI",
                      "valid Recall@50", "setting", "epochs run / budget"], rows))
    if any(r.get("truncated") for r in all_runs):
        out.append("\n† stopped at the deadline before its epoch budget and early stopping ended it; evaluated "
                   "from its best checkpoint so far (valid Recall@50), so a lower bound for its setting.")
    if sg:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(8, 3.6))
        names = [v for v in sg if "recall@50" in sg[v]]
        means = [sg[v]["recall@50"]["mean"] for v in names]
        errs = [sg[v]["recall@50"]["std"] if sg[v]["recall@50"].get("n", 1) > 1 else 0 for v in names]
        ax.bar(range(len(names)), means, yerr=errs, color="tab:blue", capsize=3)
        ax.set_xticks(range(len(names)), [lab(v) for v in names], rotation=30, ha="right")
        for y, style, text in ((0.205, ":", "MostPopular target"), (0.25, "--", "YouTube DNN ≥ 0.25"),
                               (MULTI_TARGET, "-.", "multi-interest ≥ 0.30"), (BEST_TARGET, "-", "best ≥ 0.37")):
            ax.axhline(y, ls=style, color="gray", lw=0.8)
            ax.text(len(names) - 0.5, y, text, fontsize=7, va="bottom", ha="right")
        ax.set_ylabel("test Recall@50")
        ax.set_title("MovieLens-100K, strong generalization (error bar: std over seeds)")
        out.append("\n" + save(fig, img, "quality_recall50.png", rel))

    # targets
    out.append("\n### Targets (issue 6, test Recall@50, strong generalization)\n")
    trows = []
    for v, (text, ok) in TARGETS.items():
        m = sg.get(v, {}).get("recall@50")
        trows.append([lab(v), text, pm(m), ("met" if ok(m["mean"]) else "**missed**") if m else "not run"])
    for name, vs in MULTI.items():
        cands = [(v, (data.get("tuning", {}).get(v) or {})) for v in vs if v in sg]
        if not cands:
            trows.append([lab(name), f"≥ {MULTI_TARGET}", "–", "not run"])
            continue
        # with or without HN, as chosen on VALID recall
        v = max(cands, key=lambda c: sg[c[0]]["valid.recall@50"]["mean"])[0]
        m = sg[v]["recall@50"]
        trows.append([f"{lab(name)} (→ {lab(v)}, chosen on valid)", f"≥ {MULTI_TARGET}", pm(m),
                      "met" if m["mean"] >= MULTI_TARGET else "**missed**"])
    if sg:
        bv = max((v for v in sg if "recall@50" in sg[v]), key=lambda v: sg[v]["valid.recall@50"]["mean"])
        m = sg[bv]["recall@50"]
        trows.append([f"best model (→ {lab(bv)}, chosen on valid)", f"≥ {BEST_TARGET} (reference best "
                      f"{REFERENCE_BEST})", pm(m), "met" if m["mean"] >= BEST_TARGET else "**missed**"])
    out.append(table(["model", "target", "ours", "status"], trows))

    # all metrics
    for proto, name in meta.get("protocols", {}).items():
        pr = {v: p[proto] for v, p in res.items() if proto in p}
        if not pr:
            continue
        metrics = [k for k in next(iter(pr.values())) if "@" in k and not k.startswith("valid.")]
        out.append(f"\n### All metrics, test users, {name} (mean ± std over seeds)\n")
        out.append(table(["model", "seeds"] + metrics,
                         [[lab(v), str(p.get("recall@50", {}).get("n", "–"))] + [pm(p.get(k)) for k in metrics]
                          for v, p in pr.items()]))
    miss = [v for v in sg if v not in {x for x, p in res.items() if "loo" in p}]
    if "loo" in meta.get("protocols", {}) and miss:
        out.append(f"\nLeave-one-out not run for: {', '.join(lab(v) for v in miss)}.")

    # tuning
    tuning = _ordered(data.get("tuning", {}))
    if tuning:
        grid = meta.get("grid", {})
        out.append("\n### Tuning on the valid users (valid Recall@50, seed "
                   f"{meta.get('tune_seed')}); declared grid: "
                   + "; ".join(f"`{k}` = {json.dumps(g) if g else 'params.yaml'}" for k, g in grid.items()) + "\n")
        out.append(table(["model"] + list(grid) + ["chosen"],
                         [[lab(v)] + [fmt(t["valid_recall@50"].get(g)) for g in grid] + [t["setting"]]
                          for v, t in tuning.items()]))

    # findings
    out.append("\n### The papers' findings on this data\n")
    g = lambda v: sg.get(v, {}).get("recall@50")  # noqa: E731
    rows = []
    claims = [
        ("UMI Table 2", "MIND < YouTube DNN", "mind", "youtube_dnn"),
        ("UMI Table 2", "HN lifts MIND (MIND < MIND+HN)", "mind", "mind+hn"),
        ("UMI Table 2", "HN lifts ComiRec-DR", "comirec_dr", "comirec_dr+hn"),
        ("UMI Table 2", "HN lifts ComiRec-SA", "comirec_sa", "comirec_sa+hn"),
    ]
    for v in ("youtube_dnn", "mind", "mind+hn", "comirec_dr", "comirec_dr+hn", "comirec_sa", "comirec_sa+hn"):
        claims.append(("UMI Table 2", f"UMI best ({lab(v)} < UMI)", v, "umi"))
    for v in ("comirec_dr", "comirec_sa", "mind"):
        claims.append(("ComiRec Table 3", f"{lab(v)} beats YouTube DNN", "youtube_dnn", v))
    for paper, claim, lo, hi in claims:
        vd, ev = verdict(g(lo), g(hi))
        rows.append([paper, claim, vd, ev])
    sweeps = _ordered(data.get("lambda_sweep", {}))
    lam_rows = []
    multi = {v for vs in MULTI.values() for v in vs}
    for v, sw in sweeps.items():
        if len(sw) < 2 or v not in multi:  # one interest: the aggregation has nothing to trade
            continue
        a, b = sw[0], sw[-1]
        dr = (b["recall@50"] - a["recall@50"]) / max(a["recall@50"], 1e-12)
        dd = (b["diversity@50"] - a["diversity@50"]) / max(a["diversity@50"], 1e-12)
        lam_rows.append((v, dr, dd))
    if lam_rows:
        holds = sum(1 for _, dr, dd in lam_rows if dd > 0 and abs(dr) < dd)
        rows.append(["ComiRec Table 5", "λ: recall falls slowly, diversity rises fast (relative change, λ = 0 → "
                     f"{sweeps[lam_rows[0][0]][-1]['lambda']})",
                     "holds" if holds == len(lam_rows) else f"holds for {holds}/{len(lam_rows)} models",
                     "; ".join(f"{lab(v)}: R {dr:+.0%}, D {dd:+.0%}" for v, dr, dd in lam_rows)])
    for paper, claim, key in (("ComiRec Table 4", "sensitivity to K ∈ {2, 4, 6, 8}", "k_sweep"),
                              ("MIND Fig. 3", "robust to σ ∈ {0.1, 1, 5}; gain from larger p", "sigma_p_sweep"),
                              ("MIND", "dynamic-K serving cost vs fixed K", "dynamic_k")):
        if key not in data:
            rows.append([paper, claim, "not run", "no result in quality.json (time budget)"])
    out.append(table(["paper", "claim", "verdict", "evidence (test Recall@50)"], rows))
    out.append("\n" + script_block("report", "Verdict rule", "\n\n", keep_first=True).replace("\n", " "))

    if lam_rows:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for v, sw in sweeps.items():
            ax.plot([r["diversity@50"] for r in sw], [r["recall@50"] for r in sw], marker="o", label=lab(v))
        ax.set_xlabel("test Diversity@50")
        ax.set_ylabel("test Recall@50")
        ax.set_title("λ trade-off (ComiRec eq. 12), λ = " + ", ".join(str(r["lambda"]) for r in
                                                                      next(iter(sweeps.values()))))
        ax.legend(fontsize=7)
        out.append("\n" + save(fig, img, "quality_lambda.png", rel))

    # discussion: computed from the figures above, so it cannot drift from them
    runs = data.get("all_runs", [])
    notes = []
    missed = [r for r in trows if r[-1] == "**missed**"]
    if missed:
        notes.append("Targets missed: " + "; ".join(f"{r[0]}: {r[2]} vs {r[1]}" for r in missed) + ".")
    against = [r for r in rows if r[2] == "does not hold"]
    if against:
        notes.append("Paper orderings that do not hold on MovieLens-100K at this budget: "
                     + "; ".join(f"{r[0]} — {r[1]} ({r[3]})" for r in against) + ".")
    capped = [r for r in runs if r.get("max_epochs") and r.get("epochs") == r.get("max_epochs")
              and r.get("best_epoch") is not None and r["best_epoch"] == r["max_epochs"] - 1]
    if capped:
        notes.append("Runs ended by the epoch budget with their best epoch the last one (still improving, so "
                     "their figures are lower bounds for this setting): "
                     + ", ".join(f"{lab(r['variant'])} {r['setting']} seed {r['seed']}" for r in capped) + ".")
    cut = [r for r in runs if r.get("truncated")]
    if cut:
        notes.append("Runs stopped at the deadline (†), evaluated from their best checkpoint so far: "
                     + ", ".join(f"{lab(r['variant'])} {r['setting']} seed {r['seed']} after {r.get('epochs')} of "
                                 f"{r.get('max_epochs')} epochs" for r in cut)
                     + ". Their budget was smaller than the others', so orderings involving them are not "
                       "like-for-like.")
    one_seed = [lab(v) for v, p in sg.items() if p.get("recall@50", {}).get("n", 0) == 1]
    if one_seed:
        notes.append("One seed only (no seed spread; the user CI is the noise shown): " + ", ".join(one_seed) + ".")
    if notes:
        out.append("\n### Discussion (generated from the figures above)\n")
        out += [f"- {n}" for n in notes]

    if runs:
        out.append("\n### Every run in the cache\n")
        keys = ["variant", "protocol", "setting", "seed", "valid.recall@50", "test.recall@50", "epochs",
                "best_epoch", "max_epochs", "truncated", "train_wall_s"]
        keys = [k for k in keys if any(k in r for r in runs)]
        out.append(table(keys, [[r.get(k) for k in keys] for r in runs]))
    return out


# --------------------------------------------------------------------------------------------- planted
def planted_section(data: dict, img: Path, rel: str) -> list[str]:
    rows = data.get("rows", [])
    meta = data.get("meta", {})
    out = [f"Synthetic data: {json.dumps(meta.get('synthetic', {}))}; training: {json.dumps(meta.get('train', {}))}. "
           "Purity/NMI of the behaviour → interest assignment (largest coupling coefficient) against the planted "
           "interests, on the test users; `purity shuffled` = assignments shuffled within each user."]
    if not rows:
        return out + ["\n(no rows)"]
    out.append("\n" + table(["planted interests", "noise", "model", "Recall@50", "purity", "purity shuffled", "NMI"],
                            [[r["interests"], r["noise"], r["model"], r["recall@50"], r.get("purity"),
                              r.get("purity_shuffled"), r.get("nmi")] for r in rows]))
    plt = _plt()
    noises = sorted({r["noise"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(noises), figsize=(4.5 * len(noises), 3.4), squeeze=False)
    for ax, nz in zip(axes[0], noises):
        for m in models:
            pts = sorted((r["interests"], r["recall@50"]) for r in rows if r["noise"] == nz and r["model"] == m)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("planted interests per user")
        ax.set_ylabel("test Recall@50")
        ax.set_title(f"noise {nz}")
        ax.legend(fontsize=7)
    out.append("\n" + save(fig, img, "planted_recall.png", rel))
    # generated summary: best multi-interest model minus YouTube DNN per setting
    gains = []
    for k in sorted({r["interests"] for r in rows}):
        for nz in noises:
            base = [r["recall@50"] for r in rows if r["interests"] == k and r["noise"] == nz
                    and r["model"] == "youtube_dnn"]
            multi = [(r["recall@50"], r["model"]) for r in rows if r["interests"] == k and r["noise"] == nz
                     and r["model"] != "youtube_dnn"]
            if base and multi:
                best = max(multi)
                gains.append(f"{k} interests, noise {nz}: {best[1]} {best[0] - base[0]:+.3f}")
    if gains:
        out.append("\nBest multi-interest Recall@50 minus YouTube DNN (one training seed; no seed spread measured "
                   "here): " + "; ".join(gains) + ".")
    fig, axes = plt.subplots(1, len(noises), figsize=(4.5 * len(noises), 3.4), squeeze=False)
    for ax, nz in zip(axes[0], noises):
        for m in models:
            pts = sorted((r["interests"], r["nmi"]) for r in rows
                         if r["noise"] == nz and r["model"] == m and r.get("nmi") is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("planted interests per user")
        ax.set_ylabel("NMI (behaviour → interest)")
        ax.set_title(f"noise {nz}")
        ax.legend(fontsize=7)
    out.append("\n" + save(fig, img, "planted_nmi.png", rel))
    return out


# --------------------------------------------------------------------------------------------- generic
def flatten(d: dict, prefix: str = "", depth: int = 3) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if is_scalar(v):
            out[key] = v
        elif isinstance(v, dict) and depth > 1 and not records_of_dict(v):
            out.update(flatten(v, key + ".", depth - 1))
        elif isinstance(v, list) and v and all(is_scalar(x) for x in v) and len(v) <= 8:
            out[key] = ", ".join(fmt(x) for x in v)
    return out


def records_of_dict(v: Any) -> bool:
    """A dict whose values are all dicts of scalars (e.g. {"exact": {...}, "HNSW32": {...}})."""
    return (isinstance(v, dict) and len(v) >= 1 and all(isinstance(x, dict) for x in v.values())
            and all(any(is_scalar(y) for y in x.values()) for x in v.values())
            and all(all(is_scalar(y) or isinstance(y, (list, dict)) for y in x.values()) for x in v.values())
            and sum(isinstance(y, dict) for x in v.values() for y in x.values()) == 0)


def records_table(recs: list[dict]) -> tuple[list[str], list[list[Any]]]:
    cols: list[str] = []
    for r in recs:
        for k, v in flatten(r, depth=2).items():
            if k not in cols:
                cols.append(k)
    flat = [flatten(r, depth=2) for r in recs]
    return cols, [[f.get(c) for c in cols] for f in flat]


def generic_section(name: str, data: Any, img: Path, rel: str) -> list[str]:
    out: list[str] = []
    tables: list[tuple[str, list[str], list[list[Any]]]] = []

    def walk(node: Any, path: str, depth: int) -> None:
        if isinstance(node, list) and node and all(isinstance(x, dict) for x in node):
            cols, rows = records_table(node)
            tables.append((path, cols, rows))
        elif records_of_dict(node):
            cols, rows = records_table([{"": k, **v} for k, v in node.items()])
            tables.append((path, cols, rows))
        elif isinstance(node, dict) and depth < 3:
            for k, v in node.items():
                if not is_scalar(v):
                    walk(v, f"{path}.{k}" if path else k, depth + 1)

    if isinstance(data, dict):
        scalars = flatten({k: v for k, v in data.items() if not records_of_dict(v)})
        if scalars:
            out.append(table(["key", "value"], [[k, v] for k, v in scalars.items()]))
        walk(data, "", 0)
    else:
        walk(data, name, 0)
    for path, cols, rows in tables:
        out.append(f"\n`{path}`:\n")
        out.append(table([c or "name" for c in cols], rows))
    # one bar chart: the first records table with a label column and a numeric column
    for path, cols, rows in tables:
        lab = next((i for i, c in enumerate(cols) if all(isinstance(r[i], str) for r in rows)), None)
        num = next((i for i, c in enumerate(cols) if i != lab and all(
            isinstance(r[i], (int, float)) and not isinstance(r[i], bool) for r in rows)), None)
        if lab is None or num is None or len(rows) < 2:
            continue
        plt = _plt()
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.bar(range(len(rows)), [r[num] for r in rows], color="tab:green")
        ax.set_xticks(range(len(rows)), [str(r[lab])[:24] for r in rows], rotation=30, ha="right")
        ax.set_ylabel(cols[num])
        ax.set_title(f"{name}: {path} — {cols[num]}")
        out.append("\n" + save(fig, img, f"{name}_{(path or 'rows').replace('.', '_')}.png", rel))
        break
    return out


# ------------------------------------------------------------------------------------------------- main
def render(results_dir: Path, out_path: Path, img_dir: Path) -> str:
    files = sorted(Path(results_dir).glob("*.json"),
                   key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else len(ORDER), p.stem))
    import os

    rel = os.path.relpath(img_dir, out_path.parent)
    parts = ["# Benchmark results",
             "",
             "Generated by `python benchmarks/report.py` from `benchmarks/results/*.json` — do not edit by hand; "
             "rerun the commands named in each section, then the report.",
             "",
             "Contents: " + ", ".join(f"[{p.stem}](#{p.stem.replace('_', '-')})" for p in files) + "."]
    for p in files:
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            parts += ["", f"## {p.stem}", "", f"`{p.name}` is not valid JSON ({exc}); skipped."]
            continue
        parts += ["", f"## {p.stem}", ""]
        summary = script_summary(p.stem)
        if summary:
            parts += [summary, ""]
        cmds = command_of(p.stem, data)
        parts += ["Produced by:", "", "```", *cmds, "```", ""]
        if p.stem == "quality":
            body = quality_section(data, img_dir, rel)
            choices = script_block(p.stem, "Choices the issue leaves open", "Resumable:")
            if choices:
                body += ["", "### Choices and budget (from benchmarks/quality.py)", "", choices]
        elif p.stem == "planted":
            body = planted_section(data, img_dir, rel)
        else:
            body = generic_section(p.stem, data, img_dir, rel)
        parts += body
    text = "\n".join(parts) + "\n"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(out_path)
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "RESULTS.md")
    ap.add_argument("--img", type=Path, default=REPO / "docs" / "img")
    args = ap.parse_args(argv)
    render(args.results, args.out, args.img)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
