"""Shared fixtures for the component tests.

``tiny_synthetic``: a folder of canonical tables (docs/CONTRACTS.md) written by ``components.ingest.run``
from the planted-interest generator: ``interactions.parquet``, ``items.parquet``, ``users.parquet``
(``gender``/``age``/``occupation``), ``ground_truth.parquet`` and ``stats.json``. 300 users, 200 items in 10
categories, 3 planted interests per user, about 20 interactions per user (at least 6), 10 % noise, seed 7.
Session-scoped: treat it as read-only (copy it if a test must change it). ``TINY_SYNTHETIC`` is the config.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from components.ingest import IngestConfig, run
from components.synthetic import SyntheticConfig

TINY_SYNTHETIC = IngestConfig(
    source="synthetic",
    synthetic=SyntheticConfig(num_users=300, num_items=200, num_categories=10, interests_per_user=3,
                              mean_length=20, min_length=6, noise=0.1, popularity_skew=0.8,
                              save_ground_truth=True),
)
TINY_SYNTHETIC_SEED = 7


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> Path:
    """Path to the canonical tables of a tiny planted-interest data set (see the module docstring)."""
    out = tmp_path_factory.mktemp("tiny_synthetic") / "canonical"
    run(TINY_SYNTHETIC, out, seed=TINY_SYNTHETIC_SEED)
    return out
