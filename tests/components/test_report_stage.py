"""The report stage: exactly this run's train.models (a stale folder of another model is ignored), the long-form
plot data DVC's top-level plots draw (x/y columns and a model column), and offline PNG twins."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from components import report as R
from components.config import ParamsError
from components.io import DataError


def _fake_eval(root, model, recall50, epochs=3):
    e = root / "eval" / model
    e.mkdir(parents=True)
    metrics = {"test.recall@20": recall50 / 2, "test.recall@50": recall50, "test.recall@50_ci_low": 0.0, "test.recall@50_ci_high": 1.0,
               "test.ndcg@50": recall50 / 3, "test.hitrate@50": recall50, "test.num_users": 10}
    (e / "metrics.json").write_text(json.dumps(metrics))
    (e / "lambda_sweep.json").write_text(json.dumps([
        {"lambda": 0.0, "test.recall@50": recall50, "test.diversity@50": 0.2},
        {"lambda": 0.5, "test.recall@50": recall50 - 0.01, "test.diversity@50": 0.4}]))
    logs = root / "models" / model / "logs"
    logs.mkdir(parents=True)
    rows = []
    for ep in range(epochs):
        rows.append({"epoch": ep, "step": ep * 10 + 5, "train/loss": 1.0 / (ep + 1), "val/recall@50": None})
        rows.append({"epoch": ep, "step": ep * 10 + 9, "train/loss": None, "val/recall@50": 0.1 * (ep + 1)})
    pd.DataFrame(rows).to_csv(logs / "metrics.csv", index=False)


def test_reports_exactly_train_models_with_long_form_plot_data(tmp_path):
    for model, r in (("youtube_dnn", 0.4), ("mind", 0.35), ("stale_model", 0.9)):
        _fake_eval(tmp_path, model, r)
    params = {"train": {"models": ["mind", "youtube_dnn"]}}
    out, plots = tmp_path / "report.md", tmp_path / "plots"
    assert R.run(params, tmp_path / "eval", tmp_path / "models", out, plots) == ["mind", "youtube_dnn"]
    text = out.read_text()
    assert "| mind |" in text and "| youtube_dnn |" in text and "stale_model" not in text
    assert text.index("| mind |") < text.index("| youtube_dnn |")  # train.models order
    recall = pd.read_csv(plots / "recall_at_n.csv")
    assert list(recall.columns) == ["model", "n", "recall"]
    assert set(recall["model"]) == {"mind", "youtube_dnn"}
    assert recall[(recall.model == "youtube_dnn") & (recall.n == 50)]["recall"].item() == pytest.approx(0.4)
    lam = pd.read_csv(plots / "lambda_tradeoff.csv")
    assert list(lam.columns) == ["model", "lambda", "recall@50", "diversity@50"] and len(lam) == 4
    train = pd.read_csv(plots / "training.csv")
    assert list(train.columns) == ["model", "epoch", "val/recall@50"]
    assert train[train.model == "mind"]["val/recall@50"].tolist() == pytest.approx([0.1, 0.2, 0.3])
    for name in R.PLOT_FILES:
        assert (plots / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the x/y of dvc.yaml's top-level plots are columns of these files
    import yaml
    from test_evaluate import ROOT

    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    for entry in spec:
        if isinstance(entry, dict):
            (path, props), = entry.items()
            if path.endswith(".csv"):
                cols = pd.read_csv(plots / path.split("/")[-1]).columns
                assert props["x"] in cols and props["y"] in cols and props["template"] == "models"


def test_a_model_of_train_models_without_evaluation_is_named(tmp_path):
    _fake_eval(tmp_path, "mind", 0.3)
    with pytest.raises(DataError, match="umi/metrics.json"):
        R.run({"train": {"models": ["mind", "umi"]}}, tmp_path / "eval", tmp_path / "models",
              tmp_path / "r.md", tmp_path / "plots")
    assert not (tmp_path / "plots").exists() and not (tmp_path / "r.md").exists()
    for bad in (None, [], ["mind", "mind"], "mind"):
        with pytest.raises(ParamsError, match="train.models"):
            R.run_models({"train": {"models": bad}})
