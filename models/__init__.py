"""The retrieval models (one per file) and the three functions the rest of the pipeline uses to make, save and
load them.

    build_model(arch, **hparams) -> nn.Module      # unknown arch/hparam -> components.config.ParamsError
    save_model(model, path, extra=None)            # atomic; {"arch", "hparams", "state_dict", "extra"}
    load_model(path) -> model in eval mode          # load_model(path, with_extra=True) -> (model, extra)

Every model satisfies :class:`RetrievalModel` (docs/CONTRACTS.md "Batches and the model interface").

Hyper-parameters come from two places (the trainer merges them and calls ``build_model``):

- data-derived, the same for every arch (:data:`DATA_HPARAMS`): ``num_items``, ``num_categories``,
  ``profile_cardinalities`` (from ``data/split/vocab.json``) and ``max_len`` (from ``train.max_len``);
- ``models.<variant>`` in params.yaml minus the trainer's own keys (:data:`TRAINER_KEYS`: ``arch``,
  ``harder_negatives``, ``attention_pow`` and any per-model override of the ``train`` section).

After building, the trainer fills the item -> category map: ``set_item_category(model, category_idx)`` with
the ``category_idx`` column of ``data/split/items.parquet`` indexed by ``item_idx`` (index 0 = padding = 0).
It is a buffer, so ``save_model`` stores it. MostPopular has no parameters (``is_trainable(model)`` is
False): call ``model.fit_counts(train_count)`` instead of fitting it.

Importing this package is cheap (torch is imported only when a function is called), so CLIs may import it
at top level.
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from components.config import ParamsError

if TYPE_CHECKING:
    import torch
    from torch import nn

#: arch name (the ``arch`` key in params.yaml) -> "module:Class"
ARCHS: dict[str, str] = {
    "most_popular": "models.most_popular:MostPopular",
    "youtube_dnn": "models.youtube_dnn:YouTubeDNN",
    "mind": "models.mind:MIND",
    "comirec_dr": "models.comirec_dr:ComiRecDR",
    "comirec_sa": "models.comirec_sa:ComiRecSA",
    "umi": "models.umi:UMI",
}

#: arch name -> the paper's model name, what a human reads (see :func:`variant_label`)
ARCH_LABELS: dict[str, str] = {
    "most_popular": "MostPopular",
    "youtube_dnn": "YouTube DNN",
    "mind": "MIND",
    "comirec_dr": "ComiRec-DR",
    "comirec_sa": "ComiRec-SA",
    "umi": "UMI",
}
#: suffix of a variant trained with harder negatives (UMI eqs. 12-13), which none of the other papers uses
HN_SUFFIX = "+HN"

#: constructor arguments every arch accepts, filled by the trainer from the split and ``train.max_len``
DATA_HPARAMS = ("num_items", "num_categories", "profile_cardinalities", "max_len")

#: keys of ``models.<variant>`` read by the LightningModule, not passed to the constructor
TRAINER_KEYS = ("arch", "harder_negatives", "attention_pow")


@runtime_checkable
class RetrievalModel(Protocol):
    """What evaluation, indexing and serving rely on. Shapes: B batch, L history, C profile fields,
    K interests, D dim, N items."""

    config: dict[str, Any]  # the constructor arguments (what save_model stores as "hparams")

    def user_interests(self, history: "torch.Tensor", mask: "torch.Tensor",
                       profile: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        """(B, L) long, (B, L) bool, (B, C) long -> interests (B, K, D) float, interest_mask (B, K) bool."""
        ...

    def item_embeddings(self, item_ids: "torch.Tensor") -> "torch.Tensor":
        """(N,) long -> (N, D) float."""
        ...


def model_class(arch: str) -> type:
    """The class registered for ``arch``; ParamsError for an unknown arch."""
    if arch not in ARCHS:
        raise ParamsError(f"arch: unknown model {arch!r} (known: {', '.join(sorted(ARCHS))})")
    module, name = ARCHS[arch].split(":")
    return getattr(importlib.import_module(module), name)


def variant_label(entry: Any) -> str:
    """The display name of a model variant: the paper's model name, plus ``+HN`` when it is trained with
    harder negatives, so that "MIND" always means the paper's MIND. The one place labels are made (report,
    metrics.json, bundle manifest, docs/RESULTS.md).

    Args:
        entry: a ``models.<variant>`` mapping of params.yaml, or the ``model`` record ``components.train``
            stores in ``model.pt``'s extra -- anything with ``arch`` and optionally ``harder_negatives``
            (absent = false, as in the trainer) -- or an object with those attributes (ModelConfig).
    Raises:
        ParamsError: no ``arch``, an unknown arch, or a ``harder_negatives`` that is not a bool.
    """
    from collections.abc import Mapping

    get = entry.get if isinstance(entry, Mapping) else (lambda k, d=None: getattr(entry, k, d))
    arch = get("arch")
    if arch not in ARCH_LABELS:
        raise ParamsError(f"arch: unknown model {arch!r} (known: {', '.join(sorted(ARCH_LABELS))})")
    hn = get("harder_negatives", False)
    if hn is None:
        hn = False
    if not isinstance(hn, bool):
        raise ParamsError(f"harder_negatives: expected true or false, got {hn!r}")
    return ARCH_LABELS[arch] + (HN_SUFFIX if hn else "")


def arch_of(model: Any) -> str:
    """The arch name of a model instance."""
    for arch, target in ARCHS.items():
        module, name = target.split(":")
        if type(model).__module__ == module and type(model).__name__ == name:
            return arch
    raise TypeError(f"{type(model).__name__} is not a registered model")


def check_hparams(arch: str, hparams: dict[str, Any], prefix: str) -> None:
    """Type-check the scalar constructor arguments of ``arch`` against its signature's annotations.

    ``dim: "64"``, ``num_interests: 2.5`` or ``num_interests: true`` (a bool is not an int here) raise
    :class:`ParamsError` naming ``<prefix>.<key>``; unknown keys and non-scalar arguments (lists of
    cardinalities, counts) are left to :func:`build_model` and the constructor.
    """
    import typing

    from components.config import check_value

    hints = typing.get_type_hints(model_class(arch).__init__)
    for key, value in hparams.items():
        tp = hints.get(key)
        scalars = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_args(tp) else [tp]
        if tp is not None and all(a in (int, float, bool, str) for a in scalars):
            check_value(tp, value, f"{prefix}.{key}")


def build_model(arch: str, **hparams: Any) -> "nn.Module":
    """Construct ``arch`` from keyword hyper-parameters.

    Raises:
        ParamsError: unknown arch, an unknown or missing hyper-parameter (named), or a value the
            constructor rejects (its message names the key).
    """
    cls = model_class(arch)
    params = inspect.signature(cls.__init__).parameters
    known = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(hparams) - known)
    if unknown:
        raise ParamsError(f"models.{arch}: unknown key(s) {', '.join(repr(k) for k in unknown)} "
                          f"(known: {', '.join(sorted(known))})")
    missing = sorted(n for n in known if params[n].default is inspect.Parameter.empty and n not in hparams)
    if missing:
        raise ParamsError(f"models.{arch}: required key(s) missing: {', '.join(missing)}")
    check_hparams(arch, hparams, f"models.{arch}")
    try:
        return cls(**hparams)
    except (TypeError, ValueError) as exc:
        raise ParamsError(f"models.{arch}: {exc}") from None


def set_item_category(model: Any, category_idx: Any) -> None:
    """Fill the model's (num_items,) item -> category buffer; index 0 (padding) must map to 0."""
    import torch

    cats = torch.as_tensor(category_idx, dtype=torch.long)
    buf = model.item_category
    if cats.shape != buf.shape:
        raise ValueError(f"item_category: expected shape {tuple(buf.shape)}, got {tuple(cats.shape)}")
    num_categories = model.config["num_categories"]
    if cats.numel() and (int(cats.min()) < 0 or int(cats.max()) >= num_categories):
        raise ValueError(f"item_category: values must lie in [0, {num_categories}), "
                         f"got [{int(cats.min())}, {int(cats.max())}]")
    if int(cats[0]) != 0:
        raise ValueError("item_category: padding item 0 must map to category 0")
    with torch.no_grad():
        buf.copy_(cats.to(buf.device))


def set_sparse_embeddings(model: Any, sparse: bool) -> list:
    """Switch the model's item/category embedding tables to sparse gradients (or back) and return their
    weights: the parameters a row-wise optimizer (``torch.optim.SparseAdam``) owns. Every model keeps its
    item tables in an ``ItemTower`` (models/youtube_dnn.py); the forward values and the state dict are the
    same in both modes. Empty for a model without one (MostPopular)."""
    params: list = []
    for module in model.modules():
        if hasattr(module, "set_sparse") and hasattr(module, "embedding_parameters"):
            params.extend(module.set_sparse(sparse))
    return params


def is_trainable(model: Any) -> bool:
    """False for models without trainable parameters (MostPopular): the trainer skips gradient fitting."""
    return any(p.requires_grad for p in model.parameters())


def save_model(model: Any, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write ``{"arch", "hparams", "state_dict", "extra"}`` to ``path`` atomically (temp file + rename).

    ``extra`` must hold plain Python values (str, numbers, bool, None, lists, dicts) and tensors: the file
    is read back with ``torch.load(weights_only=True)``.
    """
    import torch

    from components.io import atomic_path

    payload = {
        "arch": arch_of(model),
        "hparams": dict(model.config),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_model(path: str | Path, *, with_extra: bool = False) -> Any:
    """Rebuild a model saved by :func:`save_model`, on CPU in eval mode.

    Returns:
        the model, or ``(model, extra)`` when ``with_extra``.
    Raises:
        components.io.DataError: missing, unreadable or foreign file (named).
    """
    import torch

    from components.io import DataError

    path = Path(path)
    if not path.exists():
        raise DataError("model file not found", path=path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt/truncated file: name it
        raise DataError(f"not a readable model file ({type(exc).__name__}: {exc})", path=path) from None
    if not isinstance(payload, dict) or not {"arch", "hparams", "state_dict"} <= set(payload):
        raise DataError("not a model file written by models.save_model (keys arch/hparams/state_dict)", path=path)
    model = build_model(payload["arch"], **payload["hparams"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return (model, payload.get("extra", {})) if with_extra else model
