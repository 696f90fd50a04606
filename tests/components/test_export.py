"""export: the candidate bundled and gated against the registry's prod model, the verdict, the A/B spec, data
versions; the registry location (standalone GTO repository) the way a Kubeflow run uses it."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from components import evaluate as E
from components import export as X
from components.config import from_dict
from components.gates import GatesConfig
from components.registry import Registry
from components.io import DataError
from components.serving import ABSpec, Recommender
from test_evaluate import ROOT, _cfg, make_split, save_random_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny split with two random-init models (YouTube DNN, MIND), both evaluated (shared, read-only)."""
    root = tmp_path_factory.mktemp("export")
    split = make_split(root / "split")
    for name, arch, seed in (("youtube_dnn", "youtube_dnn", 0), ("mind", "mind", 1)):
        kw = dict(num_interests=2) if arch == "mind" else {}
        save_random_model(split, root / "models" / name, arch=arch, seed=seed, **kw)
        E.run(_cfg(topn=[5, 10], faiss_check=False, lambda_sweep=[], bootstrap_samples=0), split,
              root / "models" / name, root / "eval" / name, max_len=6, seed=0)
    return root


@pytest.fixture
def paths(trained, tmp_path):
    """Fresh bundles folder and a private copy of the split per test."""
    split = tmp_path / "split"
    shutil.copytree(trained / "split", split)
    return X.ExportPaths(models_dir=trained / "models", eval_dir=trained / "eval", index_dir=tmp_path / "index",
                         split_dir=split, bundles_dir=tmp_path / "bundles", dvc_lock=tmp_path / "dvc.lock")


def _metrics(paths, name):
    return json.loads((paths.eval_dir / name / "metrics.json").read_text())


PARAMS = {"seed": 3, "train": {"models": ["youtube_dnn", "mind"]}, "evaluate": {"exclude_history": True},
          "models": {"mind": {"arch": "mind", "dim": 8}}}


def _cfgs(candidate="mind", floor=0.01, share=0.25, vs_prod=None, baseline=None):
    cfg = from_dict(X.ExportConfig, {"candidate": candidate,
                                     "ab": {"salt": "t", "treatment_share": share, "num_buckets": 100}}, "export")
    gates = from_dict(GatesConfig, {"metric": "recall@10", "floors": {"recall@10": floor},
                                    "test": {"method": "permutation", "alpha": 0.05, "samples": 1000},
                                    "baseline": baseline, "vs_prod": vs_prod or {"rule": "non_inferiority",
                                                                                "margin": 0.5}}, "gates")
    return cfg, gates


def _run(paths, tmp_path, cfg, gates, registry=None):
    registry = registry or Registry.location(tmp_path / "registry")
    return X.run(cfg, gates, paths, PARAMS, registry=registry, out_dir=tmp_path / "export", publish=True), registry


def test_first_candidate_passing_the_floors_is_published_as_prod(paths, tmp_path):
    cfg, gates = _cfgs()
    verdict, reg = _run(paths, tmp_path, cfg, gates)
    assert verdict["promote"] is True and verdict["export"]["prod_bundle"] is None
    cand = verdict["export"]["candidate_bundle"]
    assert cand.startswith("mind-") and reg.prod().bundle == cand
    assert (reg.bundles_dir / cand / "manifest.json").is_file()
    assert json.loads((tmp_path / "export" / "ab.json").read_text())["active"] is False  # nothing to compare
    md = (tmp_path / "export" / "verdict.md").read_text()
    assert "PROMOTE" in md and "recall@10" in md
    # the same weights again: the same bundle id, already prod, nothing promoted or registered
    again, _ = _run(paths, tmp_path, cfg, gates, reg)
    assert again["promote"] is False and "already prod" in again["reasons"][0]
    assert len(reg.versions()) == 1


def test_candidate_is_gated_against_prod_and_ab_spec_pairs_them(paths, tmp_path):
    cfg, gates = _cfgs(candidate="youtube_dnn")
    first, reg = _run(paths, tmp_path, cfg, gates)
    prod = first["export"]["candidate_bundle"]
    cfg2, gates2 = _cfgs(candidate="mind", share=0.25)
    verdict, _ = _run(paths, tmp_path, cfg2, gates2, reg)
    assert verdict["export"]["prod_bundle"] == prod and verdict["prod"] == prod
    rules = {r["rule"].split()[0]: r for r in verdict["rules"]}
    assert "vs_prod" in rules  # a paired test against prod, on the same users
    assert verdict["n_users"] == first["n_users"]
    if verdict["promote"]:
        spec = ABSpec.load(tmp_path / "export" / "ab.json")
        assert spec.control["bundle"] == prod and spec.treatment["bundle"] == verdict["export"]["candidate_bundle"]
        assert spec.treatment_share == 0.25 and {spec.assign(f"u{i}") for i in range(200)} == {"control",
                                                                                                 "treatment"}
        assert reg.prod().bundle == verdict["export"]["candidate_bundle"]
    else:
        assert reg.prod().bundle == prod
    # prod is measured now through the serving path: equal to evaluate's figure on the same users and data
    assert verdict["figures"][prod]["recall@10"] == pytest.approx(_metrics(paths, "youtube_dnn")["test.recall@10"])


def test_blocked_candidate_leaves_prod_and_registry_untouched(paths, tmp_path):
    cfg, gates = _cfgs(candidate="youtube_dnn")
    _, reg = _run(paths, tmp_path, cfg, gates)
    before = [(v.version, v.bundle) for v in reg.versions()], reg.prod()
    cand = _metrics(paths, "mind")["test.recall@10"]
    cfg2, strict = _cfgs(candidate="mind", floor=min(1.0, cand + 0.01))
    verdict, _ = _run(paths, tmp_path, cfg2, strict, reg)
    assert verdict["promote"] is False
    assert any("floor" in r for r in verdict["reasons"])
    assert ([(v.version, v.bundle) for v in reg.versions()], reg.prod()) == before
    assert json.loads((tmp_path / "export" / "verdict.json").read_text())["promote"] is False


def test_cli_exit_codes(paths, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    base = ("seed: 1\nevaluate: {exclude_history: true}\ntrain: {models: [youtube_dnn, mind]}\n"
            "export: {candidate: mind, ab: {salt: s, treatment_share: 0.1, num_buckets: 100}}\n")
    args = ["--params", str(params), "--models-dir", str(paths.models_dir), "--eval-dir", str(paths.eval_dir),
            "--index-dir", str(paths.index_dir), "--split", str(paths.split_dir), "--bundles",
            str(paths.bundles_dir), "--dvc-lock", str(tmp_path / "dvc.lock"), "--out", str(tmp_path / "out"),
            "--registry", str(tmp_path / "registry")]
    params.write_text(base + "gates: {metric: recall@10, floors: {recall@10: 1.0}, baseline: null}\n")
    X.main(args)  # blocked, but the run did its job: exit 0 and the verdict says no
    assert "NOT approved" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        X.main([*args, "--fail-if-blocked"])
    assert exc.value.code == 1
    params.write_text(base + "gates: {floors: {recall@10: 0.5}, baseline: {model: most_popular}}\n")
    with pytest.raises(SystemExit) as exc:
        X.main(args)
    assert exc.value.code == 2 and "most_popular" in capsys.readouterr().err  # not trained in this run
    params.write_text(base.replace("candidate: mind", "candidate: umi")
                      + "gates: {metric: recall@10, floors: {recall@10: 0.01}, baseline: null}\n")
    with pytest.raises(SystemExit) as exc:
        X.main(args)
    assert exc.value.code == 2 and "export.candidate" in capsys.readouterr().err
    params.write_text(base + "gates: {floors: {}, baseline: null}\n")
    with pytest.raises(SystemExit) as exc:
        X.main(args)
    assert exc.value.code == 2  # a gate that cannot fail is a params error, never a pass
    params.write_text(base + "gates: {metric: recall@10, floors: {recall@10: 0.01}, baseline: null}\n")
    X.main(args)
    assert "APPROVED" in capsys.readouterr().out


def test_export_config_and_params_section():
    from components.config import ParamsError, load_params, section

    with pytest.raises(ParamsError, match="treatment_share"):
        from_dict(X.ExportConfig, {"ab": {"treatment_share": 2.0}}, "export")
    params = load_params(ROOT / "params.yaml")
    cfg = section(params, "export", X.ExportConfig)
    assert cfg.candidate in params["models"] and cfg.candidate in params["train"]["models"]
    gates = section(params, "gates", GatesConfig)
    gates.require_models(params["train"]["models"])


def test_missing_inputs_are_data_errors(paths, tmp_path):
    cfg, gates = _cfgs(candidate="mind")
    eval_copy = tmp_path / "eval"
    shutil.copytree(paths.eval_dir, eval_copy)
    (eval_copy / "mind" / "metrics.json").unlink()
    paths2 = X.ExportPaths(models_dir=paths.models_dir, eval_dir=eval_copy, index_dir=paths.index_dir,
                           split_dir=paths.split_dir, bundles_dir=paths.bundles_dir)
    with pytest.raises(DataError, match="mind/metrics.json"):
        _run(paths2, tmp_path, cfg, gates)


def test_data_version_prefers_the_dvc_lock_entry(tmp_path):
    import hashlib

    split = make_split(tmp_path / "data" / "split")
    lock = tmp_path / "dvc.lock"
    lock.write_text("schema: '2.0'\nstages:\n  split:\n    cmd: x\n    outs:\n    - path: data/split\n"
                    "      hash: md5\n      md5: 0123abcd.dir\n      size: 1\n      nfiles: 7\n")
    assert X.data_version(split, lock) == "md5:0123abcd.dir"
    # per-file outputs (as this repo's dvc.yaml declares them): a hash of their md5s, while they match
    names = ["items.parquet", "test.parquet"]
    md5 = {n: hashlib.md5((split / n).read_bytes()).hexdigest() for n in names}
    lock.write_text("stages:\n  split:\n    outs:\n" + "".join(
        f"    - path: data/split/{n}\n      md5: {md5[n]}\n" for n in names))
    expected = hashlib.md5("".join(f"{n}:{md5[n]}\n" for n in sorted(names)).encode()).hexdigest()
    assert X.data_version(split, lock) == f"md5:{expected}"
    v1 = X.data_version(split, tmp_path / "missing.lock")
    assert v1.startswith("sha256:") and v1 == X.data_version(split, None)
    (split / "items.parquet").write_bytes((split / "items.parquet").read_bytes() + b" ")  # lock is now stale
    assert X.data_version(split, lock).startswith("sha256:")
    assert X.data_version(split, None) != v1  # the content hash follows the data




def test_same_weights_same_bundle_id_whatever_the_index_build_measured(paths, tmp_path):
    """build_index's index.json records timings that vary run to run; the bundle keeps only the index settings,
    so re-exporting the same weights gives the same id."""
    import json as _json

    from components import build_index as BI
    from components.config import from_dict as _fd

    BI.run(_fd(BI.IndexConfig, {}, "index"), paths.models_dir / "mind", paths.split_dir, paths.index_dir / "mind")
    first = X.build_bundle("mind", paths, PARAMS, {}, {}, "v1")
    info = _json.loads((paths.index_dir / "mind" / "index.json").read_text())
    info.update(build_s=123.0, queries_per_s=1.0)
    (paths.index_dir / "mind" / "index.json").write_text(_json.dumps(info))
    again = X.build_bundle("mind", X.ExportPaths(models_dir=paths.models_dir, eval_dir=paths.eval_dir,
                                                 index_dir=paths.index_dir, split_dir=paths.split_dir,
                                                 bundles_dir=tmp_path / "other"), PARAMS, {}, {}, "v1")
    assert again.name == first.name
    kept = _json.loads((again / "index.json").read_text())
    assert "queries_per_s" not in kept and kept["factory"] == info["factory"] and kept["nprobe"] == info["nprobe"]
