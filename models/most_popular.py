"""MostPopular (ComiRec §4.1 baseline): every user gets the items with the most training interactions.

It implements the neural models' interface with D = 1 so retrieval, faiss and serving need no special
case: one interest equal to 1.0 for every user and, as each item's "embedding", its training count
(``train_count`` of data/split/items.parquet). The inner product is then the count; ties are broken by the
retrieval code (lower item index first). There are no parameters and nothing to train: call
``fit_counts(train_count)`` (or pass ``counts`` to the constructor).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class MostPopular(nn.Module):
    """Popularity ranking behind the multi-interest interface.

    Args:
        num_items: item vocabulary incl. padding 0.
        num_categories, profile_cardinalities, max_len: accepted (and ignored) so that every model takes the
            same data-derived arguments.
        counts: optional (num_items,) training counts indexed by item id; may be set later by ``fit_counts``.
    """

    def __init__(self, *, num_items: int, num_categories: int = 1, profile_cardinalities: Sequence[int] = (),
                 max_len: int = 50, counts: Sequence[int] | None = None):
        super().__init__()
        if num_items < 2:
            raise ValueError(f"num_items must be >= 2 (padding + one item), got {num_items}")
        self.config = dict(num_items=num_items, num_categories=num_categories,
                           profile_cardinalities=[int(c) for c in profile_cardinalities], max_len=max_len)
        self.register_buffer("popularity", torch.zeros(num_items, 1))  # (num_items, D = 1)
        self.register_buffer("item_category", torch.zeros(num_items, dtype=torch.long))  # unused, uniform API
        if counts is not None:
            self.fit_counts(counts)

    def fit_counts(self, counts: Sequence[int] | torch.Tensor) -> None:
        """Set item popularity from (num_items,) non-negative training counts; padding 0 gets 0."""
        c = torch.as_tensor(counts, dtype=torch.float32).flatten()
        if c.numel() != self.popularity.shape[0]:
            raise ValueError(f"counts: expected {self.popularity.shape[0]} values (one per item id incl. "
                             f"padding), got {c.numel()}")
        if (c < 0).any():
            raise ValueError("counts: must be >= 0")
        c = c.clone()
        c[0] = 0.0
        self.popularity.copy_(c.unsqueeze(-1))

    def item_embeddings(self, item_ids: torch.Tensor) -> torch.Tensor:
        """(N,) -> (N, 1) training counts."""
        return self.popularity[item_ids]

    def user_interests(self, history: torch.Tensor, mask: torch.Tensor,
                       profile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Any input -> interests (B, 1, 1) all 1.0, interest_mask (B, 1) all True."""
        ones = torch.ones_like(history[:, :1], dtype=self.popularity.dtype)  # (B, 1)
        return ones.unsqueeze(-1), torch.ones_like(mask[:, :1])
