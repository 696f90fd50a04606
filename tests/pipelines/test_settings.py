"""pipelines.settings: params <-> pipeline parameters, dotted overrides, the kfp section, params merging."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.config import ParamsError, load_params
from pipelines import settings as S

REPO = Path(__file__).resolve().parents[2]


def test_pipeline_arguments_round_trip_every_section_exactly():
    params = load_params(REPO / "params.yaml")
    args = S.pipeline_arguments(params)
    assert list(args) == list(S.PARAMETERS)
    assert args["seed"] == params["seed"] and isinstance(args["seed"], int)
    for name in S.SECTIONS:
        assert isinstance(args[name], str)
        assert json.loads(args[name]) == params[name]  # ints stay ints, nulls stay null
    back = S.arguments_to_params(args)
    assert back == {k: params[k] for k in S.PARAMETERS}


def test_pipeline_arguments_reject_missing_sections_and_bad_seed():
    params = load_params(REPO / "params.yaml")
    with pytest.raises(ParamsError, match="gates"):
        S.pipeline_arguments({k: v for k, v in params.items() if k != "gates"})
    with pytest.raises(ParamsError, match="seed"):
        S.pipeline_arguments({**params, "seed": "7"})
    with pytest.raises(ParamsError, match="unknown parameter 'sed'"):
        S.arguments_to_params({"sed": 1})


def test_overrides_parse_yaml_values_and_nest():
    params = {"seed": 1, "train": {"max_epochs": 30, "models": ["a"]}, "gates": {"floors": {"x": 0.1}}}
    out = S.apply_overrides(params, ["seed=7", "train.max_epochs=2", "train.models=[a, b]",
                                     "gates.floors={test.recall@50: 0.5}", "train.new.deep=null"])
    assert out == {"seed": 7, "train": {"max_epochs": 2, "models": ["a", "b"], "new": {"deep": None}},
                   "gates": {"floors": {"test.recall@50": 0.5}}}
    assert params["train"]["max_epochs"] == 30  # a copy, not in place


@pytest.mark.parametrize("text, match", [
    ("train.max_epochs", "expected KEY=VALUE"),
    ("=3", "expected KEY=VALUE"),
    ("trian.max_epochs=3", "unknown parameter 'trian'"),
    ("train..x=1", "empty part"),
    ("train.max_epochs.x=1", "is not a mapping"),
    ("train.models=[a", "not valid YAML"),
])
def test_bad_overrides_name_the_problem(text, match):
    with pytest.raises(ParamsError, match=match):
        S.apply_overrides({"train": {"max_epochs": 3}}, [text])


@pytest.mark.parametrize("key", ["train.accelerator=gpu", "train.devices=2", "train.num_nodes=2", "train={}"])
def test_compile_time_train_keys_are_refused_unless_allowed(key):
    with pytest.raises(ParamsError, match="recompile|pipelines.compile"):
        S.apply_overrides({"train": {"devices": 1}}, [key])
    S.apply_overrides({"train": {"devices": 1}}, [key], allow_compile_time=True)


def test_kfp_section_resources_and_validation():
    cfg = S.kfp_config(load_params(REPO / "params.yaml"))
    assert cfg.resources_for("train") == cfg.resources["train"]
    assert cfg.resources_for("gate") == cfg.resources["default"]
    assert S.kfp_config({}).resources_for("train") == S.Resources()  # section optional
    with pytest.raises(ParamsError, match="kfp.resources.train: memory_limit"):
        S.kfp_config({"kfp": {"resources": {"train": {"memory_limit": "lots"}}}})
    with pytest.raises(ParamsError, match="unknown step"):
        S.kfp_config({"kfp": {"resources": {"trian": {}}}})
    with pytest.raises(ParamsError, match="kfp.retries"):
        S.kfp_config({"kfp": {"retries": "2"}})


def test_image_setting_precedence(monkeypatch):
    monkeypatch.delenv(S.IMAGE_ENV, raising=False)
    assert S.resolve_image() == S.DEFAULT_IMAGE
    monkeypatch.setenv(S.IMAGE_ENV, "env.example/mir:2")
    assert S.resolve_image() == "env.example/mir:2"
    assert S.resolve_image("flag.example/mir:3") == "flag.example/mir:3"


def test_merge_is_deep_and_replaces_non_mappings():
    base = {"train": {"devices": 1, "models": ["a", "b"], "lr": 0.1}, "seed": 1}
    assert S.merge(base, {"train": {"devices": 4, "models": ["c"]}}) == {
        "train": {"devices": 4, "models": ["c"], "lr": 0.1}, "seed": 1}


def test_params_merge_cli_writes_a_valid_file_and_rejects_a_bad_value(tmp_path):
    over = tmp_path / "over.yaml"
    over.write_text("train:\n  num_nodes: 3\n  devices: 2\n")
    out = tmp_path / "merged.yaml"
    cmd = [sys.executable, "-m", "pipelines.settings", "--params", str(REPO / "params.yaml"),
           "--overrides", str(over), "--set", "train.strategy=ddp", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    merged = yaml.safe_load(out.read_text())
    assert (merged["train"]["num_nodes"], merged["train"]["devices"], merged["train"]["strategy"]) == (3, 2, "ddp")
    assert merged["models"] == load_params(REPO / "params.yaml")["models"]
    bad = subprocess.run(cmd[:-2] + ["--set", "train.num_nodes=0", "--out", str(tmp_path / "x.yaml")],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "num_nodes" in bad.stderr and not (tmp_path / "x.yaml").exists()
