"""The whole Kubeflow pipeline, end to end, with kfp.local's subprocess runner on small synthetic data.

One real run (module fixture: ingest -> validate -> split -> train x2 in a ParallelFor -> evaluate ->
build_index -> report -> gate_export against an empty registry location), then two cheap runs in the same
pipeline root with KFP caching on: one whose gate cannot pass (an unreachable floor), which must publish nothing
while every unchanged task comes from the cache; one whose validation fails, which must stop before split.
The three-run registry lifecycle (promote, block against prod, promote, rollback) is test_lifecycle.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipelines import run_local

REPO = Path(__file__).resolve().parents[2]
MODELS = ("most_popular", "mind")
#: floors only (a first candidate has no prod to beat); 2 epochs of MIND do not beat most_popular on 30 users
PASSING_GATE = ("gates={metric: recall@50, floors: {recall@50: 0.05}, baseline: null}",)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kfp_local")


@pytest.fixture(scope="module")
def registry(root) -> Path:
    return root / "registry"


@pytest.fixture(scope="module")
def passed(root, registry) -> run_local.LocalRun:
    params = run_local.local_params(REPO / "params.yaml", list(PASSING_GATE))
    assert params["train"]["models"] == list(MODELS) and params["ingest"]["source"] == "synthetic"
    return run_local.run(params, pipeline_root=root, cache=True, registry=registry)


def _outputs(task_dir: Path) -> dict:
    return json.loads((task_dir / "executor_output.json").read_text())


def _metrics_metadata(task_dir: Path, name: str = "metrics") -> dict:
    return _outputs(task_dir)["artifacts"][name]["artifacts"][0]["metadata"]


def _loop_tasks(run_dir: Path, task: str) -> dict[str, Path]:
    """{variant: task folder} for one task of the ParallelFor, via the artifacts' variant metadata."""
    out = {}
    for d in sorted(run_dir.glob(f"for-loop-*-iteration-*/{task}")):
        arts = _outputs(d)["artifacts"]
        variants = {a["artifacts"][0]["metadata"].get("variant") for a in arts.values()} - {None}
        (variant,) = variants
        out[variant] = d
    return out


def test_full_run_succeeds_and_publishes_the_first_candidate_to_the_registry(passed, registry):
    from components.registry import Registry

    assert passed.succeeded, passed.error
    assert passed.promoted is True and passed.exit_code() == 0
    manifest = json.loads((passed.bundle / "manifest.json").read_text())
    assert manifest["model"] == "mind"
    reg = Registry.location(registry)
    assert reg.prod().bundle == manifest["name"] == passed.prod
    for name in ("weights.safetensors", "user_tower.onnx", "item_embeddings.npy", "index.faiss", "vocab.json"):
        assert (reg.bundle_path(reg.prod()) / name).is_file(), name
    ab = json.loads((passed.run_dir / "gate-export" / "result" / "ab.json").read_text())
    assert ab["active"] is False  # no prod before this run: nothing to A/B against
    assert "PROMOTE" in passed.verdict and passed.verdict_json["prod"] is None


def test_data_steps_write_their_typed_artifacts(passed):
    run = passed.run_dir
    inter = pd.read_parquet(run / "ingest" / "data" / "interactions.parquet")
    assert len(inter) > 1000 and {"user_id", "item_id", "timestamp"} <= set(inter.columns)
    result = json.loads((run / "validate" / "result" / "result.json").read_text())
    assert result["success"] is True
    html = (run / "validate" / "data_docs").read_text()
    assert "<html" in html.lower() and "Great Expectations" in html
    assert _metrics_metadata(run / "validate")["success"] == 1.0
    vocab = json.loads((run / "split" / "split_data" / "vocab.json").read_text())
    assert vocab["num_items"] > 100
    assert _metrics_metadata(run / "ingest")["interactions"] == len(inter)


def test_one_train_evaluate_and_index_task_per_model(passed):
    run = passed.run_dir
    trained, evaluated, indexed = (_loop_tasks(run, t) for t in ("train", "evaluate", "build-index"))
    assert set(trained) == set(evaluated) == set(indexed) == set(MODELS)
    for variant in MODELS:
        model_dir = trained[variant] / "model"
        assert (model_dir / "model.pt").is_file()
        assert json.loads((model_dir / "train.json").read_text())["variant"] == variant
        metrics = json.loads((evaluated[variant] / "evaluation" / "metrics.json").read_text())
        assert 0.0 <= metrics["test.recall@50"] <= 1.0
        logged = _metrics_metadata(evaluated[variant])  # Metrics values as the KFP UI shows them
        assert logged["test.recall@50"] == pytest.approx(metrics["test.recall@50"])
        assert json.loads((evaluated[variant] / "metrics").read_text()) == logged
        assert (indexed[variant] / "faiss_index" / "index.faiss").is_file()
    report = (run / "report" / "report").read_text()
    for variant in MODELS:
        assert f"| `{variant}` |" in report  # label column, then the variant name


def test_an_unreachable_floor_promotes_nothing_and_reuses_the_cache(passed, root):
    assert passed.succeeded
    params = run_local.local_params(REPO / "params.yaml", [
        "gates={metric: recall@50, floors: {recall@50: 1.0}, baseline: null, vs_prod: null}"])
    # a fresh registry: against the first one the same (cached) model is already prod, a different verdict
    blocked = run_local.run(params, pipeline_root=root, cache=True, registry=root / "registry-2")
    assert blocked.succeeded, blocked.error  # the run itself is fine: the gate decided
    assert blocked.promoted is False and blocked.bundle is None
    assert blocked.exit_code() == 0 and blocked.exit_code(fail_if_blocked=True) == 1
    assert blocked.prod is None and blocked.versions == []  # nothing was published
    assert "BLOCKED" in blocked.verdict and "1.0000" in blocked.verdict and "FAIL" in blocked.verdict
    metrics = _metrics_metadata(blocked.run_dir / "gate-export")
    assert metrics["promote"] == 0.0 and metrics["floor recall@50.passed"] == 0.0
    # only the steps whose inputs changed ran again (gates reaches check_params) plus gate_export, never cached
    assert blocked.tasks == ["check-params", "gate-export"]


def test_a_failed_validation_stops_the_run_before_split(passed, root, registry):
    assert passed.succeeded
    params = run_local.local_params(REPO / "params.yaml", ["validate.min_rows=100000000"])
    failed = run_local.run(params, pipeline_root=root, cache=True, registry=registry)
    assert not failed.succeeded and "validate" in failed.error
    assert failed.exit_code() == 1 and failed.bundle is None and failed.promoted is None
    assert not (failed.run_dir / "split").exists()
    assert not list(failed.run_dir.glob("for-loop-*"))


def test_cli_rejects_a_params_typo_before_running_anything(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipelines.run_local", "--pipeline-root", str(tmp_path),
                           "--registry", str(tmp_path / "registry"), "--param", "train.max_epoch=3"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "max_epoch" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())
