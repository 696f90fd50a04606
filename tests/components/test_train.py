"""Tests of the train step: params, the validation metric, the outputs contract, determinism, atomicity."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_train_data import write_tiny_split  # noqa: E402

from components.config import ParamsError, load_params, section  # noqa: E402
from components.train import MONITOR, ModelConfig, TrainConfig, _retrieval_recall, keep_freed_memory, run  # noqa: E402
from components.train_data import EvalUsers, load_split_meta, shard_batches  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = {"max_len": 6, "max_epochs": 4, "batch_size": 32, "num_negatives": 10, "patience": 2,
        "progress_refresh": 0, "eval_batch_size": 16}


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**TINY, **kw})


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    return write_tiny_split(tmp_path_factory.mktemp("split") / "split", num_users=150, num_items=200,
                            num_categories=5, min_len=8, max_len=20, seed=3)


# ------------------------------------------------------------------------------------------------ params
def test_params_yaml_sections_load():
    params = load_params(REPO / "params.yaml")
    cfg = section(params, "train", TrainConfig)
    for name in cfg.models:
        mc = ModelConfig.from_params(params, name)
        assert mc.arch == params["models"][name]["arch"]
        assert not set(mc.hparams) & {"arch", "harder_negatives", "attention_pow"}


def test_model_config_splits_trainer_keys_overrides_and_hparams():
    params = {"models": {"m": {"arch": "mind", "dim": 8, "attention_pow": 2, "harder_negatives": True,
                               "lr": 0.01, "max_epochs": 2}}}
    mc = ModelConfig.from_params(params, "m")
    assert mc.hparams == {"dim": 8} and mc.overrides == {"lr": 0.01, "max_epochs": 2}
    assert mc.attention_pow == 2.0 and mc.harder_negatives is True
    eff = mc.train_config(TrainConfig())
    assert eff.lr == 0.01 and eff.max_epochs == 2 and eff.batch_size == TrainConfig().batch_size


@pytest.mark.parametrize("entry,key", [
    ({"arch": "mind", "lr": "fast"}, "models.m.lr"),
    ({"arch": "mind", "attention_pow": -1.0}, "attention_pow"),
    ({"arch": "nope"}, "arch"),
    ({"dim": 3}, "models.m.arch"),
    ({"arch": "mind", "num_items": 3}, "num_items"),
    ({"arch": "mind", "harder_negatives": "yes"}, "models.m.harder_negatives"),
])
def test_bad_model_entries_name_the_key(entry, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        ModelConfig.from_params({"models": {"m": entry}}, "m")


@pytest.mark.parametrize("bad,key", [({"batch_size": 0}, "batch_size"), ({"lr": 0.0}, "lr"),
                                     ({"sampler": "zipf"}, "sampler"), ({"devices": "all"}, "devices"),
                                     ({"num_negatives": 0}, "num_negatives"), ({"max_len": 0}, "max_len"),
                                     ({"strategy": "ddp_spawn"}, "strategy"), ({"precision": "8-bit"}, "precision"),
                                     ({"accelerator": "quantum"}, "accelerator")])
def test_bad_train_values_name_the_key(bad, key):
    from components.config import from_dict

    with pytest.raises(ParamsError, match=key):
        from_dict(TrainConfig, {**TINY, **bad}, "train")


# ------------------------------------------------------------------------------------ validation metric
class _FixedModel(torch.nn.Module):
    """A test double: item i embeds as (i, 2 (N - i)); interest 1 = (1, 0) scores i, interest 2 = (0, 1)
    scores 2 (N - i) and is unmasked only for users whose profile value is 1."""

    def __init__(self, num_items: int):
        super().__init__()
        self.num_items = num_items

    def item_embeddings(self, ids):
        return torch.stack([ids.float(), 2.0 * (self.num_items - ids.float())], dim=1)  # (N, 2)

    def user_interests(self, history, mask, profile):
        b = history.shape[0]
        interests = torch.eye(2).expand(b, 2, 2)  # (B, K=2, D=2)
        imask = torch.ones(b, 2, dtype=torch.bool)
        imask[:, 1] = profile[:, 0] == 1
        return interests, imask


def test_validation_recall_matches_plain_reference(split):
    meta = load_split_meta(split)
    valid = EvalUsers(split / "valid.parquet", meta, max_len=6)
    model = _FixedModel(meta.num_items)
    item_emb = model.item_embeddings(torch.arange(meta.num_items))
    n, big = 5, meta.num_items
    table = pd.read_parquet(split / "valid.parquet")
    users = pd.read_parquet(split / "users.parquet").set_index("user_idx")
    expected = []
    for _, row in table.iterrows():
        hist = set(row["history"])  # the whole history is excluded, not only the last max_len items
        two = users.loc[row["user_idx"], "profile_gender"] == 1
        score = {i: max(i, 2 * (big - i)) if two else i for i in range(1, big) if i not in hist}
        top = sorted(score, key=lambda i: (-score[i], i))[:n]
        targets = set(row["targets"])
        expected.append(len(set(top) & targets) / len(targets))
    s, c = _retrieval_recall(model, valid[np.arange(len(valid))], item_emb, n)
    assert c.item() == len(table)
    assert s.item() == pytest.approx(sum(expected))
    assert 0 < s.item() < len(table)  # the fixture has hits and misses
    # two DDP shards: the sums of per-shard sums and counts are the full-set sums (what the all-reduce does)
    parts = [_retrieval_recall(model, valid[b], item_emb, n) for r in (0, 1)
             for b in shard_batches(len(valid), 3, r, 2)]
    assert sum(p[0].item() for p in parts) == pytest.approx(s.item())
    assert sum(p[1].item() for p in parts) == c.item()


def test_validation_recall_hand_case():
    model = _FixedModel(10)
    emb = model.item_embeddings(torch.arange(10))
    batch = {"history": torch.tensor([[9]]), "mask": torch.tensor([[True]]), "profile": torch.tensor([[0]]),
             "exclude": torch.tensor([[9]]), "targets": torch.tensor([[8, 9]])}
    s, c = _retrieval_recall(model, batch, emb, 1)  # item 9 is history: top-1 is 8, one of two targets
    assert s.item() == pytest.approx(0.5) and c.item() == 1
    batch["targets"] = torch.tensor([[1, 1]])        # duplicates count once
    assert _retrieval_recall(model, batch, emb, 1)[0].item() == 0.0  # masked interest 2 would pick item 1
    batch["profile"] = torch.tensor([[1]])
    assert _retrieval_recall(model, batch, emb, 1)[0].item() == 1.0  # unmasked: 2 (10 - 1) = 18 > 8


# ---------------------------------------------------------------------------------------- end to end
def _read_metrics(out: Path) -> list[dict]:
    with open(out / "logs" / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def two_runs(split, tmp_path_factory):
    """The same params and data trained twice (YouTube DNN, 4 epochs)."""
    base = tmp_path_factory.mktemp("runs")
    mc = ModelConfig(name="ytb", arch="youtube_dnn", hparams={"dim": 16, "hidden_dim": 32})
    outs = []
    for i in range(2):
        out = base / f"run{i}" / "ytb"
        summary = run(_cfg(patience=10), mc, split, out, seed=11)
        outs.append((out, summary))
    return outs


def test_outputs_contract(two_runs, split):
    import models

    out, summary = two_runs[0]
    assert sorted(p.name for p in out.iterdir()) == ["best.ckpt", "logs", "model.pt", "train.json"]
    rows = _read_metrics(out)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert {"epoch", "step", "train/loss", MONITOR} <= set(rows[0])
    recalls = [float(r[MONITOR]) for r in rows]
    losses = [float(r["train/loss"]) for r in rows]
    assert losses[-1] < losses[0]                                 # the loss falls
    train = json.loads((out / "train.json").read_text())
    assert train == json.loads(json.dumps(summary))
    assert train["best_val_recall@50"] == pytest.approx(max(recalls))
    assert train["best_epoch"] == int(np.argmax(recalls))
    assert train["epochs"] == 4 and train["samples_per_s"] > 0 and train["peak_rss_mb"] > 0
    model, extra = models.load_model(out / "model.pt", with_extra=True)
    meta = load_split_meta(split)
    assert extra["num_items"] == meta.num_items and extra["max_len"] == TINY["max_len"]
    assert extra["profile_cardinalities"] == meta.profile_cardinalities
    assert extra["best_val_recall@50"] == pytest.approx(max(recalls))
    assert extra["train"]["lr"] == TrainConfig().lr
    assert torch.equal(model.item_category, torch.as_tensor(meta.item_category))
    # model.pt holds the best epoch's weights: re-scoring validation reproduces the best recall
    valid = EvalUsers(split / "valid.parquet", meta, max_len=extra["max_len"])
    with torch.no_grad():
        s, c = _retrieval_recall(model, valid[np.arange(len(valid))],
                                 model.item_embeddings(torch.arange(meta.num_items)), 50)
    assert (s / c).item() == pytest.approx(max(recalls), abs=1e-6)


def test_same_params_and_data_give_the_same_metrics(two_runs):
    (a, _), (b, _) = two_runs
    assert _read_metrics(a) == _read_metrics(b)
    wa = torch.load(a / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(b / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_training_beats_popularity_on_planted_categories(two_runs, split, tmp_path):
    out, summary = two_runs[0]
    pop = run(_cfg(), ModelConfig(name="pop", arch="most_popular"), split, tmp_path / "pop", seed=11)
    assert summary["best_val_recall@50"] > pop["best_val_recall@50"]


def test_most_popular_counts_and_writes_the_same_outputs(split, tmp_path):
    import models

    out = tmp_path / "pop"
    summary = run(_cfg(), ModelConfig(name="pop", arch="most_popular"), split, out, seed=0)
    assert sorted(p.name for p in out.iterdir()) == ["best.ckpt", "logs", "model.pt", "train.json"]
    model = models.load_model(out / "model.pt")
    items = pd.read_parquet(split / "items.parquet")
    assert model.item_embeddings(torch.tensor(items["item_idx"].to_numpy())).squeeze(1).tolist() == \
        items["train_count"].astype(float).tolist()
    # plain reference: the 50 most counted items (ties: lower id) not in the history
    counts = dict(zip(items["item_idx"], items["train_count"]))
    order = sorted(counts, key=lambda i: (-counts[i], i))
    recalls = []
    for _, row in pd.read_parquet(split / "valid.parquet").iterrows():
        top = [i for i in order if i not in set(row["history"])][:50]
        recalls.append(len(set(top) & set(row["targets"])) / len(set(row["targets"])))
    assert summary["best_val_recall@50"] == pytest.approx(np.mean(recalls))
    assert float(_read_metrics(out)[0][MONITOR]) == pytest.approx(np.mean(recalls))


def test_override_and_log_q_sampler_path(split, tmp_path):
    mc = ModelConfig(name="m", arch="youtube_dnn", hparams={"dim": 8}, overrides={"max_epochs": 1},
                     harder_negatives=True)
    out = tmp_path / "m"
    summary = run(_cfg(sampler="log_uniform", in_batch_negatives=True), mc, split, out, seed=1)
    assert summary["epochs"] == 1 and len(_read_metrics(out)) == 1
    assert np.isfinite(float(_read_metrics(out)[0]["train/loss"]))


def test_failed_run_leaves_previous_outputs_and_no_temp_dirs(split, tmp_path):
    out = tmp_path / "models" / "m"
    out.mkdir(parents=True)
    (out / "train.json").write_text("previous")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in split.iterdir():
        if f.name != "valid.parquet":
            (broken / f.name).write_bytes(f.read_bytes())
    from components.io import DataError

    with pytest.raises(DataError, match="valid.parquet"):
        run(_cfg(), ModelConfig(name="m", arch="youtube_dnn", hparams={"dim": 8}), broken, out, seed=0)
    assert (out / "train.json").read_text() == "previous"
    assert sorted(p.name for p in out.parent.iterdir()) == ["m"]


def test_cli_bad_params_exit_2_naming_the_key(split, tmp_path):
    params = {"seed": 1, "train": {**TINY, "models": ["m"]}, "models": {"m": {"arch": "youtube_dnn", "dimm": 8}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "components.train", "--params", str(tmp_path / "params.yaml"), "--model", "m",
           "--split", str(split), "--out", str(tmp_path / "out")]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2 and "dimm" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    res = subprocess.run(cmd[:6] + ["nope"] + cmd[7:], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2 and "models.nope" in res.stderr


def test_cli_help_is_fast_to_import():
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "components.train", "--help"],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0 and "--model" in res.stdout
    assert "torch" not in {line.split("|")[-1].strip().split(".")[0] for line in res.stderr.splitlines()[1:]}


def test_keep_freed_memory_sets_glibc_malloc_thresholds():
    import platform

    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
    x = torch.ones(4_000_000)  # 16 MB: served from the heap now, and the same values as ever
    assert float(x.sum()) == 4_000_000.0
