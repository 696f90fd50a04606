"""pipelines.steps: the glue between KFP artifacts and the step cores, without running a pipeline."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from kfp.dsl import Metrics

from components.config import ParamsError, load_params
from pipelines import steps
from pipelines.settings import apply_overrides, pipeline_arguments

REPO = Path(__file__).resolve().parents[2]


def arguments(*overrides: str) -> dict:
    return pipeline_arguments(apply_overrides(load_params(REPO / "params.yaml"), list(overrides)))


def test_check_params_gives_one_spec_per_trained_model_in_order():
    params = load_params(REPO / "params.yaml")
    specs = [json.loads(s) for s in steps.check_params(**arguments())]
    assert [s["variant"] for s in specs] == params["train"]["models"]
    assert all(s["model"] == params["models"][s["variant"]] for s in specs)


@pytest.mark.parametrize("override, match", [
    ("validate.min_row=3", "validate: unknown key"),
    ("split.ratios=[0.5, 0.5]", "split"),
    ("evaluate.topn=[]", "evaluate"),
    ("index.factory=''", "index"),
    ("gates.floors={test.recall@50: .nan}", "gates"),
    ("models.mind.num_interest=4", "models.mind (arch mind)"),  # unknown constructor argument
    ("train.models=[mind, nope]", "'nope' is not a key of models"),
    (("export.candidate=mind", "train.models=[mind, umi]"), "export.baseline: 'youtube_dnn' is not trained"),
    ("models.mind.max_epochs=0", "models.mind"),
    ("seed=-1", "seed"),
])
def test_check_params_rejects_each_bad_section_naming_it(override, match):
    args = arguments(*override) if isinstance(override, tuple) else arguments(override)
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


def _fan_in(tmp_path: Path, recalls: dict[str, float]):
    """Model, evaluation and index folders per variant, as the ParallelFor leaves them."""
    models, evals, indexes = [], [], []
    for name, recall in recalls.items():
        for kind, lst, filename, body in (("m", models, "model.pt", "weights"),
                                          ("e", evals, "metrics.json", json.dumps({"test.recall@50": recall})),
                                          ("i", indexes, "index.faiss", "index")):
            d = tmp_path / kind / name
            d.mkdir(parents=True)
            (d / filename).write_text(body)
            lst.append((str(d), {"variant": name}))
    return models, evals, indexes


@pytest.mark.parametrize("floor, tolerance, passed", [(0.1, 0.02, True), (0.5, 0.02, False), (0.1, 0.0, False)])
def test_gate_applies_floors_and_the_relative_rule_against_the_baseline(tmp_path, floor, tolerance, passed):
    models, evals, indexes = _fan_in(tmp_path, {"youtube_dnn": 0.30, "mind": 0.29, "umi": 0.9})
    args = arguments("export.candidate=mind", f"gates.floors={{test.recall@50: {floor}}}",
                     f"gates.relative.tolerance={tolerance}")
    metrics = Metrics(name="metrics", uri=str(tmp_path / "gate" / "metrics"))
    out, verdict = tmp_path / "gate" / "candidate", tmp_path / "gate" / "verdict"
    result = steps.gate(args["export"], args["gates"], models, evals, indexes, str(out), str(verdict), metrics)
    assert result is passed
    assert metrics.metadata["passed"] == float(passed)
    assert metrics.metadata["relative test.recall@50.threshold"] == pytest.approx(0.30 - tolerance)
    text = verdict.read_text()
    assert ("PASSED" in text) is passed and ("BLOCKED" in text) is (not passed)
    assert "| floor test.recall@50 | 0.2900 |" in text
    # the layout components.export reads: only the candidate's and the baseline's folders
    for folder, filename in (("models", "model.pt"), ("eval", "metrics.json"), ("index", "index.faiss")):
        assert sorted(p.name for p in (out / folder).iterdir()) == ["mind", "youtube_dnn"]
        assert (out / folder / "mind" / filename).is_file()


def test_gate_needs_the_candidate_and_baseline_among_the_runs_outputs(tmp_path):
    models, evals, indexes = _fan_in(tmp_path, {"youtube_dnn": 0.3})
    args = arguments("export.candidate=mind")
    with pytest.raises(ParamsError, match="export.candidate: no model for 'mind'"):
        steps.gate(args["export"], args["gates"], models, evals, indexes, str(tmp_path / "c"),
                   str(tmp_path / "v"))
    assert not (tmp_path / "c").exists()
