"""Multi-interest retrieval: the one set of functions that evaluation, validation, serving and the
benchmarks all call, so that an offline metric and a served answer cannot drift apart.

- :func:`pad_histories` turns item-index sequences into the padded model input (most recent ``max_len``
  items, left-aligned, fixed width ``max_len`` so a user's tensors do not depend on the batch they are in).
- :func:`topn` — exact retrieval. Each interest scores every item by inner product; an item's score for the
  user is its best score over the user's unmasked interests (ComiRec eq. 11). Taking the global top-N of that
  max equals retrieving top-N per interest and merging (§3.3, §4.2): an item in the merged top-N is in the
  top-N of the interest that scores it best.
- :func:`controllable_topn` — ComiRec's controllable aggregation (§3.3, Algorithm 2): greedy maximisation of
  the value function eq. 12 with the category-inequality dissimilarity eq. 13 over the K·N candidates that
  the K interests retrieve. λ = 0 reduces to :func:`topn` exactly (tested).
- :func:`faiss_topn` — the same merge through a faiss index (exact for ``Flat``, approximate for ANN).

Choices the papers leave open:
- History exclusion is applied *before* the top-N cut (for the controllable aggregation: before each
  interest's top-N), so a user always gets N fresh candidates (MovieLens has no repeat consumption).
  Padding item 0 is never returned.
- Ties are broken by the lower item index, everywhere (exact top-N, per-interest candidates, greedy
  argmax), so results are deterministic and identical between evaluation and serving.
- Algorithm 2 adds λ·Σ_{k∈S} g(i, k) per step, i.e. half the marginal gain of eq. 12 (whose double sum
  counts each pair twice); we follow Algorithm 2 as printed — it only rescales λ.
- When fewer than N items are available (huge exclusions), trailing entries carry score -inf; callers that
  serve users drop them.
"""
from __future__ import annotations

from typing import Sequence

import torch

NEG_INF = float("-inf")
# Bound on the (rows x items) score block materialised at once: 2^25 floats = 128 MiB.
_BLOCK_FLOATS = 1 << 25


def pad_histories(histories: Sequence[Sequence[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded model input from item-index sequences (oldest first).

    Keeps the most recent ``max_len`` items (docs/CONTRACTS.md), left-aligned, zeros after, width exactly
    ``max_len`` whatever the batch.

    Returns:
        history (B, max_len) int64, mask (B, max_len) bool.
    """
    history = torch.zeros(len(histories), max_len, dtype=torch.long)
    for b, seq in enumerate(histories):
        recent = list(seq)[-max_len:] if max_len > 0 else []
        if recent:
            history[b, : len(recent)] = torch.as_tensor(recent, dtype=torch.long)
    return history, history != 0


def pad_exclusions(histories: Sequence[Sequence[int]]) -> torch.Tensor:
    """(B, max history length) int64 of the *whole* histories, 0-padded, for :func:`exclude_items`."""
    width = max((len(h) for h in histories), default=0)
    out = torch.zeros(len(histories), max(width, 1), dtype=torch.long)
    for b, seq in enumerate(histories):
        if len(seq):
            out[b, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
    return out


#: query blocks smaller than this are zero-padded before the product with the item table (see merged_scores)
MIN_GEMM_ROWS = 4


def merged_scores(interests: torch.Tensor, interest_mask: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
    """Best score over unmasked interests for every item (ComiRec eq. 11).

    Args:
        interests: (B, K, D) user interests.
        interest_mask: (B, K) bool, False for interests to ignore (MIND's dynamic K).
        item_emb: (N, D) embeddings of all items; row 0 is padding.
    Returns:
        (B, N) scores; padding item 0 gets -inf.
    """
    b, k, d = interests.shape
    q = interests.reshape(b * k, d)
    if b * k < MIN_GEMM_ROWS:
        # fewer than 4 query rows send MKL to its matrix-vector kernel, which rounds differently from the
        # matrix-matrix one: zero-pad so every batch size gives bit-identical scores (serving scores one user)
        q = torch.cat([q, q.new_zeros(MIN_GEMM_ROWS - b * k, d)])
    scores = torch.matmul(q, item_emb.T)[: b * k].reshape(b, k, -1)  # (B, K, N); memory-bound on item_emb
    if not bool(interest_mask.all()):  # skip a full (B, K, N) pass in the common all-active case
        scores = scores.masked_fill(~interest_mask.unsqueeze(-1), NEG_INF)
    best = scores.amax(dim=1)  # (B, N): eq. (11) f(u, i) = max_k e_i^T v_u^(k)
    best[:, 0] = NEG_INF
    return best


def exclude_items(scores: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """Set scores of ``exclude`` (B, L) item indices to -inf in place (index 0 = padding, harmless)."""
    scores.scatter_(1, exclude, NEG_INF)
    scores[:, 0] = NEG_INF
    return scores


def stable_topk(scores: torch.Tensor, n: int, slack: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``n`` of each row sorted by (score descending, column index ascending).

    Same answer as a full stable sort, at the cost of one ``torch.topk``: fetch the top ``n + slack``; the
    n-th value is the threshold; if every row's last fetched value is below its threshold, every column that
    reaches the threshold (ties at the boundary included) was fetched, and ordering that short list stably
    is exact. Otherwise (more than ``slack`` ties at the boundary) fall back to fetching every column that
    reaches the threshold.

    Args:
        scores: (R, N) float.
    Returns:
        values (R, n), columns (R, n) int64.
    """
    rows, cols = scores.shape
    n = min(n, cols)
    if n == 0:
        return scores[:, :0], torch.zeros(rows, 0, dtype=torch.long)
    k = min(n + slack, cols)
    vals, idx = torch.topk(scores, k, dim=1, sorted=True)  # (R, k), descending, arbitrary order on ties
    if k < cols and not bool((vals[:, -1] < vals[:, n - 1]).all()):
        thr = vals[:, n - 1: n]  # (R, 1)
        need = int((scores >= thr).sum(dim=1).max())  # widest tie-inclusive candidate list
        if need >= cols:
            vals, idx = torch.sort(scores, dim=1, descending=True, stable=True)
            return vals[:, :n], idx[:, :n]
        vals, idx = torch.topk(scores, need, dim=1, sorted=False)  # every column >= thr is among these
    order = torch.argsort(idx, dim=1)  # by column index first ...
    vals, idx = vals.gather(1, order), idx.gather(1, order)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices  # ... then stably by score
    return vals.gather(1, order)[:, :n], idx.gather(1, order)[:, :n]


def _chunk(batch_rows: int, per_row_floats: int) -> int:
    return max(1, min(batch_rows, _BLOCK_FLOATS // max(per_row_floats, 1)))


@torch.no_grad()
def topn(interests: torch.Tensor, interest_mask: torch.Tensor, item_emb: torch.Tensor, n: int,
         exclude: torch.Tensor | None = None, chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``n`` items per user by merged multi-interest score (ComiRec eq. 11, λ = 0).

    Args:
        interests, interest_mask, item_emb: as in :func:`merged_scores`.
        n: list length (capped at the number of real items).
        exclude: optional (B, L) item indices per user to leave out (e.g. the history), 0-padded.
        chunk_size: users scored at once; default bounds the (chunk, K, N) block to ~128 MiB.
    Returns:
        (scores (B, n), items (B, n)) sorted by descending score; ties broken by lower item index.
    """
    num_items = item_emb.shape[0]
    n = min(n, num_items - 1)
    step = chunk_size or _chunk(interests.shape[0], interests.shape[1] * num_items)
    out_s, out_i = [], []
    for start in range(0, interests.shape[0], step):
        sl = slice(start, start + step)
        s = merged_scores(interests[sl], interest_mask[sl], item_emb)  # (b, N)
        if exclude is not None:
            exclude_items(s, exclude[sl])
        vals, idx = stable_topk(s, n)
        out_s.append(vals)
        out_i.append(idx)
    if not out_s:
        return torch.zeros(0, n), torch.zeros(0, n, dtype=torch.long)
    return torch.cat(out_s), torch.cat(out_i)


@torch.no_grad()
def controllable_topn(interests: torch.Tensor, interest_mask: torch.Tensor, item_emb: torch.Tensor, n: int,
                      item_category: torch.Tensor, diversity_lambda: float,
                      exclude: torch.Tensor | None = None,
                      chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ComiRec's controllable aggregation (§3.3, Algorithm 2).

    Each unmasked interest retrieves its own top-``n`` (exclusions applied first); the union ``M`` (at most
    K·n items, duplicates removed) is the candidate set. Greedily, ``n`` times (Algorithm 2, line 3):
    ``j = argmax_{i ∈ M \\ S} f(u, i) + λ Σ_{k ∈ S} g(i, k)`` with f from eq. 11 and
    g(i, k) = δ(CATE(i) ≠ CATE(k)) (eq. 13), so Σ_{k∈S} g(i, k) = |S| − #{k ∈ S : CATE(k) = CATE(i)}.

    Args:
        interests, interest_mask, item_emb, n, exclude: as in :func:`topn`.
        item_category: (N,) int64 category index per item (0 = padding/unknown).
        diversity_lambda: λ ≥ 0 of eq. 12; 0 gives exactly :func:`topn`.
    Returns:
        (f scores (B, n), items (B, n)) in selection order; the score is the accuracy term f(u, i).
    """
    if diversity_lambda < 0:
        raise ValueError(f"diversity_lambda must be >= 0, got {diversity_lambda}")
    if diversity_lambda == 0:
        return topn(interests, interest_mask, item_emb, n, exclude, chunk_size)
    B, K, _ = interests.shape
    num_items = item_emb.shape[0]
    n = min(n, num_items - 1)
    num_categories = int(item_category.max()) + 1 if item_category.numel() else 1
    step = chunk_size or _chunk(B, K * num_items)
    out_s, out_i = [], []
    for start in range(0, B, step):
        sl = slice(start, start + step)
        v, m = interests[sl], interest_mask[sl]
        b = v.shape[0]
        per = torch.matmul(v, item_emb.T)  # (b, K, N)
        per[:, :, 0] = NEG_INF
        if exclude is not None:
            per.scatter_(2, exclude[sl].unsqueeze(1).expand(b, K, -1), NEG_INF)
        f = per.masked_fill(~m.unsqueeze(-1), NEG_INF).amax(dim=1)  # (b, N) eq. (11)
        _, cand = stable_topk(per.reshape(b * K, num_items), n)  # (b*K, n) per-interest top-n
        cand = cand.reshape(b, K * n)
        # candidates of masked interests are not retrieved at all
        valid = m.repeat_interleave(n, dim=1)  # (b, K*n)
        cand = cand.masked_fill(~valid, 0)
        # remove duplicates: sort by item index, keep the first of each run
        cand = torch.sort(cand, dim=1).values
        dup = torch.zeros_like(cand, dtype=torch.bool)
        dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
        fc = f.gather(1, cand)  # (b, M) accuracy term of each candidate
        unavailable = dup | (cand == 0)
        # order candidates by (-f, index) so argmax's first-maximum rule breaks ties by lower index
        fc_key = fc.masked_fill(unavailable, NEG_INF)
        order = torch.sort(fc_key, dim=1, descending=True, stable=True).indices
        cand, fc, unavailable = cand.gather(1, order), fc.gather(1, order), unavailable.gather(1, order)
        sel_s, sel_i = _greedy(cand.numpy(), fc.numpy(), unavailable.numpy(), item_category[cand].numpy(),
                               n, diversity_lambda, num_categories)
        sel_s, sel_i = torch.from_numpy(sel_s), torch.from_numpy(sel_i)
        out_s.append(sel_s)
        out_i.append(sel_i)
    if not out_s:
        return torch.zeros(0, n), torch.zeros(0, n, dtype=torch.long)
    return torch.cat(out_s), torch.cat(out_i)


def _greedy(cand, fc, unavailable, cat, n: int, lam: float, num_categories: int):
    """Algorithm 2, lines 2-4, over (b, M) candidates already ordered by (f desc, index asc).

    numpy, not torch: n steps of a dozen tiny ops each cost ~1 µs per op here against ~10 µs in torch.
    Returns (scores (b, n) float32, items (b, n) int64).
    """
    import numpy as np

    b = cand.shape[0]
    rows = np.arange(b)
    finite = np.isfinite(fc)
    # -inf scores (exhausted lists) must never outrank real ones through the diversity bonus
    base = np.where(finite, fc, np.float32(-1e30)).astype(np.float32)
    lam_t = np.where(finite, np.float32(lam), np.float32(0.0)).astype(np.float32)
    counts = np.zeros((b, num_categories), dtype=np.float32)  # selected items per category
    taken = unavailable.copy()
    sel_s = np.full((b, n), -np.inf, dtype=np.float32)
    sel_i = np.zeros((b, n), dtype=np.int64)
    for t in range(n):
        gain = np.float32(t) - counts[rows[:, None], cat]  # Σ_{k∈S} g(i, k), eq. (13)
        value = base + lam_t * gain  # line 3 objective
        value[taken] = -np.inf
        j = value.argmax(axis=1)  # first maximum = higher f, then lower index, on ties
        ok = ~taken[rows, j]
        sel_i[:, t] = np.where(ok, cand[rows, j], 0)
        sel_s[:, t] = np.where(ok, fc[rows, j], -np.inf)
        taken[rows, j] = True
        np.add.at(counts, (rows[ok], cat[rows, j][ok]), 1.0)
    return sel_s, sel_i


def retrieve(interests: torch.Tensor, interest_mask: torch.Tensor, item_emb: torch.Tensor, n: int, *,
             exclude: torch.Tensor | None = None, diversity_lambda: float = 0.0,
             item_category: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The single entry point evaluation and serving use: exact top-n, controllable when λ > 0."""
    if diversity_lambda > 0:
        if item_category is None:
            raise ValueError("diversity_lambda > 0 needs item categories")
        return controllable_topn(interests, interest_mask, item_emb, n, item_category, diversity_lambda,
                                 exclude)
    return topn(interests, interest_mask, item_emb, n, exclude)


def faiss_topn(index, row_items, interests, interest_mask, n: int, exclude=None):
    """Merged multi-interest top-``n`` through a faiss inner-product index.

    Every unmasked interest searches ``n + |exclusions|`` neighbours (enough that ``n`` survive the
    exclusion); candidates are merged by their best score over interests (eq. 11), duplicates removed,
    exclusions dropped, and ordered by (score desc, item index asc). For a ``Flat`` index this is exact
    up to float rounding; for ANN indexes it is the served approximation.

    Args:
        index: faiss index over the item rows.
        row_items: (R,) int64 numpy array mapping index row -> item index.
        interests: (B, K, D) float32 numpy/tensor; interest_mask: (B, K) bool.
        n: list length; exclude: (B, L) int64 item indices, 0-padded, or None.
    Returns:
        scores (B, n) float32, items (B, n) int64 numpy arrays (-inf / 0 when fewer than n were found).
    """
    import numpy as np

    v = np.ascontiguousarray(np.asarray(interests, dtype=np.float32))
    m = np.asarray(interest_mask, dtype=bool)
    B, K, D = v.shape
    ex = np.zeros((B, 1), dtype=np.int64) if exclude is None else np.asarray(exclude, dtype=np.int64)
    k = min(n + int((ex != 0).sum(axis=1).max(initial=0)), index.ntotal)
    sims, rows = index.search(v.reshape(B * K, D), k)  # (B*K, k)
    sims, rows = sims.reshape(B, K * k), rows.reshape(B, K * k)
    items = np.where(rows >= 0, row_items[np.clip(rows, 0, None)], 0)
    sims = np.where(np.repeat(m, k, axis=1) & (rows >= 0), sims, -np.inf)
    out_s = np.full((B, n), -np.inf, dtype=np.float32)
    out_i = np.zeros((B, n), dtype=np.int64)
    for b in range(B):
        it, sc = items[b], sims[b]
        keep = (it != 0) & np.isfinite(sc) & ~np.isin(it, ex[b])
        it, sc = it[keep], sc[keep]
        order = np.lexsort((-sc, it))  # by item, best score first
        it, sc = it[order], sc[order]
        first = np.ones(len(it), dtype=bool)
        first[1:] = it[1:] != it[:-1]  # eq. (11): each item's best score over interests
        it, sc = it[first], sc[first]
        top = np.lexsort((it, -sc))[:n]  # (score desc, item asc)
        out_i[b, : len(top)], out_s[b, : len(top)] = it[top], sc[top]
    return out_s, out_i
