"""Sparse embedding training (issue 12, ``train.embedding_optimizer: sparse_adam``).

- the loss and the gradients on the rows a step touches are the dense ones: against a YouTube DNN loss written
  here from the weights by hand (no model code), and sparse vs dense mode for every arch;
- the optimizer (components.task.DenseSparseAdam) leaves the rows a step did not touch, and their Adam
  moments, bit-identical, and updates touched rows as a hand-written lazy Adam does;
- a sparse_adam run's ``best.ckpt`` round-trips through ``RetrievalTask.load_from_checkpoint``, optimizer
  state included, and training resumes from it.
"""
from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch

import models as M
from components.task import DenseSparseAdam, RetrievalTask
from models.loss import NegativeSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "components"))
from test_train_data import write_tiny_split  # noqa: E402

N_ITEMS, N_CATS, CARDS, L, D = 100, 6, [3, 5], 7, 8  # N > the ids of a batch: no model takes a
# whole-table shortcut (test_dense_table_gradient_becomes_its_touched_rows covers that case)


def _task(arch: str, optimizer: str, seed: int = 0, task_kw: dict | None = None, **hp) -> RetrievalTask:
    """A small task of ``arch`` (model hparams ``hp``, RetrievalTask arguments ``task_kw``), categories set."""
    torch.manual_seed(seed)
    hparams = dict(num_items=N_ITEMS, num_categories=N_CATS, profile_cardinalities=CARDS, max_len=L, dim=D, **hp)
    task = RetrievalTask(arch=arch, model_hparams=hparams, num_negatives=9, embedding_optimizer=optimizer,
                         attention_pow=2.0 if arch == "mind" else None, **(task_kw or {}))
    cats = torch.randint(0, N_CATS, (N_ITEMS,), generator=torch.Generator().manual_seed(1))
    cats[0] = 0
    M.set_item_category(task.model, cats)
    return task


class _Fixed:
    """A sampler stub: always the same negatives (so both modes see the same ones)."""

    def __init__(self, ids):
        self.ids = torch.as_tensor(ids)

    def sample(self, num, generator=None):
        return self.ids[:num].clone()


def _prepare(task: RetrievalTask, negatives) -> None:
    task.sampler = _Fixed(negatives)
    task._gen, task._log_q, task._batch_log_q, task._check_every_step = None, None, None, False
    task._zero("loss", "samples", "nonfinite")


def _batch(seed: int, hi: int = N_ITEMS, b: int = 5) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, L + 1, (b,), generator=g)
    mask = torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)
    history = torch.randint(1, hi, (b, L), generator=g) * mask
    return {"history": history, "mask": mask, "profile": torch.stack([torch.randint(0, c, (b,), generator=g)
                                                                      for c in CARDS], 1),
            "target": torch.randint(1, hi, (b,), generator=g)}


def _loss_and_grads(task: RetrievalTask, batch: dict, routing_seed: int = 7):
    task.model.zero_grad(set_to_none=True)
    torch.manual_seed(routing_seed)  # MIND/UMI draw their routing init in training mode
    loss = task.training_step(batch, 1)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in task.model.named_parameters() if p.grad is not None}


# --------------------------------------------------------------------------------- loss and gradients
def _reference_youtube_loss(W, C, item_cat, profile_tables, mlp, batch, neg):
    """YouTube DNN's sampled-softmax loss from the raw weights (MIND §3.2 average of id and category; masked
    mean pooling; profile concat; MLP; softmax over [positive, shared negatives] minus accidental hits)."""
    def emb(ids):
        cat = item_cat[ids]
        return (W[ids] * (ids != 0).unsqueeze(-1) + C[cat] * (cat != 0).unsqueeze(-1)) / 2

    m = batch["mask"].float()
    pooled = (emb(batch["history"]) * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
    prof = torch.cat([t[batch["profile"][:, c]] * (batch["profile"][:, c] != 0).unsqueeze(-1)
                      for c, t in enumerate(profile_tables)], -1)
    (w1, b1), (w2, b2) = mlp
    u = torch.relu(torch.cat([pooled, prof], -1) @ w1.T + b1) @ w2.T + b2
    pos = batch["target"]
    pos_logit = (u * emb(pos)).sum(-1)
    neg_logit = (u @ emb(neg).T).masked_fill(neg.unsqueeze(0) == pos.unsqueeze(1), -math.inf)
    return (torch.logsumexp(torch.cat([pos_logit.unsqueeze(1), neg_logit], 1), 1) - pos_logit).mean()


@pytest.mark.parametrize("optimizer", ["adam", "sparse_adam"])
def test_youtube_dnn_loss_and_table_gradients_match_a_hand_written_reference(optimizer):
    task = _task("youtube_dnn", optimizer, hidden_dim=16, profile_dim=4)
    neg = torch.tensor([3, 9, 9, 17, 22, 5, 30, 1, 12])
    batch = _batch(2)
    batch["target"][0] = 9  # an accidental hit
    _prepare(task, neg)
    loss, grads = _loss_and_grads(task, batch)

    net = task.model
    W = net.items.item.weight.detach().clone().requires_grad_(True)
    C = net.items.category.weight.detach().clone().requires_grad_(True)
    tables = [e.weight.detach() for e in net.profile.fields]
    mlp = [(net.mlp[0].weight.detach(), net.mlp[0].bias.detach()), (net.mlp[2].weight.detach(), net.mlp[2].bias.detach())]
    ref = _reference_youtube_loss(W, C, net.items.item_category, tables, mlp, batch, neg)
    ref.backward()
    assert torch.allclose(loss, ref.detach(), atol=1e-6), (loss, ref)

    gw, gc = grads["items.item.weight"], grads["items.category.weight"]
    assert gw.is_sparse == gc.is_sparse == (optimizer == "sparse_adam")
    gw, gc = gw.to_dense(), gc.to_dense()
    assert torch.allclose(gw, W.grad, atol=1e-6) and torch.allclose(gc, C.grad, atol=1e-6)
    touched = torch.zeros(N_ITEMS, dtype=torch.bool)
    touched[torch.cat([batch["history"][batch["mask"]], batch["target"], neg])] = True
    touched[0] = False  # padding never learns
    assert gw[~touched].abs().sum() == 0 and (gw[touched].abs().sum(1) > 0).all()
    if optimizer == "sparse_adam":  # a sparse gradient names only touched rows
        rows = grads["items.item.weight"].coalesce().indices()[0]
        assert touched[rows].all()


@pytest.mark.parametrize("arch,hp", [
    ("youtube_dnn", {"use_category": False}),
    ("mind", {"num_interests": 3}),
    ("comirec_dr", {"num_interests": 3}),
    ("comirec_dr", {"num_interests": 3, "use_category": True}),
    ("comirec_sa", {"num_interests": 3}),
    ("umi", {"num_interests": 3}),
])
@pytest.mark.parametrize("harder_negatives", [False, True])
def test_sparse_mode_gives_the_dense_loss_and_gradients(arch, hp, harder_negatives):
    neg = torch.tensor([3, 9, 9, 17, 22, 5, 30, 1, 12])
    batch = _batch(3, b=6)
    out = {}
    for opt in ("adam", "sparse_adam"):
        task = _task(arch, opt, **hp)
        task.hparams.harder_negatives = harder_negatives
        _prepare(task, neg)
        out[opt] = _loss_and_grads(task, batch)
    (ld, gd), (ls, gs) = out["adam"], out["sparse_adam"]
    assert torch.allclose(ld, ls, atol=1e-6)
    assert set(gd) == set(gs)
    for name in gd:
        sparse_expected = name.startswith("items.") and name.endswith(".weight")
        assert gs[name].is_sparse == sparse_expected, name
        assert not gd[name].is_sparse
        assert torch.allclose(gd[name], gs[name].to_dense(), atol=1e-5), name


def test_weight_decay_is_refused_with_sparse_adam():
    with pytest.raises(ValueError, match="weight_decay.*sparse_adam"):
        RetrievalTask(arch="youtube_dnn", model_hparams=dict(num_items=10, num_categories=2, dim=4),
                      weight_decay=0.01, embedding_optimizer="sparse_adam")
    from components.config import ParamsError, from_dict
    from components.train import TrainConfig

    with pytest.raises(ParamsError, match="train.*weight_decay must be 0 with embedding_optimizer sparse_adam"):
        from_dict(TrainConfig, {"weight_decay": 0.01, "embedding_optimizer": "sparse_adam"}, "train")
    with pytest.raises(ValueError, match="embedding_optimizer"):
        RetrievalTask(arch="youtube_dnn", model_hparams=dict(num_items=10, num_categories=2, dim=4),
                      embedding_optimizer="adagrad")


def test_dense_table_gradient_becomes_its_touched_rows():
    """A model's whole-table shortcut (small catalogue) gives the table a dense gradient: the optimizer
    updates exactly its non-zero rows, as if the gradient had been sparse."""
    w1 = torch.nn.Parameter(torch.randn(8, 3))
    w2 = torch.nn.Parameter(w1.detach().clone())
    lin1, lin2 = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    lin2.load_state_dict(lin1.state_dict())
    o1 = DenseSparseAdam(lin1.parameters(), [w1], lr=0.1)
    o2 = DenseSparseAdam(lin2.parameters(), [w2], lr=0.1)
    ids = torch.tensor([1, 5, 5, 2])
    lin1(torch.nn.functional.embedding(ids, w1, sparse=True)).sum().backward()
    lin2(w2[ids]).sum().backward()  # dense gradient, rows 0, 3, 4, 6, 7 zero
    assert w1.grad.is_sparse and not w2.grad.is_sparse
    o1.step(), o2.step()
    assert torch.allclose(w1, w2, atol=1e-7)
    assert torch.equal(o1.state[w1]["exp_avg"], o2.state[w2]["exp_avg"])
    assert torch.equal(w2.detach()[[0, 3, 4, 6, 7]], w1.detach()[[0, 3, 4, 6, 7]])


# -------------------------------------------------------------------------------------------- optimizer
def _lazy_adam(p, m, v, step, idx, g, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Lazy Adam by hand on rows ``idx`` (unique) with gradient rows ``g``; ``step`` counts the table's steps."""
    m[idx] = b1 * m[idx] + (1 - b1) * g
    v[idx] = b2 * v[idx] + (1 - b2) * g * g
    step_size = lr * math.sqrt(1 - b2 ** step) / (1 - b1 ** step)
    p[idx] -= step_size * m[idx] / (v[idx].sqrt() + eps)


def test_untouched_rows_and_their_adam_state_stay_unchanged():
    task = _task("mind", "sparse_adam", num_interests=2)
    task.hparams.lr = 0.05
    opt = task.configure_optimizers()
    assert isinstance(opt, DenseSparseAdam)
    table = task.model.items.item.weight
    # step 1 touches every row 1..N-1; steps 2-4 only rows < 15 (histories, targets and negatives)
    _prepare(task, torch.arange(1, N_ITEMS))
    task.hparams.num_negatives = N_ITEMS - 1
    batches = [_batch(10)] + [_batch(11 + i, hi=15) for i in range(3)]
    ref_p = table.detach().clone()
    ref_m, ref_v = torch.zeros_like(ref_p), torch.zeros_like(ref_p)
    dense_before = task.model.bilinear.weight.detach().clone()
    for i, b in enumerate(batches):
        if i == 1:
            _prepare(task, torch.arange(1, 10))
            task.hparams.num_negatives = 9
            snap = {"p": table.detach().clone(), "m": opt.state[table]["exp_avg"].clone(),
                    "v": opt.state[table]["exp_avg_sq"].clone()}
        opt.zero_grad()
        _, grads = _loss_and_grads(task, b)
        g = grads["items.item.weight"].coalesce()
        _lazy_adam(ref_p, ref_m, ref_v, i + 1, g.indices()[0], g.values(), lr=0.05)
        opt.step()
    rows = torch.arange(N_ITEMS) >= 15
    st = opt.state[table]
    assert torch.equal(table.detach()[rows], snap["p"][rows])           # weights: bit-identical
    assert torch.equal(st["exp_avg"][rows], snap["m"][rows])           # moments: not decayed
    assert torch.equal(st["exp_avg_sq"][rows], snap["v"][rows])
    assert not torch.equal(table.detach()[~rows], snap["p"][~rows])
    assert torch.allclose(table.detach(), ref_p, atol=1e-6)            # = lazy Adam written by hand
    assert torch.allclose(st["exp_avg"], ref_m, atol=1e-7) and torch.allclose(st["exp_avg_sq"], ref_v, atol=1e-9)
    assert not torch.equal(task.model.bilinear.weight.detach(), dense_before)  # dense Adam ran too
    assert st["step"] == 4 and int(opt.state[task.model.bilinear.weight]["step"]) == 4


def test_first_step_equals_dense_adam_everywhere():
    """From the same weights, one step of DenseSparseAdam equals one step of dense Adam on every parameter:
    the dense ones take the same Adam step, and on a table dense Adam's first step moves no row without a
    gradient (m = v = 0 there), which is what lazy Adam does. (Later steps differ on the tables by design:
    dense Adam keeps moving untouched rows with their decaying moments.) Tolerance: SparseAdam adds eps to
    sqrt(v) *after* bias correction of the step size (the Adam paper's epsilon-hat), torch's Adam before, so
    an entry with |g| near eps / sqrt(1 - beta2^t) (3e-7 at step 1) moves up to ~1 % of lr less; and Adam's
    first step lr * g / (|g| + eps) turns the rounding of gradients near eps into up to ~lr * 1e-3 on
    dense weights (the sparse path pools in another order)."""
    a, b = _task("youtube_dnn", "sparse_adam"), _task("youtube_dnn", "adam")
    for t in (a, b):
        _prepare(t, torch.tensor([3, 9, 17, 22, 5, 30, 1, 12, 2]))
    oa, ob = a.configure_optimizers(), b.configure_optimizers()
    batch = _batch(20, hi=60)
    for t, o in ((a, oa), (b, ob)):
        o.zero_grad()
        _loss_and_grads(t, batch)
        o.step()
    lr = a.hparams.lr
    for (n, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.allclose(pa, pb, atol=0.02 * lr), n
        assert (pa - pb).abs().mean() < 1e-3 * lr, n
    for t in (a, b):  # rows without a gradient did not move in either
        w = t.model.items.item.weight.detach()
        assert torch.equal(w[60:], _task("youtube_dnn", "adam").model.items.item.weight.detach()[60:])


def test_optimizer_state_dict_round_trip():
    task = _task("umi", "sparse_adam", num_interests=2)
    _prepare(task, torch.tensor([3, 9, 17]))
    opt = task.configure_optimizers()
    for i in range(2):
        opt.zero_grad()
        _loss_and_grads(task, _batch(30 + i))
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    other = _task("umi", "sparse_adam", num_interests=2)
    other.model.load_state_dict(task.model.state_dict())
    opt2 = other.configure_optimizers()
    opt2.load_state_dict(sd)
    _prepare(other, torch.tensor([3, 9, 17]))
    for t, o in ((task, opt), (other, opt2)):  # one more identical step: identical weights after it
        o.zero_grad()
        _loss_and_grads(t, _batch(40))
        o.step()
    for (n, pa), (_, pb) in zip(task.model.named_parameters(), other.model.named_parameters()):
        assert torch.equal(pa, pb), n


# ------------------------------------------------------------------------------------------- checkpoint
def test_sparse_adam_checkpoint_round_trips_through_load_from_checkpoint(tmp_path):
    from components.train import ModelConfig, TrainConfig, run

    split = write_tiny_split(tmp_path / "split", num_users=60, num_items=50, num_categories=4, min_len=6,
                             max_len=12, seed=4)
    cfg = TrainConfig(max_len=6, max_epochs=2, batch_size=32, num_negatives=10, patience=2, progress_refresh=0,
                      eval_batch_size=16, embedding_optimizer="sparse_adam")
    mc = ModelConfig(name="mind", arch="mind", hparams={"dim": 8, "num_interests": 3}, attention_pow=2.0)
    run(cfg, mc, split, tmp_path / "mind", seed=5)
    ckpt_path = tmp_path / "mind" / "best.ckpt"
    task = RetrievalTask.load_from_checkpoint(ckpt_path, map_location="cpu")
    assert task.hparams["embedding_optimizer"] == "sparse_adam"
    assert task.model.items.sparse and task.model.items.item.sparse  # the mode comes back with the task
    saved = M.load_model(tmp_path / "mind" / "model.pt")
    for k, v in saved.state_dict().items():
        assert torch.equal(task.model.state_dict()[k], v), k

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    opt = task.configure_optimizers()
    opt.load_state_dict(ckpt["optimizer_states"][0])  # Lightning's one optimizer state: ours
    table = task.model.items.item.weight
    assert opt.state[table]["exp_avg"].shape == table.shape and opt.state[table]["step"] > 0
    assert [g["sparse"] for g in opt.param_groups] == [False, True]

    # Lightning resumes from it (optimizer state restored by Lightning itself) and trains on
    resume_trains_on(task, split, ckpt, ckpt_path, saved, tmp_path)


def resume_trains_on(task, split, ckpt: dict, ckpt_path, saved, tmp_path) -> None:
    """Lightning resumes ``task`` from ``ckpt_path`` (its optimizer state restored by Lightning itself) and
    takes more steps: the global step grows and the item table moves away from the ``saved`` model's."""
    import pytorch_lightning as pl

    from components.train_data import SplitDataModule, load_split_meta

    meta = load_split_meta(split)
    dm = SplitDataModule(split, meta, max_len=6, batch_size=32, eval_batch_size=16, seed=5)
    trainer = pl.Trainer(max_epochs=int(ckpt["epoch"]) + 2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         use_distributed_sampler=False, default_root_dir=tmp_path / "resume")
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path)
    assert trainer.global_step > ckpt["global_step"]
    assert not torch.equal(task.model.items.item.weight, saved.items.item.weight)


# ---------------------------------------------------------------------------------------------- sampler
@pytest.mark.parametrize("kind", ["popularity", "log_uniform"])
def test_sampler_draws_follow_its_probabilities(kind):
    """The inverse-CDF draw (no per-step pass over the catalogue) has the sampler's distribution: frequencies
    of 400k draws within 5 standard errors of ``probs``; padding 0 never drawn."""
    counts = torch.tensor([0, 50, 0, 7, 1, 300, 2, 0, 40, 9])
    s = NegativeSampler(kind, counts)
    draws = s.sample(400_000, torch.Generator().manual_seed(3))
    assert draws.min() >= 1 and draws.max() <= 9
    freq = torch.bincount(draws, minlength=10)[1:].double() / len(draws)
    p = s.probs
    se = (p * (1 - p) / len(draws)).sqrt()
    assert ((freq - p).abs() <= 5 * se + 1e-12).all(), (freq, p)
    assert torch.allclose(s.log_q(torch.arange(1, 10)).double().exp(), p, rtol=1e-5)


def test_sampler_never_draws_a_zero_probability_item():
    s = NegativeSampler("popularity", torch.tensor([0, 5, 3]))
    s.probs = torch.tensor([1.0, 0.0], dtype=torch.float64)  # item 2 impossible
    s._cdf = torch.cumsum(s.probs, 0)
    assert (s.sample(10_000, torch.Generator().manual_seed(0)) == 1).all()


@pytest.mark.slow
def test_two_process_ddp_trains_with_sparse_adam(tmp_path):
    """DDP (CPU, gloo) all-reduces the sparse table gradients: a 2-process run of the train CLI with
    sparse_adam completes and writes its outputs."""
    import json
    import os
    import subprocess

    import yaml

    split = write_tiny_split(tmp_path / "split", num_users=75, num_items=80, num_categories=5, min_len=5,
                             max_len=15, seed=5)
    params = {"seed": 7,
              "train": {"models": ["m"], "max_len": 5, "accelerator": "cpu", "devices": 2, "strategy": "ddp",
                        "max_epochs": 2, "batch_size": 16, "num_negatives": 8, "eval_batch_size": 2,
                        "progress_refresh": 0, "patience": 5, "embedding_optimizer": "sparse_adam"},
              "models": {"m": {"arch": "mind", "dim": 8, "num_interests": 2, "attention_pow": 2.0}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "models" / "m"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    res = subprocess.run([sys.executable, "-m", "components.train", "--params", str(tmp_path / "params.yaml"),
                          "--model", "m", "--split", str(split), "--out", str(out)],
                         cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    train = json.loads((out / "train.json").read_text())
    assert train["world_size"] == 2 and train["epochs"] == 2
    task = RetrievalTask.load_from_checkpoint(out / "best.ckpt", map_location="cpu")
    assert task.hparams["embedding_optimizer"] == "sparse_adam"
