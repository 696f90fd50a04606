"""Names say what was trained (issue 13 part 2): a variant trained with harder negatives is "<Model>+HN" in
metrics.json, artifacts/report.md and the bundle manifest; a plain name is the paper's model; params.yaml's
variants are named after what they train."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import models
from components import bundle as B
from components import evaluate as E
from components.config import ParamsError
from components.export import ExportPaths, build_bundle
from test_evaluate import _cfg, make_split, save_random_model

ROOT = Path(__file__).resolve().parents[2]
MAX_LEN = 6


# written out by hand, not derived from models.ARCH_LABELS
@pytest.mark.parametrize("entry,label", [
    ({"arch": "mind"}, "MIND"),
    ({"arch": "mind", "harder_negatives": False}, "MIND"),
    ({"arch": "mind", "harder_negatives": True}, "MIND+HN"),
    ({"arch": "comirec_dr", "harder_negatives": True}, "ComiRec-DR+HN"),
    ({"arch": "comirec_sa", "harder_negatives": False}, "ComiRec-SA"),
    ({"arch": "umi", "harder_negatives": True}, "UMI+HN"),
    ({"arch": "umi", "harder_negatives": None}, "UMI"),
    ({"arch": "youtube_dnn"}, "YouTube DNN"),
    ({"arch": "most_popular"}, "MostPopular"),
])
def test_variant_label(entry, label):
    assert models.variant_label(entry) == label


def test_variant_label_reads_model_config_and_rejects_bad_entries():
    from components.train import ModelConfig

    mc = ModelConfig(name="x", arch="comirec_sa", harder_negatives=True, hparams={"dim": 8})
    assert models.variant_label(mc) == "ComiRec-SA+HN"
    with pytest.raises(ParamsError, match="arch"):
        models.variant_label({"harder_negatives": True})
    with pytest.raises(ParamsError, match="sine"):
        models.variant_label({"arch": "sine"})
    with pytest.raises(ParamsError, match="harder_negatives"):
        models.variant_label({"arch": "mind", "harder_negatives": "yes"})


def test_params_names_say_what_is_trained():
    """params.yaml: a plain name trains without harder negatives, ``<name>_hn`` is the same model with them
    (every other key equal), and the candidate is a variant that is trained."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    ms = params["models"]
    for name in ("mind", "comirec_dr", "comirec_sa", "umi"):
        assert ms[name]["arch"] == name and ms[name]["harder_negatives"] is False, name
        twin = ms[f"{name}_hn"]
        assert twin["harder_negatives"] is True, name
        assert {k: v for k, v in twin.items() if k != "harder_negatives"} == \
            {k: v for k, v in ms[name].items() if k != "harder_negatives"}, name
    for name, entry in ms.items():
        assert name.endswith("_hn") == bool(entry.get("harder_negatives")), name
    assert params["export"]["candidate"] == "comirec_sa_hn"
    assert params["export"]["candidate"] in params["train"]["models"]
    assert {"mind", "comirec_dr", "comirec_sa", "umi"} <= set(params["train"]["models"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two random-init models saved as components.train saves them: the same MIND, with and without HN."""
    root = tmp_path_factory.mktemp("labels")
    split = make_split(root / "split", num_items=41, num_users=60)
    for name, hn in (("mind", False), ("mind_hn", True)):
        d = save_random_model(split, root / "models" / name, arch="mind", max_len=MAX_LEN, num_interests=3,
                              seed=3)
        model = models.load_model(d / "model.pt")
        models.save_model(model, d / "model.pt", extra={"variant": name, "model": {
            "arch": "mind", "harder_negatives": hn, "attention_pow": None, "hparams": {}, "overrides": {}}})
    return root, split


def test_metrics_json_and_report_carry_the_label(trained, tmp_path):
    root, split = trained
    cfg = _cfg(topn=[5, 20], faiss_check=False, lambda_sweep=[])
    for name in ("mind", "mind_hn"):
        m = E.run(cfg, split, root / "models" / name, tmp_path / "eval" / name, max_len=MAX_LEN, seed=0)
        on_disk = json.loads((tmp_path / "eval" / name / "metrics.json").read_text())
        assert on_disk["label"] == m["label"] == {"mind": "MIND", "mind_hn": "MIND+HN"}[name]
    out = tmp_path / "report.md"
    E.report(E.discover(tmp_path / "eval", ["mind", "mind_hn"]), out)
    rows = [r for r in out.read_text().splitlines() if r.startswith("| ")]
    assert rows[0].startswith("| model | variant | users |")
    assert rows[1].startswith("| MIND | `mind` |") and rows[2].startswith("| MIND+HN | `mind_hn` |")


def test_metrics_json_label_without_training_record(trained, tmp_path):
    """A model file without the trainer's record (saved by hand) gets no label; report shows the variant."""
    root, split = trained
    d = save_random_model(split, tmp_path / "models" / "bare", arch="mind", max_len=MAX_LEN, num_interests=3)
    m = E.run(_cfg(topn=[5], faiss_check=False, lambda_sweep=[]), split, d, tmp_path / "eval" / "bare",
              max_len=MAX_LEN, seed=0)
    assert "label" not in m
    E.report({"bare": tmp_path / "eval" / "bare"}, tmp_path / "r.md")
    assert "| bare | `bare` |" in (tmp_path / "r.md").read_text()


def test_bundle_manifest_label_outside_the_content_hash(trained, tmp_path):
    root, split = trained
    paths = ExportPaths(models_dir=root / "models", eval_dir=root / "eval", index_dir=root / "index",
                        split_dir=split, bundles_dir=tmp_path / "bundles")
    plain = build_bundle("mind", paths, {}, {}, {"passed": True}, "v1")
    hn = build_bundle("mind_hn", paths, {}, {}, {"passed": True}, "v1")
    mp, mh = (B.verify(b) for b in (plain, hn))  # verifies with the label in the manifest
    assert (mp["label"], mh["label"]) == ("MIND", "MIND+HN")
    assert "label" not in B.IDENT_KEYS
    # same weights and description apart from the variant name: the label does not enter the hash
    ident = {k: mh[k] for k in B.IDENT_KEYS} | {"model": "mind"}
    assert B.content_hash(mh["files"], ident) == mp["content_hash"].removeprefix("sha256:")
