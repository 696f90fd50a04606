"""Render ``docs/RESULTS.md`` (tables) and ``docs/img/*.png`` (plots) from every ``benchmarks/results/*.json``.

Nothing in the report is typed by hand: every figure comes from a result file, and every section names the
command that produced its file (the file's own ``command`` / ``meta.command(s)`` when it records one, else the
benchmark script of the same name). ``quality.json`` and ``planted.json`` have dedicated sections. Quality:
the headline (strong generalization: mean ± std over seeds, seed CI, user CI, per-seed values), leave-one-out
beside it, the targets, all metrics per protocol, the tuning grid, the one-factor sweeps (K, σ, p: a table
and a PNG each, ComiRec Table 4 beside ours), MIND's dynamic-K serving cost (from ``speed.json``), the λ
trade-off, and the papers' findings each with a verdict (holds / does not hold / within noise) computed by the
rule below; the only typed-in numbers are the papers' own (``PAPER_*``, with their table). Any other file
(data_path, train_speed, serving, index, speed, ...) is rendered generically: its scalars as a key/value
table, its lists of records and its dicts of records as tables, and one bar chart of its first records table.

    .venv/bin/python benchmarks/report.py                     # benchmarks/results -> docs/RESULTS.md, docs/img
    .venv/bin/python benchmarks/report.py --results DIR --out FILE --img DIR
    .venv/bin/python benchmarks/report.py --no-plots          # tables only (the PNG links stay)

Verdict rule (declared here and in the report; test Recall@50). An ordering claim "A < B": Δ = mean(B) −
mean(A), each the mean over the seeds it has; h = the mean of the two user-bootstrap 95 % half-widths (the
evaluator's per-run bootstrap over the test users, averaged over seeds). The claim is "within noise"
when |Δ| ≤ h, or when both have ≥ 2 seeds and their seed intervals (percentile bootstrap of the mean over
seeds) overlap; otherwise it "holds" if Δ > 0 and "does not hold" if Δ < 0. Why h and not a combination of
both half-widths: both models are scored on the same users, so the interval of the difference is
h·sqrt(2(1 − ρ)) for per-user correlation ρ; h is that interval at ρ = 0.5 (a true paired bootstrap needs
per-user results, which quality.py does not keep). A "same level" claim ("X+HN reaches about YouTube DNN")
holds when the pair is within noise or X is above, and does not hold when X is below beyond noise;
robustness to σ holds when the spread (max − min over the σ points) is ≤ h and does not hold otherwise;
sensitivity to K holds when the spread over K exceeds h and is "within noise" otherwise. Sweep points are one
run each (the tuning seed), so only h applies to them. The λ trade-off (ComiRec Table 5) holds for a model when,
from λ = 0 to the paper's largest λ (0.25), its relative diversity gain exceeds its relative recall loss; MIND's
dynamic K is judged on the exact number of ANN queries per user (no noise).
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
MULTI = {"mind": ("mind", "mind_hn"), "comirec_dr": ("comirec_dr", "comirec_dr_hn"),
         "comirec_sa": ("comirec_sa", "comirec_sa_hn"), "umi": ("umi", "umi_hn")}
MULTI_TARGET = 0.30
BEST_TARGET = 0.37
REFERENCE_BEST = 0.336   # SINE in the reference library on this protocol (issue 6)
ORDER = ["quality", "quality_kfold", "planted", "train_speed", "train_speed_2threads", "speed", "data_path", "index", "serving",
         "serving_http", "end_to_end"]


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


#: render(plots=False) sets this off: tables only, no PNG written (drawing is most of a render's time)
_PLOTS = {"on": True}


def save(fig, img_dir: Path, name: str, rel: str) -> str:
    if _PLOTS["on"]:
        img_dir.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(img_dir / name, dpi=110)
    _plt().close(fig)
    return f"![{name}]({rel}/{name})"


# -------------------------------------------------------------------------------------- paper figures
# Quoted from the papers (/work/shared/papers/*.md), the only typed-in numbers of the report: the papers'
# own figures, shown beside ours. Percentages as the papers print them.
#: UMI (SIGIR 2022) Table 2, MovieLens(-1M) HitRate@50 (%); its "ComiRec" row stands for both ComiRec models
PAPER_UMI_T2 = {"youtube_dnn": 26.687, "mind": 22.415, "mind+hn": 25.781, "comirec": 20.839,
                "comirec+hn": 26.367, "umi": 27.805}
#: our variant -> its row of UMI Table 2 (the paper's "UMI" is trained with its harder negatives: our umi_hn;
#: plain UMI has no row there)
UMI_T2_ROW = {"youtube_dnn": "youtube_dnn", "mind": "mind", "mind_hn": "mind+hn", "comirec_dr": "comirec",
              "comirec_sa": "comirec", "comirec_dr_hn": "comirec+hn", "comirec_sa_hn": "comirec+hn", "umi_hn": "umi"}
#: ComiRec (KDD 2020) Table 3, Recall@50 (%): (Amazon Books, Taobao)
PAPER_COMIREC_T3 = {"most_popular": (2.400, 0.735), "youtube_dnn": (7.312, 6.172), "mind": (7.638, 8.155), "comirec_sa": (8.467, 9.462),
                    "comirec_dr": (8.106, 9.818)}
#: ComiRec Table 4, Recall@50 (%) per K: (Amazon Books, Taobao)
PAPER_COMIREC_T4 = {"comirec_sa": {2: (8.835, 9.935), 4: (8.467, 9.462), 6: (8.901, 9.378), 8: (8.547, 9.493)},
                    "comirec_dr": {2: (7.081, 9.293), 4: (8.106, 9.818), 6: (7.904, 10.836), 8: (7.760, 10.841)}}
#: ComiRec Table 5 (Amazon Books), (Recall@50, Diversity@50) (%) per λ
PAPER_COMIREC_T5 = {"comirec_sa": {0.0: (8.467, 23.237), 0.05: (8.347, 38.808), 0.1: (8.229, 46.731),
                                   0.15: (8.142, 51.135), 0.2: (8.086, 53.671), 0.25: (8.034, 55.100)},
                    "comirec_dr": {0.0: (8.106, 19.036), 0.05: (7.931, 42.915), 0.1: (7.850, 46.258),
                                   0.15: (7.820, 46.912), 0.2: (7.783, 47.581), 0.25: (7.764, 48.375)}}
#: MIND (CIKM 2019) §4.2 / Fig. 3 gives curves without numbers: its findings in its own words
PAPER_MIND_FIG3 = {"sigma": "σ ∈ {0.1, 1, 5}: \"each curve of 3 values almost overlap\" (robust to σ)",
                   "p": "p = 0 \"much worse than the others\"; \"performance gets better as p increases\", "
                        "p = ∞ (hard attention) best"}
#: MIND §4.3: the dynamic interest number "does not bring CTR gain" but "can decrease the cost of serving"
PAPER_MIND_DYNAMIC = "no CTR gain; \"can decrease the cost of serving\" (MIND §4.3, Fig. 4)"


def variant_display(variant: str) -> str:
    """The display name of a benchmark variant (params.yaml's naming: ``<arch>`` or ``<arch>_hn``) through
    ``models.variant_label``, the one place labels are made; an unknown name is shown as it is."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from models import ARCH_LABELS, variant_label

    arch = variant.removesuffix("_hn")
    if arch not in ARCH_LABELS:
        return variant
    return variant_label({"arch": arch, "harder_negatives": variant.endswith("_hn")})


def _paper_name(variant: str) -> str:
    """The paper model a variant of ours stands for (the papers' sweeps have no +HN rows)."""
    return variant.removesuffix("_hn")


# -------------------------------------------------------------------------------------------- verdicts
def half_width(m: dict | None) -> float | None:
    """Half-width of the user-bootstrap 95 % interval of an aggregated metric (``user_ci``)."""
    ci = (m or {}).get("user_ci")
    if not ci or any(c is None for c in ci):
        return None
    return (ci[1] - ci[0]) / 2


def point_metric(p: dict, key: str = "test.recall@50") -> dict:
    """A one-run sweep point as an aggregated metric (one seed, its own user interval)."""
    ci = p.get(f"{key}_ci")
    return {"mean": p[key], "n": 1, "user_ci": ci if ci and None not in ci else None}


def noise_test(lower: dict, higher: dict) -> tuple[float, bool | None, list[str]]:
    """(user half-width h, seed intervals overlap (None: not both ≥ 2 seeds), reasons it is within noise)."""
    d = higher["mean"] - lower["mean"]
    hs = [h for h in (half_width(lower), half_width(higher)) if h is not None]
    h = sum(hs) / len(hs) if hs else 0.0
    overlap = None
    if lower.get("n", 1) >= 2 and higher.get("n", 1) >= 2:
        overlap = lower["ci_high"] >= higher["ci_low"] and higher["ci_high"] >= lower["ci_low"]
    reasons = (["|Δ| ≤ h"] if abs(d) <= h else []) + (["seed CIs overlap"] if overlap else [])
    return h, overlap, reasons


def verdict(lower: dict | None, higher: dict | None) -> tuple[str, str]:
    """Verdict for the claim mean(lower) < mean(higher) (the rule in the module docstring), and its evidence."""
    if not lower or not higher:
        return "not run", ""
    d = higher["mean"] - lower["mean"]
    h, overlap, reasons = noise_test(lower, higher)
    ev = f"{lower['mean']:.4f} vs {higher['mean']:.4f}: Δ = {d:+.4f}, h = {h:.4f}"
    if overlap is not None:
        ev += f", seed CIs {'overlap' if overlap else 'disjoint'} ({lower.get('n')} vs {higher.get('n')} seeds)"
    else:
        ev += ", user CI only (< 2 seeds)"
    if reasons:
        return "within noise", ev + " → " + " and ".join(reasons)
    return ("holds" if d > 0 else "does not hold"), ev


def reaches(x: dict | None, ref: dict | None) -> tuple[str, str]:
    """Claim "x reaches ref" (about the same or above): holds when within noise of it or above it."""
    v, ev = verdict(ref, x)
    return {"within noise": "holds", "holds": "holds", "does not hold": "does not hold"}.get(v, v), \
        ev + {"within noise": " (within noise: same level)", "holds": " (above, beyond noise)",
              "does not hold": " (below, beyond noise)"}.get(v, "")


def spread(points: list[dict]) -> tuple[float, float, dict, dict]:
    """(max − min of the means, mean user half-width, lowest point, highest point) of a sweep's points."""
    lo = min(points, key=lambda m: m["mean"])
    hi = max(points, key=lambda m: m["mean"])
    hs = [h for h in map(half_width, points) if h is not None]
    return hi["mean"] - lo["mean"], (sum(hs) / len(hs) if hs else 0.0), lo, hi


# --------------------------------------------------------------------------------------------- quality
MODEL_ORDER = ["most_popular", "youtube_dnn", "mind", "mind_hn", "comirec_dr", "comirec_dr_hn", "comirec_sa",
               "comirec_sa_hn", "umi", "umi_hn"]
METRIC_ORDER = ["recall@20", "ndcg@20", "hitrate@20", "precision@20", "recall@50", "ndcg@50", "hitrate@50",
                "precision@50", "diversity@50"]
SWEEP_TITLES = {"K": ("ComiRec Table 4", "K (num_interests)"), "sigma": ("MIND Fig. 3", "σ (routing_sigma)"),
                "p": ("MIND Fig. 3", "p (attention_pow)")}
CAPPED = "‡"
#: one colour per paper model in the sweep plots, so ours and the paper's curves of a model match
COLOURS = {"comirec_dr": "tab:blue", "comirec_sa": "tab:orange", "mind": "tab:green", "umi": "tab:red"}


def paper_k_spread(paper_variant: str, lab) -> str:
    """ComiRec Table 4 for one model: Recall@50 spread over K (points and relative) and best K, per dataset."""
    ks = PAPER_COMIREC_T4.get(paper_variant)
    if not ks:
        return "–"
    parts = []
    for j, dsname in enumerate(("Amazon", "Taobao")):
        xs = [ks[k][j] for k in sorted(ks)]
        parts.append(f"{dsname}: spread {max(xs) - min(xs):.2f} pts ({(max(xs) - min(xs)) / max(xs):.0%}), "
                     f"best K = {max(sorted(ks), key=lambda k: ks[k][j])}")
    return f"{lab(paper_variant)} " + "; ".join(parts)


def _ordered(d: dict) -> dict:
    rank = {v: i for i, v in enumerate(MODEL_ORDER)}
    return {k: d[k] for k in sorted(d, key=lambda k: (rank.get(k, len(rank)), k))}


def capped(r: dict) -> bool:
    """The run used its whole epoch budget and its best epoch (0-based) was the last: still improving."""
    return (bool(r.get("max_epochs")) and r.get("epochs") == r.get("max_epochs")
            and r.get("best_epoch") is not None and r["best_epoch"] == r["max_epochs"] - 1)


def epochs_cell(r: dict | None) -> str:
    if not r:
        return "–"
    return (f"{r.get('epochs')}/{r.get('max_epochs')}" + (f" {CAPPED}" if capped(r) else "")
            + (" †" if r.get("truncated") else ""))


def ci_cell(lo: float | None, hi: float | None) -> str:
    return "–" if lo is None or hi is None else f"[{lo:.4f}, {hi:.4f}]"


def value_label(v: Any) -> str:
    return "∞" if v is None else f"{v:g}" if isinstance(v, (int, float)) else str(v)


def _value_key(v: Any) -> float:
    return math.inf if v is None else float(v)


def _mean_half(proto: dict, variants: list[str]) -> float:
    hs = [h for h in (half_width(proto[v].get("recall@50")) for v in variants) if h is not None]
    return sum(hs) / len(hs) if hs else math.nan


def quality_section(data: dict, img: Path, rel: str, speed: dict | None = None, paired: bool = False) -> list[str]:
    """The quality section: headline, leave-one-out, targets, all metrics, tuning, sweeps, dynamic K,
    the papers' findings with verdicts, λ trade-off, discussion, and the run table. Any piece may be missing."""
    res = _ordered(data.get("results", {}))
    meta = data.get("meta", {})
    labels = meta.get("labels", {})
    lab = lambda v: labels.get(v) or variant_display(v)  # noqa: E731
    sg = {v: p["sg"] for v, p in res.items() if "sg" in p}
    loo = {v: p["loo"] for v, p in res.items() if "loo" in p}
    multi = {v for vs in MULTI.values() for v in vs}
    tuning = _ordered(data.get("tuning", {}))
    runs = data.get("all_runs", [])
    tune_seed = meta.get("tune_seed")
    out = []
    users = meta.get("users", {})
    out.append(f"Dataset: {meta.get('dataset', '?')}; protocols: "
               + ", ".join(f"`{k}` = {v} (valid/test users: {users.get(k, {}).get('valid', '?')}/"
                           f"{users.get(k, {}).get('test', '?')})" for k, v in meta.get("protocols", {}).items())
               + f". Tuned on the valid users with seed {tune_seed}; reported on the test users. "
               f"Seed CI: {meta.get('bootstrap', {}).get('samples')}-sample percentile bootstrap of the mean over "
               f"seeds ({meta.get('bootstrap', {}).get('confidence')}); "
               "`user CI` = the evaluator's per-run 95 % bootstrap over test users, averaged over seeds. "
               f"{CAPPED} = the run used its whole epoch budget and its best epoch was the last one (still "
               "improving: a lower bound for its setting).")
    if meta.get("quick"):
        out.append("\n**QUICK MODE (2 epochs): smoke test, not results.**")

    def used_runs(v: str, proto: str) -> list[dict]:
        setting = (tuning.get(v) or {}).get("setting", "default")
        return sorted((r for r in runs if r["variant"] == v and r["protocol"] == proto and r["setting"] == setting),
                      key=lambda r: r["seed"])

    # headline
    out.append("\n### Headline: test Recall@50 (strong generalization)\n")
    rows = []
    for v, p in sg.items():
        m = p.get("recall@50")
        if not m:
            continue
        uci = m.get("user_ci")
        per_seed = ", ".join(f"{x:.4f}" for _, x in sorted(m.get("per_seed", {}).items()))
        rows.append([lab(v), pm(m), str(m.get("n")),
                     ci_cell(m["ci_low"], m["ci_high"]) if m.get("n", 1) > 1 else "–",
                     ci_cell(*uci) if uci else "–", per_seed or "–", pm(p.get("valid.recall@50")),
                     (tuning.get(v) or {}).get("setting", "default"),
                     ", ".join(epochs_cell(r) for r in used_runs(v, "sg")) or "–"])
    out.append(table(["model", "test Recall@50 (mean ± std)", "seeds", "seed CI of mean", "user CI",
                      "per seed", "valid Recall@50", "setting", "epochs run / budget"], rows))
    if any(r.get("truncated") for r in runs):
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

    # the papers' own figures for the same models (other data sets: their orderings compare, not levels)
    if sg:
        prow = []
        for v, p in sg.items():
            umi = PAPER_UMI_T2.get(UMI_T2_ROW.get(v, ""))
            t3 = PAPER_COMIREC_T3.get(v)
            prow.append([lab(v), pm(p.get("recall@50")), pm(p.get("hitrate@50")),
                         f"{umi:.3f}" if umi is not None else "–",
                         f"{t3[0]:.3f} / {t3[1]:.3f}" if t3 else "–"])
        out.append("\nThe papers' figures for the same models (other data, so compare orderings, not levels; UMI's "
                   "ComiRec row stands for both ComiRec models, its UMI row is UMI+HN):\n")
        out.append(table(["model", "ours: test Recall@50", "ours: test HitRate@50",
                          "UMI Table 2: HitRate@50 % (MovieLens-1M)",
                          "ComiRec Table 3: Recall@50 % (Amazon Books / Taobao)"], prow))

    # leave-one-out beside the headline
    out.append("\n### Leave-one-out beside strong generalization (test Recall@50)\n")
    if loo:
        lrows = []
        for v in [v for v in res if v in loo or v in sg]:
            a, b = sg.get(v, {}).get("recall@50"), loo.get(v, {}).get("recall@50")
            uci = (b or {}).get("user_ci")
            lrows.append([lab(v), pm(a), str((a or {}).get("n", "–")), pm(b), str((b or {}).get("n", "–")),
                          ci_cell(b["ci_low"], b["ci_high"]) if b and b.get("n", 1) > 1 else "–",
                          ci_cell(*uci) if uci else "–", pm(loo.get(v, {}).get("ndcg@50")),
                          ", ".join(epochs_cell(r) for r in used_runs(v, "loo")) or "–"])
        out.append(table(["model", "sg Recall@50", "sg seeds", "loo Recall@50 (mean ± std)", "loo seeds",
                          "loo seed CI", "loo user CI", "loo NDCG@50", "loo epochs"], lrows))
        out.append("\nLeave-one-out (components/split.py): every user, the last interaction is the one test target and "
                   "the second-to-last the valid one (so Recall@N = HitRate@N); the settings chosen on the strong-"
                   "generalization valid users (not re-tuned). All its metrics: below.")
        miss = [lab(v) for v in sg if v not in loo]
        if miss:
            out.append(f"\nLeave-one-out not run (yet) for: {', '.join(miss)}.")
    else:
        out.append("Not run yet: no `loo` results in quality.json.")

    # targets
    out.append("\n### Targets (issue 6, test Recall@50, strong generalization, mean over seeds)\n")
    trows = []
    nseeds = lambda m: str(m.get("n", "–")) if m else "–"  # noqa: E731
    for v, (text, ok) in TARGETS.items():
        m = sg.get(v, {}).get("recall@50")
        trows.append([lab(v), text, pm(m), nseeds(m), ("met" if ok(m["mean"]) else "**missed**") if m else "not run"])
    for name, vs in MULTI.items():
        cands = [v for v in vs if v in sg and "recall@50" in sg[v] and "valid.recall@50" in sg[v]]
        if not cands:
            trows.append([lab(name), f"≥ {MULTI_TARGET}", "–", "–", "not run"])
            continue
        v = max(cands, key=lambda c: sg[c]["valid.recall@50"]["mean"])  # with or without HN, chosen on VALID
        m = sg[v]["recall@50"]
        how = "chosen on valid" if len(cands) > 1 else "the only variant run"
        trows.append([f"{lab(name)} (→ {lab(v)}, {how})", f"≥ {MULTI_TARGET}", pm(m), nseeds(m),
                      "met" if m["mean"] >= MULTI_TARGET else "**missed**"])
    scored = [v for v in sg if "recall@50" in sg[v] and "valid.recall@50" in sg[v]]
    if scored:
        bv = max(scored, key=lambda v: sg[v]["valid.recall@50"]["mean"])
        m = sg[bv]["recall@50"]
        trows.append([f"best model (→ {lab(bv)}, chosen on valid)", f"≥ {BEST_TARGET} (reference best "
                      f"{REFERENCE_BEST})", pm(m), nseeds(m), "met" if m["mean"] >= BEST_TARGET else "**missed**"])
    out.append(table(["model", "target", "ours (mean ± std)", "seeds", "status"], trows))

    # all metrics
    for proto, name in meta.get("protocols", {}).items():
        pr = {v: p[proto] for v, p in res.items() if proto in p}
        if not pr:
            continue
        keys = {k for p in pr.values() for k in p if "@" in k and not k.startswith("valid.")}
        metrics = [k for k in METRIC_ORDER if k in keys] + sorted(keys - set(METRIC_ORDER))
        out.append(f"\n### All metrics, test users, {name} (mean ± std over seeds)\n")
        out.append(table(["model", "seeds"] + metrics,
                         [[lab(v), str(p.get("recall@50", {}).get("n", "–"))] + [pm(p.get(k)) for k in metrics]
                          for v, p in pr.items()]))

    # tuning
    if tuning:
        grid = meta.get("grid", {})
        out.append("\n### Tuning on the valid users (valid Recall@50, seed "
                   f"{tune_seed}); declared grid: "
                   + "; ".join(f"`{k}` = {json.dumps(g) if g else 'params.yaml'}" for k, g in grid.items()) + "\n")

        def tune_run(v: str, g: str) -> dict | None:
            return next((r for r in runs if r["variant"] == v and r["protocol"] == "sg" and r["setting"] == g
                         and r["seed"] == tune_seed), None)

        trow = []
        for v, t in tuning.items():
            cells = []
            for g in grid:
                x = (t.get("valid_recall@50") or {}).get(g)
                cell = "–" if x is None else (f"**{x:.4f}**" if g == t.get("setting") else f"{x:.4f}")
                if x is not None and tune_run(v, g):
                    cell += f" ({epochs_cell(tune_run(v, g))} ep.)"
                cells.append(cell)
            trow.append([lab(v)] + cells + [t.get("setting", "–")])
        out.append(table(["model"] + list(grid) + ["chosen"], trow))
        out.append("\nBold: the chosen point (best valid Recall@50; ties keep the first). \"–\": grid point not run "
                   "(yet). MostPopular has nothing to tune.")

    # sweeps
    sweeps = data.get("sweeps") or {}
    if sweeps:
        out.append("\n### One-factor sweeps around the chosen setting (test users, one seed each)\n")
        out.append("Each point is one run (seed " + ", ".join(sorted({str(s.get("seed")) for s in sweeps.values()}))
                   + ") of the variant's chosen setting with one `models.*` value changed; the params.yaml value is "
                   "the chosen run itself (✓). Sweep points never count as tuning candidates. Error bars and the "
                   "user CI: the evaluator's bootstrap over test users (no seed spread: one seed). Swept variants: "
                   + ", ".join(lab(v) for v in _ordered({v: 0 for sw in sweeps.values()
                                                          for v in (sw.get("variants") or {})}))
                   + "; the papers' sweeps are of their plain models (no harder negatives).")
    for name, sw in sweeps.items():
        paper, axis = SWEEP_TITLES.get(name, (name, sw.get("key", name)))
        variants = _ordered(sw.get("variants", {}))
        if not variants:
            continue
        out.append(f"\n#### {paper}: {axis}\n")
        header = ["model", axis, "valid Recall@50", "test Recall@50", "user CI", "test NDCG@50", "diversity@50",
                  "epochs"]
        if name == "K":
            header += ["paper Recall@50 % (Amazon / Taobao)"]
        srows = []
        for v, pts in variants.items():
            for p in sorted(pts, key=lambda p: _value_key(p.get("value"))):
                r = next((r for r in runs if r["variant"] == v and r["protocol"] == "sg"
                          and r["setting"] == p.get("setting") and r["seed"] == sw.get("seed")), None)
                row = [lab(v), value_label(p.get("value")) + (" ✓" if p.get("params_default") else ""),
                       p.get("valid.recall@50"), p.get("test.recall@50"),
                       ci_cell(*(p.get("test.recall@50_ci") or [None, None])), p.get("test.ndcg@50"),
                       p.get("test.diversity@50"), epochs_cell(r) if r else str(p.get("epochs", "–"))]
                if name == "K":
                    fig_ = PAPER_COMIREC_T4.get(_paper_name(v), {}).get(p.get("value"))
                    row.append(f"{fig_[0]:.3f} / {fig_[1]:.3f} ({lab(_paper_name(v))})" if fig_ else "–")
                srows.append(row)
        out.append(table(header, srows))
        if name in PAPER_MIND_FIG3:
            out.append(f"\nPaper (MIND Fig. 3, no numbers given): {PAPER_MIND_FIG3[name]}.")
        if name == "p":
            out.append("\nOur p scales the compatibilities before the softmax, softmax(p · V_u^T e) (models/loss.py: "
                       "`pow` of a negative compatibility is undefined); p = 0 is the plain mean of the interests, "
                       "p = ∞ the hard argmax, the two limits the paper names.")
        # plot: ours (and the paper's Table 4 beside it for K)
        plt = _plt()
        ncols = 2 if name == "K" else 1
        fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 3.5), squeeze=False)
        ax = axes[0][0]
        vals = sorted({_value_key(p.get("value")) for pts in variants.values() for p in pts})
        categorical = any(math.isinf(x) for x in vals)
        for i, (v, pts) in enumerate(variants.items()):
            pts = sorted(pts, key=lambda p: _value_key(p.get("value")))
            xs = [vals.index(_value_key(p.get("value"))) if categorical else p.get("value") for p in pts]
            if name != "sigma":  # side by side, so the error bars do not hide each other
                xs = [x + 0.06 * (i - (len(variants) - 1) / 2) * (1 if categorical else 2) for x in xs]
            ys = [p["test.recall@50"] for p in pts]
            cis = [p.get("test.recall@50_ci") or [y, y] for p, y in zip(pts, ys)]
            err = [[max(y - (c[0] if c[0] is not None else y), 0.0) for c, y in zip(cis, ys)],
                   [max((c[1] if c[1] is not None else y) - y, 0.0) for c, y in zip(cis, ys)]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=lab(v), color=COLOURS.get(_paper_name(v)))
        if categorical:
            ax.set_xticks(range(len(vals)), [value_label(None if math.isinf(x) else x) for x in vals])
        else:
            ax.set_xticks(vals, [value_label(x) for x in vals])
            if name == "sigma":
                ax.set_xscale("log")
                ax.set_xticks(vals, [value_label(x) for x in vals])
        ax.set_xlabel(axis)
        ax.set_ylabel("test Recall@50")
        ax.set_title(f"ours ({meta.get('dataset', '')}, seed {sw.get('seed')}; bars: user CI)", fontsize=9)
        ax.legend(fontsize=7)
        if name == "K":
            ax2 = axes[0][1]
            for pv, ks in PAPER_COMIREC_T4.items():
                for j, dsname in enumerate(("Amazon Books", "Taobao")):
                    ax2.plot(sorted(ks), [ks[k][j] for k in sorted(ks)], marker="o", color=COLOURS.get(pv),
                             ls="-" if j == 0 else "--", label=f"{lab(pv)}, {dsname}")
            ax2.set_xticks(sorted(next(iter(PAPER_COMIREC_T4.values()))))
            ax2.set_xlabel("K")
            ax2.set_ylabel("Recall@50 (%)")
            ax2.set_title("paper: ComiRec Table 4", fontsize=9)
            ax2.legend(fontsize=7)
        out.append("\n" + save(fig, img, f"quality_sweep_{name}.png", rel))

    # MIND's dynamic K at serving time, from speed.json
    dyn = ((speed or {}).get("dynamic_k") or {}).get("rows") or []
    dyn_rows: list[tuple[dict, dict]] = []
    num = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0  # noqa: E731
    dyn = [r for r in dyn if isinstance(r, dict) and num(r.get("mean_active_interests"))
           and num(r.get("num_interests")) and num(r.get("max_len"))]
    for r in dyn:
        if r.get("dynamic"):
            f = next((x for x in dyn if not x.get("dynamic") and x.get("max_len") == r.get("max_len")
                      and x.get("num_interests") == r.get("num_interests")), None)
            if f:
                dyn_rows.append((r, f))
    if dyn_rows:
        out.append("\n### MIND dynamic K (eq. 9) vs fixed K at serving time (from speed.json)\n")
        out.append("K'_u = max(1, min(K, ⌊log2 |I_u|⌋)) interests per user, each one ANN query; measured by "
                   "`benchmarks/speed.py` (sweep `dynamic_k`) on the MovieLens-100K valid + test users, their real "
                   "histories truncated to L. Latency of `user_interests` (median; the machine is shared, load "
                   "~10, so latencies are noisy; the query counts are exact).\n")
        out.append(table(["L", "K", "users", "mean history", "ANN queries/user dynamic", "fixed", "saved",
                          "users below K", "1-user ms dynamic / fixed", "µs/user @512 dynamic / fixed"],
                         [[r["max_len"], r["num_interests"], r.get("users"), r.get("mean_history_length"),
                           f"{r['mean_active_interests']:.2f}", f"{f['mean_active_interests']:.2f}",
                           f"{1 - r['mean_active_interests'] / f['mean_active_interests']:.0%}",
                           f"{r.get('share_below_k', 0):.0%}",
                           f"{r.get('latency_one_user_ms_p50', math.nan):.2f} / "
                           f"{f.get('latency_one_user_ms_p50', math.nan):.2f}",
                           f"{r.get('latency_per_user_batch512_us_p50', math.nan):.0f} / "
                           f"{f.get('latency_per_user_batch512_us_p50', math.nan):.0f}"] for r, f in dyn_rows]))

    # findings
    out.append("\n### The papers' findings on this data\n")
    g = lambda v: sg.get(v, {}).get("recall@50")  # noqa: E731
    rows = []

    def umi_fig(*vs: str) -> str:
        return " vs ".join(f"{PAPER_UMI_T2[UMI_T2_ROW[v]]:.1f}" for v in vs) + " (HR@50, ML-1M)"

    def t3_fig(a: str, b: str) -> str:
        x, y = PAPER_COMIREC_T3[a], PAPER_COMIREC_T3[b]
        return f"{x[0]:.2f} vs {y[0]:.2f} (Amazon), {x[1]:.2f} vs {y[1]:.2f} (Taobao), R@50"

    claims = [("UMI Table 2", "MIND < YouTube DNN", umi_fig("mind", "youtube_dnn"),
               verdict(g("mind"), g("youtube_dnn")))]
    for base in ("mind", "comirec_dr", "comirec_sa"):
        claims.append(("UMI Table 2", f"HN lifts {lab(base)} ({lab(base)} < {lab(base + '_hn')})",
                       umi_fig(base, base + "_hn"), verdict(g(base), g(base + "_hn"))))
        claims.append(("UMI Table 2", f"{lab(base + '_hn')} reaches about YouTube DNN",
                       umi_fig(base + "_hn", "youtube_dnn"), reaches(g(base + "_hn"), g("youtube_dnn"))))
    # the paper's UMI is trained with its harder negatives: our umi_hn ("UMI+HN")
    umi = lab("umi_hn")
    for v in ("youtube_dnn", "mind", "mind_hn", "comirec_dr", "comirec_dr_hn", "comirec_sa", "comirec_sa_hn"):
        claims.append(("UMI Table 2", f"{umi} best ({lab(v)} < {umi})", umi_fig(v, "umi_hn"),
                       verdict(g(v), g("umi_hn"))))
    others = [v for v in MODEL_ORDER if v not in ("umi_hn", "most_popular") and g(v)]
    if g("umi_hn") and others:
        vds = [verdict(g(v), g("umi_hn"))[0] for v in others]
        rank = 1 + sum(g(v)["mean"] > g("umi_hn")["mean"] for v in others)
        claims.append(("UMI Table 2", f"{umi} best of all {len(others) + 1} trained models",
                       umi_fig("umi_hn") + " best",
                       ("does not hold" if "does not hold" in vds else "holds" if all(x == "holds" for x in vds)
                        else "within noise",
                        f"{umi} ranks {rank} of {len(others) + 1} by mean; pairwise verdicts: "
                        + ", ".join(f"{vds.count(x)} {x}" for x in ("holds", "within noise", "does not hold")
                                    if vds.count(x)))))
    for v in ("mind", "comirec_dr", "comirec_sa"):
        claims.append(("ComiRec Table 3", f"{lab(v)} beats YouTube DNN", t3_fig("youtube_dnn", v),
                       verdict(g("youtube_dnn"), g(v))))
    if paired:  # issue 13: model orderings are judged by the paired tests of the k-fold section only
        out.append("Model orderings (UMI Table 2, ComiRec Table 3) are judged by paired tests on every user in "
                   "[quality_kfold](#quality-kfold), not here (94 test users, means compared without pairing). "
                   "The one-factor findings below have one run per point and no per-user values: their rule is "
                   "the half-width rule of this section.\n")
        claims = []
    for paper, claim, fig_, (vd, ev) in claims:
        rows.append([paper, claim, fig_, vd, ev])

    # ComiRec Table 4: sensitivity to K
    k_sw = (sweeps.get("K") or {}).get("variants", {})
    for v, pts in _ordered(k_sw).items():
        pfig = paper_k_spread(_paper_name(v), lab)
        if len(pts) < 2:
            rows.append(["ComiRec Table 4", f"{lab(v)}: Recall@50 depends on K", pfig, "not run",
                         f"{len(pts)} of 4 K values run"])
            continue
        ms = [point_metric(p) for p in pts]
        s, h, lo, hi = spread(ms)
        kv = {id(m): p.get("value") for m, p in zip(ms, pts)}
        best_valid = max(pts, key=lambda p: p["valid.recall@50"])["value"]
        ks_run = ", ".join(value_label(p["value"]) for p in sorted(pts, key=lambda p: _value_key(p["value"])))
        rows.append(["ComiRec Table 4", f"{lab(v)}: Recall@50 depends on K (K ∈ {{{ks_run}}})",
                     pfig, "holds" if s > h else "within noise",
                     f"spread {s:.4f} ({s / hi['mean']:.0%}; K = {value_label(kv[id(lo)])}: {lo['mean']:.4f} → K = "
                     f"{value_label(kv[id(hi)])}: {hi['mean']:.4f}), h = {h:.4f}; best K on valid = "
                     f"{value_label(best_valid)}"])
    if not k_sw:
        rows.append(["ComiRec Table 4", "sensitivity to K ∈ {2, 4, 6, 8}", "see Table 4", "not run",
                     "no K sweep in quality.json yet"])

    # ComiRec Table 5: the λ trade-off
    lam = _ordered(data.get("lambda_sweep", {}))
    multi = {v for vs in MULTI.values() for v in vs}
    lam_rows = []
    for v, sw in lam.items():
        if len(sw) < 2 or v not in multi:  # one interest: the aggregation has nothing to trade
            continue
        a = sw[0]
        b = next((r for r in sw if r["lambda"] == 0.25), sw[-1])  # the paper's largest λ where we have it
        dr = (b["recall@50"] - a["recall@50"]) / max(a["recall@50"], 1e-12)
        dd = (b["diversity@50"] - a["diversity@50"]) / max(a["diversity@50"], 1e-12)
        lam_rows.append((v, b["lambda"], dr, dd))
    if lam_rows:
        nh = sum(1 for _, _, dr, dd in lam_rows if dd > 0 and -dr < dd)
        pf = "; ".join(f"{lab(pv)}: R {t[0.25][0] / t[0.0][0] - 1:+.0%}, D {t[0.25][1] / t[0.0][1] - 1:+.0%}"
                       for pv, t in PAPER_COMIREC_T5.items()) + " (Amazon, λ 0 → 0.25)"
        lams = sorted({x for _, x, _, _ in lam_rows})
        rows.append(["ComiRec Table 5", "λ: recall falls slowly, diversity rises fast (relative change, λ = 0 → "
                     + "/".join(f"{x:g}" for x in lams) + ")", pf,
                     "holds" if nh == len(lam_rows) else "does not hold" if nh == 0
                     else f"holds for {nh}/{len(lam_rows)} models",
                     "; ".join(f"{lab(v)}: R {dr:+.0%}, D {dd:+.0%}" for v, _, dr, dd in lam_rows)])

    # MIND Fig. 3: σ and p
    for v, pts in _ordered((sweeps.get("sigma") or {}).get("variants", {})).items():
        claim = f"{lab(v)}: robust to σ ∈ {{0.1, 1, 5}}"
        if len(pts) < 2:
            rows.append(["MIND Fig. 3", claim, PAPER_MIND_FIG3["sigma"], "not run", f"{len(pts)} of 3 σ values run"])
            continue
        s, h, lo, hi = spread([point_metric(p) for p in pts])
        rows.append(["MIND Fig. 3", claim, PAPER_MIND_FIG3["sigma"], "holds" if s <= h else "does not hold",
                     "; ".join(f"σ = {value_label(p['value'])}: {p['test.recall@50']:.4f}"
                               for p in sorted(pts, key=lambda p: _value_key(p['value'])))
                     + f"; spread {s:.4f} vs h = {h:.4f}"])
    for v, pts in _ordered((sweeps.get("p") or {}).get("variants", {})).items():
        by = {_value_key(p["value"]): p for p in pts}
        vals = "; ".join(f"p = {value_label(p['value'])}: {p['test.recall@50']:.4f}"
                         for p in sorted(pts, key=lambda p: _value_key(p['value'])))
        others = [p for k, p in by.items() if k >= 1]
        made = False
        if 0.0 in by and others:
            made = True
            worst = min(others, key=lambda p: p["test.recall@50"])
            vd, ev = verdict(point_metric(by[0.0]), point_metric(worst))
            rows.append(["MIND Fig. 3", f"{lab(v)}: p = 0 worse than every p ≥ 1 (vs the worst, p = "
                         f"{value_label(worst['value'])})", PAPER_MIND_FIG3["p"], vd, ev])
        ge1 = sorted(k for k in by if k >= 1)
        if len(ge1) >= 2:
            made = True
            vd, ev = verdict(point_metric(by[ge1[0]]), point_metric(by[ge1[-1]]))
            mono = all(by[a]["test.recall@50"] <= by[b]["test.recall@50"] for a, b in zip(ge1, ge1[1:]))
            rows.append(["MIND Fig. 3", f"{lab(v)}: larger p better (p = {value_label(by[ge1[0]]['value'])} → "
                         f"{value_label(by[ge1[-1]]['value'])}; {'monotone' if mono else 'not monotone'})",
                         PAPER_MIND_FIG3["p"], vd, ev + "; " + vals])
        if not made:
            rows.append(["MIND Fig. 3", f"{lab(v)}: p = 0 much worse; larger p better", PAPER_MIND_FIG3["p"],
                         "not run", f"{len(pts)} of 4 p values run"])
    for name, claim in (("sigma", "robust to σ ∈ {0.1, 1, 5}"), ("p", "p = 0 much worse; larger p better")):
        if not (sweeps.get(name) or {}).get("variants"):
            rows.append(["MIND Fig. 3", claim, PAPER_MIND_FIG3[name], "not run",
                         f"no {name} sweep in quality.json yet"])

    # MIND §4.3: dynamic K serving cost
    if dyn_rows:
        dk = ((speed or {}).get("config") or {}).get("models", {}).get("mind", {}).get("num_interests")
        dl = ((speed or {}).get("config") or {}).get("default_max_len")
        for k in sorted({r["num_interests"] for r, _ in dyn_rows}, key=lambda k: (k != dk, k)):
            per = sorted(((r, f) for r, f in dyn_rows if r["num_interests"] == k), key=lambda rf: rf[0]["max_len"])
            saved = [1 - r["mean_active_interests"] / f["mean_active_interests"] for r, f in per]
            nsav = sum(x > 0 for x in saved)
            fewest = min(r.get("min_active_interests", 0) for r, _ in per)
            rows.append(["MIND §4.3", f"dynamic K cuts serving cost vs fixed K = {k}"
                         + (" (the default)" if k == dk else ""), PAPER_MIND_DYNAMIC,
                         "holds" if nsav == len(per) else "does not hold" if nsav == 0
                         else f"holds for {nsav}/{len(per)} history lengths",
                         "ANN queries/user dynamic vs fixed: "
                         + "; ".join(f"L = {r['max_len']}" + (" (default)" if r["max_len"] == dl else "")
                                     + f": {r['mean_active_interests']:.2f} vs {f['mean_active_interests']:.2f} "
                                     f"({x:.0%} saved)" for (r, f), x in zip(per, saved))
                         + f"; fewest interests {fewest} ⇒ every user has ≥ {2 ** fewest} behaviours in the "
                           "window"])
    else:
        rows.append(["MIND §4.3", "dynamic-K serving cost vs fixed K", PAPER_MIND_DYNAMIC, "not run",
                     "no dynamic_k rows in speed.json"])
    out.append(table(["paper", "claim", "paper's figures", "verdict", "ours (test Recall@50) and noise"], rows))
    out.append("\n" + script_block("report", "Verdict rule", "\n\n", keep_first=True).replace("\n", " "))

    if lam_rows:
        lvals = sorted({r["lambda"] for v, _, _, _ in lam_rows for r in lam[v]})
        out.append("\nλ sweep (ComiRec eq. 12, test users, mean over seeds), Recall@50 / Diversity@50:\n")
        out.append(table(["model"] + [f"λ = {x:g}" for x in lvals],
                         [[lab(v)] + [next((f"{r['recall@50']:.4f} / {r['diversity@50']:.4f}" for r in lam[v]
                                            if r["lambda"] == x), "–") for x in lvals] for v, _, _, _ in lam_rows]))
        plt = _plt()
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for v, _, _, _ in lam_rows:
            ax.plot([r["diversity@50"] for r in lam[v]], [r["recall@50"] for r in lam[v]], marker="o", label=lab(v))
        ax.set_xlabel("test Diversity@50")
        ax.set_ylabel("test Recall@50")
        ax.set_title("λ trade-off (ComiRec eq. 12), λ = " + ", ".join(f"{x:g}" for x in lvals))
        ax.legend(fontsize=7)
        out.append("\n" + save(fig, img, "quality_lambda.png", rel))

    # discussion: computed from the figures above, so it cannot drift from them
    notes = []
    missed = [r for r in trows if r[-1] == "**missed**"]
    if missed:
        notes.append("Targets missed: " + "; ".join(f"{r[0]}: {r[2]} vs {r[1]}" for r in missed) + ".")
    for label_, key in (("hold", "holds"), ("do not hold", "does not hold"), ("are within noise", "within noise")):
        picked = [r for r in rows if r[3] == key]
        if picked:
            notes.append(f"Findings that {label_} on MovieLens-100K at this budget ({len(picked)}): "
                         + "; ".join(f"{r[0]} — {r[1]}" for r in picked) + ".")
    if loo:
        both = [v for v in loo if v in sg and "recall@50" in loo[v] and "recall@50" in sg[v]]
        agree = total = 0
        for i, a in enumerate(both):
            for b in both[i + 1:]:
                total += 1
                agree += ((sg[a]["recall@50"]["mean"] - sg[b]["recall@50"]["mean"])
                          * (loo[a]["recall@50"]["mean"] - loo[b]["recall@50"]["mean"]) > 0)
        best_loo = max(both, key=lambda v: loo[v]["recall@50"]["mean"]) if both else None
        ns = sorted({loo[v]["recall@50"].get("n", 1) for v in both})
        if best_loo:
            notes.append(f"Leave-one-out ({len(both)} models, {'/'.join(map(str, ns))} seed(s)): highest test "
                         f"Recall@50 {lab(best_loo)} {pm(loo[best_loo]['recall@50'])}; the ordering of model pairs "
                         f"by mean agrees with strong generalization for {agree} of {total} pairs. Mean user-CI "
                         f"half-width of Recall@50: leave-one-out {_mean_half(loo, both):.4f}, strong generalization "
                         f"{_mean_half(sg, both):.4f}.")
        ref = loo.get("youtube_dnn", {}).get("recall@50")
        if ref and not paired:
            by: dict[str, list[str]] = {}
            for v in [v for v in both if v in multi]:
                by.setdefault(verdict(ref, loo[v]["recall@50"])[0], []).append(lab(v))
            if by:
                notes.append("ComiRec Table 3 under leave-one-out (multi-interest model beats YouTube DNN, same rule): "
                             + "; ".join(f"{k}: {', '.join(vs)}" for k, vs in by.items()) + ".")
    else:
        notes.append("Leave-one-out: not run yet.")
    cap = [r for r in runs if capped(r)]
    if cap:
        notes.append(f"Runs ended by the epoch budget with their best epoch the last one ({CAPPED}; still improving, "
                     "so their figures are lower bounds for this setting): "
                     + ", ".join(f"{lab(r['variant'])} {r['protocol']} {r['setting']} seed {r['seed']}" for r in cap)
                     + ".")
    cut = [r for r in runs if r.get("truncated")]
    if cut:
        notes.append("Runs stopped at the deadline (†), evaluated from their best checkpoint so far: "
                     + ", ".join(f"{lab(r['variant'])} {r['setting']} seed {r['seed']} after {r.get('epochs')} of "
                                 f"{r.get('max_epochs')} epochs" for r in cut)
                     + ". Their budget was smaller than the others', so orderings involving them are not "
                       "like-for-like.")
    nseed = {}
    for v, p in sg.items():
        nseed.setdefault(p.get("recall@50", {}).get("n", 0), []).append(lab(v))
    if len(nseed) > 1 or 1 in nseed:
        notes.append("Seeds per model (strong generalization): "
                     + "; ".join(f"{n}: {', '.join(vs)}" for n, vs in sorted(nseed.items())) + ".")
    if notes:
        out.append("\n### Discussion (generated from the figures above)\n")
        out += [f"- {n}" for n in notes]

    if runs:
        out.append("\n### Every run in the cache\n")
        keys = ["variant", "protocol", "setting", "seed", "valid.recall@50", "test.recall@50", "epochs",
                "best_epoch", "max_epochs", "truncated", "train_wall_s"]
        keys = [k for k in keys if any(k in r for r in runs)]
        out.append(table(keys + [CAPPED], [[r.get(k) for k in keys] + [CAPPED if capped(r) else ""] for r in runs]))
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


def generic_section(name: str, data: Any, img: Path, rel: str, bar_chart: bool = True) -> list[str]:
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
    for path, cols, rows in (tables if bar_chart else []):
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


def speed_section(data: Any, img: Path, rel: str, out_path: Path) -> list[str]:
    """benchmarks/speed.py: its tables, and the plot it draws for each sweep (benchmarks/results/img/)."""
    import os

    out = generic_section("speed", data, img, rel, bar_chart=False)
    sweeps = data.get("sweeps") if isinstance(data, dict) else None
    for sweep in (sweeps or {}):
        png = REPO / "benchmarks" / "results" / "img" / f"speed_{sweep}.png"
        if png.exists():
            out.append(f"\n`{sweep}` (drawn by `benchmarks/speed.py --plot`):\n\n"
                       f"![speed_{sweep}.png]({os.path.relpath(png, out_path.parent)})")
    return out


# ------------------------------------------------------------------------------------------------- main
def end_to_end_section(data: dict) -> list[str]:
    """benchmarks/end_to_end.py: the phases of ``make repro`` from a fresh clone, and what the run produced."""
    raw = data.get("phases") or {}
    order = ["setup", "data", "dvc_repro"]
    phases = {k: raw[k] for k in sorted(raw, key=lambda k: (order.index(k) if k in order else len(order), k))}
    out = [table(["phase", "command", "exit", "wall s", "CPU s", "peak RSS MB (largest process)"],
                 [[name, f"`{p.get('command', '')}`", p.get("rc"), fmt(p.get("wall_s"), 1), fmt(p.get("cpu_s"), 1),
                   fmt(p.get("peak_rss_mb"), 1)] for name, p in phases.items()])]
    total = data.get("make_repro") or {}
    repro = phases.get("dvc_repro") or {}
    target = data.get("target_dvc_repro_s")
    if total:
        out.append(f"\n`make repro` from a fresh clone, set-up included: **{fmt(total.get('wall_s'), 1)} s** wall, "
                   f"{fmt(total.get('cpu_s'), 1)} s CPU, peak {fmt(total.get('peak_rss_mb'), 1)} MB. `dvc repro` alone "
                   f"(the `make repro` phase once set-up and data are in place): **{fmt(repro.get('wall_s'), 1)} s** "
                   f"against the target of {fmt(target, 0)} s: **{'met' if data.get('target_met') else 'missed'}**.")
    models = {k: v for k, v in (data.get("models") or {}).items() if not k.startswith("_")}
    if models:
        rows = []
        for name, m in models.items():
            tr, te = m.get("train") or {}, m.get("test") or {}
            ci = (te.get("test.recall@50_ci_low"), te.get("test.recall@50_ci_high"))
            rows.append([name, tr.get("epochs"), tr.get("best_epoch"), fmt(tr.get("wall_seconds"), 1),
                         fmt(tr.get("samples_per_s"), 0) if name != "most_popular" else "–",
                         fmt(tr.get("peak_rss_mb"), 1), fmt(te.get("test.recall@50")),
                         f"[{fmt(ci[0])}, {fmt(ci[1])}]" if None not in ci else "–", fmt(te.get("test.ndcg@50"))])
        out += ["", "What that run trained and measured (the clone's DVC metrics; training on one thread):", "",
                table(["model", "epochs", "best epoch", "train wall s", "samples/s", "peak MB", "test Recall@50",
                       "user CI", "test NDCG@50"], rows)]
    gate = (data.get("models") or {}).get("_gate")
    if gate:
        rules = "; ".join(f"{r.get('rule')}: {fmt(r.get('candidate'))} vs threshold {fmt(r.get('threshold'))}"
                          for r in gate.get("rules") or [])
        out.append(f"\nGate: candidate `{gate.get('candidate')}` {'passed' if gate.get('passed') else 'BLOCKED'} ({rules}).")
    mach = data.get("machine") or {}
    out.append(f"\nCommit {str(data.get('commit', ''))[:10]}, {data.get('date_utc', '')}; {mach.get('cpus')} CPUs, "
               f"load average before {mach.get('load_avg_before')} / after {mach.get('load_avg_after')}.")
    return out


def _section_module(name: str):
    """``benchmarks/<name>.py``, a section kept in a module of its own (benchmarks/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def render(results_dir: Path, out_path: Path, img_dir: Path, plots: bool = True) -> str:
    """Write ``out_path`` from ``results_dir/*.json`` (PNGs into ``img_dir`` unless ``plots`` is False)."""
    _PLOTS["on"] = plots
    try:
        return _render(results_dir, out_path, img_dir)
    finally:
        _PLOTS["on"] = True


def _render(results_dir: Path, out_path: Path, img_dir: Path) -> str:
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
            speed = {}
            if (Path(results_dir) / "speed.json").exists():  # MIND's dynamic-K serving figures
                try:
                    speed = json.loads((Path(results_dir) / "speed.json").read_text())
                except json.JSONDecodeError:
                    speed = {}
            body = quality_section(data, img_dir, rel, speed if isinstance(speed, dict) else {},
                                   paired=(Path(results_dir) / "quality_kfold.json").exists())
            choices = script_block(p.stem, "Choices the issue leaves open", "Resumable:")
            if choices:
                body += ["", "### Choices and budget (from benchmarks/quality.py)", "", choices]
        elif p.stem == "planted":
            body = planted_section(data, img_dir, rel)
        elif p.stem == "end_to_end":
            body = end_to_end_section(data)
        elif p.stem == "speed":
            body = speed_section(data, img_dir, rel, out_path)
        elif (Path(__file__).with_name(f"report_{p.stem}.py")).exists() and isinstance(data, dict):
            # a section kept in a module of its own: benchmarks/report_<stem>.py defines
            # section(data, img_dir, rel, save, plt_fn) -> list of Markdown lines
            body = _section_module(f"report_{p.stem}").section(data, img_dir, rel, save, _plt)
        elif p.stem == "quality_kfold" and isinstance(data, dict):  # benchmarks/report_kfold.py (issue 13)
            body = _section_module("report_kfold").kfold_section(data, img_dir, rel, save, _plt)
        elif p.stem == "serving_http" and isinstance(data, dict):
            body = _section_module("report_serving_http").serving_http_section(data)
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
    ap.add_argument("--no-plots", action="store_true", help="tables only: write no PNG (the links stay)")
    args = ap.parse_args(argv)
    render(args.results, args.out, args.img, plots=not args.no_plots)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
