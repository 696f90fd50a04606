"""The PyTorchJob's container command, run here as the Training Operator would run one pod.

The script is taken verbatim from infra/k8s/pytorchjob.yaml and run with ``sh -ec`` from the repository root
(the image's WORKDIR), with the ``PET_*`` variables the operator sets for torchrun, two processes on CPU (gloo)
instead of four GPUs: the overrides file in the ConfigMap mount says ``accelerator: cpu, devices: 2,
num_nodes: 1``. Checks that the params merge, torchrun's elastic environment and Lightning's DDP agree, and that
only rank 0 writes the model.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from components import ingest, split
from components.config import from_dict, load_params
from components.ingest import IngestConfig
from components.split import SplitConfig

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pod_command_trains_with_ddp_under_torchrun(tmp_path):
    job = yaml.safe_load((K8S / "pytorchjob.yaml").read_text())
    spec = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    (container,) = spec["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    script = container["args"][0]
    env = {e["name"]: e["value"] for e in container["env"]}

    # the volumes: the workspace PVC and the ConfigMap with the overrides, as local folders
    workspace, etc = tmp_path / "workspace", tmp_path / "etc"
    params = load_params(REPO / "params.yaml")
    synthetic = {**params["ingest"], "source": "synthetic",
                 "synthetic": {**params["ingest"]["synthetic"], "num_users": 200, "num_items": 120,
                               "num_categories": 6, "interests_per_user": 2, "mean_length": 12}}
    ingest.run(from_dict(IngestConfig, synthetic, "ingest"), tmp_path / "canonical", seed=7)
    split.run(from_dict(SplitConfig, params["split"], "split"), tmp_path / "canonical",
              workspace / "data" / "split", seed=7)
    overrides = yaml.safe_load((K8S / "train-overrides.yaml").read_text())
    overrides["train"].update(accelerator="cpu", devices=2, num_nodes=1, max_epochs=1, progress_refresh=0)
    overrides["models"] = {env["MODEL"]: {"dim": 8}}
    etc.mkdir()
    (etc / "train-overrides.yaml").write_text(yaml.safe_dump(overrides))
    script = (script.replace(mounts["workspace"], str(workspace)).replace(mounts["train-overrides"], str(etc))
              .replace("/tmp/params.yaml", str(tmp_path / "params.yaml")))

    pod_env = {
        **os.environ, **env, "OMP_NUM_THREADS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # what the Training Operator sets in each pod when nprocPerNode is given (torchrun reads PET_*)
        "PET_NNODES": "1", "PET_NODE_RANK": "0", "PET_NPROC_PER_NODE": "2",
        "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(free_port()),
    }
    proc = subprocess.run(["sh", "-ec", script], cwd=REPO, env=pod_env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = workspace / "artifacts" / "models" / env["MODEL"]
    summary = json.loads((out / "train.json").read_text())
    assert summary["world_size"] == 2 and summary["variant"] == env["MODEL"] and summary["epochs"] == 1
    assert (out / "model.pt").is_file()
    merged = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert merged["train"]["strategy"] == overrides["train"]["strategy"] == "ddp"
    # only rank 0 wrote: no leftover staging folders of the other rank
    assert sorted(p.name for p in out.parent.iterdir()) == [env["MODEL"]]
