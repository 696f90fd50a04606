"""evaluate: offline metrics of one trained model on the valid and test users, and the side-by-side report.

Protocol (ComiRec §4.1, strong generalization; docs/CONTRACTS.md): a valid/test user's ``history`` (the
first 80 % of the sequence, truncated to the most recent ``max_len`` items for the model) yields K interests;
every unmasked interest retrieves over **all** items, candidates are merged by their best score (eq. 11),
history items are excluded (switch ``exclude_history``), and the top-N list is scored against the user's
``targets``. Retrieval is :mod:`components.retrieval`, the very code serving runs.

Metrics per user, then averaged over users (ComiRec eqs. 14–17, UMI eq. 16), binary relevance, targets
de-duplicated (a set):
- Recall@N = |top-N ∩ T| / |T| (ComiRec eq. 14; UMI eq. 15 calls this "HitRate");
- HitRate@N = δ(|top-N ∩ T| > 0) (ComiRec eq. 15);
- NDCG@N = DCG / IDCG, DCG = Σ_{k≤N} δ(î_k ∈ T) / log2(k + 1) over the ranks of the list, IDCG = the same
  sum over min(|T|, N) ideal positions (eq. 16's Z per user; ComiRec's public code normalised differently,
  see its issue history — we use the textbook per-user normalisation);
- Precision@N = |top-N ∩ T| / N (UMI eq. 16);
- Diversity@N = pairs of the list with different categories / (N(N−1)/2) (ComiRec eq. 17); 0 for N = 1.

Summary: the mean over users with a percentile bootstrap confidence interval (users resampled with
replacement, one seeded set of resamples shared by all metrics) — with ~95 MovieLens test users the noise is
large and must be visible. Keys ``<split>.<metric>@N`` and ``..._ci_low`` / ``..._ci_high``.

Also: ComiRec's controllable aggregation (§3.3) at ``diversity_lambda`` for the main numbers, a λ sweep on the
test users (ComiRec Table 5), the same metrics through a faiss index as a check (gap reported), DVC plots
(Recall@N curve, λ trade-off, training curves, MIND Fig. 5 coupling heatmaps for routing models) as
CSV + PNG, and :func:`report`, a Markdown table of all variants side by side (ComiRec Table 3).

Choices the papers leave open:
- Interests are computed with exactly ``max_len`` history columns (same as training and serving), so a
  user's numbers do not depend on the batch it is evaluated in.
- Bootstrap: percentile interval, ``bootstrap_samples`` resamples, seeded with the pipeline seed.
- The faiss check uses its own index (``faiss_factory``, exact ``Flat`` by default): it verifies the
  search-and-merge path serving may use; the ANN figures of the production index are build_index's job.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from components.config import ParamsError, load_params, section
from components.io import DataError, atomic_dir, atomic_path, cli_main, read_json, read_parquet, write_json

METRICS = ("recall", "ndcg", "hitrate", "precision", "diversity")
SPLITS = ("valid", "test")


@dataclass(frozen=True)
class EvaluateConfig:
    topn: list[int] = field(default_factory=lambda: [10, 20, 50, 100])
    """list lengths N at which every metric is computed."""
    exclude_history: bool = True
    """leave the user's history items out of the recommendations (MovieLens has no repeats)."""
    bootstrap_samples: int = 1000
    """user resamples for the confidence intervals (0 = no intervals)."""
    confidence: float = 0.95
    """confidence level of the bootstrap intervals."""
    diversity_lambda: float = 0.0
    """λ of ComiRec's controllable aggregation (eq. 12) for the main metrics; 0 = pure accuracy."""
    lambda_sweep: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.1, 0.25, 0.5, 1.0])
    """λ values of the accuracy/diversity trade-off on the test users (ComiRec Table 5)."""
    faiss_check: bool = True
    """recompute the metrics through a faiss index and report the gap to exact retrieval."""
    faiss_factory: str = "Flat"
    """faiss factory string of the check's index (inner product)."""
    faiss_nprobe: int = 16
    """IVF lists the check's index probes (build_index's ``index.json`` says which nprobe reaches the recall
    target for a catalogue)."""
    batch_size: int = 512
    """users per forward pass / retrieval block."""
    heatmap_users: int = 3
    """test users drawn in the coupling-coefficient heatmap (MIND Fig. 5), when the model exposes them."""

    def __post_init__(self) -> None:
        if not self.topn or any(n < 1 for n in self.topn):
            raise ValueError(f"topn: need a non-empty list of positive integers, got {self.topn}")
        if len(set(self.topn)) != len(self.topn):
            raise ValueError(f"topn: duplicate values in {self.topn}")
        if self.bootstrap_samples < 0:
            raise ValueError(f"bootstrap_samples must be >= 0, got {self.bootstrap_samples}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must lie in (0, 1), got {self.confidence}")
        if not (self.diversity_lambda >= 0 and math.isfinite(self.diversity_lambda)):
            raise ValueError(f"diversity_lambda must be a finite number >= 0, got {self.diversity_lambda}")
        if any(not (lam >= 0 and math.isfinite(lam)) for lam in self.lambda_sweep):
            raise ValueError(f"lambda_sweep: values must be finite and >= 0, got {self.lambda_sweep}")
        if not self.faiss_factory.strip():
            raise ValueError("faiss_factory must be a non-empty faiss factory string")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.faiss_nprobe < 1:
            raise ValueError(f"faiss_nprobe must be >= 1, got {self.faiss_nprobe}")
        if self.heatmap_users < 0:
            raise ValueError(f"heatmap_users must be >= 0, got {self.heatmap_users}")

    @property
    def max_n(self) -> int:
        return max(self.topn)

    def check_catalogue(self, num_items: int, path: Path) -> None:
        """ParamsError when a list length exceeds the catalogue (``num_items`` counts padding 0)."""
        if self.max_n > num_items - 1:
            raise ParamsError(f"evaluate.topn: {self.max_n} is above the catalogue size {num_items - 1} "
                              f"(items in {path}); use list lengths <= {num_items - 1}")


# ------------------------------------------------------------------------------------------- split reading
@dataclass(frozen=True)
class Catalogue:
    """Items and vocabularies of a split directory."""

    num_items: int                 # incl. padding 0
    num_categories: int            # incl. padding 0
    item_ids: np.ndarray           # (num_items,) object: original id per item index ("" for padding)
    item_category: np.ndarray      # (num_items,) int64 category index (0 for padding)
    train_count: np.ndarray        # (num_items,) int64
    profile_fields: list[str]
    vocab: dict[str, Any]
    category_names: dict[int, str] = field(default_factory=dict)  # category_idx -> original category


@dataclass(frozen=True)
class EvalUsers:
    """Valid or test users of a split."""

    split: str
    user_idx: np.ndarray           # (U,) int64
    user_id: np.ndarray            # (U,) object original ids
    history: list[np.ndarray]      # whole history per user, oldest first (item indices)
    targets: list[np.ndarray]      # unique targets per user
    profile: np.ndarray            # (U, C) int64

    def __len__(self) -> int:
        return len(self.user_idx)


def load_catalogue(split_dir: str | Path) -> Catalogue:
    """``vocab.json`` and ``items.parquet`` of a split directory (docs/CONTRACTS.md), checked."""
    split_dir = Path(split_dir)
    vocab_path = split_dir / "vocab.json"
    vocab = read_json(vocab_path, ("num_items", "num_categories", "profile_fields"))
    num_items, num_categories = int(vocab["num_items"]), int(vocab["num_categories"])
    path = split_dir / "items.parquet"
    items = read_parquet(path, ["item_idx", "item_id", "category_idx", "train_count"])
    idx = items["item_idx"].to_numpy(np.int64)
    _check_range(idx, 1, num_items - 1, path, "item_idx")
    cats = items["category_idx"].to_numpy(np.int64)
    _check_range(cats, 0, num_categories - 1, path, "category_idx")
    item_ids = np.full(num_items, "", dtype=object)
    item_ids[idx] = items["item_id"].astype(str).to_numpy(dtype=object)
    item_category = np.zeros(num_items, dtype=np.int64)
    item_category[idx] = cats
    train_count = np.zeros(num_items, dtype=np.int64)
    train_count[idx] = items["train_count"].to_numpy(np.int64)
    import pyarrow.parquet as pq

    names: dict[int, str] = {}  # category names label the coupling heatmap; optional
    if "category" in pq.read_schema(path).names:
        labels = read_parquet(path, ["category"])["category"].astype(str)
        names = {int(c): n for c, n in zip(cats, labels)}
    return Catalogue(num_items, num_categories, item_ids, item_category, train_count,
                     list(vocab["profile_fields"]), vocab, names)


def load_users(split_dir: str | Path, split: str, cat: Catalogue) -> EvalUsers:
    """``<split>.parquet`` joined with ``users.parquet`` (profile columns), checked."""
    split_dir = Path(split_dir)
    path = split_dir / f"{split}.parquet"
    df = read_parquet(path, ["user_idx", "history", "targets"])
    users_path = split_dir / "users.parquet"
    pcols = [f"profile_{f}" for f in cat.profile_fields]
    users = read_parquet(users_path, ["user_idx", "user_id", *pcols])
    uidx = df["user_idx"].to_numpy(np.int64)
    lookup = users.set_index("user_idx")
    missing = np.setdiff1d(uidx, lookup.index.to_numpy(np.int64))
    if len(missing):
        raise DataError("user_idx not found in users.parquet", path=path, column="user_idx",
                        rows=missing[:5].tolist())
    rows = lookup.loc[uidx]
    history = [np.asarray(h, dtype=np.int64) for h in df["history"]]
    targets = [np.unique(np.asarray(t, dtype=np.int64)) for t in df["targets"]]
    for name, lists in (("history", history), ("targets", targets)):
        bad = [int(u) for u, seq in zip(uidx, lists)
               if len(seq) and (seq.min() < 1 or seq.max() > cat.num_items - 1)]
        if bad:
            raise DataError(f"item indices outside [1, {cat.num_items - 1}]", path=path, column=name,
                            rows=[f"user_idx {u}" for u in bad])
    empty = [int(u) for u, t in zip(uidx, targets) if len(t) == 0]
    if empty:
        raise DataError("users without targets", path=path, column="targets",
                        rows=[f"user_idx {u}" for u in empty])
    profile = rows[pcols].to_numpy(np.int64) if pcols else np.zeros((len(uidx), 0), dtype=np.int64)
    return EvalUsers(split, uidx, rows["user_id"].astype(str).to_numpy(dtype=object), history, targets,
                     profile.reshape(len(uidx), len(pcols)))


def _check_range(values: np.ndarray, lo: int, hi: int, path: Path, column: str) -> None:
    bad = np.flatnonzero((values < lo) | (values > hi))
    if len(bad):
        raise DataError(f"{len(bad)} value(s) outside [{lo}, {hi}]", path=path, column=column,
                        rows=[f"row {r}: {values[r]}" for r in bad[:5]])


# --------------------------------------------------------------------------------------------- inference
def compute_interests(model, users: EvalUsers, max_len: int, batch_size: int = 512):
    """Interests of every user, from the most recent ``max_len`` history items.

    Returns:
        interests (U, K, D) float32 tensor, interest_mask (U, K) bool tensor.
    """
    import torch

    from components.retrieval import pad_histories

    outs, masks = [], []
    with torch.no_grad():
        for start in range(0, len(users), batch_size):
            sl = slice(start, start + batch_size)
            history, mask = pad_histories(users.history[sl], max_len)
            profile = torch.from_numpy(np.array(users.profile[sl], dtype=np.int64))
            v, m = model.user_interests(history, mask, profile)
            outs.append(v.float())
            masks.append(m.bool())
    return torch.cat(outs), torch.cat(masks)


def item_table(model, num_items: int):
    """(num_items, D) float32 embeddings of every item index (row 0 = padding)."""
    import torch

    with torch.no_grad():
        return model.item_embeddings(torch.arange(num_items)).float().contiguous()


def rank_lists(interests, interest_mask, item_emb, users: EvalUsers, ns: Sequence[int], *,
               exclude_history: bool, diversity_lambda: float, item_category, batch_size: int = 512
               ) -> dict[int, np.ndarray]:
    """The recommended item indices per N: {N: (U, N) int64}.

    With λ = 0 one top-max(N) list serves every N (prefixes). With λ > 0 each N has its own run of
    Algorithm 2, because its candidate set (K·N items) depends on N.
    """
    import torch

    from components.retrieval import pad_exclusions, retrieve

    ns = sorted(set(ns))
    lengths = [max(ns)] if diversity_lambda == 0 else ns
    cat_t = torch.as_tensor(item_category, dtype=torch.long)
    out: dict[int, list[np.ndarray]] = {n: [] for n in lengths}
    for start in range(0, len(users), batch_size):
        sl = slice(start, start + batch_size)
        exclude = pad_exclusions(users.history[sl]) if exclude_history else None
        for n in lengths:
            _, items = retrieve(interests[sl], interest_mask[sl], item_emb, n, exclude=exclude,
                                diversity_lambda=diversity_lambda, item_category=cat_t)
            out[n].append(items.numpy())
    full = {n: np.concatenate(v) if v else np.zeros((0, n), np.int64) for n, v in out.items()}
    if diversity_lambda == 0:
        top = full[max(ns)]
        return {n: top[:, :n] for n in ns}
    return full


# ------------------------------------------------------------------------------------------------ metrics
def user_metrics(lists: dict[int, np.ndarray], targets: Sequence[np.ndarray], item_category: np.ndarray
                 ) -> dict[str, np.ndarray]:
    """Per-user metrics. ``lists[N]`` is (U, N') with N' ≤ N (a short catalogue); returns {"recall@N": (U,)}.

    Binary relevance: an item is relevant iff it is in the user's (unique) targets.
    """
    out: dict[str, np.ndarray] = {}
    num_targets = np.array([len(t) for t in targets], dtype=np.float64)
    for n, items in sorted(lists.items()):
        U, width = items.shape
        rel = np.zeros((U, width), dtype=np.float64)
        for u in range(U):
            rel[u] = np.isin(items[u], targets[u]) & (items[u] != 0)
        hits = rel.sum(axis=1)
        discounts = 1.0 / np.log2(np.arange(2, n + 2))  # 1 / log2(k + 1), k = 1..N
        dcg = rel @ discounts[:width]
        ideal = np.minimum(num_targets, n).astype(np.int64)
        idcg = np.cumsum(discounts)[ideal - 1]  # Σ_{k ≤ min(|T|, N)} 1 / log2(k + 1)
        out[f"recall@{n}"] = hits / num_targets  # ComiRec eq. (14)
        out[f"hitrate@{n}"] = (hits > 0).astype(np.float64)  # ComiRec eq. (15)
        out[f"ndcg@{n}"] = dcg / idcg  # ComiRec eq. (16), per-user IDCG
        out[f"precision@{n}"] = hits / n  # UMI eq. (16)
        out[f"diversity@{n}"] = diversity(items, item_category, n)
    return out


def diversity(items: np.ndarray, item_category: np.ndarray, n: int) -> np.ndarray:
    """ComiRec eq. (17): share of the N(N−1)/2 pairs of each list whose categories differ; (U,)."""
    U = items.shape[0]
    if n < 2:
        return np.zeros(U)
    cats = item_category[items]  # (U, N')
    same = np.zeros(U)
    for u in range(U):
        _, counts = np.unique(cats[u][items[u] != 0], return_counts=True)
        same[u] = (counts * (counts - 1) / 2).sum()
    real = (items != 0).sum(axis=1)
    diff_pairs = real * (real - 1) / 2 - same
    return diff_pairs / (n * (n - 1) / 2)


def bootstrap_ci(values: np.ndarray, samples: int, confidence: float, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean of each column of ``values`` (U, M).

    One set of user resamples (seeded) is shared by all columns, so the intervals are paired.
    Returns:
        low (M,), high (M,).
    """
    values = np.asarray(values, dtype=np.float64)
    U = values.shape[0]
    if samples == 0 or U == 0:
        mean = values.mean(axis=0) if U else np.full(values.shape[1], np.nan)
        return mean, mean
    rng = np.random.default_rng(seed)
    means = np.empty((samples, values.shape[1]))
    for s in range(samples):
        means[s] = values[rng.integers(0, U, size=U)].mean(axis=0)
    alpha = (1.0 - confidence) / 2
    return np.quantile(means, alpha, axis=0), np.quantile(means, 1 - alpha, axis=0)


def summarise(split: str, per_user: dict[str, np.ndarray], cfg: EvaluateConfig, seed: int) -> dict[str, float]:
    """Means and bootstrap CIs under keys ``<split>.<metric>`` and ``..._ci_low`` / ``..._ci_high``."""
    names = list(per_user)
    if not names:
        return {}
    matrix = np.stack([per_user[k] for k in names], axis=1)  # (U, M)
    low, high = bootstrap_ci(matrix, cfg.bootstrap_samples, cfg.confidence, seed)
    out: dict[str, float] = {}
    for j, name in enumerate(names):
        out[f"{split}.{name}"] = float(matrix[:, j].mean())
        if cfg.bootstrap_samples:
            out[f"{split}.{name}_ci_low"] = float(low[j])
            out[f"{split}.{name}_ci_high"] = float(high[j])
    return out


# --------------------------------------------------------------------------------------------------- run
def evaluate_model(cfg: EvaluateConfig, model, split_dir: Path, *, max_len: int, seed: int
                   ) -> dict[str, Any]:
    """Everything :func:`run` computes, in memory (no files). The pure core, also used by tests.

    Returns:
        {"metrics": {...}, "per_user": DataFrame, "lambda_sweep": [...], "faiss_check": {...} | None,
         "interests": {split: (interests, mask)}, "users": {split: EvalUsers}, "catalogue": Catalogue}
    """
    import pandas as pd
    import torch

    torch.manual_seed(seed)
    cat = load_catalogue(split_dir)
    cfg.check_catalogue(cat.num_items, Path(split_dir) / "items.parquet")
    model.eval()
    item_emb = item_table(model, cat.num_items)
    if item_emb.shape[0] != cat.num_items:
        raise DataError(f"model has {item_emb.shape[0]} items, split has {cat.num_items}",
                        path=Path(split_dir) / "vocab.json")
    metrics: dict[str, Any] = {"diversity_lambda": cfg.diversity_lambda, "max_len": max_len,
                               "confidence": cfg.confidence}
    frames, interests_by_split, users_by_split, lists_by_split = [], {}, {}, {}
    for s_i, split in enumerate(SPLITS):
        users = load_users(split_dir, split, cat)
        users_by_split[split] = users
        v, m = compute_interests(model, users, max_len, cfg.batch_size)
        interests_by_split[split] = (v, m)
        lists = rank_lists(v, m, item_emb, users, cfg.topn, exclude_history=cfg.exclude_history,
                           diversity_lambda=cfg.diversity_lambda, item_category=cat.item_category,
                           batch_size=cfg.batch_size)
        lists_by_split[split] = lists
        per_user = user_metrics(lists, users.targets, cat.item_category)
        metrics.update(summarise(split, per_user, cfg, seed + s_i))
        metrics[f"{split}.num_users"] = len(users)
        frame = pd.DataFrame({
            "user_idx": users.user_idx, "user_id": users.user_id.astype(str), "split": split,
            "num_history": [len(h) for h in users.history], "num_targets": [len(t) for t in users.targets],
            "recommended": [cat.item_ids[row].tolist() for row in lists[cfg.max_n]],
            "num_interests": m.sum(dim=1).numpy().astype(np.int64),
            **per_user,
        })
        frames.append(frame)
    per_user_df = pd.concat(frames, ignore_index=True)

    test_users = users_by_split["test"]
    v, m = interests_by_split["test"]
    sweep = []
    for lam in cfg.lambda_sweep:
        if lam == cfg.diversity_lambda:  # the main test lists are this very call's result: not ranked twice
            lists = lists_by_split["test"]
        else:
            lists = rank_lists(v, m, item_emb, test_users, cfg.topn, exclude_history=cfg.exclude_history,
                               diversity_lambda=lam, item_category=cat.item_category, batch_size=cfg.batch_size)
        per_user = user_metrics(lists, test_users.targets, cat.item_category)
        sweep.append({"lambda": lam, **{f"test.{k}": float(x.mean()) for k, x in per_user.items()}})

    check = None
    if cfg.faiss_check:
        check = faiss_check(cfg, item_emb, interests_by_split, users_by_split, lists_by_split, cat)
        metrics["faiss_check.max_abs_gap"] = check["max_abs_gap"]
        metrics["faiss_check.list_agreement"] = check["list_agreement"]
    return {"metrics": metrics, "per_user": per_user_df, "lambda_sweep": sweep, "faiss_check": check,
            "interests": interests_by_split, "users": users_by_split, "catalogue": cat, "item_emb": item_emb}


def faiss_check(cfg: EvaluateConfig, item_emb, interests_by_split, users_by_split, lists_by_split,
                cat: Catalogue) -> dict[str, Any]:
    """The λ = 0 metrics again with retrieval through a faiss index (search per interest, merge by best
    score): gap = faiss − exact per key, and the share of list positions where both agree."""
    from components.build_index import build_faiss_index
    from components.retrieval import faiss_topn, pad_exclusions

    index, row_items, _ = build_faiss_index(item_emb.numpy(), cfg.faiss_factory, nprobe=cfg.faiss_nprobe,
                                            ef_search=128, flat_below=0)
    out: dict[str, Any] = {"factory": cfg.faiss_factory, "nprobe": cfg.faiss_nprobe, "metrics": {},
                           "exact_metrics": {}, "gap": {}}
    agreements = []
    for split in SPLITS:
        users = users_by_split[split]
        v, m = interests_by_split[split]
        if cfg.diversity_lambda == 0:
            exact = lists_by_split[split][cfg.max_n]
        else:  # the main lists are re-ranked by Algorithm 2: compare with plain exact retrieval
            exact = rank_lists(v, m, item_emb, users, [cfg.max_n], exclude_history=cfg.exclude_history,
                               diversity_lambda=0.0, item_category=cat.item_category,
                               batch_size=cfg.batch_size)[cfg.max_n]
        items_all = []
        for start in range(0, len(users), cfg.batch_size):
            sl = slice(start, start + cfg.batch_size)
            ex = pad_exclusions(users.history[sl]).numpy() if cfg.exclude_history else None
            _, items = faiss_topn(index, row_items, v[sl].numpy(), m[sl].numpy(), cfg.max_n, ex)
            items_all.append(items)
        items = np.concatenate(items_all) if items_all else np.zeros((0, cfg.max_n), np.int64)
        agreements.append((items == exact).mean(axis=1))
        via_faiss = user_metrics({n: items[:, :n] for n in cfg.topn}, users.targets, cat.item_category)
        via_exact = user_metrics({n: exact[:, :n] for n in cfg.topn}, users.targets, cat.item_category)
        for k in via_faiss:
            key = f"{split}.{k}"
            out["metrics"][key] = float(via_faiss[k].mean())
            out["exact_metrics"][key] = float(via_exact[k].mean())
            out["gap"][key] = out["metrics"][key] - out["exact_metrics"][key]
    out["max_abs_gap"] = max((abs(g) for g in out["gap"].values()), default=0.0)
    out["list_agreement"] = float(np.concatenate(agreements).mean()) if agreements else 1.0
    return out


def run(cfg: EvaluateConfig, split_dir: Path, model_dir: Path, out_dir: Path, *, max_len: int, seed: int
        ) -> dict:
    """Evaluate ``model_dir/model.pt`` on ``split_dir``; write ``out_dir`` atomically.

    Writes ``metrics.json`` (DVC metrics), ``per_user.parquet``, ``lambda_sweep.json``,
    ``faiss_check.json`` (``{"enabled": false}`` when off) and ``plots/`` (CSV/JSON for DVC plots + PNGs).

    Returns:
        the metrics dict.
    """
    from models import load_model

    split_dir, model_dir, out_dir = Path(split_dir), Path(model_dir), Path(out_dir)
    if max_len < 1:
        raise ParamsError(f"max_len must be >= 1, got {max_len}")
    model, extra = load_model(model_dir / "model.pt", with_extra=True)
    res = evaluate_model(cfg, model, split_dir, max_len=max_len, seed=seed)
    label = model_label(model, extra)
    if label is not None:  # the display name ("MIND+HN"): a string, which `dvc metrics show` leaves out
        res["metrics"] = {"label": label, **res["metrics"]}
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "metrics.json", res["metrics"])
        res["per_user"].to_parquet(tmp / "per_user.parquet", index=False)
        write_json(tmp / "lambda_sweep.json", res["lambda_sweep"])
        # always written (a declared DVC output): the check's figures, or that it was off
        write_json(tmp / "faiss_check.json", res["faiss_check"] if res["faiss_check"] is not None
                   else {"enabled": False})
        plots = tmp / "plots"
        plots.mkdir()
        write_plots(plots, cfg, res, model, model_dir, max_len)
    return res["metrics"]


# -------------------------------------------------------------------------------------------------- plots
def write_plots(plots: Path, cfg: EvaluateConfig, res: dict[str, Any], model, model_dir: Path,
                max_len: int) -> None:
    """CSV for ``dvc plots`` and PNG twins (DVC's HTML loads its charting library from a CDN)."""
    import pandas as pd

    m = res["metrics"]
    rows = [{"split": s, "n": n, **{k: m[f"{s}.{k}@{n}"] for k in METRICS}}
            for s in SPLITS for n in sorted(cfg.topn)]
    curve = pd.DataFrame(rows)
    curve.to_csv(plots / "recall_curve.csv", index=False)
    sweep = pd.DataFrame(res["lambda_sweep"])
    if len(sweep):
        sweep.to_csv(plots / "lambda_tradeoff.csv", index=False)
    train_curve = _training_curve(model_dir / "logs" / "metrics.csv")
    if train_curve is not None:
        train_curve.to_csv(plots / "training_curve.csv", index=False)
    coupling = _coupling(model, res, cfg.heatmap_users, max_len)
    if coupling:
        write_json(plots / "coupling.json", coupling)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for s in SPLITS:
        part = curve[curve["split"] == s]
        ax.plot(part["n"], part["recall"], marker="o", label=s)
        lo = [m.get(f"{s}.recall@{n}_ci_low", np.nan) for n in part["n"]]
        hi = [m.get(f"{s}.recall@{n}_ci_high", np.nan) for n in part["n"]]
        ax.fill_between(part["n"], lo, hi, alpha=0.2)
    ax.set_xlabel("N")
    ax.set_ylabel("Recall@N")
    ax.set_title(f"Recall@N ({int(cfg.confidence * 100)}% bootstrap CI)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(plots / "recall_curve.png", dpi=100)
    plt.close(fig)

    if len(sweep):
        n = 50 if 50 in cfg.topn else cfg.max_n
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(sweep[f"test.diversity@{n}"], sweep[f"test.recall@{n}"], marker="o")
        for _, r in sweep.iterrows():
            ax.annotate(f"λ={r['lambda']:g}", (r[f"test.diversity@{n}"], r[f"test.recall@{n}"]), fontsize=7)
        ax.set_xlabel(f"Diversity@{n}")
        ax.set_ylabel(f"Recall@{n}")
        ax.set_title("Controllable aggregation (ComiRec Table 5)")
        fig.tight_layout()
        fig.savefig(plots / "lambda_tradeoff.png", dpi=100)
        plt.close(fig)

    if train_curve is not None:
        x = "epoch" if "epoch" in train_curve else "step"
        cols = [c for c in train_curve.columns if c not in ("epoch", "step")]
        fig, axes = plt.subplots(1, max(len(cols), 1), figsize=(4 * max(len(cols), 1), 3), squeeze=False)
        for ax, c in zip(axes[0], cols):
            part = train_curve[[x, c]].dropna()
            ax.plot(part[x], part[c], marker=".")
            ax.set_xlabel(x)
            ax.set_title(c)
        fig.tight_layout()
        fig.savefig(plots / "training_curve.png", dpi=100)
        plt.close(fig)

    if coupling:
        users = coupling["users"]
        fig, axes = plt.subplots(len(users), 1, figsize=(8, 1.6 * len(users) + 0.6), squeeze=False)
        for ax, u in zip(axes[:, 0], users):
            w = np.asarray(u["weights"])  # (K, L)
            im = ax.imshow(w, aspect="auto", cmap="viridis", vmin=0)
            ax.set_yticks(range(w.shape[0]))
            ax.set_yticklabels([f"interest {k}" for k in range(w.shape[0])], fontsize=7)
            ax.set_xticks(range(w.shape[1]))
            ax.set_xticklabels(u["categories"], rotation=90, fontsize=6)
            ax.set_title(f"user {u['user_id']}: coupling coefficients (MIND Fig. 5)", fontsize=8)
            fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(plots / "coupling_heatmap.png", dpi=100)
        plt.close(fig)


def _training_curve(path: Path):
    """Lightning's CSVLogger ``metrics.csv`` collapsed to one row per epoch (or step), or None."""
    import pandas as pd

    if not path.exists():
        return None
    try:
        df = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - a broken log must not sink the evaluation, but is named
        raise DataError(f"unreadable training log ({exc})", path=path) from None
    key = "epoch" if "epoch" in df else ("step" if "step" in df else None)
    if key is None or len(df) == 0:
        return None
    num = df.select_dtypes("number")
    cols = [c for c in num.columns if c not in ("epoch", "step")]
    out = num.groupby(key, as_index=False)[cols].mean() if cols else None
    return out


def coupling_weights(model, history, mask, profile):
    """Coupling coefficients (B, K, L), aligned with the history positions, of a routing model, else None.

    Uses ``model.coupling_coefficients(history, mask, profile)`` when the model defines it; otherwise the
    routing outputs of the known archs: MIND ``capsules(h, m)[1]``, UMI ``capsules(h, m, p)[1]``,
    ComiRec-DR ``capsules(h, m)[1]`` (newest-first positions, mapped back to history order).
    """
    import torch

    fn = getattr(model, "coupling_coefficients", None)
    if fn is not None:
        return fn(history, mask, profile)
    try:
        from models import arch_of

        arch = arch_of(model)
    except TypeError:
        return None
    if arch == "mind":
        return model.capsules(history, mask)[1]
    if arch == "umi":
        return model.capsules(history, mask, profile)[1]
    if arch == "comirec_dr":
        w = model.capsules(history, mask)[1]  # (B, K, L) over newest-first positions
        lengths = mask.sum(1, keepdim=True)  # (B, 1)
        t = torch.arange(history.shape[1]).unsqueeze(0)  # (1, L)
        src = (lengths - 1 - t).clamp(min=0)  # history position t <- recency position len-1-t
        out = w.gather(2, src.unsqueeze(1).expand_as(w))
        return out * mask.unsqueeze(1).to(out.dtype)
    return None


def _coupling(model, res: dict[str, Any], num_users: int, max_len: int) -> dict[str, Any] | None:
    """Coupling coefficients of a few test users for the MIND Fig. 5 heatmap, or None for models without
    routing. The users drawn are the ``num_users`` test users with the longest histories (ties: lower
    user_idx); columns are their most recent ``max_len`` behaviours labelled by category."""
    import torch

    from components.retrieval import pad_histories

    users: EvalUsers = res["users"]["test"]
    cat: Catalogue = res["catalogue"]
    if num_users == 0 or len(users) == 0:
        return None
    lengths = np.array([len(h) for h in users.history])
    pick = np.lexsort((users.user_idx, -lengths))[:num_users]
    history, mask = pad_histories([users.history[i] for i in pick], max_len)
    profile = torch.from_numpy(np.array(users.profile[pick], dtype=np.int64))
    with torch.no_grad():
        w = coupling_weights(model, history, mask, profile)  # (B, K, L)
        if w is None:
            return None
        _, imask = model.user_interests(history, mask, profile)
    out = []
    for b, i in enumerate(pick):
        L = int(mask[b].sum())
        keep = imask[b].bool().numpy()
        items = history[b, :L].numpy()
        out.append({"user_id": str(users.user_id[i]),
                    "items": [str(cat.item_ids[j]) for j in items],
                    "categories": [cat.category_names.get(int(cat.item_category[j]), str(int(cat.item_category[j])))
                                   for j in items],
                    "weights": w[b][keep][:, :L].float().numpy().round(5).tolist()})
    return {"users": out}


def model_label(model: Any, extra: dict[str, Any] | None) -> str | None:
    """The display name of a trained model (``models.variant_label``) from what ``components.train`` stored
    in ``model.pt`` (arch, harder_negatives); None for a model file without that record."""
    from models import arch_of, variant_label

    rec = (extra or {}).get("model")
    if not isinstance(rec, dict):
        return None
    return variant_label({"arch": arch_of(model), "harder_negatives": bool(rec.get("harder_negatives", False))})


# -------------------------------------------------------------------------------------------------- report
def report(eval_dirs: dict[str, Path], out_path: Path) -> None:
    """Markdown table of all variants side by side (ComiRec Table 3 style), test users, with CIs.

    Args:
        eval_dirs: variant name -> its evaluate output folder (holding ``metrics.json``), in display order.
        out_path: the Markdown file, written atomically.
    """
    loaded: dict[str, dict[str, Any]] = {}
    for name, d in eval_dirs.items():
        p = Path(d) / "metrics.json"
        try:
            loaded[name] = json.loads(p.read_text())
        except FileNotFoundError:
            raise DataError("file not found", path=p) from None
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON ({exc})", path=p) from None
    if not loaded:
        raise DataError("no evaluated variants to report")
    ns = sorted({int(k.split("@")[1]) for m in loaded.values() for k in m
                 if k.startswith("test.recall@") and "_ci" not in k})
    shown = [n for n in ns if n in (20, 50)] or ns
    cols = [(metric, n) for n in shown for metric in ("recall", "ndcg", "hitrate")]
    cols += [("precision", n) for n in shown] + [("diversity", n) for n in shown]
    first = next(iter(loaded.values()))
    level = _ci_level(first)
    lines = [
        "# Offline evaluation: all variants side by side",
        "",
        f"Test users (strong generalization, ComiRec §4.1); metrics in %, mean over users with a {level} "
        "bootstrap interval in brackets. Overlapping intervals mean the difference is within noise.",
        "",
        "| model | variant | users | " + " | ".join(f"{_label(mt)}@{n}" for mt, n in cols) + " |",
        "|---|---|---:|" + "---:|" * len(cols),
    ]
    best = {c: max((m.get(f"test.{c[0]}@{c[1]}", -1.0) for m in loaded.values()), default=-1.0) for c in cols}
    for name, m in loaded.items():
        cells = []
        for mt, n in cols:
            key = f"test.{mt}@{n}"
            if key not in m:
                cells.append("–")
                continue
            v = 100 * m[key]
            cell = f"{v:.2f}"
            if m[key] == best[(mt, n)] and mt != "diversity":
                cell = f"**{cell}**"
            if f"{key}_ci_low" in m:
                cell += f" [{100 * m[key + '_ci_low']:.1f}, {100 * m[key + '_ci_high']:.1f}]"
            cells.append(cell)
        users = m.get("test.num_users", "?")
        label = m.get("label") if isinstance(m.get("label"), str) else name
        lines.append(f"| {label} | `{name}` | {users} | " + " | ".join(cells) + " |")
    lines += ["", "Best mean per accuracy column in bold. \"+HN\": trained with UMI's harder negatives (eqs. 12-13); "
              "a name without it is the paper's model. Valid-user figures and per-user values: "
              "`artifacts/eval/<variant>/metrics.json`, `per_user.parquet`.", ""]
    with atomic_path(out_path) as tmp:
        tmp.write_text("\n".join(lines))


def _label(metric: str) -> str:
    return {"recall": "Recall", "ndcg": "NDCG", "hitrate": "HR", "precision": "Prec", "diversity": "Div"}[metric]


def _ci_level(m: dict[str, Any]) -> str:
    return f"{100 * float(m.get('confidence', 0.95)):g}%"


# ---------------------------------------------------------------------------------------------------- CLI
def read_seed(params: dict) -> int:
    seed = params.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ParamsError(f"seed: expected a non-negative integer, got {seed!r}")
    return seed


def model_max_len(params: dict, variant: str, model_path: Path) -> int:
    """The history length the model was trained with: its saved ``max_len`` hyper-parameter (the trainer
    fills it from ``train.max_len`` or a per-model override), else ``train.max_len``."""
    import torch

    try:
        payload = torch.load(model_path, map_location="cpu", weights_only=True)
        saved = payload.get("hparams", {}).get("max_len") if isinstance(payload, dict) else None
    except FileNotFoundError:
        raise DataError("model file not found", path=model_path) from None
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"not a readable model file ({exc})", path=model_path) from None
    if isinstance(saved, int) and saved > 0:
        return saved
    train = params.get("train") or {}
    value = train.get("max_len") if isinstance(train, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParamsError(f"train.max_len: expected a positive integer, got {value!r}")
    return value


def discover(eval_dir: Path, order: Sequence[str] = ()) -> dict[str, Path]:
    """Evaluated variants under ``eval_dir`` (sub-folders with metrics.json): ``order`` first, then by name."""
    found = {p.parent.name: p.parent for p in sorted(Path(eval_dir).glob("*/metrics.json"))}
    ordered = {v: found[v] for v in order if v in found}
    ordered.update({k: v for k, v in found.items() if k not in ordered})
    return ordered


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        parser = argparse.ArgumentParser(prog="python -m components.evaluate report",
                                         description="Markdown table of all evaluated variants side by side.")
        parser.add_argument("--eval-dir", type=Path, default=Path("artifacts/eval"))
        parser.add_argument("--out", type=Path, default=Path("artifacts/report.md"))
        parser.add_argument("--params", type=Path, default=None, help="optional: order rows as train.models")
        args = parser.parse_args(argv[1:])

        def body_report() -> None:
            order: list[str] = []
            if args.params is not None:
                order = list((load_params(args.params).get("train") or {}).get("models") or [])
            dirs = discover(args.eval_dir, order)
            if not dirs:
                raise DataError("no */metrics.json found", path=args.eval_dir)
            report(dirs, args.out)
            print(f"report: {len(dirs)} variant(s) -> {args.out}")

        cli_main(body_report)
        return

    parser = argparse.ArgumentParser(prog="python -m components.evaluate",
                                     description="Offline metrics of one trained model (subcommand `report` "
                                                 "writes the side-by-side table).")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model", required=True, help="model variant (a key of params `models`)")
    parser.add_argument("--split", type=Path, default=Path("data/split"))
    parser.add_argument("--models-dir", type=Path, default=Path("artifacts/models"))
    parser.add_argument("--out", type=Path, default=None, help="default: artifacts/eval/<model>")
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_params(args.params)
        cfg = section(params, "evaluate", EvaluateConfig)
        model_dir = args.models_dir / args.model
        max_len = model_max_len(params, args.model, model_dir / "model.pt")
        out = args.out or Path("artifacts/eval") / args.model
        m = run(cfg, args.split, model_dir, out, max_len=max_len, seed=read_seed(params))
        n = 50 if 50 in cfg.topn else cfg.max_n
        print(f"evaluate {args.model}: test recall@{n} = {m[f'test.recall@{n}']:.4f} "
              f"[{m.get(f'test.recall@{n}_ci_low', float('nan')):.4f}, "
              f"{m.get(f'test.recall@{n}_ci_high', float('nan')):.4f}], ndcg@{n} = {m[f'test.ndcg@{n}']:.4f} "
              f"({m['test.num_users']} test users) -> {out}")

    cli_main(body)


if __name__ == "__main__":
    main()
