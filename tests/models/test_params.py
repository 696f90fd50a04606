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
