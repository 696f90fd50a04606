"""The whole Kubeflow pipeline, end to end, with kfp.local's subprocess runner on small synthetic data.

One real run (module fixture: ingest -> validate -> split -> train x2 in a ParallelFor -> evaluate ->
build_index -> report -> gate -> export), then two cheap runs in the same pipeline root with KFP caching on:
one whose gate cannot pass (an unreachable floor), which must skip export and promote nothing while every
unchanged task comes from the cache; one whose validation fails, which must stop before split.
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
MODELS = ("youtube_dnn", "mind")
PASSING_GATE = ("gates.floors={test.recall@50: 0.0}", "gates.relative.tolerance=1.0")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kfp_local")


@pytest.fixture(scope="module")
def passed(root) -> run_local.LocalRun:
    params = run_local.local_params(REPO / "params.yaml", list(PASSING_GATE))
    assert params["train"]["models"] == list(MODELS) and params["ingest"]["source"] == "synthetic"
    return run_local.run(params, pipeline_root=root, cache=True)


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


def test_full_run_succeeds_and_promotes_the_candidate(passed):
    assert passed.succeeded, passed.error
    assert passed.gate_passed is True and passed.exit_code == 0
    champion = json.loads((passed.bundle / "champion").read_text())
    manifest = json.loads((passed.bundle / champion["bundle"] / "manifest.json").read_text())
    assert champion["model"] == manifest["model"] == "mind"
    ab = json.loads((passed.bundle / "ab.json").read_text())
    assert ab["treatment"]["bundle"] == champion["bundle"]
    assert ab["control"]["model"] == "youtube_dnn"  # the baseline trained in the same run is the champion
    for name in ("weights.safetensors", "user_tower.onnx", "item_embeddings.npy", "index.faiss", "vocab.json"):
        assert (passed.bundle / champion["bundle"] / name).is_file(), name
    assert "PASSED" in passed.verdict


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
        assert f"| {variant} |" in report


def test_an_unreachable_floor_promotes_nothing_and_reuses_the_cache(passed, root):
    assert passed.succeeded
    params = run_local.local_params(REPO / "params.yaml", ["gates.floors={test.recall@50: 1.01}"])
    blocked = run_local.run(params, pipeline_root=root, cache=True)
    assert blocked.succeeded, blocked.error  # the run itself is fine: the gate decided
    assert blocked.gate_passed is False and blocked.bundle is None and blocked.exit_code == 1
    assert not (blocked.run_dir / "export").exists()
    assert "BLOCKED" in blocked.verdict and "1.0100" in blocked.verdict and "FAIL" in blocked.verdict
    metrics = _metrics_metadata(blocked.run_dir / "gate")
    assert metrics["passed"] == 0.0 and metrics["floor test.recall@50.passed"] == 0.0
    # only the steps whose inputs changed ran again (gates reaches check_params and gate); the rest was cached
    assert blocked.tasks == ["check-params", "gate"]


def test_a_failed_validation_stops_the_run_before_split(passed, root):
    assert passed.succeeded
    params = run_local.local_params(REPO / "params.yaml", ["validate.min_rows=100000000"])
    failed = run_local.run(params, pipeline_root=root, cache=True)
    assert not failed.succeeded and "validate" in failed.error
    assert failed.exit_code == 1 and failed.bundle is None and failed.gate_passed is None
    assert not (failed.run_dir / "split").exists()
    assert not list(failed.run_dir.glob("for-loop-*"))


def test_cli_rejects_a_params_typo_before_running_anything(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipelines.run_local", "--pipeline-root", str(tmp_path),
                           "--param", "train.max_epoch=3"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "max_epoch" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())
