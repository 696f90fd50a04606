"""ComiRec-SA: the self-attentive multi-interest extractor of ComiRec (Cen et al., KDD 2020, §3.2, eqs. 5–7).

``A = softmax(W_2^T tanh(W_1 H))^T`` (eq. 6) over the behaviours, ``V_u = H A`` (eq. 7), with trainable
positional embeddings added to the behaviour embeddings (§3.2). Items are embedded by id only (as in the
paper); ``use_category`` adds the MIND §3.2 category average as an option. Training selects an interest by
argmax (eq. 8, ``models/loss.py``).

Choices the paper leaves open (tested in tests/models/test_comirec.py, written up in docs/MODELS.md):

- **Positions count back from the newest behaviour** (0 = most recent), so the positional embedding of a
  recency slot does not move when the history grows; ``max_len`` embeddings.
- **Positions enter the attention, not the values**: ``A`` is computed from ``H + P`` and the interests are
  ``V_u = H A`` with the plain item embeddings (ComiRec's reference code), so interests live in the item
  embedding space they are matched against.
- **Padding gets exactly zero attention**: its scores are set to the most negative finite float before the
  softmax (a user with no behaviour at all then gets uniform weights over zero vectors, i.e. zero
  interests, instead of NaN).
- ``W_1`` (d_a x D) and ``W_2`` (d_a x K) have no bias, as written in eqs. (5)–(6); ``d_a = attention_dim``
  (ComiRec's code uses 4 D).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from models.youtube_dnn import ItemTower, check_common


class ComiRecSA(nn.Module):
    """ComiRec-SA user tower and item embeddings.

    Args:
        num_items, num_categories, profile_cardinalities, max_len: data-derived (see ``models`` package);
            ``max_len`` sizes the positional embeddings; the profile is not used (the paper's model has none).
        dim: embedding and interest dimension D.
        num_interests: K.
        attention_dim: d_a, the hidden size of the attention (None = 4 * dim).
        use_category: average category embeddings into item embeddings (off in the paper).
    """

    def __init__(self, *, num_items: int, num_categories: int, profile_cardinalities: Sequence[int] = (),
                 max_len: int = 50, dim: int = 64, num_interests: int = 4, attention_dim: int | None = None,
                 use_category: bool = False):
        super().__init__()
        check_common(num_items, num_categories, profile_cardinalities, dim, max_len)
        if num_interests < 1:
            raise ValueError(f"num_interests must be >= 1, got {num_interests}")
        attention_dim = 4 * dim if attention_dim is None else attention_dim
        if attention_dim < 1:
            raise ValueError(f"attention_dim must be >= 1, got {attention_dim}")
        self.config = dict(num_items=num_items, num_categories=num_categories,
                           profile_cardinalities=[int(c) for c in profile_cardinalities], max_len=max_len,
                           dim=dim, num_interests=num_interests, attention_dim=attention_dim,
                           use_category=use_category)
        self.max_len = max_len
        self.items = ItemTower(num_items, num_categories, dim, use_category)
        self.positions = nn.Embedding(max_len, dim)  # trainable positional embeddings, 0 = newest
        nn.init.normal_(self.positions.weight, std=dim ** -0.5)
        self.w1 = nn.Linear(dim, attention_dim, bias=False)  # W_1 in eq. (6)
        self.w2 = nn.Linear(attention_dim, num_interests, bias=False)  # W_2 in eq. (6)

    @property
    def item_category(self) -> torch.Tensor:
        """(num_items,) long item -> category index buffer (saved in the state dict)."""
        return self.items.item_category

    @item_category.setter
    def item_category(self, value: torch.Tensor) -> None:
        self.items.item_category.copy_(torch.as_tensor(value, dtype=torch.long))

    def item_embeddings(self, item_ids: torch.Tensor) -> torch.Tensor:
        """(N,) ids -> (N, D)."""
        return self.items(item_ids)

    def attention(self, history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L), (B, L) -> attention A (B, L, K) (each column sums to 1 over real behaviours), H (B, L, D)."""
        if not torch.jit.is_tracing() and history.shape[1] > self.max_len:  # shapes are constants in a trace
            raise ValueError(f"history length {history.shape[1]} > max_len {self.max_len}")
        h = self.items(history)  # H, (B, L, D)
        t = torch.arange(history.shape[1], device=history.device).unsqueeze(0)  # (1, L)
        recency = (mask.sum(1, keepdim=True) - 1 - t).clamp(min=0)  # (B, L): 0 = newest behaviour
        scores = self.w2(torch.tanh(self.w1(h + self.positions(recency))))  # eq. (6): W_2^T tanh(W_1 H), (B, L, K)
        scores = scores.masked_fill(~mask.unsqueeze(-1), torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=1), h  # eq. (6): softmax over behaviours

    def coupling_coefficients(self, history: torch.Tensor, mask: torch.Tensor,
                              profile: torch.Tensor) -> torch.Tensor:
        """Attention A^T (B, K, L) aligned with the history positions (0 at padding), for heatmaps."""
        return self.attention(history, mask)[0].transpose(1, 2)

    def user_interests(self, history: torch.Tensor, mask: torch.Tensor,
                       profile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L), (B, L), (B, C) -> interests V_u (B, K, D), interest_mask (B, K) all True."""
        a, h = self.attention(history, mask)
        interests = torch.einsum("blk,bld->bkd", a, h)  # eq. (7): V_u = H A
        return interests, torch.ones_like(mask[:, :1]).repeat(1, interests.shape[1])
