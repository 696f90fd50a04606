"""ab: analyse a served A/B test — the exposure log of ``components.serve`` plus an outcome log.

    python -m components.ab --exposures exposures-*.jsonl --outcomes clicks.jsonl [--metric conversion]
        [--served-items-only] [--confidence 0.95] [--out ab_report.json]

Inputs:
- exposures: JSON lines ``{"user", "arm", "bundle", "time", "items"}``, one per served request (what
  ``python -m components.serve --exposure-log`` appends);
- outcomes: clicks/consumptions as JSON lines or parquet (``.parquet``) with a column ``user`` and optionally
  ``time`` (ISO 8601 or epoch seconds) and ``item``.

The unit is the user (the A/B split randomises users). A user's outcomes count from their first exposure on
(when outcomes carry a ``time``); with ``--served-items-only`` only outcomes on an item that user was served
count (needs ``item``). Per-user value: ``conversion`` = 1 if at least one outcome counts, else 0;
``outcomes_per_user`` = how many count. Users exposed in both arms (the spec changed mid-test) are
dropped and reported.

Per arm: users, the mean per-user value and its normal-approximation confidence interval
``mean ± z · s / √n`` (``s`` the sample standard deviation, ddof = 1); the difference treatment − control
with Welch's standard error ``√(s_t²/n_t + s_c²/n_c)``, its interval, the relative lift and a two-sided
z-test p-value. Bad input exits 2 naming the file and column.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from components.io import DataError, cli_main, write_json

METRICS = ("conversion", "outcomes_per_user")
ARMS = ("control", "treatment")


def _to_epoch(values, path: Path) -> np.ndarray:
    """ISO 8601 strings or epoch seconds -> float epoch seconds (DataError naming ``time`` otherwise)."""
    import pandas as pd

    s = pd.Series(list(values))
    try:
        if pd.api.types.is_numeric_dtype(s):
            return s.astype(float).to_numpy()
        return (pd.to_datetime(s, utc=True, format="ISO8601") - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
    except (ValueError, TypeError) as exc:
        raise DataError(f"not ISO 8601 times or epoch seconds ({exc})", path=path, column="time") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path=path)
    rows = []
    with open(path, encoding="utf-8") as f:
        for k, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"line {k} is not valid JSON ({exc})", path=path) from None
            if not isinstance(rec, dict):
                raise DataError(f"line {k} is not a JSON object", path=path)
            rows.append(rec)
    return rows


def load_exposures(path: Path):
    """DataFrame user (str), arm, bundle, time (epoch s), items (list) from the exposure log."""
    import pandas as pd

    rows = read_jsonl(path)
    if not rows:
        raise DataError("no exposures", path=path)
    df = pd.DataFrame(rows)
    for col in ("user", "arm", "time"):
        if col not in df.columns:
            raise DataError("missing", path=path, column=col)
    bad = df.index[df["user"].isna()].tolist()
    if bad:
        raise DataError("exposures without a user (A/B analysis needs user ids)", path=path, column="user",
                        rows=[k + 1 for k in bad])
    bad = df.index[~df["arm"].isin(ARMS)].tolist()
    if bad:
        raise DataError(f"arm must be one of {list(ARMS)}", path=path, column="arm", rows=[k + 1 for k in bad])
    df["user"] = df["user"].astype(str)
    df["time"] = _to_epoch(df["time"], path)
    if "items" not in df.columns:
        df["items"] = [[] for _ in range(len(df))]
    return df


def load_outcomes(path: Path):
    """DataFrame user (str), optional time (epoch s), optional item (str) from JSON lines or parquet."""
    import pandas as pd

    from components.io import read_parquet

    path = Path(path)
    if path.suffix == ".parquet":
        df = read_parquet(path)
    else:
        df = pd.DataFrame(read_jsonl(path))
    if "user" not in df.columns:
        raise DataError("missing", path=path, column="user")
    bad = df.index[df["user"].isna()].tolist()
    if bad:
        raise DataError("empty user ids", path=path, column="user", rows=bad)
    df = df.copy()
    df["user"] = df["user"].astype(str)
    if "time" in df.columns:
        df["time"] = _to_epoch(df["time"], path)
    if "item" in df.columns:
        df["item"] = df["item"].astype(str)
    return df


def analyse(exposures, outcomes, *, metric: str = "conversion", served_items_only: bool = False,
            confidence: float = 0.95, outcomes_path: Path | None = None) -> dict[str, Any]:
    """Per-arm metric with confidence intervals and the treatment − control difference (module docstring).

    Args:
        exposures: :func:`load_exposures`' frame; outcomes: :func:`load_outcomes`' frame.
        metric: "conversion" or "outcomes_per_user".
        served_items_only: count only outcomes on items served to that user (needs ``item``).
        confidence: two-sided level of the intervals, in (0, 1).
    Returns:
        {"metric", "confidence", "arms": {arm: {"users", "mean", "ci"}}, "difference": {...},
         "users_in_both_arms", "exposures"}.
    """
    from scipy.stats import norm

    if metric not in METRICS:
        raise DataError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    if not 0 < confidence < 1:
        raise DataError(f"confidence must lie in (0, 1), got {confidence}")
    if served_items_only and "item" not in outcomes.columns:
        raise DataError("--served-items-only needs an item column", path=outcomes_path, column="item")
    arms_of = exposures.groupby("user")["arm"].agg(lambda a: set(a))
    both = sorted(u for u, a in arms_of.items() if len(a) > 1)
    exp = exposures[~exposures["user"].isin(both)]
    first = exp.groupby("user")["time"].min()
    arm = exp.groupby("user")["arm"].first()
    served = exp.groupby("user")["items"].agg(lambda lists: {str(i) for lst in lists for i in (lst or [])})
    out = outcomes[outcomes["user"].isin(first.index)]
    if "time" in out.columns:
        out = out[out["time"].to_numpy() >= first.loc[out["user"]].to_numpy()]
    if served_items_only:
        keep = [item in served.loc[u] for u, item in zip(out["user"], out["item"])]
        out = out[np.asarray(keep, dtype=bool)]
    counts = out.groupby("user").size().reindex(first.index, fill_value=0)
    value = (counts > 0).astype(float) if metric == "conversion" else counts.astype(float)
    z = float(norm.ppf(0.5 + confidence / 2))
    arms: dict[str, dict[str, Any]] = {}
    for a in ARMS:
        v = value[arm == a].to_numpy()
        n = len(v)
        mean = float(v.mean()) if n else float("nan")
        sd = float(v.std(ddof=1)) if n > 1 else float("nan")
        se = sd / math.sqrt(n) if n > 1 else float("nan")
        arms[a] = {"users": n, "mean": mean, "sd": sd, "se": se, "ci": [mean - z * se, mean + z * se]}
    c, t = arms["control"], arms["treatment"]
    diff = t["mean"] - c["mean"]
    se = math.sqrt(t["se"] ** 2 + c["se"] ** 2)
    p = float(2 * norm.sf(abs(diff) / se)) if se > 0 else float("nan")
    return {"metric": metric, "confidence": confidence, "served_items_only": served_items_only, "arms": arms,
            "difference": {"treatment_minus_control": diff, "se": se, "ci": [diff - z * se, diff + z * se],
                           "relative_lift": diff / c["mean"] if c["mean"] else float("nan"), "p_value": p},
            "users_in_both_arms": len(both), "exposures": int(len(exposures))}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m components.ab", description=__doc__.split("\n")[0])
    p.add_argument("--exposures", type=Path, nargs="+", required=True,
                   help="JSON lines from components.serve (several files: one per replica)")
    p.add_argument("--outcomes", type=Path, required=True, help="JSON lines or .parquet: user[, time, item]")
    p.add_argument("--metric", choices=METRICS, default="conversion")
    p.add_argument("--served-items-only", action="store_true")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--out", type=Path, help="also write the report as JSON here")
    args = p.parse_args(argv)

    def body() -> None:
        import pandas as pd

        exposures = pd.concat([load_exposures(p) for p in args.exposures], ignore_index=True)
        report = analyse(exposures, load_outcomes(args.outcomes), metric=args.metric,
                         served_items_only=args.served_items_only, confidence=args.confidence,
                         outcomes_path=args.outcomes)
        lvl = f"{100 * report['confidence']:g}%"
        print(f"A/B {report['metric']}{' (served items only)' if args.served_items_only else ''}, "
              f"{lvl} CI; {report['exposures']} exposures, {report['users_in_both_arms']} users in both arms dropped")
        for a, s in report["arms"].items():
            print(f"  {a:>9}: {s['users']} users, {s['mean']:.4f} [{s['ci'][0]:.4f}, {s['ci'][1]:.4f}]")
        d = report["difference"]
        print(f"  treatment - control: {d['treatment_minus_control']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}], "
              f"lift {d['relative_lift']:+.1%}, p = {d['p_value']:.3g}")
        if args.out is not None:
            write_json(args.out, report)

    cli_main(body)


if __name__ == "__main__":
    main()
