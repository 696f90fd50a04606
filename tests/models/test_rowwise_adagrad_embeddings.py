"""Row-wise Adagrad for the embedding tables (issue 12, ``train.embedding_optimizer: rowwise_adagrad``) and the
tables' own learning rate (``train.embedding_lr``).

- :class:`components.task.RowWiseAdagrad` against row-wise Adagrad written here by hand, row by row in float64
  (FBGEMM's ``EXACT_ROWWISE_ADAGRAD``: ``s_r += mean(g_r^2)``, ``w_r -= lr g_r / (sqrt(s_r) + eps)``), with
  repeated ids in a batch (their gradients summed first);
- in a training task: touched rows follow that reference with ``embedding_lr``, the rows a step did not touch
  and their accumulators stay bit-identical, the dense parameters take Adam's step with ``lr``;
- the optimizer state round-trips, and a rowwise_adagrad run's ``best.ckpt`` through
  ``RetrievalTask.load_from_checkpoint``, Lightning resuming from it;
- config: the key is validated (errors name ``train``), weight decay refused, ``embedding_lr`` with dense Adam
  is a second parameter group.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

import models as M
from components.task import DenseSparseOptimizer, RetrievalTask, RowWiseAdagrad

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "components"))
from test_train_data import write_tiny_split  # noqa: E402

from tests.models import test_sparse_embeddings as sparse_tests  # noqa: E402
from tests.models.test_sparse_embeddings import CARDS, D, L, N_CATS, N_ITEMS  # noqa: E402,F401


def _reference_rowwise_adagrad(w, acc, ids, grad_rows, lr, eps=1e-8):
    """Row-wise Adagrad by hand, one row at a time in float64: ``ids`` may repeat (each occurrence's gradient
    row is added to that row's total first)."""
    total: dict[int, torch.Tensor] = {}
    for i, g in zip(ids.tolist(), grad_rows.double()):
        total[i] = total.get(i, torch.zeros_like(g)) + g
    for i, g in total.items():
        acc[i] += float((g * g).sum()) / g.numel()
        w[i] -= lr * g / (acc[i] ** 0.5 + eps)


def test_rowwise_adagrad_matches_a_hand_written_reference_with_repeated_ids():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(12, 5))
    ref_w, ref_acc = w.detach().double().clone(), torch.zeros(12, dtype=torch.float64)
    opt = RowWiseAdagrad([w], lr=0.3)
    for step, ids in enumerate([torch.tensor([1, 4, 4, 7]), torch.tensor([4, 2, 9, 9, 9]), torch.tensor([7])]):
        opt.zero_grad()
        out = torch.nn.functional.embedding(ids, w, sparse=True)
        weights = torch.randn(len(ids), 5)
        (out * weights).sum().backward()  # d/d(row of id i) = weights[occurrence]
        assert w.grad.is_sparse
        before = w.detach().clone()
        opt.step()
        _reference_rowwise_adagrad(ref_w, ref_acc, ids, weights, lr=0.3)
        assert torch.allclose(w.detach().double(), ref_w, atol=1e-6), step
        assert torch.allclose(opt.state[w]["sum"].double(), ref_acc, atol=1e-6), step
        untouched = torch.ones(12, dtype=torch.bool)
        untouched[ids] = False
        assert torch.equal(w.detach()[untouched], before[untouched])
    assert opt.state[w]["sum"].shape == (12,)  # one scalar per row
    assert int(opt.state[w]["step"]) == 3
    assert (opt.state[w]["sum"][[0, 3, 5, 6, 8, 10, 11]] == 0).all()


def test_rowwise_adagrad_dense_gradient_updates_its_nonzero_rows():
    w1 = torch.nn.Parameter(torch.randn(8, 3))
    w2 = torch.nn.Parameter(w1.detach().clone())
    o1, o2 = RowWiseAdagrad([w1], lr=0.1), RowWiseAdagrad([w2], lr=0.1)
    ids = torch.tensor([1, 5, 5, 2])
    torch.nn.functional.embedding(ids, w1, sparse=True).pow(2).sum().backward()
    w2[ids].pow(2).sum().backward()  # dense gradient, rows 0, 3, 4, 6, 7 zero
    assert w1.grad.is_sparse and not w2.grad.is_sparse
    o1.step(), o2.step()
    assert torch.allclose(w1, w2, atol=1e-7)
    assert torch.equal(o1.state[w1]["sum"], o2.state[w2]["sum"])
    assert (o2.state[w2]["sum"][[0, 3, 4, 6, 7]] == 0).all()


def test_rowwise_adagrad_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="lr must be > 0"):
        RowWiseAdagrad([torch.nn.Parameter(torch.zeros(3, 2))], lr=0.0)
    with pytest.raises(ValueError, match=r"\(N, D\) tables"):
        RowWiseAdagrad([torch.nn.Parameter(torch.zeros(3))], lr=0.1)
    with pytest.raises(ValueError, match="embedding_optimizer must be one of"):
        DenseSparseOptimizer([], [torch.nn.Parameter(torch.zeros(3, 2))], lr=0.1, embedding_optimizer="adagrad")


# ------------------------------------------------------------------------------------------- in a task
def _task(arch: str, optimizer: str, seed: int = 0, **kw) -> RetrievalTask:
    return sparse_tests._task(arch, optimizer, seed, task_kw=kw,
                              **({} if arch == "youtube_dnn" else {"num_interests": 2}))


_Fixed = sparse_tests._Fixed


def _prepare(task: RetrievalTask, negatives) -> None:
    sparse_tests._prepare(task, negatives)
    task.hparams.num_negatives = len(negatives)


_batch = sparse_tests._batch


def _step(task, opt, batch):
    opt.zero_grad()
    torch.manual_seed(7)
    task.training_step(batch, 1).backward()
    grads = {n: p.grad.clone() for n, p in task.model.named_parameters() if p.grad is not None}
    opt.step()
    return grads


def test_task_updates_touched_rows_by_rowwise_adagrad_and_leaves_the_others_alone():
    task = _task("mind", "rowwise_adagrad", lr=0.01, embedding_lr=0.2)
    opt = task.configure_optimizers()
    assert isinstance(opt, DenseSparseOptimizer)
    assert [(g["sparse"], g["lr"]) for g in opt.param_groups] == [(False, 0.01), (True, 0.2)]
    tables = {"items.item.weight": task.model.items.item.weight,
              "items.category.weight": task.model.items.category.weight}
    ref = {n: (t.detach().double().clone(), torch.zeros(t.shape[0], dtype=torch.float64)) for n, t in tables.items()}
    # step 1 touches every item row; steps 2-4 only rows < 15
    _prepare(task, torch.arange(1, N_ITEMS))
    batches = [_batch(10)] + [_batch(11 + i, hi=15) for i in range(3)]
    dense = task.model.bilinear.weight
    for i, b in enumerate(batches):
        if i == 1:
            _prepare(task, torch.arange(1, 10))
            snap = {n: (t.detach().clone(), opt.state[t]["sum"].clone()) for n, t in tables.items()}
            dense_before = dense.detach().clone()
        grads = _step(task, opt, b)
        for n in tables:
            g = grads[n].coalesce()
            assert grads[n].is_sparse
            _reference_rowwise_adagrad(*ref[n], g.indices()[0], g.values(), lr=0.2)
    item = tables["items.item.weight"]
    rows = torch.arange(N_ITEMS) >= 15
    assert torch.equal(item.detach()[rows], snap["items.item.weight"][0][rows])        # weights: bit-identical
    assert torch.equal(opt.state[item]["sum"][rows], snap["items.item.weight"][1][rows])  # accumulators too
    assert not torch.equal(item.detach()[~rows], snap["items.item.weight"][0][~rows])
    for n, t in tables.items():
        assert torch.allclose(t.detach().double(), ref[n][0], atol=1e-5), n
        assert torch.allclose(opt.state[t]["sum"].double(), ref[n][1], rtol=1e-5, atol=1e-12), n
    # the dense parameters took Adam's steps at lr 0.01: the last one moved every entry by at most ~lr
    moved = (dense.detach() - dense_before).abs()
    assert moved.max() > 0 and moved.max() <= 3 * 0.01 * (1 + 1e-3)
    assert set(opt.state[dense]) == {"step", "exp_avg", "exp_avg_sq"} and int(opt.state[dense]["step"]) == 4


def test_rowwise_adagrad_optimizer_state_dict_round_trip():
    task = _task("umi", "rowwise_adagrad", embedding_lr=0.1)
    _prepare(task, torch.tensor([3, 9, 17]))
    opt = task.configure_optimizers()
    for i in range(2):
        _step(task, opt, _batch(30 + i))
    sd = copy.deepcopy(opt.state_dict())
    other = _task("umi", "rowwise_adagrad", embedding_lr=0.1)
    other.model.load_state_dict(task.model.state_dict())
    opt2 = other.configure_optimizers()
    opt2.load_state_dict(sd)
    assert opt2._sparse.state is opt2.state and opt2._sparse.param_groups[0]["lr"] == 0.1
    _prepare(other, torch.tensor([3, 9, 17]))
    for t, o in ((task, opt), (other, opt2)):
        _step(t, o, _batch(40))
    for (n, pa), (_, pb) in zip(task.model.named_parameters(), other.model.named_parameters()):
        assert torch.equal(pa, pb), n


def test_embedding_lr_with_dense_adam_is_a_second_parameter_group():
    task = _task("youtube_dnn", "adam", lr=0.01, embedding_lr=0.05)
    opt = task.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.05]
    tables = {id(p) for p in opt.param_groups[1]["params"]}
    assert tables == {id(task.model.items.item.weight), id(task.model.items.category.weight)}
    assert len(opt.param_groups[0]["params"]) + 2 == len(list(task.model.parameters()))
    assert not task.model.items.item.sparse  # dense gradients in adam mode
    plain = _task("youtube_dnn", "adam", lr=0.01).configure_optimizers()
    assert len(plain.param_groups) == 1  # embedding_lr unset: Adam as before


def test_config_validates_the_new_keys():
    from components.config import ParamsError, from_dict
    from components.train import TrainConfig

    cfg = from_dict(TrainConfig, {"embedding_optimizer": "rowwise_adagrad", "embedding_lr": 0.05}, "train")
    assert cfg.embedding_optimizer == "rowwise_adagrad" and cfg.embedding_lr == 0.05
    assert from_dict(TrainConfig, {}, "train").embedding_lr is None
    with pytest.raises(ParamsError, match=r"train.*embedding_lr must be > 0"):
        from_dict(TrainConfig, {"embedding_lr": 0}, "train")
    with pytest.raises(ParamsError, match=r"train\.embedding_lr"):
        from_dict(TrainConfig, {"embedding_lr": "fast"}, "train")
    with pytest.raises(ParamsError, match=r"train.*weight_decay must be 0 with embedding_optimizer rowwise_adagrad"):
        from_dict(TrainConfig, {"weight_decay": 0.01, "embedding_optimizer": "rowwise_adagrad"}, "train")
    with pytest.raises(ParamsError, match=r"train\.embedding_optimizer"):
        from_dict(TrainConfig, {"embedding_optimizer": "adagrad"}, "train")
    with pytest.raises(ValueError, match="weight_decay.*rowwise_adagrad"):
        _task("youtube_dnn", "rowwise_adagrad", weight_decay=0.01)
    with pytest.raises(ValueError, match="embedding_lr must be > 0"):
        _task("youtube_dnn", "rowwise_adagrad", embedding_lr=-1.0)


def test_rowwise_adagrad_checkpoint_round_trips_through_load_from_checkpoint(tmp_path):
    from components.train import ModelConfig, TrainConfig, run

    split = write_tiny_split(tmp_path / "split", num_users=60, num_items=50, num_categories=4, min_len=6,
                             max_len=12, seed=4)
    cfg = TrainConfig(max_len=6, max_epochs=2, batch_size=32, num_negatives=10, patience=2, progress_refresh=0,
                      eval_batch_size=16, embedding_optimizer="rowwise_adagrad", embedding_lr=0.05)
    mc = ModelConfig(name="umi", arch="umi", hparams={"dim": 8, "num_interests": 3})
    run(cfg, mc, split, tmp_path / "umi", seed=5)
    ckpt_path = tmp_path / "umi" / "best.ckpt"
    task = RetrievalTask.load_from_checkpoint(ckpt_path, map_location="cpu")
    assert task.hparams["embedding_optimizer"] == "rowwise_adagrad" and task.hparams["embedding_lr"] == 0.05
    assert task.model.items.sparse and task.model.items.item.sparse
    saved = M.load_model(tmp_path / "umi" / "model.pt")
    for k, v in saved.state_dict().items():
        assert torch.equal(task.model.state_dict()[k], v), k

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    opt = task.configure_optimizers()
    opt.load_state_dict(ckpt["optimizer_states"][0])
    table = task.model.items.item.weight
    assert opt.state[table]["sum"].shape == (table.shape[0],) and opt.state[table]["step"] > 0
    assert (opt.state[table]["sum"] > 0).any()
    assert [(g["sparse"], g["lr"]) for g in opt.param_groups] == [(False, cfg.lr), (True, 0.05)]

    sparse_tests.resume_trains_on(task, split, ckpt, ckpt_path, saved, tmp_path)
