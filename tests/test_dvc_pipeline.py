"""The pipeline under real DVC and git, as a team runs it across days (issue: operate across runs).

One temporary git + DVC repository (a copy of the project's code, dvc.yaml, params.yaml and .dvc/) with tiny
planted-interest data (ingest.source = synthetic) and two models, shared by the tests of this module:

- the week: ``dvc repro`` -> commit -> promote (GTO) -> an experiment with a changed param -> ``dvc exp show`` /
  ``dvc metrics diff`` / ``dvc params diff`` show both -> apply the better one -> the gate approved it over prod ->
  commit -> promote -> ``dvc push`` -> fresh clone + ``dvc pull`` -> ``dvc status`` clean, the prod bundle loads and
  serves without training -> rollback restores the previous prod;
- each failure case keeps the last good state under ``dvc repro`` (DVC would delete a stage's outputs first);
- changing ``train.models`` touches only what reads it, and report/export use exactly this run's models;
- the input file at ``ingest.path`` is a dependency.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
       "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
       "OMP_NUM_THREADS": "1"}
TRAIN_MODELS = ["most_popular", "youtube_dnn"]


def sh(work: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), cwd=work, env=ENV, capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, f"{' '.join(args)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def dvc(work: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(work, str(VENV_BIN / "dvc"), *args, check=check)


def py(work: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(work, sys.executable, *args, check=check)


def read_params(work: Path) -> dict:
    return yaml.safe_load((work / "params.yaml").read_text())


def write_params(work: Path, params: dict) -> None:
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def digest(path: Path) -> str:
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return hashlib.sha256(b"".join(str(p.relative_to(path)).encode() + p.read_bytes()
                                   for p in sorted(path.rglob("*")) if p.is_file())).hexdigest()


def make_repo(base: Path) -> Path:
    work = base / "repo"
    work.mkdir(parents=True)
    for name in ("components", "models"):
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, work / name)
    (work / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", work / ".dvc" / "config")
    shutil.copytree(ROOT / ".dvc" / "plots", work / ".dvc" / "plots")
    (work / ".dvc" / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"]["source"] = "synthetic"
    params["ingest"]["synthetic"].update(num_users=400, num_items=150, num_categories=6, mean_length=20)
    # day one: a deliberately under-trained model, so that the experiment of day two is clearly better
    params["train"].update(models=TRAIN_MODELS, max_epochs=1, lr=0.0002, batch_size=128, patience=1)
    params["evaluate"].update(bootstrap_samples=50, lambda_sweep=[0.0, 0.5], faiss_check=False)
    params["export"]["candidate"] = "youtube_dnn"
    params["gates"].update(floors={"recall@50": 0.01}, baseline=None,
                           test={"method": "bootstrap", "alpha": 0.05, "samples": 2000})
    write_params(work, params)
    sh(work, "git", "init", "-q", "-b", "main")
    sh(work, "git", "config", "user.email", "t@t")
    sh(work, "git", "config", "user.name", "t")
    dvc(work, "remote", "modify", "local", "url", str(base / "dvc-remote"))  # committed: a clone uses it too
    sh(work, "git", "add", "-A")
    sh(work, "git", "commit", "-qm", "project")
    return work


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    base = tmp_path_factory.mktemp("dvc_week")
    work = make_repo(base)
    first = dvc(work, "repro")
    for stage in ("fetch", "ingest", "validate", "split", "train@youtube_dnn", "evaluate@most_popular", "report",
                  "build_index@youtube_dnn", "export"):
        assert f"Running stage '{stage}'" in first.stdout, stage
    return {"work": work, "base": base}


def commit_all(work: Path, message: str) -> None:
    sh(work, "git", "add", "-A")
    sh(work, "git", "commit", "-qm", message)


def prod_bundle(work: Path) -> Path:
    return Path(py(work, "-m", "components.registry", "prod").stdout.strip())


def test_dvc_train_params_are_every_train_key_but_models():
    """Each train stage depends on the train keys it reads: all of TrainConfig but `models`."""
    from components.train import TrainConfig

    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["do"]
    listed = {p for p in stage["params"] if isinstance(p, str) and p.startswith("train.")}
    expected = {f"train.{f.name}" for f in dataclasses.fields(TrainConfig) if f.name != "models"}
    assert listed == expected


def test_a_week_of_operating_the_pipeline(repo):
    work, base = repo["work"], repo["base"]
    verdict = json.loads((work / "artifacts/export/verdict.json").read_text())
    assert verdict["promote"] is True and verdict["export"]["prod_bundle"] is None  # first model: floors only
    assert (work / "dvc.lock").exists() and (work / "artifacts/plots/recall_at_n.png").exists()
    # promotion is a step after the commit: it registers the commit whose dvc.lock records the bundle
    refused = py(work, "-m", "components.registry", "promote", check=False)
    assert refused.returncode == 2 and "commit the run first" in refused.stderr
    commit_all(work, "day 1")
    py(work, "-m", "components.registry", "promote")
    v1 = prod_bundle(work)
    assert v1.name == verdict["export"]["candidate_bundle"]
    # nothing changed: DVC has nothing to do and the history is in git
    assert "Running stage" not in dvc(work, "repro").stdout
    assert json.loads(dvc(work, "status", "--json").stdout) == {}

    # day 2: an experiment with a changed param, compared with the committed run
    dvc(work, "exp", "run", "-n", "better", "-S", "train.lr=0.005", "-S", "train.max_epochs=4")
    shown = json.loads(dvc(work, "exp", "show", "--json").stdout)
    text = json.dumps(shown)
    assert '"better"' in text and "recall@50" in text
    dvc(work, "exp", "apply", "better")
    pdiff = json.loads(dvc(work, "params", "diff", "--json").stdout)
    assert pdiff["params.yaml"]["train.lr"]["new"] == 0.005
    mdiff = json.loads(dvc(work, "metrics", "diff", "--json").stdout)
    recall = mdiff["artifacts/eval/youtube_dnn/metrics.json"]["test.recall@50"]
    assert recall["new"] > recall["old"]
    plots = dvc(work, "plots", "diff", "HEAD", "--json", check=False)
    assert plots.returncode == 0, plots.stderr
    verdict2 = json.loads((work / "artifacts/export/verdict.json").read_text())
    assert verdict2["export"]["prod_bundle"] == v1.name  # gated against prod, not a model of the same run
    assert verdict2["promote"] is True, (work / "artifacts/export/verdict.md").read_text()
    assert json.loads((work / "artifacts/export/ab.json").read_text())["control"]["bundle"] == v1.name
    commit_all(work, "day 2: lr 0.005, 4 epochs")
    py(work, "-m", "components.registry", "promote")
    v2 = prod_bundle(work)
    assert v2.name == verdict2["export"]["candidate_bundle"] != v1.name
    # a re-export of the same weights is a no-op: same bundle id, nothing to promote
    again = py(work, "-m", "components.export", "--params", "params.yaml")
    assert "already prod" in (again.stdout + again.stderr) + (work / "artifacts/export/verdict.md").read_text()
    sh(work, "git", "checkout", "--", "artifacts/export")

    # share: DVC remote for the artifacts, git (with the registry's tags) for the history
    dvc(work, "push")
    origin = base / "origin.git"
    sh(base, "git", "init", "-q", "--bare", str(origin))
    sh(work, "git", "push", "-q", str(origin), "main", "--tags")
    clone = base / "clone"
    sh(base, "git", "clone", "-q", "-b", "main", str(origin), str(clone))
    dvc(clone, "pull")
    assert json.loads(dvc(clone, "status", "--json").stdout) == {}  # nothing to retrain
    served = prod_bundle(clone)
    assert served.name == v2.name
    from components.serving import Recommender

    rec = Recommender.load(served)
    items = rec.recommend(["1", "2", "3"], None, 10)
    assert len(items) == 10

    # roll back: the previous prod is served again, its bundle still pullable
    out = py(clone, "-m", "components.registry", "rollback")
    assert v1.name in out.stdout
    assert prod_bundle(clone).name == v1.name
    assert len(Recommender.load(prod_bundle(clone)).recommend(["1"], None, 5)) == 5
    history = py(clone, "-m", "components.registry", "history").stdout
    assert history.count("event=assign prod") == 3 and history.count("event=unassign prod") == 2
    assert history.count("event=registration") == 2


def _fails_and_keeps(work: Path, change, outputs: list[str], expect: str) -> None:
    """Apply ``change`` to params, check `dvc repro` fails naming ``expect``, the ``outputs`` are untouched."""
    saved = (work / "params.yaml").read_text()
    before = {o: digest(work / o) for o in outputs}
    params = read_params(work)
    change(params)
    write_params(work, params)
    try:
        res = dvc(work, "repro", check=False)
        assert res.returncode != 0, res.stdout[-2000:]
        assert expect in res.stdout + res.stderr, (res.stdout + res.stderr)[-3000:]
        assert {o: digest(work / o) for o in outputs} == before
    finally:
        (work / "params.yaml").write_text(saved)


def test_a_failed_split_keeps_the_last_split_and_its_stats(repo):
    def change(p):
        p["split"]["min_user_interactions"] = 100000  # the k-core leaves no user: split refuses
    _fails_and_keeps(repo["work"], change, ["data/split", "dvc.lock"], "split")
    assert (repo["work"] / "data/split/stats.json").is_file()


def test_a_diverged_training_keeps_the_last_model_and_metrics(repo):
    def change(p):
        p["train"]["lr"] = 1e30
    work = repo["work"]
    _fails_and_keeps(work, change, ["artifacts/models/youtube_dnn/model.pt", "artifacts/models/youtube_dnn/train.json",
                                    "artifacts/eval/youtube_dnn/metrics.json"], "youtube_dnn")


def test_a_failed_ingest_keeps_the_canonical_data_and_the_input_path_is_a_dependency(repo):
    work = repo["work"]
    log = work / "data" / "inbox" / "log.csv"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("user,item,ts\n1,2,3\n")

    def change(p):
        p["ingest"].update(source="csv", path="data/inbox/log.csv")
    _fails_and_keeps(work, change, ["data/canonical", "data/validation"], "user_id")
    # the input file is a dependency: editing it invalidates ingest (params as they are in that state)
    saved = (work / "params.yaml").read_text()
    try:
        params = read_params(work)
        params["ingest"].update(source="csv", path="data/inbox/log.csv",
                                columns={"user_id": "user", "item_id": "item", "timestamp": "ts",
                                         "behavior": None, "category": None})
        write_params(work, params)
        dvc(work, "commit", "-f", "ingest", check=False)  # record this input as the stage's state
        assert "ingest" not in json.loads(dvc(work, "status", "--json", "ingest").stdout)
        log.write_text("user,item,ts\n1,2,3\n4,5,6\n")
        assert "ingest" in json.loads(dvc(work, "status", "--json", "ingest").stdout)
    finally:
        (work / "params.yaml").write_text(saved)
        shutil.rmtree(log.parent)
        sh(work, "git", "checkout", "--", "dvc.lock")


def test_invalid_data_is_never_left_beside_a_passing_report(repo):
    work = repo["work"]

    def change(p):
        p["validate"]["min_rows"] = 10**9
    saved_split = digest(work / "data/split")
    _fails_and_keeps(work, change, ["data/split"], "validation failed")
    report = json.loads((work / "data/validation/result.json").read_text())
    assert report["success"] is False
    assert digest(work / "data/split") == saved_split  # split never ran on rejected data
    dvc(work, "repro", "validate")  # params restored: validation passes again
    assert json.loads((work / "data/validation/result.json").read_text())["success"] is True


def test_changing_train_models_touches_only_what_reads_it(repo):
    work = repo["work"]
    saved = (work / "params.yaml").read_text()
    try:
        before = set(json.loads(dvc(work, "status", "--json").stdout))  # what earlier tests left changed
        params = read_params(work)
        params["train"]["models"] = ["youtube_dnn", "most_popular"]  # the same models, another order
        write_params(work, params)
        changed = set(json.loads(dvc(work, "status", "--json").stdout))
        assert changed - before <= {"report", "export"}, changed - before
        assert not any(s.startswith("train@") for s in changed - before)
        # a run whose candidate is not among its models: a clear params error, nothing stale is promoted
        params["train"]["models"] = ["most_popular"]
        write_params(work, params)
        res = dvc(work, "repro", "export", "--single-item", check=False)
        assert res.returncode != 0 and "export.candidate" in res.stderr + res.stdout
        res = py(work, "-m", "components.report", "--params", "params.yaml", "--out", str(repo["base"] / "r.md"),
                 "--plots", str(repo["base"] / "plots"))
        assert "1 model(s) (most_popular)" in res.stdout
        assert "youtube_dnn" not in (repo["base"] / "r.md").read_text()
    finally:
        (work / "params.yaml").write_text(saved)
