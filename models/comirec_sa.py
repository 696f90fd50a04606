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
import torch.nn.functional as F
from torch import nn

from models.youtube_dnn import ItemTower, check_common


class _SigmoidTanh(torch.autograd.Function):
    """``tanh(x)`` computed as ``2 sigmoid(2x) - 1`` (the same function), with tanh's own backward
    ``(1 - y^2) g`` from the saved output.

    Why not ``torch.tanh``: ATen's CPU tanh kernel is several times slower than its sigmoid (measured on the
    (B L, d_a) = (5120, 256) float32 activation of a training step, one thread: tanh 3.9 ms, sigmoid 0.6 ms);
    eq. (6)'s tanh was about a fifth of a ComiRec-SA step. The values agree with ``torch.tanh`` to a few
    float32 ulps of 1 (absolute error <= 2.5e-7: the subtraction loses relative precision only where
    |tanh x| is tiny). Used for float32 CPU tensors only; elsewhere (GPU, other dtypes) ``torch.tanh``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)  # (1 - y^2) * grad, tanh's own backward kernel


def fast_tanh(x: torch.Tensor) -> torch.Tensor:
    """``tanh(x)``: :class:`_SigmoidTanh` for float32 CPU tensors (eager), ``torch.tanh`` otherwise (GPU,
    bf16/fp16, tracing for export, torch.compile, whose generated code has its own tanh)."""
    if (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()):
        return _SigmoidTanh.apply(x)
    return torch.tanh(x)


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
        t = torch.arange(history.shape[1], device=history.device).unsqueeze(0)  # (1, L)
        recency = (mask.sum(1, keepdim=True) - 1 - t).clamp(min=0)  # (B, L): 0 = newest behaviour
        if self.items.uses_table(history) or (self.items.category is None and not torch.jit.is_tracing()
                                              and not getattr(self.items, "sparse", False)
                                              and history.numel() >= self.items.item.num_embeddings):
            # W_1 has no bias: W_1 (e_i + p_t) = W_1 e_i + W_1 p_t, each product computed once per catalogue
            # item / per position and gathered, when the batch holds at least num_items ids (a batch of
            # histories on a small catalogue): (N + max_len) d_a D multiply-adds instead of B L d_a D, and
            # the same for the two matmuls of the backward. Equal to the per-behaviour form up to rounding.
            # Not with sparse embedding gradients (the table would get a dense gradient).
            table = self.items.table()  # (N, D)
            h = F.embedding(history, table, padding_idx=0)  # H, (B, L, D)
            pre = (F.embedding(history, self.w1(table), padding_idx=0)
                   + F.embedding(recency, self.w1(self.positions.weight)))  # W_1 (H + P), (B, L, d_a)
        else:
            h = self.items(history)  # H, (B, L, D)
            pre = self.w1(h + self.positions(recency))  # W_1 (H + P), (B, L, d_a)
        scores = self.w2(fast_tanh(pre))  # eq. (6): W_2^T tanh(W_1 H), (B, L, K)
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
