"""The training objective shared by every neural model: interest selection, negative samplers, sampled softmax.

Papers: MIND §3.4–3.5 (label-aware attention, eqs. 10–11), ComiRec §3.2 (argmax selection eq. 8, sampled
softmax eqs. 9–10), UMI §3.5 (argmax eq. 10, harder negatives eqs. 12–13).

API (what the LightningModule calls; shapes use the project legend B, K, D, S):

- ``select_interest(interests, interest_mask, target_emb, attention_pow) -> (B, D)``
  picks the user vector for each target item. ``attention_pow`` None or ``inf`` = hard argmax (ComiRec eq. 8,
  UMI eq. 10); a finite ``p`` = MIND label-aware attention.
- ``NegativeSampler(kind, counts)`` with ``.sample(S, generator) -> (S,) long`` ids in 1..N-1 (never padding)
  and ``.log_q(ids) -> float`` log-probability of drawing each id (for the log-Q correction).
- ``sampled_softmax_loss(interests, interest_mask, pos_ids, pos_emb, neg_ids, neg_emb, *, attention_pow,
  harder_negatives, pos_log_q=None, neg_log_q=None, in_batch=False, batch_log_q=None, temperature=1.0)``
  -> scalar mean over the batch of ``-log p(pos | user)`` with the S negatives shared by the whole batch.

Choices the papers leave open (also in docs/MODELS.md):

- **Label-aware attention with finite p.** MIND writes ``softmax(pow(V_u^T e_i, p))``; ``pow`` of a negative
  compatibility with a non-integer p is undefined and with an even p it ranks a strongly negative interest
  first. We compute ``softmax(p * V_u^T e_i)`` instead: it keeps the two limits the paper states (p = 0: every
  unmasked interest gets equal weight, i.e. the mean; p -> inf: hard attention on the argmax) and is defined
  for any sign. Masked interests get weight exactly 0 (their logit is set to -inf *after* the scaling, so
  p = 0 stays well defined). Gradients flow through both the weights and the interests.
- **Hard selection** (p = None/inf): ``argmax`` over unmasked interests; ties go to the lowest index
  (``torch.argmax``). The index carries no gradient; the selected interest does.
- **Harder negatives** (UMI eqs. 12–13): every candidate (the positive and each negative) is scored with the
  interest it selects itself, using the same rule as the positive (argmax, or label-aware attention at the
  same p). With K = 1 this is the plain loss.
- **Accidental hits**: a shared negative whose id equals the row's positive gets logit -inf (removed from
  the denominator); the positive itself is always the first column, so with every item 1..N-1 as negatives
  the loss equals the full softmax cross-entropy over the real items.
- **log-Q correction** (Bengio & Senécal; TF ``sampled_softmax_loss``): ``logit - log Q(id)`` for the positive
  (``pos_log_q``) and the sampled negatives (``neg_log_q``). ``log Q`` is the per-draw probability; the
  constant ``log S`` of the expected count cancels in the softmax.
- **In-batch negatives**: the other rows' positives join the denominator (scored by this row's user; with
  harder negatives, by the interest each selects). Columns whose id equals this row's positive (itself or a
  duplicate) are removed. ``batch_log_q`` (B,) corrects them for their own sampling distribution (the data
  distribution, e.g. ``log(train_count / total)``); leave None for no correction.
- ``temperature`` divides every logit (1.0 = the papers).
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")
SamplerKind = Literal["uniform", "popularity", "log_uniform"]


def _is_hard(attention_pow: float | None) -> bool:
    return attention_pow is None or math.isinf(attention_pow)


def _best_interest(compat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, K, N) compatibilities, (B, K, 1) mask -> (B, 1, N) index of the best unmasked interest (ties: the
    lowest index). ``max(dim).indices`` is ``argmax`` (both return the first maximum) and on CPU about 10x
    cheaper than ``argmax`` over a middle dimension."""
    return compat.masked_fill(~mask, NEG_INF).max(dim=1, keepdim=True).indices


def interest_weights(compat: torch.Tensor, interest_mask: torch.Tensor, attention_pow: float | None) -> torch.Tensor:
    """Weights over interests for each (user, candidate) pair.

    Args:
        compat: (B, K, N) compatibilities ``V_u^T e`` of each interest with each candidate.
        interest_mask: (B, K) bool, False = interest must get weight 0.
        attention_pow: None/inf for hard argmax (one-hot), else the label-aware attention power p >= 0.
    Returns:
        (B, K, N) weights summing to 1 over K.
    """
    mask = interest_mask.unsqueeze(-1)  # (B, K, 1)
    if _is_hard(attention_pow):
        best = _best_interest(compat, mask)  # ComiRec eq. (8) / UMI eq. (10): (B, 1, N)
        return torch.zeros_like(compat).scatter_(1, best, 1.0)
    # MIND §3.4 label-aware attention, softmax(p * compat) (see module docstring); masked after scaling
    logits = (attention_pow * compat).masked_fill(~mask, NEG_INF)
    return torch.softmax(logits, dim=1)


def select_interest(interests: torch.Tensor, interest_mask: torch.Tensor, target_emb: torch.Tensor,
                    attention_pow: float | None) -> torch.Tensor:
    """The user vector each target item sees: MIND label-aware attention (finite p) or argmax (p None/inf).

    Args:
        interests: (B, K, D).
        interest_mask: (B, K) bool; masked interests are never selected and get no attention.
        target_emb: (B, D) one target item per row.
        attention_pow: None or ``float('inf')`` = hard argmax (ComiRec eq. 8, UMI eq. 10); finite p >= 0 =
            ``softmax(p * V_u^T e_i)`` (MIND §3.4).
    Returns:
        (B, D) user vectors.
    """
    compat = torch.einsum("bkd,bd->bk", interests, target_emb).unsqueeze(-1)  # (B, K, 1)
    if _is_hard(attention_pow):
        # the one-hot weighted sum of the interests is the selected interest itself: gather it (same values
        # and gradients, without the (B, K) one-hot and a batched matmul)
        best = _best_interest(compat, interest_mask.unsqueeze(-1))  # (B, 1, 1)
        return interests.gather(1, best.expand(-1, -1, interests.shape[-1])).squeeze(1)  # ComiRec eq. (8), (B, D)
    w = interest_weights(compat, interest_mask, attention_pow)  # (B, K, 1)
    return torch.einsum("bk,bkd->bd", w.squeeze(-1), interests)  # MIND: V_u softmax(...), (B, D)


def _scores(interests, interest_mask, user_vec, cand_emb, attention_pow, harder_negatives):
    """(B, N) logits of N candidates shared by the batch."""
    if not harder_negatives:
        return user_vec @ cand_emb.T  # (B, D) @ (D, N) -> (B, N)
    compat = torch.einsum("bkd,nd->bkn", interests, cand_emb)  # (B, K, N)
    if _is_hard(attention_pow):
        # the one-hot weighted sum over K is the compatibility of the selected interest: gather it (same
        # values and gradients as (one_hot * compat).sum(1), at a fraction of the cost)
        best = _best_interest(compat, interest_mask.unsqueeze(-1))  # (B, 1, N)
        return compat.gather(1, best).squeeze(1)  # UMI eq. (12) with argmax (eq. 10), (B, N)
    w = interest_weights(compat, interest_mask, attention_pow)
    return (w * compat).sum(dim=1)  # UMI eq. (12): each candidate scored by the interest it selects, (B, N)


def sampled_softmax_loss(interests: torch.Tensor, interest_mask: torch.Tensor, pos_ids: torch.Tensor,
                         pos_emb: torch.Tensor, neg_ids: torch.Tensor, neg_emb: torch.Tensor, *,
                         attention_pow: float | None, harder_negatives: bool,
                         pos_log_q: torch.Tensor | None = None, neg_log_q: torch.Tensor | None = None,
                         in_batch: bool = False, batch_log_q: torch.Tensor | None = None,
                         temperature: float = 1.0) -> torch.Tensor:
    """Sampled softmax cross-entropy of the positive against shared negatives (MIND eqs. 10–11, ComiRec
    eqs. 9–10, UMI eqs. 11/13 with ``harder_negatives``).

    Args:
        interests: (B, K, D); interest_mask: (B, K) bool.
        pos_ids: (B,) positive item ids; pos_emb: (B, D) their embeddings.
        neg_ids: (S,) shared negative ids (may be empty); neg_emb: (S, D).
        attention_pow: interest selection rule, see :func:`select_interest`.
        harder_negatives: score each negative with its own selected interest (UMI eqs. 12–13).
        pos_log_q: (B,) log-probability of the positives under the negative sampler, or None.
        neg_log_q: (S,) log-probability of the negatives under the sampler, or None.
        in_batch: also use the other rows' positives as negatives.
        batch_log_q: (B,) log-probability of the positives under the in-batch (data) distribution, or None.
        temperature: divides all logits.
    Returns:
        scalar: mean over the batch of ``-log p(pos | u)``.
    """
    user_vec = select_interest(interests, interest_mask, pos_emb, attention_pow)  # (B, D)
    pos_logit = (user_vec * pos_emb).sum(-1, keepdim=True)  # (B, 1)
    if pos_log_q is not None:
        pos_logit = pos_logit - pos_log_q.unsqueeze(-1)
    columns = [pos_logit]

    neg_logit = _scores(interests, interest_mask, user_vec, neg_emb, attention_pow, harder_negatives)  # (B, S)
    if neg_log_q is not None:
        neg_logit = neg_logit - neg_log_q.unsqueeze(0)
    hit = neg_ids.unsqueeze(0) == pos_ids.unsqueeze(1)  # (B, S) accidental hits
    columns.append(neg_logit.masked_fill(hit, NEG_INF))

    if in_batch:
        batch_logit = _scores(interests, interest_mask, user_vec, pos_emb, attention_pow, harder_negatives)  # (B, B)
        if batch_log_q is not None:
            batch_logit = batch_logit - batch_log_q.unsqueeze(0)
        same = pos_ids.unsqueeze(0) == pos_ids.unsqueeze(1)  # (B, B): the diagonal and duplicate positives
        columns.append(batch_logit.masked_fill(same, NEG_INF))

    logits = torch.cat(columns, dim=1) / temperature  # (B, 1 + S [+ B]); column 0 = positive
    return -F.log_softmax(logits, dim=1)[:, 0].mean()


class NegativeSampler:
    """Draws negatives shared by the batch from items 1..N-1 (never padding 0), with replacement.

    Kinds:
        ``uniform``: every real item equally likely.
        ``popularity``: ``P(i) ∝ counts[i] + 1`` (add-one smoothing so every real item, and every
            positive, has a finite log Q).
        ``log_uniform``: the Zipfian sampler of TF's ``log_uniform_candidate_sampler`` over items ranked by
            ``counts`` (descending, ties by id): ``P(rank r) = log((r + 2) / (r + 1)) / log(N_real + 1)``.
            Without ``counts`` the rank is the item index.

    Args:
        kind: one of the above.
        counts: (num_items,) training counts indexed by item id (index 0 ignored); ``num_items`` for uniform
            may be given as an int instead.
    """

    def __init__(self, kind: SamplerKind, counts: Sequence[int] | torch.Tensor | int):
        if kind not in ("uniform", "popularity", "log_uniform"):
            raise ValueError(f"sampler: unknown kind {kind!r} (uniform | popularity | log_uniform)")
        if isinstance(counts, int):
            if kind == "popularity":
                raise ValueError("sampler: 'popularity' needs per-item counts, not just num_items")
            num_items, c = counts, None
        else:
            c = torch.as_tensor(counts, dtype=torch.float64)
            if c.ndim != 1:
                raise ValueError(f"sampler: counts must be 1-D (num_items,), got shape {tuple(c.shape)}")
            if (c < 0).any():
                raise ValueError("sampler: counts must be >= 0")
            num_items = c.numel()
        if num_items < 2:
            raise ValueError(f"sampler: need at least one real item besides padding, got num_items={num_items}")
        self.kind = kind
        self.num_items = num_items
        n = num_items - 1
        if kind == "uniform":
            probs = torch.full((n,), 1.0 / n, dtype=torch.float64)
        elif kind == "popularity":
            w = c[1:] + 1.0
            probs = w / w.sum()
        else:
            r = torch.arange(n, dtype=torch.float64)
            by_rank = torch.log((r + 2) / (r + 1)) / math.log(n + 1)  # sums to 1 exactly (telescoping)
            if c is None:
                probs = by_rank
            else:
                order = torch.sort(-c[1:], stable=True).indices  # item positions by descending count
                probs = torch.empty(n, dtype=torch.float64)
                probs[order] = by_rank
        self.probs = probs  # (N_real,) float64, probs[i - 1] = P(item i)
        # cumulative table, built once: a draw is one binary search (O(log N)), see sample()
        self._cdf = torch.cumsum(probs, 0) if kind != "uniform" else None
        self._log_probs = torch.cat([torch.tensor([NEG_INF], dtype=torch.float64), probs.log()]).float()

    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(num,) long item ids in 1..N-1, drawn independently with replacement (CPU tensor)."""
        if self.kind == "uniform":
            return torch.randint(1, self.num_items, (num,), generator=generator)
        # inverse-CDF sampling by hand instead of torch.multinomial(probs, num, replacement=True), which
        # rebuilds the cumulative table of all N items on every call (measured ~100 ms per step at 2M items,
        # issue 12: no per-step work over the catalogue): u ~ U[0, 1), item i where cdf[i-1] <= u < cdf[i]
        # (zero-probability items have an empty interval and are never drawn)
        u = torch.rand(num, generator=generator, dtype=torch.float64) * self._cdf[-1]
        return torch.searchsorted(self._cdf, u, right=True).clamp_(max=self.num_items - 2) + 1

    def log_q(self, ids: torch.Tensor) -> torch.Tensor:
        """log P(draw = id) for each id (same shape, float32, on ``ids.device``); padding 0 gives -inf."""
        table = self._log_probs.to(ids.device)
        return table[ids]
