"""pipelines.steps: the glue between KFP artifacts and the step cores, without running a pipeline."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from kfp.dsl import Metrics

import pandas as pd

from components.config import ParamsError, load_params
from components.io import DataError
from pipelines import steps
from pipelines.settings import apply_overrides, pipeline_arguments

REPO = Path(__file__).resolve().parents[2]
#: the gates section in its current form, whatever params.yaml holds while it is being migrated
GATES = ("gates={metric: recall@50, floors: {recall@50: 0.1}, baseline: {model: most_popular}}",)


def arguments(*overrides: str) -> dict:
    return pipeline_arguments(apply_overrides(load_params(REPO / "params.yaml"), list(overrides)))


def test_check_params_gives_one_spec_per_trained_model_in_order():
    params = load_params(REPO / "params.yaml")
    specs = [json.loads(s) for s in steps.check_params(**arguments(*GATES))]
    assert [s["variant"] for s in specs] == params["train"]["models"]
    assert all(s["model"] == params["models"][s["variant"]] for s in specs)


@pytest.mark.parametrize("override, match", [
    ("validate.min_row=3", "validate: unknown key"),
    ("split.ratios=[0.5, 0.5]", "split"),
    ("evaluate.topn=[]", "evaluate"),
    ("index.factory=''", "index"),
    ("gates.floors={recall@50: .nan}", "gates"),
    ("models.mind.num_interest=4", "models.mind (arch mind)"),  # unknown constructor argument
    ("train.models=[mind, nope]", "'nope' is not a key of models"),
    (("export.candidate=umi", "train.models=[mind, most_popular]"), "export.candidate: 'umi' is not trained"),
    (("export.candidate=mind", "train.models=[mind, umi]"), "gates.baseline.model: 'most_popular' is not in"),
    ("models.mind.max_epochs=0", "models.mind"),
    ("seed=-1", "seed"),
])
def test_check_params_rejects_each_bad_section_naming_it(override, match):
    override = override if isinstance(override, tuple) else (override,)
    args = arguments(*GATES, *override)
    with pytest.raises(ParamsError) as info:
        steps.check_params(**args)
    assert match in str(info.value)


def test_load_section_rejects_invalid_json():
    with pytest.raises(ParamsError, match="train: pipeline parameter is not valid JSON"):
        steps.load_section("train", "{max_epochs: 3")


def test_flat_metrics_keeps_finite_numbers_only():
    values = {"a": 1, "b": {"c": 0.5, "d": "x", "e": [1, 2], "f": None}, "ok": True, "bad": math.nan,
              "inf": math.inf}
    assert steps.flat_metrics(values) == {"a": 1.0, "b.c": 0.5, "ok": 1.0}


def test_log_metrics_sets_kfp_metadata_and_writes_the_same_values(tmp_path):
    metrics = Metrics(name="metrics", uri=str(tmp_path / "task" / "metrics"))
    steps.log_metrics(metrics, {"test.recall@50": 0.25, "nested": {"n": 3}, "name": "mind"})
    assert metrics.metadata == {"test.recall@50": 0.25, "nested.n": 3.0}
    assert json.loads(Path(metrics.path).read_text()) == metrics.metadata


def test_variants_come_from_metadata_or_train_json(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (b / "train.json").write_text(json.dumps({"variant": "mind"}))
    assert steps.by_variant([(str(a), {"variant": "youtube_dnn"}), (str(b), {})], "models") == {
        "youtube_dnn": a, "mind": b}
    with pytest.raises(ParamsError, match="two artifacts for model 'mind'"):
        steps.by_variant([(str(b), {}), (str(a), {"variant": "mind"})], "models")
    with pytest.raises(ParamsError, match="no 'variant' metadata"):
        steps.by_variant([(str(a), {})], "evaluations")


def test_registry_and_input_uris_must_be_folder_paths():
    assert steps.local_location("/mnt/registry", "registry_uri") == "/mnt/registry"
    assert steps.local_location("file:///mnt/registry", "registry_uri") == "/mnt/registry"
    for bad, match in (("", "registry_uri: expected a folder path"),
                       ("s3://bucket/registry", "object-store URIs are not supported yet")):
        with pytest.raises(ParamsError, match=match):
            steps.local_location(bad, "registry_uri")
    with pytest.raises(ParamsError, match="registry_uri"):
        steps.check_params(**arguments(*GATES), registry_uri="gs://b/r")


def test_input_uri_replaces_ingest_path_and_needs_a_source_that_reads_files(tmp_path):
    cfg = steps.load_section("ingest", arguments("ingest.source=csv", "ingest.path=data/x.csv")["ingest"])
    assert steps.input_config(cfg, "").path == Path("data/x.csv")
    assert steps.input_config(cfg, f"file://{tmp_path}/in.csv").path == tmp_path / "in.csv"
    synthetic = arguments(*GATES, "ingest.source=synthetic")
    with pytest.raises(ParamsError, match="input_uri: .* ingest.source is 'synthetic'"):
        steps.check_params(**synthetic, registry_uri=str(tmp_path), input_uri=str(tmp_path / "in.csv"))


def test_ingest_reads_input_uri_instead_of_ingest_path(tmp_path):
    """A real ingest of a csv given by input_uri; ingest.path names a file that does not exist."""
    rows = ["user,item,ts"] + [f"u{u},i{(u * 7 + k) % 40},{1000 + k}" for u in range(30) for k in range(12)]
    src = tmp_path / "pvc" / "ratings.csv"
    src.parent.mkdir()
    src.write_text("\n".join(rows) + "\n")
    args = arguments("ingest.source=csv", f"ingest.path={tmp_path / 'missing.csv'}",
                     "ingest.columns={user_id: user, item_id: item, timestamp: ts}")
    stats = steps.ingest(args["ingest"], str(tmp_path / "out"), seed=1, input_uri=str(src))
    inter = pd.read_parquet(tmp_path / "out" / "interactions.parquet")
    assert len(inter) == len(rows) - 1 and stats["interactions"] == len(inter)
    with pytest.raises(DataError, match="missing.csv"):
        steps.ingest(args["ingest"], str(tmp_path / "out2"), seed=1)


def test_verdict_figures_name_each_model_by_its_role():
    verdict = {"promote": False, "candidate": "mind-aaa", "prod": "mind-bbb", "baseline": "most_popular",
               "figures": {"mind-aaa": {"recall@50": 0.2}, "mind-bbb": {"recall@50": 0.4},
                           "most_popular": {"recall@50": 0.3}},
               "rules": [{"kind": "floor", "metric": "recall@50", "passed": True, "test": None},
                         {"kind": "vs_prod", "metric": "recall@50", "passed": False,
                          "test": {"difference": -0.2, "ci_low": -0.3, "p_value": 0.99}}]}
    assert steps.verdict_figures(verdict) == {
        "promote": 0.0, "candidate.recall@50": 0.2, "prod.recall@50": 0.4, "baseline.recall@50": 0.3,
        "floor recall@50.passed": 1.0, "vs_prod.passed": 0.0, "vs_prod.difference": -0.2, "vs_prod.ci_low": -0.3,
        "vs_prod.p_value": 0.99}
    assert steps.candidate_bundle({"export": {"candidate_bundle": "mind-ccc"}, "candidate": "x"}) == "mind-ccc"


def test_gate_export_needs_the_candidate_and_baseline_among_the_runs_outputs(tmp_path):
    d = tmp_path / "m" / "most_popular"
    d.mkdir(parents=True)
    fan_in = [(str(d), {"variant": "most_popular"})]
    args = arguments(*GATES, "export.candidate=mind")
    with pytest.raises(ParamsError, match="export.candidate: no model for 'mind'"):
        steps.gate_export(**{k: args[k] for k in ("export", "gates", "models", "train", "evaluate", "index",
                                                  "seed")},
                          registry_uri=str(tmp_path / "reg"), split_dir=str(tmp_path / "split"), trained=fan_in,
                          evaluations=fan_in, indexes=fan_in, result_dir=str(tmp_path / "r"),
                          verdict_path=str(tmp_path / "v"), bundle_dir=str(tmp_path / "b"))
    assert not (tmp_path / "r").exists() and not (tmp_path / "reg").exists()
