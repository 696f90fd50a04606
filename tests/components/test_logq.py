"""The trainer's log-Q correction, checked by number (issue 13).

``test_override_and_log_q_sampler_path`` only checks that a log-uniform run gives a finite loss, so a trainer
that silently dropped the correction passed. Here ``components.train.run`` trains a real model with the
``popularity`` sampler; after training, the task's own ``training_step`` (the LightningModule ``run`` fitted,
with the sampler and log-Q table it set up at fit start) is run on a fixed batch, and its loss is compared
with a sampled softmax computed by hand in numpy:

    loss = mean_b -log softmax([o_b,pos - log Q(pos_b), o_b,s - log Q(s) for the shared negatives s != pos_b])[0]

with ``o`` the inner product of the selected interest (argmax, ComiRec eq. 8) and the item, and
``Q(i) = (count_i + 1) / sum_j (count_j + 1)`` over the real items (the add-one popularity sampler,
docs/MODELS.md), the counts read from the split's ``items.parquet``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_train_data import write_tiny_split  # noqa: E402

import components.train as T  # noqa: E402
from components.train import ModelConfig, TrainConfig  # noqa: E402
from models.loss import NegativeSampler  # noqa: E402

NUM_ITEMS = 60


def _hand_loss(interests: np.ndarray, item_emb: np.ndarray, pos: np.ndarray, neg: np.ndarray,
               log_q: np.ndarray | None) -> float:
    """Sampled softmax with argmax interest selection, written plainly (float64)."""
    losses = []
    for b in range(len(pos)):
        e_pos = item_emb[pos[b]]
        v = interests[b][int(np.argmax(interests[b] @ e_pos))]  # eq. (8)
        logits = [v @ e_pos - (log_q[pos[b]] if log_q is not None else 0.0)]
        for s in neg:
            if s != pos[b]:  # an accidental hit is no negative
                logits.append(v @ item_emb[s] - (log_q[s] if log_q is not None else 0.0))
        logits = np.array(logits)
        m = logits.max()
        losses.append(-(logits[0] - m - np.log(np.exp(logits - m).sum())))
    return float(np.mean(losses))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(task, split_dir) of a one-epoch ComiRec-SA run with the popularity sampler. ``Trainer.fit`` is
    wrapped (the real one runs) only to keep a handle on the LightningModule that ``run`` trained."""
    import pytorch_lightning as pl

    split = write_tiny_split(tmp_path_factory.mktemp("logq") / "split", num_users=60, num_items=NUM_ITEMS,
                             num_categories=4, min_len=6, max_len=14, seed=11)
    seen: dict = {}
    real_fit = pl.Trainer.fit

    def recording_fit(self, model, *args, **kwargs):
        seen["task"] = model
        return real_fit(self, model, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(pl.Trainer, "fit", recording_fit)
    try:
        cfg = TrainConfig(max_len=6, max_epochs=1, batch_size=32, num_negatives=7, patience=1,
                          progress_refresh=0, eval_batch_size=16, sampler="popularity")
        T.run(cfg, ModelConfig(name="sa", arch="comirec_sa", hparams={"dim": 8, "num_interests": 3}),
              split, tmp_path_factory.mktemp("logq_out") / "sa", seed=5)
    finally:
        mp.undo()
    return seen["task"], split


def test_training_step_loss_equals_hand_computed_log_q_sampled_softmax(trained, monkeypatch):
    task, split = trained
    drawn: list[torch.Tensor] = []
    real_sample = NegativeSampler.sample

    def recording_sample(self, num, generator=None):
        ids = real_sample(self, num, generator)
        drawn.append(ids.clone())
        return ids

    monkeypatch.setattr(NegativeSampler, "sample", recording_sample)  # records the negatives the step draws
    model = task.model.double()  # float64 for the comparison at 1e-6 (log Q itself is a float32 table)
    counts = np.zeros(NUM_ITEMS)
    items = pd.read_parquet(split / "items.parquet")
    counts[items["item_idx"].to_numpy()] = items["train_count"].to_numpy()
    by_count = 1 + np.argsort(counts[1:], kind="stable")  # item ids, rarest first
    # positives: the four rarest items; the popularity sampler mostly draws popular negatives, so the
    # correction raises every positive logit against its negatives (rare and popular positives would cancel)
    target = torch.from_numpy(by_count[:4].copy())
    history = torch.tensor([[3, 9, 14, 0, 0, 0], [20, 21, 22, 23, 24, 25], [7, 0, 0, 0, 0, 0],
                            [40, 41, 2, 5, 0, 0]])
    batch = {"history": history, "mask": history != 0, "profile": torch.zeros(4, 1, dtype=torch.long),
             "target": target}
    task.on_train_epoch_start()
    with torch.no_grad():
        loss = float(task.training_step(batch, 1))
    assert len(drawn) == 1
    neg = drawn[0].numpy()

    q = (counts[1:] + 1.0) / (counts[1:] + 1.0).sum()
    log_q = np.concatenate([[-np.inf], np.log(q)])  # indexed by item id
    assert np.ptp(log_q[1:]) > 1.0  # a non-uniform sampler: the correction matters

    with torch.no_grad():
        interests, _ = model.user_interests(batch["history"], batch["mask"], batch["profile"])
        table = model.item_embeddings(torch.arange(NUM_ITEMS))
    interests, table = interests.numpy(), table.numpy()
    pos = batch["target"].numpy()
    expected = _hand_loss(interests, table, pos, neg, log_q)
    uncorrected = _hand_loss(interests, table, pos, neg, None)
    assert abs(expected - uncorrected) > 0.1, (expected, uncorrected)  # the check can tell the two apart
    assert loss == pytest.approx(expected, abs=1e-6)

