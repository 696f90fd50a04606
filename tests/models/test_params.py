"""Every ``models.<variant>`` entry of params.yaml builds its model (constructor keys exist and are valid)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import models
from components.config import load_params
from tests.models.conftest import data_hparams, make_batch

PARAMS = load_params(Path(__file__).resolve().parents[2] / "params.yaml")


@pytest.mark.parametrize("variant", sorted(PARAMS["models"]))
def test_params_entry_builds(variant):
    entry = dict(PARAMS["models"][variant])
    train_keys = set(PARAMS.get("train", {}))
    hparams = {k: v for k, v in entry.items() if k not in models.TRAINER_KEYS and k not in train_keys}
    model = models.build_model(entry["arch"], **data_hparams(), **hparams).eval()
    interests, imask = model.user_interests(*make_batch(batch=2, seed=0))
    assert interests.shape[:2] == imask.shape and torch.isfinite(interests).all()


@pytest.mark.parametrize("key,value,message", [
    ("dim", "64", r"models\.v\.dim: expected an integer, got '64'"),
    ("num_interests", 2.5, r"models\.v\.num_interests: expected an integer, got 2\.5"),
    ("num_interests", True, r"models\.v\.num_interests: expected an integer, got True"),  # not K = 1
    ("routing_sigma", "1.0", r"models\.v\.routing_sigma: expected a number"),
    ("dynamic_interests", 1, r"models\.v\.dynamic_interests: expected true/false"),
])
def test_constructor_values_of_the_wrong_type_name_the_key(key, value, message):
    from components.config import ParamsError
    from components.train import ModelConfig

    params = {"models": {"v": {"arch": "mind", "dim": 8, key: value}}}
    with pytest.raises(ParamsError, match=message):
        ModelConfig.from_params(params, "v")
    with pytest.raises(ParamsError, match=message.replace(r"models\.v", r"models\.mind")):
        models.build_model("mind", **data_hparams(), **{key: value})  # the same check without a variant


def test_constructor_values_of_the_right_type_pass():
    from components.train import ModelConfig

    cfg = ModelConfig.from_params({"models": {"v": {"arch": "comirec_sa", "num_interests": 3,
                                                    "attention_dim": None}}}, "v")
    model = models.build_model(cfg.arch, **data_hparams(), **cfg.hparams)
    assert model.config["num_interests"] == 3


def test_wrong_type_exits_2_through_the_train_cli(tmp_path, capsys):
    from components.train import main

    params = tmp_path / "params.yaml"
    params.write_text("seed: 1\ntrain: {}\nmodels:\n  v:\n    arch: mind\n    num_interests: true\n")
    with pytest.raises(SystemExit) as exc:
        main(["--params", str(params), "--model", "v", "--split", str(tmp_path / "none"),
              "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and "models.v.num_interests" in capsys.readouterr().err
