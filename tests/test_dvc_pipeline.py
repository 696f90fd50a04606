"""The whole pipeline under real DVC: `dvc repro` from scratch, a no-op second run, and params-level
invalidation (changing a split key re-runs split and what follows, never ingest or validate).

Runs on a copy of the project with tiny planted-interest data (ingest.source = synthetic), two epochs and
three models, so it exercises every stage of dvc.yaml in about a minute.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def _dvc(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(VENV_BIN / "dvc"), *args], cwd=work, env=env, capture_output=True, text=True,
                          timeout=900)


def _project_copy(tmp_path: Path) -> Path:
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("components", "models"):
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", work / "dvc.yaml")
    raw = work / "data" / "raw" / "ml-100k"
    raw.mkdir(parents=True)
    (raw / "README").write_text("unused: this copy ingests synthetic data\n")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"]["source"] = "synthetic"
    params["ingest"]["synthetic"].update(num_users=300, num_items=150, num_categories=6, mean_length=20)
    params["train"].update(models=["most_popular", "youtube_dnn", "mind"], max_epochs=2, batch_size=128)
    params["evaluate"].update(bootstrap_samples=50, lambda_sweep=[0.0, 0.5])
    params["export"].update(candidate="mind", baseline="youtube_dnn")
    params["gates"] = {"floors": {"test.recall@50": 0.0}, "relative": {"metric": "test.recall@50",
                                                                      "tolerance": 1.0}}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return work


def test_dvc_repro_runs_every_stage_then_is_a_noop_and_invalidates_precisely(tmp_path):
    work = _project_copy(tmp_path)
    assert _dvc(work, "init", "--no-scm", "-q").returncode == 0

    first = _dvc(work, "repro")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    for stage in ("ingest", "validate", "split", "train@mind", "evaluate@youtube_dnn", "report",
                  "build_index@mind", "export"):
        assert f"Running stage '{stage}'" in first.stdout, stage
    assert (work / "data" / "validation" / "result.json").exists()
    stats = json.loads((work / "data" / "split" / "stats.json").read_text())
    assert stats  # the split's DVC metrics
    assert (work / "artifacts" / "report.md").read_text().count("mind") >= 1

    metrics = _dvc(work, "metrics", "show", "--json")
    assert metrics.returncode == 0, metrics.stderr
    shown = json.dumps(json.loads(metrics.stdout))
    assert "test.recall@50" in shown

    second = _dvc(work, "repro")
    assert second.returncode == 0, second.stderr
    assert "Running stage" not in second.stdout, second.stdout

    params = yaml.safe_load((work / "params.yaml").read_text())
    params["split"]["min_item_interactions"] += 1
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = _dvc(work, "status", "--json")
    assert status.returncode == 0, status.stderr
    changed = set(json.loads(status.stdout))
    assert "split" in changed
    assert not {"ingest", "validate"} & changed, changed
