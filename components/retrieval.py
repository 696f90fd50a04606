"""Exact multi-interest retrieval: the one function that evaluation, validation and serving all call.

Each interest scores every item by inner product; an item's score for the user is its best score over the
user's unmasked interests (ComiRec §4.1: candidates from all interests merged by their best score,
duplicates removed). Taking the global top-N of that max equals retrieving top-N per interest and merging:
an item in the merged top-N is in the top-N of the interest that scores it best.

Choice: history exclusion is applied *before* the top-N cut, so a user always gets N fresh candidates
(MovieLens has no repeat consumption). Padding item 0 is never returned.
"""
from __future__ import annotations

import torch

NEG_INF = float("-inf")


def merged_scores(interests: torch.Tensor, interest_mask: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
    """Best score over unmasked interests for every item.

    Args:
        interests: (B, K, D) user interests.
        interest_mask: (B, K) bool, False for interests to ignore (MIND's dynamic K).
        item_emb: (N, D) embeddings of all items; row 0 is padding.
    Returns:
        (B, N) scores; padding item 0 gets -inf.
    """
    scores = torch.einsum("bkd,nd->bkn", interests, item_emb)  # (B, K, N)
    scores = scores.masked_fill(~interest_mask.unsqueeze(-1), NEG_INF)
    best = scores.amax(dim=1)  # (B, N)
    best[:, 0] = NEG_INF
    return best


def exclude_items(scores: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """Set scores of ``exclude`` (B, L) item indices to -inf in place (index 0 = padding, harmless)."""
    scores.scatter_(1, exclude, NEG_INF)
    scores[:, 0] = NEG_INF
    return scores


@torch.no_grad()
def topn(interests: torch.Tensor, interest_mask: torch.Tensor, item_emb: torch.Tensor, n: int,
         exclude: torch.Tensor | None = None, chunk_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``n`` items per user by merged multi-interest score.

    Args:
        interests, interest_mask, item_emb: as in :func:`merged_scores`.
        n: list length (capped at the number of real items).
        exclude: optional (B, L) item indices per user to leave out (e.g. the history), 0-padded.
        chunk_size: users scored at once, bounding memory at chunk_size * K * N floats.
    Returns:
        (scores (B, n), items (B, n)) sorted by descending score; ties broken by lower item index.
    """
    num_items = item_emb.shape[0]
    n = min(n, num_items - 1)
    out_s, out_i = [], []
    for start in range(0, interests.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        s = merged_scores(interests[sl], interest_mask[sl], item_emb)
        if exclude is not None:
            exclude_items(s, exclude[sl])
        # stable tie-break: sort by (-score, index) so evaluation and serving agree exactly
        vals, idx = torch.sort(s, dim=1, descending=True, stable=True)
        out_s.append(vals[:, :n])
        out_i.append(idx[:, :n])
    return torch.cat(out_s), torch.cat(out_i)
