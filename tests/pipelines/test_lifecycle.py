"""The model lifecycle on KFP: three kfp.local runs sharing one registry location, nothing else.

Each run resolves the production model from the registry folder (never from its own models or an earlier run's
local files: every run has its own pipeline root), and gate_export publishes an approved bundle there.

- run 1: MIND after 2 epochs, the first candidate: no prod yet, it passes the floor and is promoted;
- run 2: a deliberately worse candidate (MIND at lr 1e-12: its random initial embeddings) is blocked by the
  paired test against run 1's model; prod is unchanged;
- run 3: a better one (MIND after 15 epochs) beats run 1's model under the paired test and is promoted; run 1's
  bundle stays in the location, and ``Registry.rollback()`` makes it prod again, loadable by the Recommender.

Tiny synthetic data (300 users, 30 of them test users). On so few users a one-sided paired bootstrap at 5% cannot
show a real +0.1 Recall@50 improvement, so the gate runs at alpha 0.2 and without the baseline rule (covered by
tests/components); what is under test is the registry lifecycle, and every decision is still a paired test
against the registry's prod. Runs 2 and 3 reuse the unchanged tasks (ingest, validate, split, the
baseline) from KFP's cache under a shared cache root; gate_export is never cached.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from components.registry import Registry
from pipelines import run_local

REPO = Path(__file__).resolve().parents[2]
GATES = ("gates={metric: recall@50, floors: {recall@50: 0.3}, test: {method: bootstrap, alpha: 0.2, "
         "samples: 2000}, baseline: null, vs_prod: {rule: superiority, min_effect: 0.0}}")
RUNS = {
    "first": ("models.mind.max_epochs=2",),
    "worse": ("models.mind.max_epochs=2", "models.mind.lr=1.0e-12"),
    "better": ("models.mind.max_epochs=15",),
}


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory) -> dict:
    """The three runs, in order, against one registry location; each in its own pipeline root."""
    base = tmp_path_factory.mktemp("lifecycle")
    registry = base / "registry"
    out = {}
    for name, overrides in RUNS.items():
        params = run_local.local_params(REPO / "params.yaml", [GATES, *overrides])
        out[name] = run_local.run(params, pipeline_root=base / "cache", registry=registry, cache=True)
        assert out[name].succeeded, (name, out[name].error)
    out["registry"] = Registry.location(registry)
    return out


def _rule(verdict: dict, kind: str) -> dict:
    (rule,) = [r for r in verdict["rules"] if r["kind"] == kind]
    return rule


def test_run1_promotes_the_first_candidate(lifecycle):
    first = lifecycle["first"]
    assert first.promoted is True and first.exit_code() == 0
    assert first.verdict_json["prod"] is None  # nothing to compare with yet
    assert [r["kind"] for r in first.verdict_json["rules"]] == ["floor"]
    manifest = json.loads((first.bundle / "manifest.json").read_text())
    assert manifest["model"] == "mind" and manifest["name"] == first.verdict_json["candidate"]
    assert first.versions == [f"v0.0.1={manifest['name']}"] and first.prod == manifest["name"]


def test_run2_worse_candidate_is_blocked_against_run1s_model(lifecycle):
    first, worse = lifecycle["first"], lifecycle["worse"]
    assert worse.succeeded and worse.promoted is False and worse.bundle is None
    assert worse.exit_code() == 0 and worse.exit_code(fail_if_blocked=True) == 1
    verdict = worse.verdict_json
    assert verdict["prod"] == first.prod  # resolved from the registry: run 1's bundle
    assert verdict["candidate"] != first.prod
    vs_prod = _rule(verdict, "vs_prod")
    assert vs_prod["passed"] is False and vs_prod["test"]["difference"] < -0.05
    assert worse.prod == first.prod and len(worse.versions) == 1  # prod unchanged, nothing registered
    assert "BLOCKED" in worse.verdict
    assert not (worse.run_dir / "gate-export" / "bundle" / "manifest.json").exists()


def test_run3_better_candidate_promotes_and_run1_stays_available_for_rollback(lifecycle):
    from components.serving import Recommender

    first, better, reg = lifecycle["first"], lifecycle["better"], lifecycle["registry"]
    assert better.promoted is True
    verdict = better.verdict_json
    assert verdict["prod"] == first.prod
    vs_prod = _rule(verdict, "vs_prod")
    assert vs_prod["passed"] is True and vs_prod["test"]["difference"] > 0
    assert reg.prod().bundle == better.prod == verdict["candidate"] != first.prod
    assert [v.bundle for v in reg.versions()] == [first.prod, better.prod]
    assert (reg.bundles_dir / first.prod / "manifest.json").is_file()
    # the promoted bundle is also the run's Model artifact, with the registry's version in its metadata
    out = json.loads((better.run_dir / "gate-export" / "executor_output.json").read_text())
    meta = out["artifacts"]["bundle"]["artifacts"][0]["metadata"]
    assert meta["promoted"] is True and meta["prod_bundle"] == better.prod and meta["prod_version"] == "v0.0.2"
    rolled = reg.rollback()
    assert rolled.bundle == first.prod and reg.prod().bundle == first.prod
    bundle = reg.bundle_path(reg.prod())
    rec = Recommender.load(bundle)
    history = [str(i) for i in pd.read_parquet(bundle / "items.parquet")["item_id"].head(3)]
    items = rec.recommend(history, n=5)
    assert len(items) == 5 and not set(history) & {i for i, _ in items}


def test_gate_export_logs_the_verdict_as_metrics(lifecycle):
    worse = lifecycle["worse"]
    out = json.loads((worse.run_dir / "gate-export" / "executor_output.json").read_text())
    metrics = out["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert metrics["promote"] == 0.0 and metrics["vs_prod.passed"] == 0.0
    assert metrics["candidate.recall@50"] < metrics["prod.recall@50"]
