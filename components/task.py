"""The LightningModule of the train step: sampled-softmax training and validation Recall@50 of one model.

:class:`RetrievalTask` is built from plain, JSON-able hyper-parameters (the arch, its constructor arguments and
the loss / sampler settings), which ``save_hyperparameters`` records in every checkpoint, so a checkpoint
rebuilds the task, and the model inside it, with no other input::

    task = RetrievalTask.load_from_checkpoint("artifacts/models/mind/best.ckpt", map_location="cpu")
    interests, interest_mask = task.model.user_interests(history, mask, profile)   # (B, K, D), (B, K)

The training item counts (the ``popularity`` / ``log_uniform`` samplers and the log-Q of in-batch negatives)
are data, not hyper-parameters: they are the persistent buffer ``item_counts`` of the state dict, beside the
model's ``model.*`` weights. What the training computes is described in components/train.py's docstring.

Divergence: a non-finite loss or non-finite weights raise :class:`NonFiniteTraining` (epoch, step) instead of
training on (components.train turns it into a ParamsError naming the keys to change). A single CPU process
checks the loss of every step (reading a CPU scalar costs no device sync) and stops at the first bad one;
elsewhere (GPU, DDP) the per-step flags are counted on the device and checked after the epoch together with
the validation all-reduce, so every rank stops at the same point. The weights are checked before every
validation (they are identical on every DDP rank).

Importing this module imports Lightning; components.train imports it lazily so ``--help`` stays fast.
"""
from __future__ import annotations

import sys
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

import models as M
from components.train import MONITOR, VAL_TOPN, _retrieval_recall
from models.loss import NegativeSampler, sampled_softmax_loss


EMBEDDING_OPTIMIZERS = ("adam", "sparse_adam", "rowwise_adagrad")
#: the modes that give the item/category tables sparse gradients and a row-wise optimizer
SPARSE_EMBEDDING_OPTIMIZERS = ("sparse_adam", "rowwise_adagrad")


class RowWiseAdagrad(torch.optim.Optimizer):
    """Row-wise Adagrad for embedding tables with sparse gradients, as FBGEMM's ``EXACT_ROWWISE_ADAGRAD``
    (TorchRec's default for embedding tables): one accumulator scalar per row instead of one per entry
    (an (N,) state: 1/D of Adagrad's (N, D) sum, 1/(2D) of Adam's two (N, D) moments), and only the rows a
    step touched are read and written. For each touched row r with gradient row g_r (the
    duplicates of a row summed first)::

        s_r += mean(g_r ** 2)                   # over the row's D entries
        w_r -= lr * g_r / (sqrt(s_r) + eps)

    Untouched rows keep their weights and accumulators. Hand-written: torch has no row-wise Adagrad
    (``torch.optim.Adagrad`` keeps an (N, D) sum; FBGEMM's fused kernel is a CUDA/C++ dependency this
    project does not carry). A dense gradient is treated as the sparse gradient of its non-zero rows
    (:func:`_rows_touched`). State per parameter: ``step`` (a 0-dim tensor, counts calls, as torch's
    optimizers do) and ``sum`` (N,).

    Args:
        params: (N, D) embedding weights.
        lr: step size (Adagrad's steps shrink as 1 / sqrt(sum of squares), so it usually wants a larger
            lr than Adam).
        eps: added to the root of the accumulator.
        initial_accumulator_value: the accumulators' start value (FBGEMM and torch: 0).
    """

    def __init__(self, params, lr: float = 0.01, eps: float = 1e-8, initial_accumulator_value: float = 0.0):
        if not lr > 0:
            raise ValueError(f"RowWiseAdagrad: lr must be > 0, got {lr}")
        super().__init__(params, {"lr": lr, "eps": eps, "initial_accumulator_value": initial_accumulator_value})
        for g in self.param_groups:
            for p in g["params"]:
                if p.dim() != 2:
                    raise ValueError(f"RowWiseAdagrad: parameters must be (N, D) tables, got {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = torch.zeros((), dtype=torch.float32)
                    st["sum"] = torch.full((p.shape[0],), float(group["initial_accumulator_value"]),
                                           dtype=p.dtype, device=p.device)
                st["step"] += 1
                grad = (p.grad if p.grad.is_sparse else _rows_touched(p.grad)).coalesce()
                rows, values = grad.indices()[0], grad.values()  # unique rows after coalesce
                if rows.numel() == 0:
                    continue
                acc = st["sum"].index_select(0, rows) + values.pow(2).mean(dim=1)
                st["sum"].index_copy_(0, rows, acc)
                p.index_add_(0, rows, values * (-lr / (acc.sqrt() + eps)).unsqueeze(1))
        return loss


class DenseSparseOptimizer(torch.optim.Optimizer):
    """Adam for the dense parameters and a row-wise optimizer for the embedding tables, as one optimizer, so
    Lightning's automatic optimization, ``global_step`` (one per batch) and checkpoint format
    (``optimizer_states`` = one state dict) stay as they are with the dense Adam. The tables' optimizer:

    - ``sparse_adam``: lazy Adam (``torch.optim.SparseAdam``) reads and updates only the rows of a table
      whose sparse gradient is non-empty. Untouched rows keep their weights *and* moments (dense Adam would
      keep moving them with their decaying momentum). Its bias correction counts the table's steps, not each
      row's (as TF's LazyAdam).
    - ``rowwise_adagrad``: :class:`RowWiseAdagrad` (FBGEMM / TorchRec's row-wise Adagrad), one accumulator
      per row.

    Either way the step's cost grows with the rows a step touched, not with the catalogue.

    Hand-written wrapper rather than two Lightning optimizers: two optimizers need manual optimization,
    where ``global_step`` counts every optimizer's step (twice per batch), changing step-based settings. The
    two torch optimizers share this object's ``state`` and ``param_groups`` (dense groups first, each marked
    ``sparse``), so ``state_dict``/``load_state_dict`` are torch's own and a checkpoint round-trips. A dense
    gradient on a table (a model's whole-table shortcut on a small catalogue) is turned into the sparse
    gradient of its non-zero rows first (:func:`_rows_touched`).

    Args:
        dense: parameters with dense gradients (Adam, optionally fused).
        sparse: embedding weights with sparse gradients (no weight decay).
        lr: the dense Adam's.
        embedding_optimizer: ``sparse_adam`` | ``rowwise_adagrad``: the tables' optimizer.
        embedding_lr: the tables' optimizer's lr (None = ``lr``).
        betas: Adam's (both Adams); eps: every optimizer's.
        weight_decay: Adam's, dense parameters only.
        fused: the dense Adam's ``fused``.
    """

    def __init__(self, dense, sparse, *, lr: float, embedding_optimizer: str = "sparse_adam",
                 embedding_lr: float | None = None, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, fused: bool | None = None):
        dense, sparse = list(dense), list(sparse)
        if not dense and not sparse:
            raise ValueError("DenseSparseOptimizer: no parameters")
        if embedding_optimizer not in SPARSE_EMBEDDING_OPTIMIZERS:
            raise ValueError(f"embedding_optimizer must be one of {list(SPARSE_EMBEDDING_OPTIMIZERS)}, "
                             f"got {embedding_optimizer!r}")
        emb_lr = lr if embedding_lr is None else embedding_lr
        groups = ([{"params": dense, "sparse": False}] if dense else []) + \
                 ([{"params": sparse, "sparse": True}] if sparse else [])
        super().__init__(groups, {"lr": lr, "betas": betas, "eps": eps})
        self._adam = (torch.optim.Adam(dense, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)
                      if dense else None)
        self._sparse = None
        if sparse:
            self._sparse = (torch.optim.SparseAdam(sparse, lr=emb_lr, betas=betas, eps=eps)
                            if embedding_optimizer == "sparse_adam" else RowWiseAdagrad(sparse, lr=emb_lr, eps=eps))
        inner = [o for o in (self._adam, self._sparse) if o is not None]
        for opt in inner:
            for g in opt.param_groups:
                g["sparse"] = opt is self._sparse
        self.param_groups = [g for o in inner for g in o.param_groups]
        self._link()

    def _link(self) -> None:
        """Point the inner optimizers at this object's state and (dense-first) parameter groups."""
        dense = [g for g in self.param_groups if not g["sparse"]]
        sparse = [g for g in self.param_groups if g["sparse"]]
        for opt, groups in ((self._adam, dense), (self._sparse, sparse)):
            if opt is not None:
                opt.param_groups = groups
                opt.state = self.state

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)  # rebuilds self.state / self.param_groups
        self._link()

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._sparse is not None:
            for p in self._sparse.param_groups[0]["params"]:
                if p.grad is not None and not p.grad.is_sparse:
                    p.grad = _rows_touched(p.grad)
        for opt in (self._adam, self._sparse):
            if opt is not None:
                opt.step()
        return loss


class DenseSparseAdam(DenseSparseOptimizer):
    """:class:`DenseSparseOptimizer` with lazy Adam on the tables (``embedding_optimizer: sparse_adam``)."""

    def __init__(self, dense, sparse, *, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, fused: bool | None = None, embedding_lr: float | None = None):
        super().__init__(dense, sparse, lr=lr, embedding_optimizer="sparse_adam", embedding_lr=embedding_lr,
                         betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)


def _rows_touched(grad: torch.Tensor) -> torch.Tensor:
    """A dense (N, D) table gradient as a sparse one holding its non-zero rows. A model may gather from a
    whole-table product when a batch holds at least as many ids as the catalogue has items (the batch then
    touches most of it, and the O(N) work is the per-catalogue table the issue allows); lazy Adam then
    updates the rows that got a gradient. Rows whose gradient is exactly zero count as untouched."""
    rows = grad.ne(0).any(dim=1).nonzero().squeeze(1)
    return torch.sparse_coo_tensor(rows.unsqueeze(0), grad.index_select(0, rows), grad.shape,
                                   is_coalesced=True, check_invariants=False)


class NonFiniteTraining(RuntimeError):
    """The loss or the weights became nan/inf during training."""

    def __init__(self, what: str, epoch: int, step: int, detail: str = ""):
        self.what, self.epoch, self.step = what, epoch, step
        super().__init__(f"non-finite {what} at epoch {epoch}, step {step}{detail}")


class RetrievalTask(pl.LightningModule):
    """Sampled-softmax training and validation Recall@50 of one retrieval model.

    Args:
        arch: a key of ``models.ARCHS``.
        model_hparams: the constructor arguments of ``arch`` (``models.build_model``), data-derived ones included.
        num_negatives: sampled negatives shared by the batch per step.
        lr, weight_decay: Adam's.
        embedding_optimizer: ``adam`` = dense gradients and Adam over every parameter; ``sparse_adam`` /
            ``rowwise_adagrad`` = sparse gradients for the item/category tables and lazy Adam / row-wise
            Adagrad on the rows a step used (:class:`DenseSparseOptimizer`), dense Adam for the rest.
            ``weight_decay`` must then be 0: decaying every row each step is the whole-table work these
            modes remove (and decaying only the touched rows would be a different regulariser than Adam's).
        embedding_lr: the item/category tables' lr (None = ``lr``); with ``adam`` the tables become a second
            Adam parameter group.
        sampler: ``uniform`` | ``popularity`` | ``log_uniform``; the last two get the log-Q correction.
        in_batch_negatives: also use the other rows' positives as negatives (log-Q by training frequency).
        attention_pow: label-aware attention power p; None = hard argmax selection.
        harder_negatives: every negative scored with the interest it selects itself (UMI).
        seed: negatives are drawn from a generator seeded by ``(seed, global rank)``.
        show_every: log the running loss to the progress bar every this many steps (0 = never).
        model: an already built model (its arch and config must match ``arch`` / ``model_hparams``); default:
            built from them. Not a hyper-parameter.
        item_counts: (num_items,) training counts by item id (needed by the non-uniform samplers and in-batch
            negatives; restored from the state dict on ``load_from_checkpoint``). Not a hyper-parameter.
    """

    def __init__(self, *, arch: str, model_hparams: dict[str, Any], num_negatives: int = 50, lr: float = 1e-3,
                 weight_decay: float = 0.0, embedding_optimizer: str = "adam", embedding_lr: float | None = None,
                 sampler: str = "uniform", in_batch_negatives: bool = False,
                 attention_pow: float | None = None, harder_negatives: bool = False, seed: int = 0,
                 show_every: int = 0, model: nn.Module | None = None, item_counts: Any = None):
        super().__init__()
        self.save_hyperparameters(ignore=["model", "item_counts"])
        if model is None:
            model = M.build_model(arch, **model_hparams)
        elif M.arch_of(model) != arch or dict(model.config) != dict(model_hparams):
            raise ValueError(f"model is a {M.arch_of(model)} with config {model.config}, "
                             f"not the {arch} with {model_hparams} of the hyper-parameters")
        self.model = model
        if embedding_optimizer not in EMBEDDING_OPTIMIZERS:
            raise ValueError(f"embedding_optimizer must be one of {list(EMBEDDING_OPTIMIZERS)}, "
                             f"got {embedding_optimizer!r}")
        if embedding_optimizer in SPARSE_EMBEDDING_OPTIMIZERS and weight_decay > 0:
            raise ValueError(f"weight_decay {weight_decay:g} with embedding_optimizer {embedding_optimizer}: the "
                             "row-wise optimizers have no weight decay (set weight_decay to 0, or use "
                             "embedding_optimizer adam)")
        if embedding_lr is not None and not embedding_lr > 0:
            raise ValueError(f"embedding_lr must be > 0 (or None = lr), got {embedding_lr}")
        # sparse gradients for the item/category tables (a training mode: values and state dict unchanged)
        M.set_sparse_embeddings(model, embedding_optimizer in SPARSE_EMBEDDING_OPTIMIZERS)
        num_items = int(model_hparams["num_items"])
        counts = (torch.zeros(num_items, dtype=torch.long) if item_counts is None
                  else torch.as_tensor(item_counts, dtype=torch.long))
        if counts.shape != (num_items,):
            raise ValueError(f"item_counts: expected shape ({num_items},), got {tuple(counts.shape)}")
        self.register_buffer("item_counts", counts)
        # samplers are built at fit start from item_counts unless set before (components.train.make_task)
        self.sampler: NegativeSampler | None = None
        self.batch_sampler: NegativeSampler | None = None
        self._gen = None
        self._check_every_step = False
        # running sums, kept on the training device (no host sync per step) in a plain dict (no
        # nn.Module.__setattr__ per step): train loss * samples, samples, non-finite steps, recall sum, users
        self._sums: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------------------------------- set-up
    def _zero(self, *keys: str) -> None:
        for k in keys:
            self._sums[k] = torch.zeros((), dtype=torch.float64, device=self.device)

    def on_fit_start(self):
        hp = self.hparams
        num_items = int(hp.model_hparams["num_items"])
        needs_counts = hp.sampler != "uniform" or hp.in_batch_negatives
        counts = self.item_counts.cpu()
        if needs_counts and self.sampler is None and int(counts.sum()) == 0:
            raise ValueError(f"sampler {hp.sampler!r} / in_batch_negatives need item_counts (all zero)")
        if self.sampler is None:
            self.sampler = NegativeSampler(hp.sampler, counts if hp.sampler != "uniform" else num_items)
        if self.batch_sampler is None and hp.in_batch_negatives:
            self.batch_sampler = NegativeSampler("popularity", counts)
        self._gen = torch.Generator().manual_seed(hp.seed * 1_000_003 + self.global_rank)
        # log Q of every item, once, on the training device (index 0 = padding = -inf, never drawn)
        all_ids = torch.arange(num_items)
        self._log_q = self.sampler.log_q(all_ids).to(self.device) if hp.sampler != "uniform" else None
        self._batch_log_q = (self.batch_sampler.log_q(all_ids).to(self.device) if hp.in_batch_negatives
                             else None)
        self._check_every_step = self.device.type == "cpu" and self.trainer.world_size == 1

    def on_train_epoch_start(self):
        self._zero("loss", "samples", "nonfinite")

    # -------------------------------------------------------------------------------------------- steps
    def training_step(self, batch, batch_idx):
        hp = self.hparams
        interests, interest_mask = self.model.user_interests(batch["history"], batch["mask"],
                                                             batch["profile"])  # (B, K, D), (B, K)
        pos = batch["target"]                                                      # (B,)
        neg = self.sampler.sample(hp.num_negatives, self._gen).to(pos.device)      # (S,)
        ids = torch.cat([pos, neg])
        emb = self.model.item_embeddings(ids)                                      # (B + S, D)
        pos_emb, neg_emb = emb[: len(pos)], emb[len(pos):]
        kw = {}
        if self._log_q is not None:
            kw = {"pos_log_q": self._log_q[pos], "neg_log_q": self._log_q[neg]}
        if hp.in_batch_negatives:
            kw["in_batch"] = True
            kw["batch_log_q"] = self._batch_log_q[pos]
        loss = sampled_softmax_loss(interests, interest_mask, pos, pos_emb, neg, neg_emb,
                                    attention_pow=hp.attention_pow, harder_negatives=hp.harder_negatives, **kw)
        finite = torch.isfinite(loss.detach())
        if self._check_every_step:
            if not bool(finite):  # a CPU scalar: no device sync
                raise NonFiniteTraining("loss", self.current_epoch, self.global_step, f" (loss {float(loss.detach())})")
        else:
            self._sums["nonfinite"] += (~finite).double()
        self._sums["loss"] += loss.detach().double() * len(pos)
        self._sums["samples"] += len(pos)
        if hp.show_every and batch_idx % hp.show_every == 0:
            # the progress bar's running loss; not every step: each self.log walks Lightning's result
            # collection (measured ~1/3 of Lightning's per-step overhead)
            self.log("loss", loss.detach(), prog_bar=True, logger=False, on_step=True, on_epoch=False,
                     batch_size=len(pos))
        return loss

    def on_validation_epoch_start(self):
        # the weights are the same on every DDP rank: every rank stops here, or none
        params = list(self.model.parameters())
        finite = torch.stack([torch.isfinite(p).all() for p in params]).cpu() if params else torch.ones(0)
        if not bool(finite.all()):
            bad = [n for (n, _), ok in zip(self.model.named_parameters(), finite.tolist()) if not ok]
            raise NonFiniteTraining("weights", self.current_epoch, self.global_step,
                                    f" ({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''})")
        self._zero("recall", "users")
        ids = torch.arange(int(self.hparams.model_hparams["num_items"]), device=self.device)
        self._item_emb = self.model.item_embeddings(ids)  # (N, D), once per validation

    def validation_step(self, batch, batch_idx):
        s, c = _retrieval_recall(self.model, batch, self._item_emb, VAL_TOPN)
        self._sums["recall"] += s
        self._sums["users"] += c

    def on_validation_epoch_end(self):
        keys = ("recall", "users", "loss", "samples", "nonfinite")
        if "loss" not in self._sums:  # validation without a training epoch before it
            self._zero("loss", "samples", "nonfinite")
        totals = torch.stack([self._sums[k] for k in keys])
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum").cpu()  # exact across ranks
        self._item_emb = None
        if totals[4] > 0:  # the same on every rank after the all-reduce: all stop here
            raise NonFiniteTraining("loss", self.current_epoch, self.global_step,
                                    f" ({int(totals[4])} step(s) of this epoch, counted over all ranks)")
        metrics = {MONITOR: float(totals[0] / totals[1])}
        if totals[3] > 0:
            metrics["train/loss"] = float(totals[2] / totals[3])
        # identical on every rank after the all-reduce; sync_dist (a mean of equal values) only silences
        # Lightning's epoch-level DDP warning and keeps EarlyStopping's view the same everywhere
        self.log_dict(metrics, prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        # fused: one kernel for all parameters (4x cheaper step on CPU than the per-tensor loop)
        fused = all(p.device.type in ("cpu", "cuda") for p in self.model.parameters())
        mode = self.hparams.get("embedding_optimizer", "adam")
        emb_lr = self.hparams.get("embedding_lr")  # absent from checkpoints written before the key existed
        if mode in SPARSE_EMBEDDING_OPTIMIZERS:
            tables = M.set_sparse_embeddings(self.model, True)  # the weights as they are now (device moves)
            sparse = {id(p) for p in tables}
            dense = [p for p in self.model.parameters() if id(p) not in sparse]
            kw = dict(lr=self.hparams.lr, embedding_lr=emb_lr, weight_decay=self.hparams.weight_decay, fused=fused)
            if mode == "sparse_adam":
                return DenseSparseAdam(dense, tables, **kw)
            return DenseSparseOptimizer(dense, tables, embedding_optimizer=mode, **kw)
        params: Any = self.model.parameters()
        if emb_lr is not None:  # the tables as a second group with their own lr (dense gradients)
            tables = M.set_sparse_embeddings(self.model, False)
            ids = {id(p) for p in tables}
            params = [{"params": [p for p in self.model.parameters() if id(p) not in ids]},
                      {"params": tables, "lr": emb_lr}]
        return torch.optim.Adam(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, fused=fused)


class EpochSummary(pl.Callback):
    """One line per epoch (``epoch 3: train/loss 4.1234, val/recall@50 0.3120``) on ``stream``, rank 0 only:
    what a log file gets instead of a progress bar when the output is not a terminal."""

    def __init__(self, stream=None):
        self.stream = stream

    def on_train_epoch_end(self, trainer, pl_module):  # after this epoch's validation
        if not trainer.is_global_zero:
            return
        shown = ", ".join(f"{k} {float(v):.4f}" for k, v in sorted(trainer.callback_metrics.items())
                          if k in ("train/loss", MONITOR))
        print(f"epoch {trainer.current_epoch}: {shown}", file=self.stream or sys.stderr, flush=True)
