"""Tests of components/config.py's strictness (issue 13): each gap the issue lists is a clear error naming the
key and exits 2 through a real step CLI, or (``lr: 1e-3``) is read as the number people mean.

The params files are written here as text, so the YAML quirks under test are the real ones.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from components import evaluate as E
from components import split as S
from components import train as T
from components.config import SECTIONS, ParamsError, from_dict, load_params, load_yaml, section

REPO = Path(__file__).resolve().parents[2]


def params_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def split_cli(params: Path, tmp_path: Path, capsys) -> tuple[int, str]:
    """Run ``python -m components.split``'s main on a params file (no data needed: params fail first)."""
    with pytest.raises(SystemExit) as exc:
        S.main(["--params", str(params), "--data", str(tmp_path / "none"), "--out", str(tmp_path / "out")])
    return exc.value.code, capsys.readouterr().err


# ----------------------------------------------------------------------------------- the file's shape

def test_project_params_use_only_known_sections():
    params = load_params(REPO / "params.yaml")
    assert set(params) <= set(SECTIONS)
    assert "registry" in SECTIONS and len(set(SECTIONS)) == len(SECTIONS)


def test_unknown_top_level_key_is_refused_with_exit_2(tmp_path, capsys):
    path = params_file(tmp_path, "seed: 1\nsplit: {}\nsplitt:\n  folds: 3\n")
    with pytest.raises(ParamsError, match=r"unknown top-level key\(s\) 'splitt'.*known: seed, ingest"):
        load_params(path)
    code, err = split_cli(path, tmp_path, capsys)
    assert code == 2 and "'splitt'" in err and str(path) in err


@pytest.mark.parametrize("text,key", [
    ("seed: 1\nsplit:\n", "split"),
    ("seed: 1\nsplit: {}\ntrain:\n# nothing here\nevaluate: {}\n", "train"),
    ("seed:\nsplit: {}\n", "seed"),
])
def test_empty_section_is_an_error_with_exit_2(tmp_path, capsys, text, key):
    path = params_file(tmp_path, text)
    with pytest.raises(ParamsError, match=rf"{key}: is empty"):
        load_params(path)
    code, err = split_cli(path, tmp_path, capsys)
    assert code == 2 and f"{key}: is empty" in err


def test_empty_section_refused_by_section_and_nested():
    with pytest.raises(ParamsError, match="split: section is empty"):
        section({"split": None}, "split", S.SplitConfig)
    from components.ingest import IngestConfig

    with pytest.raises(ParamsError, match="ingest.synthetic: section is empty"):
        from_dict(IngestConfig, {"source": "synthetic", "synthetic": None}, "ingest")


def test_explicit_empty_mapping_takes_every_default(tmp_path):
    params = load_params(params_file(tmp_path, "seed: 1\nsplit: {}\n"))
    assert section(params, "split", S.SplitConfig) == S.SplitConfig()


def test_empty_value_of_optional_key_is_none(tmp_path):
    """``dvc exp run -S key=null`` writes ``key:`` with nothing after it: still None for an Optional key."""
    params = load_params(params_file(tmp_path, "models:\n  m:\n    arch: mind\n    attention_pow:\n"))
    assert params["models"]["m"]["attention_pow"] is None
    assert T.ModelConfig.from_params(params, "m").attention_pow is None

    @dataclasses.dataclass(frozen=True)
    class Opt:
        path: str | None = "default"

    assert from_dict(Opt, load_yaml("path:\n"), "s").path is None


# ------------------------------------------------------------------------------------------- numbers

def test_lr_1e_minus_3_is_a_float(tmp_path):
    text = "seed: 1\ntrain:\n  lr: 1e-3\n  weight_decay: 1.0e2\n  max_epochs: 3\n"
    assert yaml.safe_load(text)["train"]["lr"] == "1e-3"  # the YAML 1.1 quirk this guards against
    cfg = section(load_params(params_file(tmp_path, text)), "train", T.TrainConfig)
    assert cfg.lr == 0.001 and isinstance(cfg.lr, float)
    assert cfg.weight_decay == 100.0 and cfg.max_epochs == 3 and isinstance(cfg.max_epochs, int)


def test_yaml_numbers_otherwise_unchanged():
    text = "a: 12\nb: -3\nc: 0.5\nd: .5\ne: 0x10\nf: '1e-3'\ng: 1_000\nh: true\ni: 2026-01-01\nj: 1e\n"
    assert load_yaml(text) == yaml.safe_load(text)
    assert load_yaml("x: [1e3, -2E-2, +4e+1]\n") == {"x": [1000.0, -0.02, 40.0]}


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e999"])
def test_non_finite_lr_refused_with_exit_2(tmp_path, capsys, value):
    path = params_file(tmp_path, f"seed: 1\ntrain:\n  lr: {value}\n")
    with pytest.raises(ParamsError, match=r"train\.lr: expected a finite number"):
        section(load_params(path), "train", T.TrainConfig)
    with pytest.raises(SystemExit) as exc:
        T.main(["--params", str(path), "--model", "m", "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and "train.lr" in capsys.readouterr().err


# ------------------------------------------------------------------------------- checked at run time

@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_gpu_accelerator_without_gpu_fails_at_train_start(tmp_path, capsys):
    cfg = T.TrainConfig(accelerator="gpu")  # loading is fine: a CPU machine may compile a GPU pipeline
    model = T.ModelConfig.from_params({"models": {"m": {"arch": "most_popular"}}}, "m")
    with pytest.raises(ParamsError, match=r"train\.accelerator: 'gpu' but no CUDA GPU"):
        T.run(cfg, model, tmp_path / "no-split", tmp_path / "out", seed=0)  # before the split is read
    assert not (tmp_path / "out").exists()
    path = params_file(tmp_path, "seed: 1\ntrain:\n  accelerator: cuda\nmodels:\n  m:\n    arch: most_popular\n")
    with pytest.raises(SystemExit) as exc:
        T.main(["--params", str(path), "--model", "m", "--split", str(tmp_path / "no-split"),
                "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and "train.accelerator" in capsys.readouterr().err


def test_topn_above_catalogue_size_names_key_and_size(tmp_path):
    import models

    inter = [(f"u{u}", f"i{(u + k) % 6}", k) for u in range(10) for k in range(5)]
    canonical = tmp_path / "canonical"
    canonical.mkdir()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"user_id": [r[0] for r in inter], "item_id": [r[1] for r in inter],
                             "timestamp": pa.array([r[2] for r in inter], pa.int64())}),
                   canonical / "interactions.parquet")
    pq.write_table(pa.table({"item_id": [f"i{i}" for i in range(6)], "category": ["c"] * 6}),
                   canonical / "items.parquet")
    pq.write_table(pa.table({"user_id": [f"u{u}" for u in range(10)]}), canonical / "users.parquet")
    S.run(S.SplitConfig(min_user_interactions=2, min_item_interactions=1, ratios=(0.6, 0.2, 0.2)),
          canonical, tmp_path / "split", seed=0)
    model = models.build_model("most_popular", num_items=7)
    model.fit_counts(np.arange(7))
    for topn, ok in (([5, 6], True), ([5, 7], False)):
        cfg = E.EvaluateConfig(topn=topn, bootstrap_samples=0, lambda_sweep=[], faiss_check=False,
                               heatmap_users=0)
        if ok:
            res = E.evaluate_model(cfg, model, tmp_path / "split", max_len=5, seed=0)
            assert math.isfinite(res["metrics"]["test.recall@6"])
        else:
            with pytest.raises(ParamsError, match=r"evaluate\.topn: 7 is above the catalogue size 6"):
                E.evaluate_model(cfg, model, tmp_path / "split", max_len=5, seed=0)
