"""Quality gates on MovieLens-100K (the rule-level tests are in test_gate_decision.py) — a trained model passes the
floors of params.yaml and a broken candidate (random item embeddings) is blocked by export."""
from __future__ import annotations

import json

import pytest
import torch

from components import evaluate as E
from components import export as X
from components.config import from_dict, load_params, section
from components.gates import GatesConfig, decide, load_evidence
from components.registry import Registry
from test_evaluate import ROOT


# ---------------------------------------------------------------------------------------- MovieLens-100K
@pytest.fixture(scope="module")
def movielens(tmp_path_factory):
    """ML-100K ingested and split with the project's params; YouTube DNN trained briefly (8 epochs, batch 256,
    batch, lr 0.01 — the CI budget); MostPopular counted; a broken copy of the YouTube DNN with random
    item embeddings; all three evaluated."""
    import models
    from components import ingest, split, train

    root = tmp_path_factory.mktemp("ml100k")
    params = load_params(ROOT / "params.yaml")
    seed = params["seed"]
    icfg = from_dict(ingest.IngestConfig, {**params["ingest"], "source": "movielens-100k",
                                           "path": str(ROOT / "data" / "raw" / "ml-100k")}, "ingest")
    ingest.run(icfg, root / "canonical", seed=seed)
    split.run(section(params, "split", split.SplitConfig), root / "canonical", root / "split", seed=seed)
    tcfg = from_dict(train.TrainConfig, {**params["train"], "max_epochs": 8, "batch_size": 256, "lr": 0.01,
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


def _evidence(root, name):
    return load_evidence(name, root / "eval" / name / "per_user.parquet", root / "eval" / name / "metrics.json")


def test_params_yaml_gate_passes_a_trained_model_and_stops_mostpopular_and_a_broken_one(movielens):
    """The gate of params.yaml on the real data: the floors and the paired test against MostPopular."""
    gates = section(movielens["params"], "gates", GatesConfig)
    root, seed = movielens["root"], movielens["params"]["seed"]
    base = _evidence(root, "most_popular")
    good = decide(gates, _evidence(root, "youtube_dnn"), None, base, seed=seed)
    assert good.promote, good.describe()
    # MostPopular itself cannot pass a rule relative to MostPopular (a floor below it only stops broken models)
    assert not decide(gates, _evidence(root, "most_popular"), None, base, seed=seed).promote
    broken = decide(gates, _evidence(root, "broken"), None, base, seed=seed)
    assert not broken.promote
    m = movielens["metrics"]
    assert m["broken"]["test.recall@50"] < m["youtube_dnn"]["test.recall@50"] / 2
    # against a production model: the broken candidate is blocked by the paired test too
    vs = decide(gates, _evidence(root, "broken"), _evidence(root, "youtube_dnn"), base, seed=seed)
    assert not vs.promote and any(r.kind == "vs_prod" and not r.passed for r in vs.rules)


def test_export_approves_a_good_candidate_and_blocks_a_broken_one(movielens, tmp_path, capsys):
    root, params = movielens["root"], movielens["params"]
    p = tmp_path / "params.yaml"

    def write_params(candidate):
        doc = {k: params[k] for k in ("seed", "evaluate", "gates", "models")}
        doc["train"] = {"models": ["youtube_dnn", "most_popular", "broken"]}
        doc["export"] = {**params["export"], "candidate": candidate}
        p.write_text(json.dumps(doc))  # JSON is YAML

    registry = tmp_path / "registry"
    args = ["--params", str(p), "--models-dir", str(root / "models"), "--eval-dir", str(root / "eval"),
            "--index-dir", str(tmp_path / "index"), "--split", str(root / "split"),
            "--bundles", str(tmp_path / "bundles"), "--dvc-lock", str(tmp_path / "dvc.lock"),
            "--out", str(tmp_path / "export"), "--registry", str(registry), "--fail-if-blocked"]
    write_params("youtube_dnn")
    X.main(args)  # first run: no prod; the trained YouTube DNN beats MostPopular and becomes prod
    reg = Registry.location(registry)
    prod = reg.prod()
    assert prod is not None and prod.bundle.startswith("youtube_dnn-")
    capsys.readouterr()

    write_params("broken")
    with pytest.raises(SystemExit) as exc:
        X.main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "NOT approved" in err
    verdict = json.loads((tmp_path / "export" / "verdict.json").read_text())
    assert verdict["promote"] is False and verdict["prod"] == prod.bundle
    assert reg.prod() == prod and len(reg.versions()) == 1  # not promoted, nothing registered
    assert "broken" in (tmp_path / "export" / "verdict.md").read_text()
