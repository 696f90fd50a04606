"""export: bundle contents and integrity, the champion pointer, the A/B spec, data versions, atomicity."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from components import evaluate as E
from components import export as X
from components.config import from_dict
from components.gates import GateFailed, GatesConfig
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


def _cfgs(floor=0.0, tolerance=1.0, share=0.25):
    cfg = from_dict(X.ExportConfig, {"candidate": "mind", "baseline": "youtube_dnn",
                                     "ab": {"salt": "t", "treatment_share": share, "num_buckets": 100}}, "export")
    gates = from_dict(GatesConfig, {"floors": {"test.recall@10": floor},
                                    "relative": {"metric": "test.recall@10", "tolerance": tolerance}}, "gates")
    return cfg, gates


def test_first_run_makes_baseline_champion_then_promotes_candidate(paths):
    cfg, gates = _cfgs()
    out = X.run(cfg, gates, paths, {"models": {"mind": {"arch": "mind", "dim": 8}}})
    bundles = paths.bundles_dir
    assert out["initial_champion"].startswith("youtube_dnn-")
    assert out["previous_champion"] == out["initial_champion"]
    assert out["candidate"].startswith("mind-")
    assert json.loads((bundles / "champion").read_text())["bundle"] == out["candidate"]
    # the A/B spec: control = the champion before this run (the baseline), treatment = the candidate
    spec = ABSpec.load(bundles / "ab.json")
    assert spec.control["bundle"] == out["initial_champion"] and spec.treatment["bundle"] == out["candidate"]
    assert spec.treatment_share == 0.25 and spec.num_buckets == 100
    assert {spec.assign(f"u{i}") for i in range(200)} == {"control", "treatment"}
    gate = json.loads((bundles / "gate.json").read_text())
    assert gate["passed"] and gate["champion"] == out["initial_champion"]
    assert gate["champion_metrics_source"] == "manifest"
    # no staging or temp folders left behind
    assert sorted(p.name for p in bundles.iterdir()) == sorted(
        ["ab.json", "champion", "gate.json", out["initial_champion"], out["candidate"]])


def test_manifest_records_what_serving_and_audits_need(paths):
    cfg, gates = _cfgs()
    out = X.run(cfg, gates, paths, {"models": {"mind": {"arch": "mind", "dim": 8}}})
    b = paths.bundles_dir / out["candidate"]
    man = json.loads((b / "manifest.json").read_text())
    assert man["model"] == "mind" and man["arch"] == "mind" and man["hparams"]["num_interests"] == 2
    assert man["params"] == {"arch": "mind", "dim": 8}
    assert man["max_len"] == 6 and man["exclude_history"] is True
    assert man["metrics"] == _metrics(paths, "mind")
    assert man["gate"]["passed"] is True and man["gate"]["rules"][0]["metric"] == "test.recall@10"
    assert set(man["libraries"]) >= {"torch", "faiss", "numpy", "python"}
    assert man["data_version"].startswith("sha256:")  # no dvc.lock in this tmp dir
    for name, digest in man["files"].items():  # every file is what the manifest says
        assert X.sha256_file(b / name) == digest, name
    assert out["candidate"] == f"mind-{man['content_hash'].split(':')[1][:12]}"
    # the TorchScript tower reproduces the eager model
    import models

    eager = models.load_model(paths.models_dir / "mind" / "model.pt")
    tower = torch.jit.load(str(b / "user_tower.pt"))
    h = torch.tensor([[1, 5, 9, 0, 0, 0], [2, 6, 10, 14, 18, 22]])
    p = torch.tensor([[1], [0]])
    (v1, m1), (v2, m2) = eager.user_interests(h, h != 0, p), tower(h, h != 0, p)
    assert torch.equal(m1, m2) and torch.allclose(v1, v2, atol=1e-6)
    emb = np.load(b / "item_embeddings.npy")
    assert np.allclose(emb, eager.item_embeddings(torch.arange(41)).detach().numpy())
    Recommender.load(b, use_index=True)  # the index and id map are loadable


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


def test_champion_is_re_evaluated_when_the_data_changed(paths):
    cfg, gates = _cfgs()
    X.run(cfg, gates, paths, {})
    champion = json.loads((paths.bundles_dir / "champion").read_text())["bundle"]
    # the champion (mind bundle) has metrics from the old data version; touch the split -> new version
    (paths.split_dir / "stats.json").write_text('{"new": true}')
    cfg2 = from_dict(X.ExportConfig, {"candidate": "youtube_dnn", "baseline": "youtube_dnn",
                                      "ab": {"salt": "t", "treatment_share": 0.5, "num_buckets": 10}}, "export")
    out = X.run(cfg2, gates, paths, {})
    gate = json.loads((paths.bundles_dir / "gate.json").read_text())
    assert gate["champion"] == champion and gate["champion_metrics_source"].startswith("re-evaluated")
    # the serving path reproduces evaluate's figure on the same users (same data, same maths)
    rel = [r for r in gate["rules"] if r["rule"].startswith("relative")][0]
    assert rel["reference"] == pytest.approx(_metrics(paths, "mind")["test.recall@10"])
    assert out["ab"]["control"]["bundle"] == champion


def test_failed_gate_blocks_promotion_and_leaves_champion(paths):
    cfg, gates = _cfgs()
    X.run(cfg, gates, paths, {})
    before = {p.name: p.read_bytes() for p in paths.bundles_dir.iterdir() if p.is_file() and p.name != "gate.json"}
    dirs = sorted(p.name for p in paths.bundles_dir.iterdir() if p.is_dir())
    cand = _metrics(paths, "youtube_dnn")["test.recall@10"]
    strict = from_dict(GatesConfig, {"floors": {"test.recall@10": cand + 0.01}, "relative": None}, "gates")
    cfg2 = from_dict(X.ExportConfig, {"candidate": "youtube_dnn", "baseline": "youtube_dnn"}, "export")
    with pytest.raises(GateFailed) as exc:
        X.run(cfg2, strict, paths, {})
    assert "floor test.recall@10" in str(exc.value) and f"{cand:.4f}" in str(exc.value)
    after = {p.name: p.read_bytes() for p in paths.bundles_dir.iterdir() if p.is_file() and p.name != "gate.json"}
    assert after == before  # champion pointer and ab.json untouched
    assert sorted(p.name for p in paths.bundles_dir.iterdir() if p.is_dir()) == dirs  # no new bundle
    assert json.loads((paths.bundles_dir / "gate.json").read_text())["passed"] is False


def test_cli_exit_codes(paths, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    base = ("seed: 1\nevaluate: {exclude_history: true}\n"
            "export: {candidate: mind, baseline: youtube_dnn, ab: {salt: s, treatment_share: 0.1, "
            "num_buckets: 100}}\n")
    args = ["--params", str(params), "--models-dir", str(paths.models_dir), "--eval-dir", str(paths.eval_dir),
            "--index-dir", str(paths.index_dir), "--split", str(paths.split_dir), "--bundles",
            str(paths.bundles_dir), "--dvc-lock", str(tmp_path / "dvc.lock")]
    params.write_text(base + "gates: {floors: {test.recall@10: 2.0}, relative: null}\n")
    with pytest.raises(SystemExit) as exc:
        X.main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "NOT promoted" in err and "floor test.recall@10" in err and "2.0000" in err
    params.write_text(base + "gates: {floors: {test.nope@10: 0.0}}\n")
    with pytest.raises(SystemExit) as exc:
        X.main(args)
    assert exc.value.code == 2 and "test.nope@10" in capsys.readouterr().err
    params.write_text(base + "gates: {floors: {test.recall@10: 0.0}, relative: {metric: test.recall@10, "
                             "tolerance: 1.0}}\n")
    X.main(args)
    assert "promoted to champion" in capsys.readouterr().out


def test_export_config_and_params_section():
    from components.config import ParamsError, load_params, section

    with pytest.raises(ParamsError, match="treatment_share"):
        from_dict(X.ExportConfig, {"ab": {"treatment_share": 2.0}}, "export")
    params = load_params(ROOT / "params.yaml")
    cfg = section(params, "export", X.ExportConfig)
    assert cfg.baseline in params["models"] and cfg.candidate in params["models"]
    section(params, "gates", GatesConfig)


def test_missing_inputs_are_data_errors(paths):
    cfg, gates = _cfgs()
    cfg = from_dict(X.ExportConfig, {"candidate": "umi", "baseline": "youtube_dnn"}, "export")
    with pytest.raises(DataError, match="umi/metrics.json"):
        X.run(cfg, gates, paths, {})
    cfg = from_dict(X.ExportConfig, {"candidate": "mind", "baseline": "comirec_sa"}, "export")
    with pytest.raises(DataError, match="comirec_sa/metrics.json"):
        X.run(cfg, gates, paths, {})
    assert not paths.bundles_dir.exists() or not any(paths.bundles_dir.iterdir())
