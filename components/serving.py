"""Serving: answer recommendation requests from an exported bundle, and assign users to A/B arms.

:class:`Recommender` loads a bundle written by :mod:`components.export` (TorchScript user tower, item
embeddings, vocabularies, optional faiss index) and answers
``recommend(history_item_ids, profile, n, diversity_lambda=0.0) -> [(item_id, score), ...]`` with exactly the
maths of :mod:`components.evaluate`: the same padding (:func:`components.retrieval.pad_histories`), the same
retrieval (:func:`components.retrieval.retrieve`), the same history exclusion — so its answers for a
valid/test user equal evaluate's list for that user (tested).

Request handling (choices the papers leave open):
- item ids are the original ids (str; ints are accepted and compared as str); unknown ids are ignored and
  counted in ``stats["unknown_items"]``;
- an empty or all-unknown history gets the most popular items (train counts, ties by lower item index),
  counted in ``stats["fallbacks"]``; the score is the train count;
- ``profile`` is a mapping field -> original value; a missing field or unknown value is index 0 ("<unk>"),
  an unknown *field* is a malformed request;
- malformed requests raise :class:`RequestError` (a ``ValueError``) with a message naming the argument;
- ``n`` larger than the catalogue returns the whole catalogue; items excluded as history are never returned;
- with ``use_index=True`` and λ = 0 retrieval goes through the bundle's faiss index (the approximate path
  for huge catalogues); λ > 0 always uses exact per-interest retrieval (Algorithm 2 needs its candidates).

:class:`ABSpec` is the A/B experiment spec (``ab.json`` next to the bundles): deterministic bucketing
``sha256(salt \\x1f user_id)`` → first 8 bytes big-endian mod ``num_buckets``; buckets below
``round(treatment_share * num_buckets)`` get the treatment. hashlib, not ``hash()``: stable across processes,
machines and Python versions.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from components.io import DataError, read_json


class RequestError(ValueError):
    """A malformed recommendation request; the message names the offending argument."""


class Recommender:
    """Recommendations from one bundle. Not thread-safe (``stats`` is a plain dict)."""

    def __init__(self, *, tower, item_emb, item_ids: np.ndarray, item_category: np.ndarray,
                 train_count: np.ndarray, profile_fields: list[str], profile_values: dict[str, list[str]],
                 max_len: int, exclude_history: bool, manifest: dict[str, Any] | None = None,
                 index=None, row_items: np.ndarray | None = None):
        import torch

        self.tower = tower
        self.item_emb = item_emb                          # (N, D) float32 tensor, row 0 padding
        self.item_ids = item_ids                          # (N,) original ids, "" for padding
        self.item_category = torch.as_tensor(item_category, dtype=torch.long)
        self.index_of = {str(i): k for k, i in enumerate(item_ids) if k > 0}
        order = np.lexsort((np.arange(len(train_count)), -np.asarray(train_count)))
        self.popular = [int(k) for k in order if k > 0]   # most popular first, ties by lower index
        self.train_count = np.asarray(train_count)
        self.profile_fields = list(profile_fields)
        self.profile_index = {f: {str(v): j for j, v in enumerate(profile_values.get(f, []))}
                              for f in self.profile_fields}
        self.max_len = int(max_len)
        self.exclude_history = bool(exclude_history)
        self.manifest = manifest or {}
        self.index, self.row_items = index, row_items
        self.stats = {"requests": 0, "unknown_items": 0, "unknown_profile_values": 0, "fallbacks": 0}

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    # --------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, bundle_dir: str | Path, *, use_index: bool = False) -> "Recommender":
        """Load a bundle folder (see :mod:`components.export`); DataError naming a missing/broken file."""
        import pandas as pd
        import torch

        bundle_dir = Path(bundle_dir)
        manifest = read_json(bundle_dir / "manifest.json")
        vocab = read_json(bundle_dir / "vocab.json")
        for name in ("user_tower.pt", "item_embeddings.npy", "items.parquet"):
            if not (bundle_dir / name).exists():
                raise DataError("file not found", path=bundle_dir / name)
        try:
            with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                tower = torch.jit.load(str(bundle_dir / "user_tower.pt"), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - name the file
            raise DataError(f"not a TorchScript module ({exc})", path=bundle_dir / "user_tower.pt") from None
        tower.eval()
        emb = torch.from_numpy(np.load(bundle_dir / "item_embeddings.npy")).float().contiguous()
        num_items = int(vocab["num_items"])
        if emb.shape[0] != num_items:
            raise DataError(f"{emb.shape[0]} embedding rows for {num_items} items",
                            path=bundle_dir / "item_embeddings.npy")
        items = pd.read_parquet(bundle_dir / "items.parquet")
        ids = np.full(num_items, "", dtype=object)
        cats = np.zeros(num_items, dtype=np.int64)
        counts = np.zeros(num_items, dtype=np.int64)
        idx = items["item_idx"].to_numpy(np.int64)
        ids[idx] = items["item_id"].astype(str).to_numpy(dtype=object)
        cats[idx] = items["category_idx"].to_numpy(np.int64)
        counts[idx] = items["train_count"].to_numpy(np.int64)
        index = row_items = None
        if use_index:
            from components.build_index import load_index

            index, row_items, _ = load_index(bundle_dir)
        return cls(tower=tower, item_emb=emb, item_ids=ids, item_category=cats, train_count=counts,
                   profile_fields=list(vocab.get("profile_fields", [])),
                   profile_values=dict(vocab.get("profile_values", {})), max_len=int(manifest["max_len"]),
                   exclude_history=bool(manifest.get("exclude_history", True)), manifest=manifest,
                   index=index, row_items=row_items)

    # ------------------------------------------------------------------------------------------- requests
    def recommend(self, history_item_ids: Sequence[str | int], profile: Mapping[str, Any] | None = None,
                  n: int = 10, diversity_lambda: float = 0.0) -> list[tuple[str, float]]:
        """Top-``n`` ``(item_id, score)`` for one user, best first.

        Args:
            history_item_ids: the user's behaviours, oldest first (original item ids).
            profile: optional {field: value} with original values (e.g. {"gender": "F"}).
            n: list length (>= 1).
            diversity_lambda: λ of ComiRec's controllable aggregation (eq. 12), >= 0.
        Raises:
            RequestError: malformed arguments.
        """
        return self.recommend_batch([history_item_ids], [profile], n, diversity_lambda)[0]

    def recommend_batch(self, histories: Sequence[Sequence[str | int]],
                        profiles: Sequence[Mapping[str, Any] | None] | None = None, n: int = 10,
                        diversity_lambda: float = 0.0) -> list[list[tuple[str, float]]]:
        """:meth:`recommend` for many users at once (one forward pass, one retrieval block)."""
        import torch

        from components.retrieval import faiss_topn, pad_exclusions, pad_histories, retrieve

        if isinstance(histories, (str, bytes)) or not isinstance(histories, Sequence):
            raise RequestError(f"histories must be a list of item-id lists, got {type(histories).__name__}")
        if profiles is None:
            profiles = [None] * len(histories)
        if isinstance(profiles, Mapping) or len(profiles) != len(histories):
            raise RequestError("profiles must be a list with one entry (mapping or None) per history")
        n = self._check_n(n)
        lam = self._check_lambda(diversity_lambda)
        encoded = [self._encode_history(h) for h in histories]
        prof = torch.tensor([self._encode_profile(p) for p in profiles], dtype=torch.long).reshape(
            len(histories), len(self.profile_fields))
        self.stats["requests"] += len(histories)
        results: list[list[tuple[str, float]] | None] = [None] * len(histories)
        live = [b for b, h in enumerate(encoded) if h]
        for b, h in enumerate(encoded):
            if not h:
                self.stats["fallbacks"] += 1
                results[b] = [(str(self.item_ids[k]), float(self.train_count[k])) for k in self.popular[:n]]
        if live:
            hists = [encoded[b] for b in live]
            history, mask = pad_histories(hists, self.max_len)
            with torch.no_grad():
                interests, imask = self.tower(history, mask, prof[live])
            exclude = pad_exclusions(hists) if self.exclude_history else None
            if self.index is not None and lam == 0:
                scores, items = faiss_topn(self.index, self.row_items, interests.numpy(), imask.numpy(), n,
                                           None if exclude is None else exclude.numpy())
                scores, items = torch.from_numpy(scores), torch.from_numpy(items)
            else:
                scores, items = retrieve(interests.float(), imask.bool(), self.item_emb, n, exclude=exclude,
                                         diversity_lambda=lam, item_category=self.item_category)
            for j, b in enumerate(live):
                results[b] = [(str(self.item_ids[int(i)]), float(s))
                              for s, i in zip(scores[j].tolist(), items[j].tolist())
                              if i != 0 and s != float("-inf")]
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------ validation
    def _encode_history(self, history: Any) -> list[int]:
        if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
            raise RequestError(f"history_item_ids must be a list of item ids, got {type(history).__name__}")
        out = []
        for pos, item in enumerate(history):
            if isinstance(item, bool) or not isinstance(item, (str, Integral)):
                raise RequestError(f"history_item_ids[{pos}] must be an item id (str or int), got "
                                   f"{type(item).__name__} {item!r}")
            k = self.index_of.get(str(item))
            if k is None:
                self.stats["unknown_items"] += 1
            else:
                out.append(k)
        return out

    def _encode_profile(self, profile: Any) -> list[int]:
        if profile is None:
            return [0] * len(self.profile_fields)
        if not isinstance(profile, Mapping):
            raise RequestError(f"profile must be a mapping field -> value or None, got {type(profile).__name__}")
        unknown = sorted(set(map(str, profile)) - set(self.profile_fields))
        if unknown:
            raise RequestError(f"profile: unknown field(s) {unknown} (known: {self.profile_fields})")
        out = []
        for f in self.profile_fields:
            value = profile.get(f)
            if value is None:
                out.append(0)
                continue
            j = self.profile_index[f].get(str(value), 0)
            if j == 0:
                self.stats["unknown_profile_values"] += 1
            out.append(j)
        return out

    def _check_n(self, n: Any) -> int:
        if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
            raise RequestError(f"n must be a positive integer, got {n!r}")
        return min(int(n), self.num_items)

    @staticmethod
    def _check_lambda(lam: Any) -> float:
        if isinstance(lam, bool) or not isinstance(lam, Real) or not math.isfinite(lam) or lam < 0:
            raise RequestError(f"diversity_lambda must be a finite number >= 0, got {lam!r}")
        return float(lam)


# ---------------------------------------------------------------------------------------------- A/B spec
@dataclass(frozen=True)
class ABSpec:
    """A/B experiment: control = the champion bundle, treatment = the candidate bundle."""

    salt: str
    num_buckets: int
    treatment_share: float
    control: dict[str, Any] = field(default_factory=dict)     # {"bundle": name, "model": variant, ...}
    treatment: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.salt:
            raise ValueError("salt must be a non-empty string")
        if self.num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, got {self.num_buckets}")
        if not 0.0 <= self.treatment_share <= 1.0:
            raise ValueError(f"treatment_share must lie in [0, 1], got {self.treatment_share}")

    @property
    def treatment_buckets(self) -> int:
        return round(self.treatment_share * self.num_buckets)

    def bucket(self, user_id: str | int) -> int:
        """Deterministic bucket in [0, num_buckets) of a user id (its str form)."""
        digest = hashlib.sha256(f"{self.salt}\x1f{user_id}".encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.num_buckets

    def assign(self, user_id: str | int) -> str:
        """"treatment" or "control"."""
        return "treatment" if self.bucket(user_id) < self.treatment_buckets else "control"

    def to_dict(self) -> dict[str, Any]:
        return {"salt": self.salt, "num_buckets": self.num_buckets, "treatment_share": self.treatment_share,
                "treatment_buckets": self.treatment_buckets, "control": self.control,
                "treatment": self.treatment,
                "bucketing": "bucket = int.from_bytes(sha256(salt + '\\x1f' + str(user_id)).digest()[:8], "
                             "'big') % num_buckets; treatment iff bucket < treatment_buckets"}

    @classmethod
    def load(cls, path: str | Path) -> "ABSpec":
        d = read_json(Path(path))
        try:
            return cls(salt=d["salt"], num_buckets=int(d["num_buckets"]),
                       treatment_share=float(d["treatment_share"]), control=d.get("control", {}),
                       treatment=d.get("treatment", {}))
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"not an A/B spec ({exc})", path=path) from None


