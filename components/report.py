"""The report stage: this run's models side by side — the Markdown table and the plot data of all models on one
chart (Recall@N, the λ accuracy/diversity trade-off, the validation curve per epoch), with PNG twins.

It reads exactly the variants of ``train.models`` (never whatever else lies under ``artifacts/``: a folder left by
an earlier run with other models is ignored), in that order, and fails naming the file when one of them has no
evaluation. The plot data is long-form CSV with a ``model`` column, which the top-level ``plots:`` of dvc.yaml
draws with the ``models`` template (.dvc/plots/models.json); ``dvc plots diff`` adds the revision. The PNGs are
drawn here with matplotlib from the same data, so the charts can be looked at with no network (DVC's HTML loads
vega from a CDN; it embeds the PNGs as they are).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from components.config import ParamsError, load_params
from components.io import DataError, atomic_dir, cli_main, read_json

PLOT_FILES = ("recall_at_n", "lambda_tradeoff", "training")


def run_models(params: dict[str, Any]) -> list[str]:
    """``train.models`` of a loaded params dict, checked (a non-empty list of distinct variant names)."""
    models = (params.get("train") or {}).get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
        raise ParamsError(f"train.models: expected a non-empty list of model variant names, got {models!r}")
    if len(set(models)) != len(models):
        raise ParamsError(f"train.models: a variant is listed twice: {models}")
    return models


def plot_tables(models: Sequence[str], eval_dir: Path, models_dir: Path):
    """The three long-form tables (pandas) of ``models``: recall_at_n, lambda_tradeoff, training."""
    import pandas as pd

    recall, lam, train = [], [], []
    for m in models:
        metrics = read_json(Path(eval_dir) / m / "metrics.json")
        for key, value in metrics.items():
            if key.startswith("test.recall@") and "_ci" not in key:
                recall.append({"model": m, "n": int(key.split("@")[1]), "recall": float(value)})
        sweep_path = Path(eval_dir) / m / "lambda_sweep.json"
        if sweep_path.exists():
            for row in read_json(sweep_path):
                if "test.recall@50" in row and "test.diversity@50" in row:
                    lam.append({"model": m, "lambda": float(row["lambda"]), "recall@50": row["test.recall@50"],
                                "diversity@50": row["test.diversity@50"]})
        log = Path(models_dir) / m / "logs" / "metrics.csv"
        if log.exists():
            try:
                df = pd.read_csv(log)
            except Exception as exc:  # noqa: BLE001 - name the file
                raise DataError(f"unreadable training log ({exc})", path=log) from None
            if "epoch" in df and "val/recall@50" in df:
                per_epoch = df.dropna(subset=["val/recall@50"]).groupby("epoch", as_index=False)["val/recall@50"].max()
                for _, row in per_epoch.iterrows():
                    train.append({"model": m, "epoch": int(row["epoch"]), "val/recall@50": float(row["val/recall@50"])})
    recall_df = pd.DataFrame(recall, columns=["model", "n", "recall"]).sort_values(["model", "n"], kind="stable")
    lam_df = pd.DataFrame(lam, columns=["model", "lambda", "recall@50", "diversity@50"])
    train_df = pd.DataFrame(train, columns=["model", "epoch", "val/recall@50"])
    order = {m: i for i, m in enumerate(models)}
    tables = {}
    for name, df in (("recall_at_n", recall_df), ("lambda_tradeoff", lam_df), ("training", train_df)):
        tables[name] = df.sort_values("model", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    return tables


def _png(df, x: str, y: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for model, part in df.groupby("model", sort=False):
        ax.plot(part[x], part[y], marker="o", label=model)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(df):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version string: same data, same bytes
    plt.close(fig)


def run(params: dict[str, Any], eval_dir: Path, models_dir: Path, out_md: Path, plots_dir: Path) -> list[str]:
    """Write the table and the plots of ``train.models``; returns the models reported."""
    from components.evaluate import report

    models = run_models(params)
    dirs = {m: Path(eval_dir) / m for m in models}
    missing = [str(d / "metrics.json") for d in dirs.values() if not (d / "metrics.json").is_file()]
    if missing:
        raise DataError(f"train.models lists {len(missing)} model(s) with no evaluation: {', '.join(missing)}")
    tables = plot_tables(models, eval_dir, models_dir)
    with atomic_dir(plots_dir) as tmp:
        for name in PLOT_FILES:
            tables[name].to_csv(tmp / f"{name}.csv", index=False)
        _png(tables["recall_at_n"], "n", "recall", "Test Recall@N", tmp / "recall_at_n.png")
        _png(tables["lambda_tradeoff"], "diversity@50", "recall@50", "Recall@50 vs Diversity@50 over λ",
             tmp / "lambda_tradeoff.png")
        _png(tables["training"], "epoch", "val/recall@50", "Validation Recall@50 per epoch", tmp / "training.png")
        (tmp / "models.json").write_text(json.dumps(models) + "\n")
    report(dirs, out_md)
    return models


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m components.report",
                                     description="Side-by-side table and plots of exactly the run's train.models.")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--eval-dir", type=Path, default=Path("artifacts/eval"))
    parser.add_argument("--models-dir", type=Path, default=Path("artifacts/models"))
    parser.add_argument("--out", type=Path, default=Path("artifacts/report.md"))
    parser.add_argument("--plots", type=Path, default=Path("artifacts/plots"))
    args = parser.parse_args(argv)

    def body() -> None:
        models = run(load_params(args.params), args.eval_dir, args.models_dir, args.out, args.plots)
        print(f"report: {len(models)} model(s) ({', '.join(models)}) -> {args.out}, {args.plots}")

    cli_main(body)


if __name__ == "__main__":
    main()
