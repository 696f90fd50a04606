"""The statistics of the k-fold benchmark (issue 13): pool the folds' per-user values, bootstrap intervals
over users, paired tests between models, verdicts on the papers' findings. Pure numpy/scipy on plain inputs,
used by ``benchmarks/quality.py --stage kfold`` (which writes ``benchmarks/results/quality_kfold.json``) and
tested on hand-made inputs (tests/benchmarks/test_kfold_stats.py).

Declared rules:

- Pooling: a fold counts only when every variant has its run (so every model is scored on the same users);
  the users of a fold are its test users, and each user may be a test user in one fold only.
- Per-model interval: percentile bootstrap of the mean over users (users resampled with replacement).
- Paired test of "A < B" on per-user values: Δ = mean over users of (B − A); the paired bootstrap interval
  resamples users (the same resampled users for both models); Wilcoxon signed-rank (scipy, two-sided, zero
  differences dropped, the normal approximation when scipy chooses it). The claim **holds** when the interval
  lies above 0 and Wilcoxon p < α; **does not hold** when the interval lies below 0 and p < α; otherwise it is
  **within noise** (neither test, or only one, separates the models). A "reaches about" claim (B reaches
  about A) does not hold when B is below A by that rule, and holds otherwise.
- The p-values of all pairs are also given Holm-adjusted (family = every pair of the matrix); the verdicts on
  the papers' findings use the unadjusted level, as each is a claim stated in advance by a paper.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

SAMPLES = 10_000
CONFIDENCE = 0.95
ALPHA = 0.05


class FoldError(ValueError):
    """Inconsistent fold records (a user tested twice, a variant scored on other users than its fold's)."""


def pool_folds(runs: Sequence[dict], variants: Sequence[str], metrics: Sequence[str]) -> dict[str, Any]:
    """Pool the k-fold run records into per-user arrays aligned across variants.

    Args:
        runs: records with ``fold`` (int), ``variant`` and ``per_user`` = {"user_id": [...], metric: [...]}.
        variants: the variants that must all be present for a fold to count.
        metrics: the per-user metrics to pool.
    Returns:
        {"folds": complete folds (sorted), "incomplete": {fold: missing variants}, "user_id": [...],
         "fold_of_user": [...], "values": {variant: {metric: float array aligned with user_id}}}
    Raises:
        FoldError: a user in two complete folds, or a variant with other test users than the fold's first.
    """
    by_fold: dict[int, dict[str, dict]] = {}
    for r in runs:
        by_fold.setdefault(int(r["fold"]), {})[r["variant"]] = r
    complete = sorted(f for f, vs in by_fold.items() if all(v in vs for v in variants))
    incomplete = {f: [v for v in variants if v not in vs] for f, vs in sorted(by_fold.items()) if f not in complete}
    users: list[str] = []
    fold_of: list[int] = []
    values: dict[str, dict[str, list[float]]] = {v: {m: [] for m in metrics} for v in variants}
    seen: dict[str, int] = {}
    for f in complete:
        ref = [str(u) for u in by_fold[f][variants[0]]["per_user"]["user_id"]]
        order = sorted(range(len(ref)), key=lambda i: ref[i])
        ids = [ref[i] for i in order]
        for u in ids:
            if u in seen:
                raise FoldError(f"user {u!r} is a test user in folds {seen[u]} and {f}")
            seen[u] = f
        users += ids
        fold_of += [f] * len(ids)
        for v in variants:
            pu = by_fold[f][v]["per_user"]
            pos = {str(u): i for i, u in enumerate(pu["user_id"])}
            if sorted(pos) != ids:
                raise FoldError(f"fold {f}: {v} was scored on other test users than {variants[0]}")
            for m in metrics:
                col = pu[m]
                values[v][m] += [float(col[pos[u]]) for u in ids]
    return {"folds": complete, "incomplete": incomplete, "user_id": users, "fold_of_user": fold_of,
            "values": {v: {m: np.asarray(x, dtype=np.float64) for m, x in ms.items()} for v, ms in values.items()}}


def resample_index(n: int, samples: int = SAMPLES, seed: int = 0) -> np.ndarray:
    """(samples, n) user indices drawn with replacement; share one draw between models to pair them."""
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def bootstrap_ci(x: np.ndarray, index: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of the mean of ``x`` over the resamples ``index`` (from :func:`resample_index`)."""
    means = np.asarray(x, dtype=np.float64)[index].mean(axis=1)
    a = (1.0 - confidence) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the paired differences ``d`` (zeros dropped); 1.0 when
    every difference is zero."""
    from scipy.stats import wilcoxon

    d = np.asarray(d, dtype=np.float64)
    if not np.any(d != 0):
        return 1.0
    return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def paired_test(a: np.ndarray, b: np.ndarray, index: np.ndarray, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Paired comparison of per-user values ``a`` and ``b`` (same users, same order): Δ = mean(b − a)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same users: {a.shape} vs {b.shape}")
    d = b - a
    lo, hi = bootstrap_ci(d, index, confidence)
    return {"mean_diff": float(d.mean()), "ci_low": lo, "ci_high": hi, "wilcoxon_p": wilcoxon_p(d),
            "n": int(d.size), "b_better": int((d > 0).sum()), "a_better": int((d < 0).sum()),
            "ties": int((d == 0).sum())}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj.tolist()


def verdict(test: dict[str, Any], kind: str = "order", alpha: float = ALPHA) -> str:
    """The declared rule (module docstring) on a :func:`paired_test` of "A < B" (``kind`` "order") or
    "B reaches about A" (``kind`` "reaches")."""
    above = test["ci_low"] > 0 and test["wilcoxon_p"] < alpha
    below = test["ci_high"] < 0 and test["wilcoxon_p"] < alpha
    if kind == "reaches":
        return "does not hold" if below else "holds"
    if kind != "order":
        raise ValueError(f"kind must be 'order' or 'reaches', got {kind!r}")
    return "holds" if above else "does not hold" if below else "within noise"
