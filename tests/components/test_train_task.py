"""Tests of the train step's LightningModule and its shell: divergence stops the run and keeps the previous
outputs, the checkpoint rebuilds the task, the progress bar only on a terminal, ``--trainer.KEY`` overrides and
the optional loggers."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_train_data import write_tiny_split  # noqa: E402

from components.config import ParamsError, from_dict  # noqa: E402
from components.train import (ModelConfig, TrainConfig, TrainingDiverged, check_logger,  # noqa: E402
                              parse_trainer_flags, progress_bar_enabled, run)
from components.train_data import EvalUsers, load_split_meta  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = {"max_len": 6, "max_epochs": 1, "batch_size": 32, "num_negatives": 10, "patience": 2,
        "progress_refresh": 0, "eval_batch_size": 16}
YTB = {"arch": "youtube_dnn", "dim": 8, "hidden_dim": 16}


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    return write_tiny_split(tmp_path_factory.mktemp("split") / "split", num_users=60, num_items=50,
                            num_categories=4, min_len=6, max_len=12, seed=4)


def _digests(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _cli(tmp_path: Path, split: Path, out: Path, train: dict, *extra: str) -> subprocess.CompletedProcess:
    params = {"seed": 3, "train": {**TINY, "models": ["m"], **train}, "models": {"m": YTB}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "components.train", "--params", str(tmp_path / "params.yaml"), "--model", "m",
           "--split", str(split), "--out", str(out), *extra]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


# ------------------------------------------------------------------------------------------- divergence
def test_diverged_cli_exits_2_naming_the_keys_and_keeps_the_previous_outputs(split, tmp_path):
    out = tmp_path / "models" / "m"
    run(TrainConfig(**TINY), ModelConfig.from_params({"models": {"m": YTB}}, "m"), split, out, seed=3)
    before = _digests(out)
    assert {"model.pt", "best.ckpt", "train.json", "logs/metrics.csv"} <= set(before)

    # lr: .inf is refused when params load; a finite 1e30 makes Adam move every weight by ~1e30 per step,
    # and the logits overflow in real training
    res = _cli(tmp_path, split, out, {"lr": 1e30})
    assert res.returncode == 2, res.stderr[-2000:]
    err = res.stderr.strip().splitlines()[-1]
    assert re.match(r"error: models\.m \(youtube_dnn\): training diverged: non-finite loss at epoch 0, step [1-9]",
                    err), err
    assert "train.lr (now 1e+30)" in err
    assert _digests(out) == before  # model.pt, best.ckpt, train.json, logs: byte-identical
    assert sorted(p.name for p in out.parent.iterdir()) == ["m"]  # no staging directory left behind


def test_overflowing_weights_stop_run_with_the_variant_override_key(split, tmp_path):
    # a finite but huge learning rate: Adam moves every weight by ~lr per step, the logits overflow to inf
    mc = ModelConfig(name="big", arch="mind", hparams={"dim": 8}, overrides={"lr": 1e30})
    with pytest.raises(TrainingDiverged, match=r"models\.big \(mind\): training diverged: non-finite loss "
                                               r"at epoch 0, step \d+.*models\.big\.lr \(now 1e\+30\)") as exc:
        run(TrainConfig(**TINY), mc, split, tmp_path / "big", seed=0)
    assert isinstance(exc.value, ParamsError)  # what cli_main turns into exit status 2
    assert not (tmp_path / "big").exists() and list(tmp_path.iterdir()) == []


def _fit_task(split: Path, root: Path, lr: float, defer: bool, max_epochs: int = 2):
    """A RetrievalTask trained by a plain Trainer; ``defer`` turns off the per-step check (the GPU/DDP path)."""
    import pytorch_lightning as pl

    import models as M
    from components.task import RetrievalTask
    from components.train_data import SplitDataModule

    meta = load_split_meta(split)
    pl.seed_everything(0, verbose=False)
    hp = {"dim": 8, "hidden_dim": 16, "num_items": meta.num_items, "num_categories": meta.num_categories,
          "profile_cardinalities": list(meta.profile_cardinalities), "max_len": 6}
    task = RetrievalTask(arch="youtube_dnn", model_hparams=hp, num_negatives=5, lr=lr, sampler="popularity",
                         item_counts=meta.item_counts)
    M.set_item_category(task.model, meta.item_category)

    class Defer(pl.Callback):
        def on_train_start(self, trainer, pl_module):  # after the task's on_fit_start chose the per-step check
            pl_module._check_every_step = False

    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, default_root_dir=root, callbacks=[Defer()] if defer else [])
    dm = SplitDataModule(split, meta, max_len=6, batch_size=16, eval_batch_size=16, seed=0)
    trainer.fit(task, datamodule=dm)
    return task, trainer


def test_deferred_check_stops_after_the_epoch_on_weights(split, tmp_path):
    from components.task import NonFiniteTraining

    with pytest.raises(NonFiniteTraining, match=r"non-finite weights at epoch 0, step \d+ \(items\.item\.weight, ") as exc:
        _fit_task(split, tmp_path, float("inf"), defer=True)
    assert exc.value.epoch == 0 and exc.value.step > 1  # the whole first epoch ran: checked at its end
    with pytest.raises(NonFiniteTraining, match=r"non-finite loss at epoch 0, step 1 "):
        _fit_task(split, tmp_path, float("inf"), defer=False)  # CPU, one process: the first bad step


def test_deferred_check_counts_non_finite_loss_steps(split, tmp_path, monkeypatch):
    """A nan loss with finite gradients (a constant nan term), so the weights stay finite: the epoch's
    all-reduced count of bad steps stops the run."""
    import components.task as T

    real = T.sampled_softmax_loss
    monkeypatch.setattr(T, "sampled_softmax_loss", lambda *a, **k: real(*a, **k) + torch.tensor(float("nan")))
    with pytest.raises(T.NonFiniteTraining, match=r"non-finite loss at epoch 0, step \d+ \((\d+) step\(s\)"):
        _fit_task(split, tmp_path, 1e-3, defer=True, max_epochs=1)


def test_finite_training_is_not_stopped(split, tmp_path):
    task, trainer = _fit_task(split, tmp_path, 1e-2, defer=True)
    assert trainer.current_epoch == 2 and np.isfinite(float(trainer.callback_metrics["train/loss"]))


# ---------------------------------------------------------------------------------------- the checkpoint
def test_checkpoint_rebuilds_the_task_alone(split, tmp_path):
    import models as M
    from components.task import RetrievalTask

    mc = ModelConfig(name="mind", arch="mind", hparams={"dim": 8, "num_interests": 3}, attention_pow=2.0)
    run(TrainConfig(**{**TINY, "sampler": "popularity", "in_batch_negatives": True}), mc, split,
        tmp_path / "mind", seed=5)
    task = RetrievalTask.load_from_checkpoint(tmp_path / "mind" / "best.ckpt", map_location="cpu")
    meta = load_split_meta(split)
    hp = dict(task.hparams)
    assert hp["arch"] == "mind" and hp["sampler"] == "popularity" and hp["in_batch_negatives"] is True
    assert hp["attention_pow"] == 2.0 and hp["seed"] == 5 and hp["model_hparams"]["num_interests"] == 3
    assert json.loads(json.dumps(hp)) == hp  # plain, JSON-able values
    assert task.item_counts.tolist() == meta.item_counts.tolist()  # the sampler's data came back too
    saved = M.load_model(tmp_path / "mind" / "model.pt")
    assert torch.equal(task.model.item_category, saved.item_category)
    task.model.eval()
    valid = EvalUsers(split / "valid.parquet", meta, max_len=6)
    batch = valid[np.arange(len(valid))]
    with torch.no_grad():
        got = task.model.user_interests(batch["history"], batch["mask"], batch["profile"])
        want = saved.user_interests(batch["history"], batch["mask"], batch["profile"])
        ids = torch.arange(meta.num_items)
        assert torch.equal(task.model.item_embeddings(ids), saved.item_embeddings(ids))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_most_popular_checkpoint_loads_too(split, tmp_path):
    import models as M
    from components.task import RetrievalTask

    run(TrainConfig(**TINY), ModelConfig(name="pop", arch="most_popular"), split, tmp_path / "pop", seed=0)
    task = RetrievalTask.load_from_checkpoint(tmp_path / "pop" / "best.ckpt", map_location="cpu")
    ids = torch.arange(load_split_meta(split).num_items)
    saved = M.load_model(tmp_path / "pop" / "model.pt")
    assert task.hparams["arch"] == "most_popular"
    assert torch.equal(task.model.item_embeddings(ids), saved.item_embeddings(ids))
    assert task.model.item_embeddings(ids).abs().sum() > 0  # the counts, not a fresh model's zeros


def test_make_task_wrapper_keeps_the_given_model_and_checks_log_q(split):
    import models as M
    from components.train import make_task
    from models.loss import NegativeSampler

    meta = load_split_meta(split)
    net = M.build_model("youtube_dnn", num_items=meta.num_items, num_categories=meta.num_categories, dim=8)
    sampler = NegativeSampler("uniform", meta.num_items)
    kw = dict(num_items=meta.num_items, num_negatives=5, lr=0.01, weight_decay=0.0, attention_pow=None,
              harder_negatives=False, in_batch=False, batch_sampler_q=None, seed=0)
    task = make_task(net, sampler, log_q=False, **kw)
    assert task.model is net and task.sampler is sampler and task.hparams["model_hparams"] == net.config
    with pytest.raises(ValueError, match="log_q"):
        make_task(net, sampler, log_q=True, **kw)


# ---------------------------------------------------------------------------------------- progress bar
def test_progress_bar_only_on_a_terminal():
    main_fd, other_fd = os.openpty()
    try:
        with open(other_fd, "w", closefd=False) as tty:
            assert progress_bar_enabled(20, tty) is True
            assert progress_bar_enabled(0, tty) is False  # 0 still turns it off
    finally:
        os.close(main_fd)
        os.close(other_fd)
    assert progress_bar_enabled(20, io.StringIO()) is False
    closed = io.StringIO()
    closed.close()
    assert progress_bar_enabled(20, closed) is False


def test_not_a_terminal_gets_one_line_per_epoch(split, tmp_path, capfd):
    run(TrainConfig(**{**TINY, "max_epochs": 2, "progress_refresh": 1}), ModelConfig(name="m", **{
        "arch": "youtube_dnn", "hparams": {"dim": 8}}), split, tmp_path / "m", seed=0)
    out, err = capfd.readouterr()  # pytest's capture: not a terminal
    lines = [ln for ln in err.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 0", "epoch 1"]
    assert "train/loss" in lines[0] and "val/recall@50" in lines[0]
    assert "\r" not in out + err and "it/s" not in out + err  # no tqdm bar


# ------------------------------------------------------------------------------------ trainer overrides
def test_parse_trainer_flags():
    got = parse_trainer_flags(["--trainer.max_epochs", "2", "--trainer.precision=bf16-mixed",
                               "--trainer.devices", "auto", "--trainer.deterministic", "false"])
    assert got == {"max_epochs": 2, "precision": "bf16-mixed", "devices": "auto", "deterministic": False}
    assert parse_trainer_flags([]) == {}
    with pytest.raises(ParamsError, match=r"--trainer\.lr: not a trainer override"):
        parse_trainer_flags(["--trainer.lr", "0.1"])
    with pytest.raises(ParamsError, match=r"--trainer\.max_epochs: missing value"):
        parse_trainer_flags(["--trainer.max_epochs"])
    with pytest.raises(ParamsError, match="unrecognized argument '--epochs'"):
        parse_trainer_flags(["--epochs", "3"])


def test_cli_trainer_overrides(split, tmp_path):
    out = tmp_path / "m"
    res = _cli(tmp_path, split, out, {"max_epochs": 3, "patience": 5}, "--trainer.max_epochs", "2")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((out / "train.json").read_text())["epochs"] == 2
    import models

    _, extra = models.load_model(out / "model.pt", with_extra=True)
    assert extra["train"]["max_epochs"] == 2 and extra["model"]["overrides"] == {"max_epochs": 2}
    bad = _cli(tmp_path, split, tmp_path / "bad", {}, "--trainer.max_epochs=0")
    assert bad.returncode == 2 and re.search(r"--trainer[.:] ?max_epochs must be >= 1", bad.stderr), bad.stderr
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------------------ logger
def test_logger_key_is_checked():
    with pytest.raises(ParamsError, match=r"train\.logger"):
        from_dict(TrainConfig, {"logger": "wandb"}, "train")
    assert from_dict(TrainConfig, {}, "train").logger == "csv"
    check_logger("csv")
    import importlib.util

    for name, pkgs in (("tensorboard", ("tensorboard", "tensorboardX")), ("mlflow", ("mlflow",))):
        if any(importlib.util.find_spec(p) for p in pkgs):
            check_logger(name)
        else:
            with pytest.raises(ParamsError, match=rf"train\.logger: '{name}' needs the {pkgs[0]}.*pip install"):
                check_logger(name)
