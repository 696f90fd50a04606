"""train: fit one model variant on ``data/split/`` with PyTorch Lightning and write ``artifacts/models/<variant>/``.

    python -m components.train --params params.yaml --model mind --split data/split --out artifacts/models/mind

Reads ``seed``, the ``train`` section and ``models.<variant>`` of params.yaml. The variant's ``arch``,
``harder_negatives``, ``attention_pow`` and any key of the ``train`` section (a per-model override, e.g.
``lr``) are the trainer's; every other key goes to ``models.build_model``.

Training (one thin LightningModule, ``components.task.RetrievalTask``): every prefix of a train user's sequence predicts
its next item (components/train_data.py); the loss is the sampled softmax of models/loss.py (MIND eqs.
10–11, ComiRec eqs. 9–10, UMI eq. 13 with ``harder_negatives``) with ``num_negatives`` negatives shared by
the batch, drawn by the configured sampler. Adam(lr, weight_decay). After every epoch, Recall@50 on the
validation users (history truncated to ``max_len``, the whole history excluded from retrieval, targets
from ``valid.parquet``, retrieval by components.retrieval.topn) drives EarlyStopping and ModelCheckpoint.

Outputs (written on global rank 0 only, into a temporary directory renamed onto ``out_dir`` at the end):
``best.ckpt`` (Lightning checkpoint of the best epoch; ``RetrievalTask.load_from_checkpoint(path)`` rebuilds
the task and its model from it alone), ``model.pt`` (``models.save_model`` of the best
weights; ``extra`` holds the vocabulary sizes, ``max_len``, the training config and the best validation
recall), ``logs/metrics.csv`` (one row per epoch: ``epoch, step, train/loss, val/recall@50``; DVC plots) and
``train.json`` (best validation recall, epochs run, samples/s, seconds/epoch, peak memory).

Choices the papers and the issue leave open:
- log-Q: with the ``popularity`` and ``log_uniform`` samplers every logit of a sampled candidate (and of the
  positive) is corrected by ``- log Q(item)`` (sampled softmax as in TF/Jean et al.); ``uniform`` needs none
  (a constant cancels). In-batch negatives, when enabled, are corrected by the add-one-smoothed training
  frequency of the item (their sampling distribution is the data).
- Negatives are drawn on the CPU from a generator seeded by ``(seed, global rank)``: ranks draw different
  negatives, and a rerun draws the same ones.
- Validation recall of a user = |top-50 ∩ targets| / |targets| with targets de-duplicated (ComiRec §4.1);
  the score is the mean over validation users. Each DDP rank scores a disjoint shard of users and the
  per-rank sums of recall and user counts are all-reduced, so the value is exactly the full-set mean.
- MostPopular has nothing to fit: it counts (``train_count``), is scored on the validation users by the
  same code, and writes the same four outputs (one "epoch").
- Divergence: a nan/inf loss or weight stops the run with :class:`TrainingDiverged` (a ParamsError: the CLI
  exits 2 naming the variant, epoch, step and ``train.lr``); nothing is written, ``out_dir`` stays as it was.
- ``train.compile``: only the user tower goes through ``torch.compile``, and only while training
  (:func:`compile_user_tower`); the weights, checkpoints and validation are the eager model's. Off by
  default: measured on the 2-core CPU (docs/RESULTS.md, train_speed_compile, 1 thread) it made UMI's step ~1.8x
  and ComiRec-SA's ~1.2x faster but MIND's and YouTube DNN's slower, and its 30-90 s of compilation cost more
  than a MovieLens-100K run saves; worth it for long runs of UMI (``models.umi.compile: true``).
- Trainer overrides on the command line: ``--trainer.KEY VALUE`` for the keys in :data:`TRAINER_FLAGS`
  (``--help``); the progress bar is drawn only on a terminal (else one line per epoch on stderr).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from components.config import ParamsError, from_dict, load_params, section, to_dict
from components.io import apply_umask, cli_main, write_json

VAL_TOPN = 50
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")
PRECISIONS = ("64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed", "transformer-engine")
MONITOR = f"val/recall@{VAL_TOPN}"


@dataclass(frozen=True)
class TrainConfig:
    """The ``train`` section of params.yaml."""

    models: list[str] = field(default_factory=lambda: ["youtube_dnn"])
    """model variants (keys of ``models:``) that the pipeline trains; read by dvc.yaml's foreach."""
    max_len: int = 20
    """history length L: the most recent max_len items before a target (and of a valid/test history)."""
    accelerator: str = "cpu"
    """Lightning accelerator: cpu | gpu | cuda | mps | auto."""
    devices: int | str = 1
    """Lightning devices per node: a count, or "auto"."""
    strategy: str = "auto"
    """Lightning strategy: auto | ddp | ddp_find_unused_parameters_true | ..."""
    num_nodes: int = 1
    """machines for DDP."""
    precision: str = "32-true"
    """Lightning precision: 32-true | bf16-mixed | 16-mixed | ..."""
    max_epochs: int = 30
    """upper bound on epochs; early stopping usually ends sooner."""
    batch_size: int = 256
    """training samples per step per rank (global batch = batch_size * devices * num_nodes)."""
    lr: float = 0.001
    """Adam learning rate."""
    weight_decay: float = 0.0
    """Adam weight decay (L2)."""
    num_negatives: int = 50
    """sampled negatives shared by the batch per step."""
    sampler: Literal["uniform", "popularity", "log_uniform"] = "uniform"
    """negative sampler; popularity and log_uniform get the log-Q correction."""
    in_batch_negatives: bool = False
    """also use the other rows' positives as negatives."""
    patience: int = 3
    """early stopping: epochs without a better validation Recall@50."""
    num_workers: int = 0
    """DataLoader worker processes (spawned); 0 builds batches in the training process."""
    eval_batch_size: int = 512
    """validation users scored per batch."""
    progress_refresh: int = 20
    """progress bar refresh rate in steps (0 = no progress bar). The bar is drawn only when stdout is a
    terminal; otherwise (a log file, CI, a pod) one line per epoch goes to stderr instead."""
    logger: Literal["csv", "tensorboard", "mlflow"] = "csv"
    """experiment logger beside the CSV one (logs/metrics.csv is always written): csv = only that;
    tensorboard (logs/tensorboard/) and mlflow ($MLFLOW_TRACKING_URI, else logs/mlruns/) need their package."""
    deterministic: bool = True
    """Lightning ``deterministic``: use deterministic algorithms (same params + data -> same metrics)."""
    num_threads: int = 1
    """torch intra-op CPU threads for this process (0 = torch's default, one per core). One is fastest for
    these small ops on a shared 2-core machine (two threads contend: measured 5-10x slower under load)."""
    embedding_optimizer: Literal["adam", "sparse_adam", "rowwise_adagrad"] = "adam"
    """optimizer of the item/category embedding tables: adam = dense gradients and Adam over every row each
    step (cost grows with the catalogue); sparse_adam = sparse gradients, only the rows a step used are read
    and updated (lazy Adam: untouched rows keep their weights and moments); rowwise_adagrad = the same sparse
    gradients with FBGEMM/TorchRec's row-wise Adagrad (one accumulator per row; components.task.RowWiseAdagrad);
    every other parameter always uses dense Adam. The sparse modes need weight_decay 0 (decay would touch
    every row each step; refused otherwise). DDP all-reduces the sparse gradients (tested on CPU/gloo only,
    not yet over NCCL)."""
    embedding_lr: float | None = None
    """learning rate of the item/category tables' optimizer (null = lr); row-wise Adagrad's steps shrink
    with the accumulated squared gradient, so it usually wants a larger one than Adam."""
    compile: bool = False
    """run the user tower through ``torch.compile`` while training (:func:`compile_user_tower`; weights and
    checkpoints unchanged, load without compile); needs a C++ compiler on CPU; the first step compiles."""

    def __post_init__(self) -> None:
        positive = ("max_len", "num_nodes", "max_epochs", "batch_size", "eval_batch_size")
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("num_negatives", "patience", "num_workers", "progress_refresh", "num_threads"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.accelerator not in ACCELERATORS:
            raise ValueError(f"accelerator must be one of {list(ACCELERATORS)}, got {self.accelerator!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.strategy.startswith(("ddp_spawn", "ddp_notebook", "ddp_fork")):
            raise ValueError(f"strategy {self.strategy!r} pickles the LightningModule or forks after torch "
                             "threads started; use 'ddp' (one process per device, the script re-executed)")
        if isinstance(self.devices, str) and self.devices != "auto":
            raise ValueError(f"devices must be a positive count or 'auto', got {self.devices!r}")
        if isinstance(self.devices, int) and self.devices < 1:
            raise ValueError(f"devices must be >= 1, got {self.devices}")
        if self.num_negatives == 0 and not self.in_batch_negatives:
            raise ValueError("num_negatives must be >= 1 unless in_batch_negatives is true")
        if self.embedding_optimizer != "adam" and self.weight_decay > 0:
            raise ValueError(f"weight_decay must be 0 with embedding_optimizer {self.embedding_optimizer} (the "
                             f"row-wise optimizers have no weight decay), got {self.weight_decay:g}; or use "
                             "embedding_optimizer adam")
        if self.embedding_lr is not None and not self.embedding_lr > 0:
            raise ValueError(f"embedding_lr must be > 0 (or null = lr), got {self.embedding_lr}")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models has duplicates: {self.models}")

    def check_accelerator(self) -> None:
        """At train start (not at load: a CPU machine may compile a GPU pipeline): ParamsError when
        ``accelerator`` asks for a GPU this machine does not have."""
        import torch

        if self.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ParamsError(f"train.accelerator: {self.accelerator!r} but no CUDA GPU is available here "
                              "(torch.cuda.is_available() is False); use cpu or auto")


#: ``train`` keys a model variant may override
OVERRIDABLE = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "models")

#: ``train`` keys the CLI accepts as ``--trainer.KEY VALUE`` (how the run executes, not what the model is)
TRAINER_FLAGS = ("max_epochs", "accelerator", "devices", "strategy", "num_nodes", "precision", "num_workers",
                 "num_threads", "deterministic", "progress_refresh", "logger", "patience", "compile")

#: the package each optional logger needs (any one of them)
LOGGER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",)}


class TrainingDiverged(ParamsError):
    """The loss or the weights became nan/inf: nothing was written (the CLI exits with status 2)."""


def _diverged_message(what: str, cfg: "TrainConfig", model: "ModelConfig") -> str:
    lr_key = f"models.{model.name}.lr" if "lr" in model.overrides else "train.lr"
    return (f"models.{model.name} ({model.arch}): training diverged: {what}; the output directory was left as "
            f"it was. Lower {lr_key} (now {cfg.lr:g}), or check train.weight_decay ({cfg.weight_decay:g}) "
            f"and train.precision ({cfg.precision})")


def progress_bar_enabled(refresh: int, stream: Any) -> bool:
    """Draw Lightning's progress bar only when ``refresh`` > 0 and ``stream`` is a terminal: in a log file
    its carriage-return updates pile up into one huge line."""
    try:
        return refresh > 0 and bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def check_logger(logger: str) -> None:
    """ParamsError naming ``train.logger`` when the chosen logger's package is not installed."""
    import importlib.util

    if logger == "csv":
        return
    if not any(importlib.util.find_spec(m) is not None for m in LOGGER_PACKAGES[logger]):
        raise ParamsError(f"train.logger: {logger!r} needs the {' or '.join(LOGGER_PACKAGES[logger])} package, "
                          f"which is not installed (pip install {LOGGER_PACKAGES[logger][0]}; it is not in "
                          "requirements.lock); use 'csv'")


def make_loggers(logger: str, staging: Path, variant: str, seed: int) -> list:
    """CSVLogger (logs/metrics.csv) plus the optional ``train.logger``."""
    from pytorch_lightning.loggers import CSVLogger

    out = [CSVLogger(save_dir=staging, name="logs", version="")]
    check_logger(logger)
    if logger == "tensorboard":
        from pytorch_lightning.loggers import TensorBoardLogger

        out.append(TensorBoardLogger(save_dir=staging / "logs", name="tensorboard", version=""))
    elif logger == "mlflow":
        from pytorch_lightning.loggers import MLFlowLogger

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (staging / "logs" / "mlruns").absolute().as_uri()
        out.append(MLFlowLogger(experiment_name=variant, run_name=f"{variant}-seed{seed}", tracking_uri=uri))
    return out


def parse_trainer_flags(tokens: list[str]) -> dict[str, Any]:
    """``["--trainer.max_epochs", "2", "--trainer.precision=bf16-mixed"]`` -> ``{"max_epochs": 2, ...}``.

    Values are read as YAML scalars (``2`` -> int, ``false`` -> bool, ``auto`` -> str). Raises ParamsError
    naming the flag for anything else: a key outside :data:`TRAINER_FLAGS`, a missing value, a stray token.
    Types and ranges are checked afterwards by the TrainConfig loader.
    """
    import yaml

    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--trainer."):
            raise ParamsError(f"unrecognized argument {tok!r} (trainer overrides are --trainer.KEY VALUE)")
        key, eq, value = tok[len("--trainer."):].partition("=")
        if not eq:
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise ParamsError(f"--trainer.{key}: missing value")
            value, i = tokens[i + 1], i + 1
        if key not in TRAINER_FLAGS:
            raise ParamsError(f"--trainer.{key}: not a trainer override (allowed: {', '.join(TRAINER_FLAGS)}); "
                              "other keys belong in params.yaml")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key] = value
        i += 1
    return out


@dataclass(frozen=True)
class ModelConfig:
    """One ``models.<variant>`` entry, split into the trainer's keys and the constructor's."""

    name: str
    """the variant name (key under ``models:``)."""
    arch: str
    """architecture registered in models.ARCHS."""
    harder_negatives: bool = False
    """score every negative with the interest it selects itself (UMI eqs. 12–13)."""
    attention_pow: float | None = None
    """label-aware attention power p (MIND §3.4); null = hard argmax selection (ComiRec eq. 8)."""
    hparams: dict[str, Any] = field(default_factory=dict)
    """constructor arguments for models.build_model (data-derived ones are added by the trainer)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """per-model values of ``train`` keys."""

    def __post_init__(self) -> None:
        if self.attention_pow is not None and not self.attention_pow >= 0:
            raise ValueError(f"attention_pow must be >= 0 or null, got {self.attention_pow}")
        from models import ARCHS, DATA_HPARAMS

        if self.arch not in ARCHS:
            raise ValueError(f"arch: unknown model {self.arch!r} (known: {', '.join(sorted(ARCHS))})")
        clash = sorted(set(self.hparams) & set(DATA_HPARAMS))
        if clash:
            raise ValueError(f"{', '.join(clash)} come(s) from the split / train section, not models.{self.name}")
        from models import check_hparams

        check_hparams(self.arch, self.hparams, f"models.{self.name}")  # ParamsError naming models.<name>.<key>

    @classmethod
    def from_params(cls, params: Mapping[str, Any], name: str) -> "ModelConfig":
        """Parse ``params["models"][name]``; ParamsError naming ``models.<name>.<key>``."""
        models = params.get("models")
        if not isinstance(models, Mapping) or name not in models:
            known = ", ".join(sorted(models)) if isinstance(models, Mapping) else "none"
            raise ParamsError(f"models.{name}: no such model variant (known: {known})")
        entry = models[name] or {}
        if not isinstance(entry, Mapping):
            raise ParamsError(f"models.{name}: expected a mapping, got {type(entry).__name__}")
        prefix = f"models.{name}"
        if "arch" not in entry:
            raise ParamsError(f"{prefix}.arch: required key is missing")
        own = {k: entry[k] for k in ("arch", "harder_negatives", "attention_pow") if k in entry}
        overrides = {k: v for k, v in entry.items() if k in OVERRIDABLE}
        hparams = {k: v for k, v in entry.items() if k not in own and k not in overrides}
        # the strict loader type-checks the trainer's keys and the overrides
        parsed = from_dict(_ModelKeys, own, prefix)
        from_dict(TrainConfig, overrides, prefix)
        try:
            return cls(name=name, arch=parsed.arch, harder_negatives=parsed.harder_negatives,
                       attention_pow=parsed.attention_pow, hparams=hparams, overrides=overrides)
        except ParamsError:
            raise
        except ValueError as exc:
            raise ParamsError(f"{prefix}: {exc}") from None

    def train_config(self, base: TrainConfig) -> TrainConfig:
        """``base`` with this variant's overrides applied (validated)."""
        if not self.overrides:
            return base
        return from_dict(TrainConfig, {**to_dict(base), **self.overrides}, f"models.{self.name}")


@dataclass(frozen=True)
class _ModelKeys:
    arch: str
    harder_negatives: bool = False
    attention_pow: float | None = None


# --------------------------------------------------------------------------------------------- the module
def _retrieval_recall(model, batch: dict, item_emb, n: int):
    """Sum of per-user Recall@n and the user count of one validation batch (float64 tensors)."""
    import torch

    from components.retrieval import topn

    interests, interest_mask = model.user_interests(batch["history"], batch["mask"], batch["profile"])
    with torch.autocast(device_type=interests.device.type, enabled=False):  # rank in float32 under AMP
        _, items = topn(interests.float(), interest_mask, item_emb.float(), n, exclude=batch["exclude"])  # (B, n)
    targets = batch["targets"]                                                                     # (B, T)
    valid = targets > 0
    hits = ((items.unsqueeze(2) == targets.unsqueeze(1)) & valid.unsqueeze(1)).sum(dim=(1, 2))      # (B,)
    recall = hits.double() / valid.sum(1).clamp(min=1).double()
    return recall.sum(), torch.tensor(float(len(recall)), dtype=torch.float64, device=recall.device)


def make_task(model, sampler, *, num_items: int, num_negatives: int, lr: float, weight_decay: float,
              attention_pow: float | None, harder_negatives: bool, log_q: bool, in_batch: bool,
              batch_sampler_q, seed: int, show_every: int = 20, embedding_optimizer: str = "adam",
              embedding_lr: float | None = None):
    """A :class:`components.task.RetrievalTask` around an already built ``model`` and samplers (kept for
    callers that build their own, e.g. benchmarks/speed.py with a padded catalogue).

    ``log_q`` must be ``sampler.kind != "uniform"`` (what the task derives from its sampler setting).
    """
    import models as M
    from components.task import RetrievalTask

    if log_q != (sampler.kind != "uniform"):
        raise ValueError(f"log_q={log_q} with a {sampler.kind!r} sampler: log-Q goes with the non-uniform samplers")
    if int(model.config["num_items"]) != num_items:
        raise ValueError(f"num_items {num_items} != the model's {model.config['num_items']}")
    task = RetrievalTask(arch=M.arch_of(model), model_hparams=dict(model.config), num_negatives=num_negatives,
                         lr=lr, weight_decay=weight_decay, sampler=sampler.kind, in_batch_negatives=in_batch,
                         attention_pow=attention_pow, harder_negatives=harder_negatives, seed=seed,
                         show_every=show_every, model=model, embedding_optimizer=embedding_optimizer,
                         embedding_lr=embedding_lr)
    task.sampler, task.batch_sampler = sampler, batch_sampler_q
    return task


def make_timer():
    """A callback timing training (data + steps) and validation separately, per epoch."""
    import pytorch_lightning as pl
    import torch

    class EpochTimer(pl.Callback):
        def __init__(self):
            self.train_seconds: list[float] = []
            self.train_cpu_seconds: list[float] = []  # process CPU time: robust to a busy shared machine
            self.val_seconds: list[float] = []
            self._t = self._c = None

        def _now(self, trainer):
            if trainer.strategy.root_device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_epoch_start(self, trainer, pl_module):
            self._t, self._c = self._now(trainer), time.process_time()

        def on_validation_epoch_start(self, trainer, pl_module):
            if self._t is not None:
                self.train_seconds.append(self._now(trainer) - self._t)
                self.train_cpu_seconds.append(time.process_time() - self._c)
            self._t = self._now(trainer)

        def on_validation_epoch_end(self, trainer, pl_module):
            self.val_seconds.append(self._now(trainer) - self._t)
            self._t = None

    return EpochTimer()


# ------------------------------------------------------------------------------------------------- run
def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    A training step allocates and frees the same few MB-sized tensors every time (activations, gradients).
    By default glibc serves such blocks with ``mmap`` and unmaps them on ``free`` (or trims the heap), so
    every step page-faults its activations back in: measured 10-25% of a step's CPU time as kernel time for
    ComiRec and UMI at batch 256. Raising the mmap and trim thresholds (``mallopt``) makes the process reuse
    its heap; peak memory is unchanged (the memory was already needed at the peak). Process-wide; a no-op
    (False) where the C library is not glibc.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    ok = mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's maximum on 64-bit: 32 MiB
    ok &= mallopt(m_trim_threshold, 2**30)
    return bool(ok)


def run(cfg: TrainConfig, model: ModelConfig, split_dir: Path, out_dir: Path, *, seed: int) -> dict:
    """Train ``model`` on ``split_dir`` and write the outputs into ``out_dir`` (atomically, rank 0 only).

    Args:
        cfg: the ``train`` section (the variant's overrides are applied here).
        model: the variant.
        split_dir: a split directory (docs/CONTRACTS.md "Split").
        out_dir: where best.ckpt, model.pt, logs/metrics.csv and train.json go.
        seed: the global seed (weights, shuffling, negatives).
    Returns:
        the train.json summary (on every rank; only rank 0 writes files).
    Raises:
        DataError: unusable split files. ParamsError: bad hyper-parameters for the arch, a logger whose
        package is missing. TrainingDiverged (a ParamsError): the loss or the weights became nan/inf
        (``out_dir`` is left byte-identical).
    """
    import pytorch_lightning as pl
    import torch

    import models as M
    from components.train_data import load_split_meta

    cfg = model.train_config(cfg)
    cfg.check_accelerator()
    check_logger(cfg.logger)
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    keep_freed_memory()
    pl.seed_everything(seed, workers=True, verbose=False)
    meta = load_split_meta(split_dir)
    hparams = {**model.hparams, "num_items": meta.num_items, "num_categories": meta.num_categories,
               "profile_cardinalities": list(meta.profile_cardinalities), "max_len": cfg.max_len}
    net = M.build_model(model.arch, **hparams)
    M.set_item_category(net, meta.item_category)
    extra_base = {
        "variant": model.name, "num_items": meta.num_items, "num_categories": meta.num_categories,
        "profile_fields": list(meta.profile_fields), "profile_cardinalities": list(meta.profile_cardinalities),
        "max_len": cfg.max_len, "train": to_dict(cfg),
        "model": {"arch": model.arch, "harder_negatives": model.harder_negatives,
                  "attention_pow": model.attention_pow, "hparams": dict(model.hparams),
                  "overrides": dict(model.overrides)},
        "seed": seed,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # mkdtemp makes 0700: give the output folder the umask's mode (another pod's user must read the model)
    staging = apply_umask(Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent)))
    try:
        if not M.is_trainable(net):
            summary = _fit_counts(cfg, net, meta, split_dir, staging, extra_base)
            is_zero = True
        else:
            summary, is_zero = _fit(cfg, model, net, meta, split_dir, staging, extra_base, seed)
        if is_zero:
            from components.io import replace_dir

            write_json(staging / "train.json", summary)
            replace_dir(staging, out_dir)
        else:
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def compile_user_tower(net) -> "Callable[[], None]":
    """``train.compile``: run the model's user tower through ``torch.compile`` (TorchInductor) in training.

    Only the bound method ``net.user_interests`` is replaced, by an instance attribute that calls the
    compiled version while training with gradients and the eager one otherwise (validation, export): the
    module itself is not wrapped, so ``state_dict`` keys stay the eager ones (no ``_orig_mod.`` prefix) and
    ``best.ckpt`` / ``model.pt`` load without compile. Validation stays eager so its other batch shapes do not
    trigger more compilations. The item tower and the loss stay eager (the loss is cheap; the item lookup is
    a gather). ``fallback_random``: random numbers inside the compiled graph (MIND's and UMI's routing init)
    come from torch's eager generator, so a compiled run draws the same numbers as an eager one with the same
    seed (the sums may still differ in the last bits: generated kernels fuse and reorder arithmetic).

    Returns a function that restores the eager method (called after fit, before the weights are saved).
    On CPU, Inductor needs a C++ compiler; the first training step pays the compilation (tens of seconds;
    ``benchmarks/rechub_speed.py --sides ours,ours_compiled`` measures it with the throughput).
    """
    import torch
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    eager = net.user_interests
    compiled = torch.compile(eager)

    def user_interests(history, mask, profile):
        if net.training and torch.is_grad_enabled():
            return compiled(history, mask, profile)
        return eager(history, mask, profile)

    net.user_interests = user_interests  # an instance attribute: not a parameter, buffer or submodule

    def restore() -> None:
        net.__dict__.pop("user_interests", None)

    return restore


def _fit(cfg: TrainConfig, model: ModelConfig, net, meta, split_dir: Path, staging: Path,
         extra_base: dict, seed: int) -> tuple[dict, bool]:
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar

    import models as M
    from components.task import EpochSummary, NonFiniteTraining, RetrievalTask
    from components.train_data import SplitDataModule

    show_bar = progress_bar_enabled(cfg.progress_refresh, sys.stdout)
    task = RetrievalTask(arch=model.arch, model_hparams=dict(net.config), num_negatives=cfg.num_negatives,
                         lr=cfg.lr, weight_decay=cfg.weight_decay, sampler=cfg.sampler,
                         embedding_optimizer=cfg.embedding_optimizer, embedding_lr=cfg.embedding_lr,
                         in_batch_negatives=cfg.in_batch_negatives, attention_pow=model.attention_pow,
                         harder_negatives=model.harder_negatives, seed=seed,
                         show_every=cfg.progress_refresh if show_bar else 0, model=net,
                         item_counts=meta.item_counts)
    on_gpu = cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())
    dm = SplitDataModule(split_dir, meta, max_len=cfg.max_len, batch_size=cfg.batch_size,
                         eval_batch_size=cfg.eval_batch_size, seed=seed, num_workers=cfg.num_workers,
                         pin_memory=on_gpu)
    checkpoint = ModelCheckpoint(dirpath=staging / "ckpt", filename="best", monitor=MONITOR, mode="max", save_top_k=1,
                                 save_last=False, auto_insert_metric_name=False, enable_version_counter=False)
    stopping = EarlyStopping(monitor=MONITOR, mode="max", patience=cfg.patience)
    timer = make_timer()
    callbacks = [checkpoint, stopping, timer]
    if show_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=cfg.progress_refresh))
    elif cfg.progress_refresh > 0:  # not a terminal: one line per epoch instead of carriage-return updates
        callbacks.append(EpochSummary())
    trainer = pl.Trainer(
        accelerator=cfg.accelerator, devices=cfg.devices, strategy=cfg.strategy, num_nodes=cfg.num_nodes,
        precision=cfg.precision, max_epochs=cfg.max_epochs,
        # on GPUs a few kernels have no deterministic version: warn there instead of failing the run
        deterministic=(cfg.deterministic if not on_gpu or not cfg.deterministic else "warn"),
        logger=make_loggers(cfg.logger, staging, extra_base["variant"], seed), callbacks=callbacks,
        default_root_dir=staging, use_distributed_sampler=False, num_sanity_val_steps=0,
        enable_progress_bar=show_bar, enable_model_summary=False, log_every_n_steps=50,
    )
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    restore = compile_user_tower(net) if cfg.compile else None
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # we log nothing per step to the logger, so Lightning's logging-interval hint is noise
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        try:
            trainer.fit(task, datamodule=dm)
        except NonFiniteTraining as exc:
            raise TrainingDiverged(_diverged_message(str(exc), cfg, model)) from None
        finally:
            if restore is not None:
                restore()
    wall = time.perf_counter() - t0
    is_zero = trainer.is_global_zero
    best = checkpoint.best_model_score
    best = float(best) if best is not None else float("nan")
    epochs = len(timer.val_seconds)
    n_train = len(dm.train_set)
    train_s = sum(timer.train_seconds)
    summary = {
        "variant": extra_base["variant"], "arch": extra_base["model"]["arch"],
        f"best_{MONITOR.replace('/', '_')}": best,
        "best_epoch": None,
        "epochs": epochs,
        "stopped_early": bool(stopping.stopped_epoch > 0),
        "train_samples": n_train,
        "world_size": trainer.world_size,
        "samples_per_s": n_train * len(timer.train_seconds) / train_s if train_s > 0 else float("nan"),
        "seconds_per_epoch": train_s / max(len(timer.train_seconds), 1),
        "cpu_seconds_per_epoch": sum(timer.train_cpu_seconds) / max(len(timer.train_cpu_seconds), 1),
        "torch_threads": torch.get_num_threads(),
        "compiled": bool(cfg.compile),
        "val_seconds_per_epoch": sum(timer.val_seconds) / max(epochs, 1),
        "wall_seconds": wall,
        **_peak_memory(on_gpu),
    }
    if is_zero:
        os.replace(staging / "ckpt" / "best.ckpt", staging / "best.ckpt")
        shutil.rmtree(staging / "ckpt")
        ckpt = torch.load(staging / "best.ckpt", map_location="cpu", weights_only=False)
        summary["best_epoch"] = int(ckpt["epoch"])
        state = ckpt["state_dict"]
        net.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
        bad = [k for k, v in net.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:  # a last guard: the loop's checks should have stopped the run before
            raise TrainingDiverged(_diverged_message(f"non-finite weights in the best checkpoint ({', '.join(bad[:5])})",
                                                     cfg, model))
        extra = {**extra_base, f"best_{MONITOR.replace('/', '_')}": best, "best_epoch": summary["best_epoch"]}
        M.save_model(net.cpu(), staging / "model.pt", extra=extra)
        for junk in (staging / "logs" / "hparams.yaml",):
            junk.unlink(missing_ok=True)
    return summary, is_zero


def _peak_memory(on_gpu: bool) -> dict:
    import resource

    import torch

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "peak_gpu_mb": None}
    if on_gpu:
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _fit_counts(cfg: TrainConfig, net, meta, split_dir: Path, staging: Path, extra_base: dict) -> dict:
    """MostPopular: 'training' is counting; validate once and write the same outputs as a Lightning run."""
    import csv

    import numpy as np
    import torch

    import models as M
    from components.train_data import EvalUsers

    t0 = time.perf_counter()
    net.fit_counts(meta.item_counts)
    fit_s = time.perf_counter() - t0
    valid = EvalUsers(split_dir / "valid.parquet", meta, cfg.max_len)
    t0 = time.perf_counter()
    total, count = 0.0, 0.0
    item_emb = net.item_embeddings(torch.arange(meta.num_items))
    with torch.no_grad():
        for start in range(0, len(valid), cfg.eval_batch_size):
            s, c = _retrieval_recall(net, valid[np.arange(start, min(start + cfg.eval_batch_size, len(valid)))],
                                     item_emb, VAL_TOPN)
            total, count = total + float(s), count + float(c)
    val_s = time.perf_counter() - t0
    recall = total / count if count else float("nan")
    key = f"best_{MONITOR.replace('/', '_')}"
    (staging / "logs").mkdir()
    with open(staging / "logs" / "metrics.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", "step", "train/loss", MONITOR])
        writer.writerow([0, 0, "", recall])
    # a Lightning checkpoint of RetrievalTask like a trained model's: load_from_checkpoint rebuilds it
    import pytorch_lightning as pl

    from components.task import RetrievalTask

    task = RetrievalTask(arch=extra_base["model"]["arch"], model_hparams=dict(net.config),
                         num_negatives=cfg.num_negatives, lr=cfg.lr, weight_decay=cfg.weight_decay,
                         sampler=cfg.sampler, in_batch_negatives=cfg.in_batch_negatives,
                         attention_pow=extra_base["model"]["attention_pow"],
                         harder_negatives=extra_base["model"]["harder_negatives"], seed=extra_base["seed"],
                         model=net, item_counts=meta.item_counts)
    torch.save({"epoch": 0, "global_step": 0, "pytorch-lightning_version": pl.__version__,
                "state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)},
               staging / "best.ckpt")
    M.save_model(net, staging / "model.pt", extra={**extra_base, key: recall, "best_epoch": 0})
    return {"variant": extra_base["variant"], "arch": extra_base["model"]["arch"], key: recall,
            "best_epoch": 0, "epochs": 1, "stopped_early": False,
            "train_samples": int(meta.item_counts.sum()), "world_size": 1,
            "samples_per_s": float(meta.item_counts.sum()) / fit_s if fit_s > 0 else float("nan"),
            "seconds_per_epoch": fit_s, "cpu_seconds_per_epoch": fit_s, "torch_threads": torch.get_num_threads(),
            "val_seconds_per_epoch": val_s, "wall_seconds": fit_s + val_s,
            **_peak_memory(False)}


# ------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m components.train", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="trainer overrides:\n"
               "  --trainer.KEY VALUE   override one train key for this run (also --trainer.KEY=VALUE), applied\n"
               "                        over train: and models.<variant>: in params; VALUE is read as YAML.\n"
               f"                        KEY: {', '.join(TRAINER_FLAGS)}.\n"
               "                        e.g. --trainer.max_epochs 2 --trainer.accelerator gpu --trainer.precision bf16-mixed\n"
               "  For a run DVC tracks, change params instead: dvc exp run -S train.max_epochs=2\n"
               "  (a flag is not a DVC param: dvc.yaml's command line never carries one).")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--model", required=True, help="model variant: a key of models: in params")
    parser.add_argument("--split", type=Path, default=Path("data/split"), help="split directory")
    parser.add_argument("--out", type=Path, required=True, help="output directory (replaced atomically)")
    args, rest = parser.parse_known_args(argv)

    def body() -> None:
        flags = parse_trainer_flags(rest)
        params = load_params(args.params)
        cfg = section(params, "train", TrainConfig)
        variant = ModelConfig.from_params(params, args.model)
        if flags:  # checked with the flag's name, then applied as the variant's last overrides
            from_dict(TrainConfig, {**to_dict(variant.train_config(cfg)), **flags}, "--trainer")
            variant = dataclasses.replace(variant, overrides={**variant.overrides, **flags})
        seed = params.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ParamsError(f"seed: expected a non-negative integer, got {seed!r}")
        summary = run(cfg, variant, args.split, args.out, seed=seed)
        from lightning_fabric.utilities.rank_zero import rank_zero_only

        if rank_zero_only.rank != 0:  # DDP: every rank runs this CLI; one line is enough
            return
        key = f"best_{MONITOR.replace('/', '_')}"
        print(f"{args.model}: {MONITOR} {summary[key]:.4f} after {summary['epochs']} epoch(s), "
              f"{summary['samples_per_s']:.0f} samples/s -> {args.out}")

    cli_main(body)


if __name__ == "__main__":
    main()
