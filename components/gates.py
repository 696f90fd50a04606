"""Model-quality gates: whether a candidate may replace the champion (TFX Evaluator "blessing" before the
Pusher runs).

Two kinds of rule, from the ``gates`` section of params.yaml:
- absolute floors: ``candidate[metric] >= floor`` for every listed metric (e.g. ``test.recall@50: 0.10``);
- a relative rule against the champion: ``candidate[metric] >= champion[metric] - tolerance``.

Every metric here is "higher is better" (recall, NDCG, hit rate, precision, diversity). A gate that cannot
fail is not a gate: the tests show a random-embedding candidate is blocked. A metric missing from the
candidate's metrics is a data error (the gate cannot be evaluated), not a pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from components.io import DataError


@dataclass(frozen=True)
class RelativeRule:
    metric: str = "test.recall@50"
    """metric compared with the champion's."""
    tolerance: float = 0.02
    """the candidate may be at most this much (absolute) below the champion."""

    def __post_init__(self) -> None:
        if not self.metric.strip():
            raise ValueError("relative.metric must name a metric key, e.g. test.recall@50")
        if not (self.tolerance >= 0 and math.isfinite(self.tolerance)):
            raise ValueError(f"relative.tolerance must be a finite number >= 0, got {self.tolerance}")


@dataclass(frozen=True)
class GatesConfig:
    floors: dict[str, float] = field(default_factory=lambda: {"test.recall@50": 0.10})
    """absolute minimum per metric key of the candidate's metrics.json."""
    relative: RelativeRule | None = field(default_factory=RelativeRule)
    """rule against the current champion; null = none."""

    def __post_init__(self) -> None:
        for key, value in self.floors.items():
            if not math.isfinite(value):
                raise ValueError(f"floors.{key} must be a finite number, got {value}")


class GateFailed(RuntimeError):
    """The candidate failed a gate; ``result`` holds every rule with both figures."""

    def __init__(self, result: "GateResult"):
        super().__init__(result.describe())
        self.result = result


@dataclass(frozen=True)
class RuleResult:
    rule: str            # e.g. "floor test.recall@50" / "relative test.recall@50"
    metric: str
    candidate: float
    reference: float     # the floor, or the champion's value
    threshold: float     # what the candidate had to reach
    passed: bool

    def describe(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        if self.rule.startswith("floor"):
            return (f"[{verdict}] {self.rule}: candidate {self.candidate:.4f} vs floor {self.reference:.4f}")
        return (f"[{verdict}] {self.rule}: candidate {self.candidate:.4f} vs champion {self.reference:.4f} "
                f"(must be >= {self.threshold:.4f} = champion - tolerance)")


@dataclass(frozen=True)
class GateResult:
    passed: bool
    rules: list[RuleResult]
    candidate: str = ""
    champion: str = ""

    def describe(self) -> str:
        head = (f"gate {'passed' if self.passed else 'FAILED'}: candidate {self.candidate or '?'} vs champion "
                f"{self.champion or '(none)'}")
        return "\n".join([head, *(r.describe() for r in self.rules)])

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "candidate": self.candidate, "champion": self.champion,
                "rules": [r.__dict__ for r in self.rules]}


def _value(metrics: Mapping[str, Any], key: str, who: str) -> float:
    if key not in metrics:
        raise DataError(f"{who} metrics have no key '{key}' (have e.g. "
                        f"{', '.join(sorted(k for k in metrics if '_ci' not in k)[:6])})")
    value = float(metrics[key])
    if math.isnan(value):
        raise DataError(f"{who} metric '{key}' is NaN")
    return value


def check(cfg: GatesConfig, candidate: Mapping[str, Any], champion: Mapping[str, Any] | None, *,
          candidate_name: str = "", champion_name: str = "") -> GateResult:
    """Evaluate every rule; the result passes only if all rules pass.

    Args:
        cfg: the gates section.
        candidate: the candidate's metrics (metrics.json of evaluate).
        champion: the champion's metrics, or None when there is no champion (relative rule skipped).
    Raises:
        DataError: a rule's metric is missing from the candidate's (or champion's) metrics.
    """
    rules: list[RuleResult] = []
    for key, floor in sorted(cfg.floors.items()):
        c = _value(candidate, key, "candidate")
        rules.append(RuleResult(f"floor {key}", key, c, floor, floor, c >= floor))
    if cfg.relative is not None and champion is not None:
        key = cfg.relative.metric
        c = _value(candidate, key, "candidate")
        ref = _value(champion, key, "champion")
        threshold = ref - cfg.relative.tolerance
        rules.append(RuleResult(f"relative {key}", key, c, ref, threshold, c >= threshold))
    return GateResult(all(r.passed for r in rules), rules, candidate_name, champion_name)


def enforce(cfg: GatesConfig, candidate: Mapping[str, Any], champion: Mapping[str, Any] | None, **names: str
            ) -> GateResult:
    """:func:`check`, raising :class:`GateFailed` when any rule fails."""
    result = check(cfg, candidate, champion, **names)
    if not result.passed:
        raise GateFailed(result)
    return result
