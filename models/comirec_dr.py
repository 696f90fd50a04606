"""ComiRec-DR: the dynamic-routing multi-interest extractor of ComiRec (Cen et al., KDD 2020, §3.2).

File layout: ``squash`` (eq. 4), ``capsnet_routing`` (eqs. 1–4, Algorithm 1), then the model. Items are
embedded by id only (ComiRec §4.4: "our model only uses item IDs"); ``use_category`` adds the MIND §3.2
category average as an option. Training selects an interest by argmax (eq. 8, ``models/loss.py``).

Choices the paper leaves open (tested in tests/models/test_comirec.py, written up in docs/MODELS.md):

- **Per-pair maps W_ij** (eq. 1) are indexed by *recency*: behaviour i is the i-th most recent real
  behaviour (i = 0 the newest), so ``W`` has shape (max_len, K, D, D) and a given recency slot always uses the
  same maps whatever the history length. Padding gets no map (and no weight). Indexing from the oldest kept
  item (ComiRec's reference code, left-aligned) would shift every map whenever the history grows by one.
  Histories longer than ``max_len`` are an error: the readers keep the most recent ``max_len`` items.
- **Routing**: logits start at 0 and are accumulated (Algorithm 1 lines 1 and 6); the coupling softmax is over
  interests (eq. 3); padded behaviours get coupling 0. Zero init is deterministic, so eval needs no special
  case.
- **Init of W_ij** (not in the paper; ComiRec's code draws N(0, 1)): ``I + N(0, 1/D)``. The interests are
  used directly (no layer after the squash) and matched against item embeddings, so maps that start near
  the identity put the capsules in the item space from the first step, and the noise breaks the symmetry
  between the K capsules (logits start at 0). On a quick planted-interest run (3,000 users, 4 interests of
  20 categories, D = 32, 1,500 Adam steps) test Recall@50 was 0.05–0.08 with a N(0, 1/D) init and 0.27–0.28
  with this one; YouTube DNN reached 0.24 on the same data.
- **Stop-gradient** as in MIND and the ComiRec reference code: iterations before the last route detached
  prediction vectors, so the coupling coefficients are constants for back-propagation and gradients reach
  W and the embeddings through the last ``s_j = sum_i c_ij W_ij e_i`` only.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from models.youtube_dnn import ItemTower, check_common


def squash(s: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Eq. (4): ``|s|^2 / (1 + |s|^2) * s / |s|`` over the last dim (finite gradient at s = 0)."""
    sq = (s * s).sum(-1, keepdim=True)
    return s * torch.sqrt(sq + eps) / (1.0 + sq)  # eq. (4)


def recency_order(history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-aligned (B, L) history -> the same items newest first: position t = t-th most recent; padding
    stays at the end. Returns (reordered history (B, L), its mask (B, L))."""
    lengths = mask.sum(1, keepdim=True)  # (B, 1)
    t = torch.arange(history.shape[1], device=history.device).unsqueeze(0)  # (1, L)
    src = (lengths - 1 - t).clamp(min=0)  # (B, L): index of the t-th most recent item
    return history.gather(1, src) * mask, mask


class _CoupledSum(torch.autograd.Function):
    """``s[n] = sum_l c[n, l] x[l, n]`` for coupling coefficients c (N, L) that carry no gradient and
    prediction vectors x (L, N, D) laid out position-major (the layout the per-position maps produce).

    The forward is one batched matmul over strided views (no copy). The backward writes ``dL/dx[l, n] =
    c[n, l] dL/ds[n]`` straight into x's own layout: autograd's batched-matmul backward would build it as
    (N, L, D) and then copy it back to (L, N, D) (a whole-activation permute copy per step)."""

    @staticmethod
    def forward(ctx, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(c)
        return torch.bmm(c.unsqueeze(1), x.transpose(0, 1)).squeeze(1)  # (N, 1, L) @ (N, L, D) -> (N, D)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (c,) = ctx.saved_tensors
        # c.t() made contiguous first (L * N values): a product with the transposed view would inherit its
        # N-major layout, and autograd's view back to the (L, B, K * D) predictions would then copy it
        return None, c.t().contiguous().unsqueeze(-1) * grad.unsqueeze(0)  # (L, N, D), contiguous


def capsnet_routing(predictions: torch.Tensor, mask: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CapsNet dynamic routing (ComiRec Algorithm 1).

    Args:
        predictions: (B, K, L, D) prediction vectors ``e_hat_{j|i} = W_ij e_i`` (eq. 1), any memory layout;
            fastest as a permuted view of a (L, B, K, D)-contiguous tensor (what :class:`ComiRecDR` passes):
            then no copy of it is ever made.
        mask: (B, L) bool, False at padding.
        iters: r >= 1.
    Returns:
        interest capsules (B, K, D) and the final coupling coefficients c (B, K, L).
    """
    B, K, L, D = predictions.shape
    x = predictions.permute(2, 0, 1, 3).reshape(L, B * K, D)  # (L, N, D), N = B * K; a view in the fast case
    fixed = x.detach()  # stop-gradient inside the iterations (module docstring)
    fixed_t = fixed.transpose(0, 1)  # (N, L, D) strided view
    real = mask.unsqueeze(1).to(predictions.dtype)  # (B, 1, L)
    logits = torch.zeros_like(real).expand(-1, K, -1)  # line 1: b_ij = 0, (B, K, L)
    capsules, coupling = predictions, logits  # overwritten in the first iteration
    for it in range(iters):
        last = it == iters - 1
        coupling = torch.softmax(logits, dim=1) * real  # line 3, eq. (3): over interests; padding -> 0
        c = coupling.reshape(B * K, L)
        if last and x.requires_grad and torch.is_grad_enabled():
            s = _CoupledSum.apply(c, x)  # line 4, eq. (2): s_j = sum_i c_ij e_hat_{j|i}, (N, D)
        else:
            s = torch.bmm(c.unsqueeze(1), fixed_t).squeeze(1)  # eq. (2); x needs no gradient here
        capsules = squash(s.view(B, K, D))  # line 5, eq. (4)
        if not last:
            # v_j^T W_ij e_i as a broadcast product summed over D in the (L, N, D) layout: ~3x cheaper on CPU
            # than the batched matrix-vector bmm over N tiny (L, D) @ (D, 1) products (1.2 vs 0.35 ms at
            # L 20, N 1024, D 64, one thread); (L, N) -> (N, L) -> (B, K, L) are views
            b = (fixed * capsules.view(1, B * K, D)).sum(-1).t().view(B, K, L)
            logits = logits + b  # line 6: b_ij += v_j^T W_ij e_i
    return capsules, coupling


class ComiRecDR(nn.Module):
    """ComiRec-DR user tower and item embeddings.

    Args:
        num_items, num_categories, profile_cardinalities, max_len: data-derived (see ``models`` package);
            ``max_len`` sizes W_ij; the profile is not used (the paper's model has none).
        dim: embedding and interest dimension D.
        num_interests: K.
        routing_iters: r (>= 1).
        use_category: average category embeddings into item embeddings (off in the paper).
    """

    def __init__(self, *, num_items: int, num_categories: int, profile_cardinalities: Sequence[int] = (),
                 max_len: int = 50, dim: int = 64, num_interests: int = 4, routing_iters: int = 3,
                 use_category: bool = False):
        super().__init__()
        check_common(num_items, num_categories, profile_cardinalities, dim, max_len)
        if num_interests < 1:
            raise ValueError(f"num_interests must be >= 1, got {num_interests}")
        if routing_iters < 1:
            raise ValueError(f"routing_iters must be >= 1, got {routing_iters}")
        self.config = dict(num_items=num_items, num_categories=num_categories,
                           profile_cardinalities=[int(c) for c in profile_cardinalities], max_len=max_len,
                           dim=dim, num_interests=num_interests, routing_iters=routing_iters,
                           use_category=use_category)
        self.max_len = max_len
        self.routing_iters = routing_iters
        self.items = ItemTower(num_items, num_categories, dim, use_category)
        # W_ij of eq. (1): one D x D map per (recency slot i, interest j), (max_len, K, D_out, D_in).
        # Init I + N(0, 1/D): prediction vectors start in the item-embedding space the interests are matched
        # against; the noise makes the K capsules differ (module docstring).
        eye = torch.eye(dim).expand(max_len, num_interests, dim, dim)
        self.maps = nn.Parameter(eye + torch.randn(max_len, num_interests, dim, dim) * dim ** -0.5)

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

    def capsules(self, history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L), (B, L) -> interest capsules (B, K, D), coupling (B, K, L) over newest-first positions."""
        if not torch.jit.is_tracing() and history.shape[1] > self.max_len:  # shapes are constants in a trace
            raise ValueError(f"history length {history.shape[1]} > max_len {self.max_len}")
        recent, rmask = recency_order(history, mask)
        e = self.items(recent)  # (B, L, D), newest first
        maps = self.maps[: history.shape[1]]  # (L, K, D_out, D_in)
        L, K, D = maps.shape[0], maps.shape[1], maps.shape[2]
        # eq. (1): e_hat_{j|i} = W_ij e_i as one batched matmul over positions: (L, B, D) @ (L, D, K*D)
        predictions = e.transpose(0, 1) @ maps.reshape(L, K * D, D).transpose(1, 2)  # (L, B, K * D)
        # (B, K, L, D) as a view: the routing works in this position-major layout without copying it
        predictions = predictions.unflatten(-1, (K, D)).permute(1, 2, 0, 3)
        return capsnet_routing(predictions, rmask, self.routing_iters)

    def coupling_coefficients(self, history: torch.Tensor, mask: torch.Tensor,
                              profile: torch.Tensor) -> torch.Tensor:
        """Final coupling coefficients c_ij (B, K, L) mapped back to the history positions (0 at padding)."""
        c = self.capsules(history, mask)[1]  # newest-first positions
        t = torch.arange(history.shape[1], device=history.device).unsqueeze(0)  # (1, L)
        src = (mask.sum(1, keepdim=True) - 1 - t).clamp(min=0)  # history position t <- recency n-1-t
        return c.gather(2, src.unsqueeze(1).expand_as(c)) * mask.unsqueeze(1).to(c.dtype)

    def user_interests(self, history: torch.Tensor, mask: torch.Tensor,
                       profile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L), (B, L), (B, C) -> interests V_u (B, K, D), interest_mask (B, K) all True."""
        caps, _ = self.capsules(history, mask)
        return caps, torch.ones_like(mask[:, :1]).repeat(1, caps.shape[1])
