"""Model-quality gate: may the candidate replace the production model? (TFX Evaluator "blessing" before the
Pusher runs.)

The gate never reads a summary number blindly. It takes each model's **per-user** metrics on the current test
users (``artifacts/eval/<model>/per_user.parquet``, rows with ``split == "test"``), all evaluated with the
current code, and decides with three kinds of rule from the ``gates`` section of params.yaml:

1. **floors** (``gates.floors``): the candidate's mean over the test users must reach each floor
   (``mean >= floor``). A sanity net for broken models; it applies to every candidate, the first one too.
2. **baseline** (``gates.baseline``): a paired one-sided test against a reference model trained on the same
   users in this run (MostPopular): H0: ``mean_u(cand_u - base_u) <= min_effect``; the rule passes only if H0
   is rejected at level ``gates.test.alpha``. MostPopular itself (or a random-scoring model, which is worse)
   cannot pass it, unlike an absolute floor set below MostPopular.
3. **vs_prod** (``gates.vs_prod``): the same paired test against the current production model, re-evaluated
   on the same test users. With ``rule: superiority``, H0: ``mean_u(cand_u - prod_u) <= min_effect``
   (min_effect >= 0): promote only a model shown better. With ``rule: non_inferiority``, H0:
   ``mean_u(cand_u - prod_u) <= -margin`` (margin > 0): promote unless it may be worse by ``margin`` or more.
   Without a production model (the first run) this rule is not applied: the first candidate passing the
   floors and the baseline rule is promoted.

The candidate is promoted iff every applied rule passes. Requiring every one of several level-alpha tests to
reject (an intersection-union test) keeps the overall false-promotion rate at most alpha: no correction needed.

The paired tests (``gates.test.method``), on the per-user differences ``d_u = cand_u - ref_u`` over the
``n`` test users and the H0 boundary ``theta`` (``min_effect``, or ``-margin``):

- ``bootstrap``: paired percentile bootstrap. ``samples`` resamples of the n users with replacement (the same
  users for both models, i.e. resampling ``d_u``); the one-sided ``1 - alpha`` lower confidence bound of the
  mean difference is the ``alpha`` quantile of the resampled means (numpy's default linear interpolation).
  **Reject H0 iff lower bound > theta.** Also reported: the share of resampled means ``<= theta`` (the
  bootstrap p-value; informative, the decision is the bound).
- ``permutation``: paired sign-flip test of H0: ``d_u - theta`` symmetric about 0. Statistic
  ``T = sum_u (d_u - theta)``; ``T* = sum_u s_u (d_u - theta)`` with random signs ``s_u``. If ``2**n <=
  samples`` all ``2**n`` sign vectors are enumerated and ``p = #{T* >= T} / 2**n`` (exact); otherwise
  ``p = (1 + #{T* >= T}) / (samples + 1)`` over ``samples`` random sign vectors (a valid Monte Carlo p-value).
  **Reject H0 iff p <= alpha.** No confidence bound is reported.

Both are seeded (``seed``: params.yaml's top-level seed), so one set of inputs gives one verdict.

Every value is validated before any decision: per-user metric values must be real numbers (not strings,
booleans or missing), finite, and within [0, 1] (every gated metric -- recall, ndcg, hitrate, precision,
diversity -- is a share and "higher is better"); the frames must hold each user once and the same set of
test users for every model (paired), else :class:`~components.io.DataError` naming the model, the column and
example users. Summary metrics given with the evidence (``metrics.json``: ``test.<metric>``) are validated too
and must equal the per-user mean. A gate config that cannot fail for a first candidate (no floor and no
baseline rule) or that contradicts itself is a :class:`~components.config.ParamsError`, never a pass.

The :class:`Verdict` holds both models' figures, every rule with its test, and the decision; it renders as JSON
(CI) and Markdown (the KFP UI).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import numpy as np

from components.config import ParamsError
from components.config import to_dict as config_dict
from components.io import DataError

METRIC_FAMILIES = ("recall", "ndcg", "hitrate", "precision", "diversity")
_METRIC = re.compile(r"^(recall|ndcg|hitrate|precision|diversity)@([1-9][0-9]*)$")
_MAX_CELLS = 4_000_000  # resample block size (rows x users) so a big test set does not hold samples x n at once


def _check_metric_name(name: str, key: str) -> None:
    if not isinstance(name, str) or not _METRIC.match(name):
        hint = ""
        if isinstance(name, str) and name.startswith("test."):
            hint = f" (name the per-user column of the test users: '{name[5:]}')"
        raise ValueError(f"{key}: {name!r} is not a gated metric; expected <family>@<N> with family one of "
                         f"{', '.join(METRIC_FAMILIES)}, e.g. 'recall@50'{hint}")


# ------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class PairedTestConfig:
    method: Literal["bootstrap", "permutation"] = "bootstrap"
    """bootstrap (paired percentile, one-sided lower bound) or permutation (paired sign-flip p-value)."""
    alpha: float = 0.05
    """one-sided level of every paired test (baseline and vs_prod), in (0, 0.5]."""
    samples: int = 10000
    """bootstrap resamples / random sign flips (exact enumeration when 2**n_users <= samples), >= 100."""

    def __post_init__(self) -> None:
        if not (0.0 < self.alpha <= 0.5):
            raise ValueError(f"alpha must be in (0, 0.5] (one-sided level), got {self.alpha}")
        if self.samples < 100:
            raise ValueError(f"samples must be >= 100, got {self.samples}")


@dataclass(frozen=True)
class BaselineRule:
    model: str = "most_popular"
    """reference model trained and evaluated on the same users in this run (must be in train.models)."""
    min_effect: float = 0.0
    """the candidate must beat it by more than this (absolute, metric units), >= 0."""

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise ValueError("model must name a model of train.models, e.g. most_popular")
        if not (math.isfinite(self.min_effect) and 0.0 <= self.min_effect < 1.0):
            raise ValueError(f"min_effect must be in [0, 1), got {self.min_effect}")


@dataclass(frozen=True)
class VsProdRule:
    rule: Literal["superiority", "non_inferiority"] = "superiority"
    """superiority: promote iff shown better than prod by > min_effect; non_inferiority: iff shown > -margin."""
    min_effect: float = 0.0
    """(superiority) the smallest improvement worth a promotion, absolute in metric units, >= 0."""
    margin: float | None = None
    """(non_inferiority, required there) how much worse than prod is tolerated, > 0; null for superiority."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_effect) and 0.0 <= self.min_effect < 1.0):
            raise ValueError(f"min_effect must be in [0, 1) (a negative one is a non-inferiority margin: "
                             f"use rule: non_inferiority, margin: ...), got {self.min_effect}")
        if self.rule == "superiority" and self.margin is not None:
            raise ValueError("margin is for rule: non_inferiority; superiority uses min_effect (set margin: null)")
        if self.rule == "non_inferiority":
            if self.margin is None or not (math.isfinite(self.margin) and 0.0 < self.margin < 1.0):
                raise ValueError(f"margin in (0, 1) is required by rule: non_inferiority, got {self.margin}")
            if self.min_effect != 0.0:
                raise ValueError("min_effect is for rule: superiority; non_inferiority uses margin")

    @property
    def theta(self) -> float:
        """H0 boundary of the mean difference cand - prod."""
        return -self.margin if self.rule == "non_inferiority" else self.min_effect


@dataclass(frozen=True)
class GatesConfig:
    metric: str = "recall@50"
    """per-user metric of the test users that the paired tests compare."""
    floors: dict[str, float] = field(default_factory=lambda: {"recall@50": 0.10})
    """minimum of the candidate's mean over the test users, per metric; each in (0, 1]."""
    test: PairedTestConfig = field(default_factory=PairedTestConfig)
    """the paired per-user test used by the baseline and vs_prod rules."""
    baseline: BaselineRule | None = field(default_factory=BaselineRule)
    """paired superiority test against a reference model of this run; null = none."""
    vs_prod: VsProdRule | None = field(default_factory=VsProdRule)
    """paired test against the current production model (skipped while there is none); null = none."""

    def __post_init__(self) -> None:
        _check_metric_name(self.metric, "metric")
        for key, floor in self.floors.items():
            _check_metric_name(key, f"floors.{key}")
            if not (math.isfinite(floor) and 0.0 < floor <= 1.0):
                raise ValueError(f"floors.{key} must be in (0, 1] (0 cannot fail, above 1 cannot pass), "
                                 f"got {floor}")
        if not self.floors and self.baseline is None:
            raise ValueError("the gate cannot fail for a first candidate: set floors and/or baseline "
                             "(vs_prod alone promotes any first model, e.g. random embeddings)")

    @property
    def gated_metrics(self) -> list[str]:
        """Every metric a rule reads from the candidate, sorted."""
        return sorted({self.metric, *self.floors})

    def require_models(self, models: Iterable[str], key: str = "train.models") -> None:
        """ParamsError unless ``baseline.model`` is one of ``models`` (the models trained in this run)."""
        names = sorted(models)
        if self.baseline is not None and self.baseline.model not in names:
            raise ParamsError(f"gates.baseline.model: {self.baseline.model!r} is not in {key} "
                              f"({', '.join(names) or 'none'}); the baseline model must be trained in the run")


# --------------------------------------------------------------------------------------------- evidence
@dataclass(frozen=True)
class Evidence:
    """One model's evaluation on the test users."""

    name: str
    """bundle id (``mind-3f2a...``) or variant name (``most_popular``)."""
    per_user: Any
    """pandas.DataFrame, one row per test user: ``user_id`` (str) and per-user metric columns (``recall@50``)."""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    """optional summary metrics of the same evaluation (metrics.json keys such as ``test.recall@50``)."""
    source: str = ""
    """where ``per_user`` was read from, for error messages."""


def load_evidence(name: str, per_user_parquet: Path, metrics_json: Path | None = None) -> Evidence:
    """Read evaluate's outputs for one model, keeping the test users.

    Args:
        name: the model's name in the verdict.
        per_user_parquet: ``artifacts/eval/<model>/per_user.parquet`` (columns ``user_id``, ``split``, metrics).
        metrics_json: that evaluation's ``metrics.json``, or None.
    Returns:
        Evidence with ``per_user`` = the ``split == "test"`` rows (``user_id`` as str, metric columns).
    Raises:
        DataError: missing/unreadable file, no ``user_id``/``split`` column, no test rows.
    """
    from components.io import read_json, read_parquet

    df = read_parquet(per_user_parquet)
    for column in ("user_id", "split"):
        if column not in df.columns:
            raise DataError(f"missing required column; found {list(df.columns)}", path=per_user_parquet,
                            column=column)
    test = df[df["split"] == "test"]
    if test.empty:
        splits = sorted(map(str, df["split"].dropna().unique()))
        raise DataError(f"no test users (split values: {splits})", path=per_user_parquet, column="split")
    keep = ["user_id", *(c for c in test.columns if _METRIC.match(str(c)))]
    per_user = test[keep].reset_index(drop=True)
    if per_user["user_id"].notna().all():
        per_user["user_id"] = per_user["user_id"].astype(str)
    metrics: Mapping[str, Any] = {}
    if metrics_json is not None:
        metrics = read_json(metrics_json)
        if not isinstance(metrics, dict):
            raise DataError(f"expected a JSON object, got {type(metrics).__name__}", path=metrics_json)
    return Evidence(name=name, per_user=per_user, metrics=metrics, source=str(per_user_parquet))


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _where(ev: Evidence, role: str) -> str:
    return f"{role} model '{ev.name}'" + (f" ({ev.source})" if ev.source else "")


def _user_ids(ev: Evidence, role: str) -> np.ndarray:
    import pandas as pd

    df = ev.per_user
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{_where(ev, role)}: per_user must be a pandas DataFrame, got {type(df).__name__}")
    if "user_id" not in df.columns:
        raise DataError(f"{_where(ev, role)}: per-user frame has no column 'user_id' (has {list(df.columns)})",
                        column="user_id")
    if df.empty:
        raise DataError(f"{_where(ev, role)}: no test users", column="user_id")
    ids = df["user_id"]
    if ids.isna().any():
        raise DataError(f"{_where(ev, role)}: {int(ids.isna().sum())} missing user ids", column="user_id",
                        rows=list(np.flatnonzero(ids.isna().to_numpy())))
    ids = ids.astype(str).to_numpy()
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise DataError(f"{_where(ev, role)}: {len(dup)} user ids appear more than once (one row per test user "
                        f"expected)", column="user_id", rows=list(dup))
    return ids


def _values(ev: Evidence, column: str, role: str, ids: np.ndarray) -> np.ndarray:
    """The validated float64 values of ``column`` (real, finite, in [0, 1])."""
    import pandas as pd

    df = ev.per_user
    where = _where(ev, role)
    if column not in df.columns:
        have = [c for c in df.columns if c != "user_id"]
        raise DataError(f"{where}: per-user frame has no column '{column}' (has {have})", column=column)
    s = df[column]
    if pd.api.types.is_bool_dtype(s.dtype):
        raise DataError(f"{where}: values are booleans, not numbers", column=column)
    if pd.api.types.is_numeric_dtype(s.dtype):
        values = s.to_numpy(dtype=np.float64, na_value=np.nan)
    else:  # object / str: find the entries that are not real numbers
        raw = s.to_numpy(dtype=object)
        missing = [v is None or v is pd.NA for v in raw]
        bad = [i for i, v in enumerate(raw) if not (_is_real(v) or missing[i])]
        if bad:
            raise DataError(f"{where}: {len(bad)} values are not real numbers", column=column,
                            rows=[(str(ids[i]), raw[i]) for i in bad])
        values = np.array([np.nan if miss else float(v) for v, miss in zip(raw, missing)], dtype=np.float64)
    for what, mask in (("missing (None/NaN)", np.isnan(values)), ("infinite", np.isinf(values)),
                       ("outside [0, 1]", np.isfinite(values) & ((values < 0) | (values > 1)))):
        if mask.any():
            idx = np.flatnonzero(mask)
            raise DataError(f"{where}: {len(idx)} values are {what}", column=column,
                            rows=[(str(ids[i]), float(values[i])) for i in idx])
    return values


def _summary(ev: Evidence, metric: str, role: str, mean: float) -> None:
    """Validate ``metrics['test.<metric>']`` when present: a real number in [0, 1] equal to the per-user mean."""
    key = f"test.{metric}"
    if key not in ev.metrics:
        return
    v = ev.metrics[key]
    where = f"{role} model '{ev.name}' metrics"
    if not _is_real(v):
        raise DataError(f"{where}: '{key}' is {v!r} ({type(v).__name__}), not a number")
    v = float(v)
    if not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise DataError(f"{where}: '{key}' is {v}, not a finite number in [0, 1]")
    if abs(v - mean) > 1e-6:
        raise DataError(f"{where}: '{key}' = {v:.6f} contradicts the per-user mean {mean:.6f} over its "
                        f"{'test users'} (metrics and per-user rows must come from the same evaluation)")


# ------------------------------------------------------------------------------------------- the tests
def paired_bootstrap(diff: np.ndarray, theta: float, alpha: float, samples: int,
                     rng: np.random.Generator) -> tuple[float, float]:
    """Percentile bootstrap of the mean of paired differences.

    Returns:
        (lower, p): the one-sided ``1 - alpha`` lower bound (``alpha`` quantile of the resampled means) and
        the share of resampled means ``<= theta``.
    """
    n = len(diff)
    means = np.empty(samples)
    block = max(1, _MAX_CELLS // n)
    for start in range(0, samples, block):
        k = min(block, samples - start)
        means[start:start + k] = diff[rng.integers(0, n, size=(k, n))].mean(axis=1)  # (k,)
    return float(np.quantile(means, alpha)), float(np.mean(means <= theta))


def paired_permutation(diff: np.ndarray, theta: float, samples: int, rng: np.random.Generator
                       ) -> tuple[float, bool, int]:
    """One-sided paired sign-flip test of H0: ``diff - theta`` symmetric about 0, against mean > theta.

    Returns:
        (p, exact, flips): the p-value, whether all ``2**n`` sign vectors were enumerated, and how many.
    """
    x = np.asarray(diff, dtype=np.float64) - theta
    n = len(x)
    observed = x.sum()
    tol = 1e-9 * (1.0 + np.abs(x).sum())  # ties (T* == T up to rounding) count as extreme
    if n <= 20 and 2 ** n <= samples:
        codes = np.arange(2 ** n)[:, None]
        signs = ((codes >> np.arange(n)) & 1) * 2.0 - 1.0  # (2**n, n): every sign vector once
        return float(np.mean(signs @ x >= observed - tol)), True, 2 ** n
    count = 0
    block = max(1, _MAX_CELLS // n)
    for start in range(0, samples, block):
        k = min(block, samples - start)
        signs = rng.integers(0, 2, size=(k, n)) * 2.0 - 1.0  # (k, n)
        count += int(np.count_nonzero(signs @ x >= observed - tol))
    return (1 + count) / (samples + 1), False, samples


# ---------------------------------------------------------------------------------------------- verdict
@dataclass(frozen=True)
class PairedTest:
    method: str
    hypothesis: str      # e.g. "H0: mean(candidate - prod) <= 0.0000"
    n_users: int
    difference: float    # mean over users of candidate - reference
    theta: float         # H0 boundary of the mean difference
    alpha: float
    samples: int         # resamples / sign vectors used
    exact: bool          # permutation: all 2**n sign vectors enumerated
    ci_low: float | None  # bootstrap: one-sided 1 - alpha lower bound of the mean difference
    p_value: float


@dataclass(frozen=True)
class RuleResult:
    rule: str            # "floor recall@50" | "baseline most_popular" | "vs_prod <bundle>"
    kind: str            # floor | baseline | vs_prod
    metric: str
    candidate: float     # candidate's mean over the test users
    reference: float     # the floor, or the reference model's mean over the same users
    reference_name: str  # "floor" or the reference model's name
    threshold: float     # floor: the candidate's mean must be >= it; test: H0 boundary of the mean difference
    passed: bool
    test: PairedTest | None = None

    def describe(self) -> str:
        mark = "pass" if self.passed else "FAIL"
        if self.test is None:
            return (f"[{mark}] {self.rule}: candidate {self.candidate:.4f} "
                    f"{'>=' if self.passed else '<'} floor {self.reference:.4f}")
        t = self.test
        if t.ci_low is not None:
            stat = (f"{1 - t.alpha:.0%} lower bound {t.ci_low:+.4f} {'>' if self.passed else '<='} "
                    f"{t.theta:+.4f}")
        else:
            stat = f"p {t.p_value:.4g} {'<=' if self.passed else '>'} alpha {t.alpha:g}"
        return (f"[{mark}] {self.rule}: {self.metric} candidate {self.candidate:.4f} vs {self.reference_name} "
                f"{self.reference:.4f}, mean diff {t.difference:+.4f} on {t.n_users} users, {t.method}: {stat} "
                f"({t.hypothesis} {'rejected' if self.passed else 'not rejected'})")


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reasons: list[str]
    rules: list[RuleResult]
    candidate: str
    prod: str | None
    baseline: str | None
    metric: str
    n_users: int
    seed: int
    figures: dict[str, dict[str, float]]  # model name -> {metric: mean over the test users}
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (for CI and gate.json)."""
        return dataclasses.asdict(self)

    def describe(self) -> str:
        head = (f"gate {'PROMOTE' if self.promote else 'BLOCKED'}: candidate {self.candidate} vs prod "
                f"{self.prod or '(none yet)'}, baseline {self.baseline or '(none)'}; {self.n_users} test users")
        return "\n".join([head, *(r.describe() for r in self.rules)])

    def to_markdown(self) -> str:
        """The verdict for the KFP UI: the decision, both models' figures, every rule with its test."""
        decision = ("PROMOTE: the candidate replaces the production model" if self.promote
                    else "BLOCKED: the production model stays")
        models = [(self.candidate, "candidate"), *([(self.prod, "production")] if self.prod else []),
                  *([(self.baseline, "baseline")] if self.baseline else [])]
        metrics = sorted({m for f in self.figures.values() for m in f})
        lines = [f"# Quality gate: {decision}", "", f"**{'promote' if self.promote else 'blocked'}**: "
                 + "; ".join(self.reasons), "",
                 f"Mean over the same {self.n_users} test users, evaluated with the current code.", "",
                 "| model | role | " + " | ".join(metrics) + " |", "|---|---|" + "---:|" * len(metrics)]
        for name, role in models:
            fig = self.figures.get(name, {})
            lines.append(f"| {name} | {role} | "
                         + " | ".join(f"{fig[m]:.4f}" if m in fig else "" for m in metrics) + " |")
        lines += ["", "| rule | H0 / requirement | candidate | reference | mean diff | one-sided lower bound | p "
                  "| threshold | result |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in self.rules:
            t = r.test
            cells = [r.rule, t.hypothesis if t else f"mean >= {r.threshold:.4f}", f"{r.candidate:.4f}",
                     f"{r.reference:.4f} ({r.reference_name})", f"{t.difference:+.4f}" if t else "",
                     f"{t.ci_low:+.4f}" if t and t.ci_low is not None else "",
                     f"{t.p_value:.4g}" if t else "", f"{r.threshold:+.4f}" if t else f"{r.threshold:.4f}",
                     "pass" if r.passed else "**FAIL**"]
            lines.append("| " + " | ".join(cells) + " |")
        tests = [r.test for r in self.rules if r.test is not None]
        if tests:
            t = tests[0]
            how = ("paired percentile bootstrap: reject H0 iff the lower bound > threshold"
                   if t.method == "bootstrap" else "paired sign-flip permutation: reject H0 iff p <= alpha")
            lines += ["", f"Tests: {how}; alpha {t.alpha:g} (one-sided), "
                      f"{'exact, ' if t.exact else ''}{t.samples} samples, seed {self.seed}."]
        return "\n".join(lines) + "\n"


class GateFailed(RuntimeError):
    """The candidate failed a rule; ``verdict`` holds every rule with both figures."""

    def __init__(self, verdict: Verdict):
        super().__init__(verdict.describe())
        self.verdict = verdict


# ---------------------------------------------------------------------------------------------- decide
def _paired(cfg: GatesConfig, diff: np.ndarray, theta: float, hypothesis: str, stream: int, seed: int
            ) -> tuple[PairedTest, bool]:
    t = cfg.test
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream]))
    if t.method == "bootstrap":
        low, p = paired_bootstrap(diff, theta, t.alpha, t.samples, rng)
        test = PairedTest("bootstrap", hypothesis, len(diff), float(diff.mean()), theta, t.alpha, t.samples,
                          False, low, p)
        return test, low > theta
    p, exact, flips = paired_permutation(diff, theta, t.samples, rng)
    test = PairedTest("permutation", hypothesis, len(diff), float(diff.mean()), theta, t.alpha, flips, exact,
                      None, p)
    return test, p <= t.alpha


def decide(cfg: GatesConfig, candidate: Evidence, prod: Evidence | None, baseline: Evidence | None, *,
           seed: int) -> Verdict:
    """Validate every input, then apply the floors, the baseline rule and (with a prod model) the vs_prod rule.

    Args:
        cfg: the ``gates`` section.
        candidate: the candidate's test-user evaluation.
        prod: the production model's evaluation on the same test users, or None when there is none yet.
        baseline: the ``gates.baseline.model``'s evaluation on the same users (required when configured).
        seed: params.yaml's seed (the paired tests' resampling).
    Returns:
        The verdict (``promote`` iff every applied rule passed).
    Raises:
        DataError: a missing column, a non-numeric / non-finite / out-of-range value, duplicate users, frames
            that do not cover the same test users, or summary metrics contradicting the per-user rows.
        ParamsError: the baseline rule is configured but no baseline evidence was given.
    """
    if cfg.baseline is not None and baseline is None:
        raise ParamsError(f"gates.baseline.model: no evaluation of {cfg.baseline.model!r} was given; the "
                          "baseline model must be in train.models (or set gates.baseline: null)")
    others = [(role, ev) for role, ev in (("baseline", baseline if cfg.baseline else None),
                                          ("prod", prod if cfg.vs_prod else None)) if ev is not None]
    # --- validate everything before deciding anything
    ids = _user_ids(candidate, "candidate")
    order = np.argsort(ids, kind="stable")
    ids_sorted = ids[order]
    cand: dict[str, np.ndarray] = {}
    for m in cfg.gated_metrics:
        cand[m] = _values(candidate, m, "candidate", ids)[order]
        _summary(candidate, m, "candidate", float(cand[m].mean()))
    ref: dict[str, np.ndarray] = {}
    for role, ev in others:
        other_ids = _user_ids(ev, role)
        if len(other_ids) != len(ids) or not np.array_equal(np.sort(other_ids), ids_sorted):
            missing = np.setdiff1d(ids, other_ids)
            extra = np.setdiff1d(other_ids, ids)
            raise DataError(f"{_where(ev, role)} and candidate '{candidate.name}' were not evaluated on the same "
                            f"test users: {len(missing)} of the candidate's {len(ids)} users are missing, "
                            f"{len(extra)} others are extra (a paired test needs both evaluated on the current "
                            f"test split)", column="user_id", rows=[str(u) for u in (*missing[:3], *extra[:3])])
        values = _values(ev, cfg.metric, role, other_ids)[np.argsort(other_ids, kind="stable")]
        _summary(ev, cfg.metric, role, float(values.mean()))
        ref[role] = values
    # --- rules
    figures = {candidate.name: {m: float(v.mean()) for m, v in cand.items()}}
    rules: list[RuleResult] = []
    for m, floor in sorted(cfg.floors.items()):
        mean = figures[candidate.name][m]
        rules.append(RuleResult(f"floor {m}", "floor", m, mean, float(floor), "floor", float(floor),
                                mean >= floor))
    for role, ev in others:
        if role == "baseline":
            theta = cfg.baseline.min_effect
            stream = 0
        else:
            theta = cfg.vs_prod.theta
            stream = 1
        ref_name = "prod" if role == "prod" else "baseline"
        hypothesis = f"H0: mean(candidate - {ref_name}) <= {theta:+.4f}"
        test, passed = _paired(cfg, cand[cfg.metric] - ref[role], theta, hypothesis, stream, seed)
        ref_mean = float(ref[role].mean())
        figures.setdefault(ev.name, {})[cfg.metric] = ref_mean
        rules.append(RuleResult(f"{'vs_prod' if role == 'prod' else 'baseline'} {ev.name}",
                                "vs_prod" if role == "prod" else "baseline", cfg.metric,
                                figures[candidate.name][cfg.metric], ref_mean, ev.name, theta, passed, test))
    promote = all(r.passed for r in rules)
    failed = [r.rule for r in rules if not r.passed]
    reasons = ([f"failed: {', '.join(failed)}"] if failed else [f"all {len(rules)} rules passed"])
    if cfg.vs_prod is not None and prod is None:
        reasons.append("no production model yet: floors and baseline rule only")
    elif cfg.vs_prod is None and prod is not None:
        reasons.append("gates.vs_prod is null: the production model was not compared")
    return Verdict(promote=promote, reasons=reasons, rules=rules, candidate=candidate.name,
                   prod=prod.name if prod is not None else None,
                   baseline=baseline.name if (baseline is not None and cfg.baseline) else None,
                   metric=cfg.metric, n_users=int(len(ids)), seed=int(seed), figures=figures,
                   config=config_dict(cfg))


def enforce(cfg: GatesConfig, candidate: Evidence, prod: Evidence | None, baseline: Evidence | None, *,
            seed: int) -> Verdict:
    """:func:`decide`, raising :class:`GateFailed` when the candidate is not promoted."""
    verdict = decide(cfg, candidate, prod, baseline, seed=seed)
    if not verdict.promote:
        raise GateFailed(verdict)
    return verdict


def write_verdict(verdict: Verdict, json_path: str | Path, markdown_path: str | Path | None = None) -> None:
    """Write the verdict as JSON (CI) and, if given, Markdown (KFP UI), each atomically."""
    from components.io import atomic_path, write_json

    write_json(json_path, verdict.to_dict())
    if markdown_path is not None:
        with atomic_path(markdown_path) as tmp:
            tmp.write_text(verdict.to_markdown())


# ------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> None:
    """``python -m components.gates``: decide from evaluate's folders; exit 1 when blocked, 2 on bad input."""
    import sys

    from components.config import load_params, section
    from components.io import cli_main

    parser = argparse.ArgumentParser(prog="python -m components.gates", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--candidate", type=Path, required=True, help="the candidate's evaluate folder")
    parser.add_argument("--prod", type=Path, help="the production model's evaluate folder on the same split")
    parser.add_argument("--baseline", type=Path, help="the baseline's evaluate folder (gates.baseline.model)")
    parser.add_argument("--json", type=Path, help="write the verdict JSON here")
    parser.add_argument("--markdown", type=Path, help="write the verdict Markdown here")
    args = parser.parse_args(argv)
    promoted = []

    def body() -> None:
        params = load_params(args.params)
        cfg = section(params, "gates", GatesConfig)
        seed = params.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ParamsError(f"seed: expected an integer, got {seed!r}")

        def ev(folder: Path | None) -> Evidence | None:
            if folder is None:
                return None
            metrics = folder / "metrics.json"
            return load_evidence(folder.name, folder / "per_user.parquet", metrics if metrics.exists() else None)

        verdict = decide(cfg, ev(args.candidate), ev(args.prod), ev(args.baseline), seed=seed)
        if args.json:
            write_verdict(verdict, args.json, args.markdown)
        elif args.markdown:
            args.markdown.parent.mkdir(parents=True, exist_ok=True)
            args.markdown.write_text(verdict.to_markdown())
        print(verdict.describe(), file=sys.stdout if verdict.promote else sys.stderr)
        promoted.append(verdict.promote)

    cli_main(body)
    if not promoted[0]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
