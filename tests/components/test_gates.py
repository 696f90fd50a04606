"""Quality gates on MovieLens-100K (the rule-level tests are in test_gate_decision.py) — a trained model passes the
floors of params.yaml and a broken candidate (random item embeddings) is blocked by export."""
from __future__ import annotations

import json

import pytest
import torch

from components import evaluate as E
from components import export as X
from components.config import ParamsError, from_dict, load_params, section
from components.gates import GateFailed, GatesConfig, check, enforce
from components.io import DataError
from test_evaluate import ROOT


# ---------------------------------------------------------------------------------------- MovieLens-100K
@pytest.fixture(scope="module")
def movielens(tmp_path_factory):
    """ML-100K ingested and split with the project's params; YouTube DNN trained briefly (3 epochs, large
    batch, lr 0.01 — the CI budget); MostPopular counted; a broken copy of the YouTube DNN with random
    item embeddings; all three evaluated."""
    import models
    from components import ingest, split, train

    root = tmp_path_factory.mktemp("ml100k")
    params = load_params(ROOT / "params.yaml")
    seed = params["seed"]
    icfg = from_dict(ingest.IngestConfig, {**params["ingest"], "source": "movielens-100k",
                                           "raw_dir": str(ROOT / "data" / "raw" / "ml-100k")}, "ingest")
    ingest.run(icfg, root / "canonical", seed=seed)
    split.run(section(params, "split", split.SplitConfig), root / "canonical", root / "split", seed=seed)
    tcfg = from_dict(train.TrainConfig, {**params["train"], "max_epochs": 3, "batch_size": 512, "lr": 0.01,
                                         "num_negatives": 20, "patience": 3, "progress_refresh": 0,
                                         "accelerator": "cpu", "devices": 1, "strategy": "auto",
                                         "num_nodes": 1, "num_workers": 0}, "train")
    zoo = {"youtube_dnn": {"arch": "youtube_dnn", "dim": 32}, "most_popular": {"arch": "most_popular"}}
    for name in zoo:
        train.run(tcfg, train.ModelConfig.from_params({"models": zoo}, name), root / "split",
                  root / "models" / name, seed=seed)
    broken = models.load_model(root / "models" / "youtube_dnn" / "model.pt")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for emb in broken.items.modules():
            if isinstance(emb, torch.nn.Embedding):
                emb.weight.normal_(0.0, emb.weight.shape[1] ** -0.5, generator=g)
    (root / "models" / "broken").mkdir()
    models.save_model(broken, root / "models" / "broken" / "model.pt")
    ecfg = from_dict(E.EvaluateConfig, {"topn": [20, 50], "bootstrap_samples": 200, "lambda_sweep": [],
                                        "faiss_check": False, "heatmap_users": 0}, "evaluate")
    metrics = {name: E.run(ecfg, root / "split", root / "models" / name, root / "eval" / name,
                           max_len=tcfg.max_len, seed=seed) for name in ("youtube_dnn", "most_popular", "broken")}
    return {"root": root, "params": params, "metrics": metrics}


def test_trained_model_passes_the_floors_of_params_yaml(movielens):
    gates = section(movielens["params"], "gates", GatesConfig)
    m = movielens["metrics"]
    result = check(gates, m["youtube_dnn"], None)
    assert result.passed, result.describe()
    assert check(gates, m["most_popular"], None).passed
    # a random-embedding model is far below: the floor can fail
    assert not check(gates, m["broken"], None).passed
    assert m["broken"]["test.recall@50"] < m["youtube_dnn"]["test.recall@50"] / 2


def test_export_promotes_a_good_candidate_and_blocks_a_broken_one(movielens, tmp_path, capsys):
    root, params = movielens["root"], movielens["params"]
    p = tmp_path / "params.yaml"

    def write_params(candidate):
        doc = {k: params[k] for k in ("seed", "evaluate", "gates", "models")}
        doc["export"] = {**params["export"], "candidate": candidate, "baseline": "most_popular"}
        p.write_text(json.dumps(doc))  # JSON is YAML

    args = ["--params", str(p), "--models-dir", str(root / "models"), "--eval-dir", str(root / "eval"),
            "--index-dir", str(tmp_path / "index"), "--split", str(root / "split"),
            "--bundles", str(tmp_path / "bundles"), "--dvc-lock", str(tmp_path / "dvc.lock")]
    write_params("youtube_dnn")
    X.main(args)  # first run: MostPopular becomes champion, the trained YouTube DNN passes and is promoted
    champion = json.loads((tmp_path / "bundles" / "champion").read_text())
    assert champion["model"] == "youtube_dnn"
    ab = json.loads((tmp_path / "bundles" / "ab.json").read_text())
    assert ab["control"]["model"] == "most_popular" and ab["treatment"]["model"] == "youtube_dnn"
    capsys.readouterr()

    write_params("broken")
    with pytest.raises(SystemExit) as exc:
        X.main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 1
    m = movielens["metrics"]
    assert "[FAIL] floor test.recall@50" in err and f"{m['broken']['test.recall@50']:.4f}" in err
    assert "[FAIL] relative test.recall@50" in err and f"{m['youtube_dnn']['test.recall@50']:.4f}" in err
    assert json.loads((tmp_path / "bundles" / "champion").read_text()) == champion  # not promoted
    assert not any(d.name.startswith("broken-") for d in (tmp_path / "bundles").iterdir())
