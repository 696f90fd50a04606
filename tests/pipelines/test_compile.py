"""The compiled pipeline: the committed YAML is current, and the spec has the promised shape.

The committed ``pipelines/pipeline.yaml`` must be exactly what ``python -m pipelines.compile`` writes from the
current code and params.yaml (placeholder image): when params.yaml or a step's wrapper changes, recompile.
"""
from __future__ import annotations

import difflib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.config import ParamsError, load_params
from pipelines import settings as S
from pipelines.compile import DEFAULT_OUT, compile_pipeline
from pipelines.pipeline import RETRIED, UNCACHED, build_pipeline

REPO = Path(__file__).resolve().parents[2]
IMAGE = "registry.test/mir/multi-interest-retrieval:9.9.9"


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict:
    out = compile_pipeline(REPO / "params.yaml", tmp_path_factory.mktemp("c") / "p.yaml", image=IMAGE)
    return yaml.safe_load(out.read_text())


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task of the DAG, nested groups flattened: {task name: task spec}."""
    out = {}

    def walk(dag):
        for name, task in dag["tasks"].items():
            out[name] = task
            comp = spec["components"][task["componentRef"]["name"]]
            if "dag" in comp:
                walk(comp["dag"])
    walk(spec["root"]["dag"])
    return out


def _executor(spec: dict, task: dict) -> dict:
    label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    return spec["deploymentSpec"]["executors"][label]["container"]


def test_committed_pipeline_yaml_is_current(tmp_path):
    fresh = compile_pipeline(REPO / "params.yaml", tmp_path / "pipeline.yaml", image=S.DEFAULT_IMAGE).read_text()
    committed = DEFAULT_OUT.read_text()
    if fresh != committed:
        diff = "".join(list(difflib.unified_diff(committed.splitlines(True), fresh.splitlines(True),
                                                 "committed", "fresh"))[:40])
        pytest.fail("pipelines/pipeline.yaml is stale: run `python -m pipelines.compile` and commit it\n" + diff)


def test_defaults_mirror_params_yaml(spec):
    params = load_params(REPO / "params.yaml")
    declared = spec["root"]["inputDefinitions"]["parameters"]
    assert set(declared) == set(S.PARAMETERS) | {"registry_uri", "input_uri"}
    # the registry location has no default: every run names it; input_uri defaults to "" (read ingest.path)
    assert declared["registry_uri"] == {"parameterType": "STRING"}
    assert declared["input_uri"]["defaultValue"] == "" and declared["input_uri"].get("isOptional") is True
    assert declared["seed"]["defaultValue"] == params["seed"]
    for name in S.SECTIONS:
        assert declared[name]["parameterType"] == "STRING"
        assert json.loads(declared[name]["defaultValue"]) == params[name], name


def test_every_step_runs_in_the_project_image_without_pip(spec):
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == len(S.STEP_NAMES)
    for name, ex in executors.items():
        container = ex["container"]
        assert container["image"] == IMAGE, name
        assert "pip install" not in " ".join(container["command"] + container.get("args", [])), name


def test_dag_order_loop_and_gate_export(spec):
    tasks = _tasks(spec)
    loop_name = next(n for n, t in spec["root"]["dag"]["tasks"].items() if "parameterIterator" in t)
    assert set(tasks) == {"check-params", "ingest", "validate", "split", "train", "evaluate", "build-index",
                          "report", "gate-export", loop_name}
    assert "validate" in tasks["split"]["dependentTasks"]  # nothing reads the data before it is validated
    assert "check-params" in tasks["ingest"]["dependentTasks"]
    # train/evaluate/build_index live in the ParallelFor over check_params' per-model specs
    loop_name, loop = next((n, t) for n, t in spec["root"]["dag"]["tasks"].items() if "parameterIterator" in t)
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--check-params-Output"
    loop_tasks = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert set(loop_tasks) == {"train", "evaluate", "build-index"}
    # one gate_export at the top level, no condition: it runs (and the run succeeds) whatever the verdict
    assert not any("triggerPolicy" in t for t in tasks.values())
    gx = spec["root"]["dag"]["tasks"]["gate-export"]
    inputs = gx["inputs"]
    assert inputs["parameters"]["registry_uri"] == {"componentInputParameter": "registry_uri"}
    assert set(inputs["artifacts"]) == {"split_data", "trained", "evaluations", "indexes"}
    outputs = spec["components"][gx["componentRef"]["name"]]["outputDefinitions"]
    assert {k: v["artifactType"]["schemaTitle"] for k, v in outputs["artifacts"].items()} == {
        "result": "system.Artifact", "verdict": "system.Markdown", "bundle": "system.Model",
        "metrics": "system.Metrics"}
    ingest_inputs = spec["root"]["dag"]["tasks"]["ingest"]["inputs"]["parameters"]
    assert ingest_inputs["input_uri"] == {"componentInputParameter": "input_uri"}


def test_caching_retries_and_resources(spec):
    cfg = S.kfp_config(load_params(REPO / "params.yaml"))
    for name, task in _tasks(spec).items():
        if "executorLabel" not in spec["components"][task["componentRef"]["name"]]:
            continue  # a group, not a step
        step = name.replace("-", "_")
        # gate_export's answer depends on the registry's prod, which is not among its inputs: never cached
        assert task["cachingOptions"].get("enableCache", False) is (step not in UNCACHED), name
        if step in RETRIED and cfg.retries:
            assert task["retryPolicy"]["maxRetryCount"] == cfg.retries, name
        else:
            assert "retryPolicy" not in task, name
        res = _executor(spec, task)["resources"]
        want = cfg.resources_for(step)
        assert (res["resourceCpuRequest"], res["resourceCpuLimit"]) == (want.cpu_request, want.cpu_limit), name
        assert (res["resourceMemoryRequest"], res["resourceMemoryLimit"]) == (want.memory_request, want.memory_limit)
        assert "accelerator" not in res, name  # params.yaml trains on CPU


def test_volumes_are_mounted_on_ingest_and_gate_export_only(tmp_path):
    from kfp import compiler

    params = S.apply_overrides(load_params(REPO / "params.yaml"), ["kfp.volumes={mir-registry: /mnt/registry}"],
                               allow_compile_time=True)
    out = tmp_path / "pvc.yaml"
    compiler.Compiler().compile(build_pipeline(params, image=IMAGE), str(out))
    docs = list(yaml.safe_load_all(out.read_text()))
    assert len(docs) == 2  # the pipeline spec, then the platform spec
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == {"exec-ingest", "exec-gate-export"}
    for ex in executors.values():
        (mount,) = ex["pvcMount"]
        assert mount["mountPath"] == "/mnt/registry"
        assert mount["pvcNameParameter"]["runtimeValue"]["constant"] == "mir-registry"
    assert len(list(yaml.safe_load_all(DEFAULT_OUT.read_text()))) == 1  # params.yaml mounts nothing
    for bad, match in (("{Mir_Registry: /mnt/r}", "not a PersistentVolumeClaim name"),
                       ("{mir-registry: mnt/r}", "must be absolute")):
        with pytest.raises(ParamsError, match=match):
            S.kfp_config({"kfp": {"volumes": yaml.safe_load(bad)}})


def test_gpu_training_requests_devices_on_the_train_task_only(tmp_path):
    from kfp import compiler

    params = S.apply_overrides(load_params(REPO / "params.yaml"),
                               ["train.accelerator=gpu", "train.devices=2"], allow_compile_time=True)
    out = tmp_path / "gpu.yaml"
    compiler.Compiler().compile(build_pipeline(params, image=IMAGE), str(out))
    spec = yaml.safe_load(out.read_text())
    for name, task in _tasks(spec).items():
        if "executorLabel" not in spec["components"][task["componentRef"]["name"]]:
            continue
        acc = _executor(spec, task)["resources"].get("accelerator")
        if name == "train":
            assert acc["resourceType"] == "nvidia.com/gpu" and acc["resourceCount"] == "2"
        else:
            assert acc is None, name


@pytest.mark.parametrize("override, match", [
    ("train.num_nodes=2", "PyTorchJob"),
    ("train.devices=auto", "integer"),
])
def test_settings_one_pod_cannot_honour_are_refused_at_compile_time(override, match):
    params = S.apply_overrides(load_params(REPO / "params.yaml"), ["train.accelerator=gpu", override],
                               allow_compile_time=True)
    with pytest.raises(ParamsError, match=match):
        build_pipeline(params, image=IMAGE)


def test_compile_cli_writes_the_file_and_reports_bad_params(tmp_path):
    out = tmp_path / "x.yaml"
    ok = subprocess.run([sys.executable, "-m", "pipelines.compile", "--out", str(out), "--image", IMAGE],
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load(out.read_text())["deploymentSpec"]["executors"]["exec-train"]["container"]["image"] == IMAGE
    bad_params = tmp_path / "params.yaml"
    bad_params.write_text((REPO / "params.yaml").read_text().replace("retries: 2", "retries: two"))
    bad = subprocess.run([sys.executable, "-m", "pipelines.compile", "--params", str(bad_params), "--out",
                          str(tmp_path / "y.yaml")], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "kfp.retries" in bad.stderr and not (tmp_path / "y.yaml").exists()
