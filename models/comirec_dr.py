"""ComiRec-DR: the dynamic-routing multi-interest extractor of ComiRec (Cen et al., KDD 2020, §3.2).

File layout: ``squash`` (eq. 4) and its backward, ``_route``/``capsnet_routing`` (eqs. 2–4, Algorithm 1), the
training path ``_DynamicRouting`` (eq. 1 + Algorithm 1 with a hand-written backward), then the model. Items are
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

Speed (issue 12 part 2; none of it changes the maths, tests/models/test_dr_fast_paths.py checks values and
gradients against references written independently): training runs eq. (1) and Algorithm 1 inside
:class:`_DynamicRouting`, without an autograd graph for the iterations, and back-propagates by hand through
the last weighted sum. Its backward skips the (user, interest) pairs whose capsule gets no gradient: with
argmax selection (eq. 8) that is K - 1 of every user's K interests, so the two backward matmuls over the
per-pair maps (84 M multiply-adds each per step at batch 256, L 20, K 4, D 64) shrink K-fold. Eval, serving,
export and ``torch.compile`` run the same routing (:func:`_route`) as plain ops.
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


def squash_backward(s: torch.Tensor, grad: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """The vector-Jacobian product of :func:`squash` at ``s`` with ``grad`` (what autograd would compute),
    written out so the routing's backward needs no autograd graph: with q = |s|^2 and r = sqrt(q + eps),
    v = s r / (1 + q) and dv/ds^T g = g r / (1 + q) + s (s . g) (1 - q - 2 eps) / (r (1 + q)^2)."""
    sq = (s * s).sum(-1, keepdim=True)
    r = torch.sqrt(sq + eps)
    inv = 1.0 / (1.0 + sq)
    sg = (s * grad).sum(-1, keepdim=True)
    return grad * (r * inv) + s * (sg * (1.0 - sq - 2.0 * eps) * inv * inv / r)


def recency_order(history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-aligned (B, L) history -> the same items newest first: position t = t-th most recent; padding
    stays at the end. Returns (reordered history (B, L), its mask (B, L))."""
    lengths = mask.sum(1, keepdim=True)  # (B, 1)
    t = torch.arange(history.shape[1], device=history.device).unsqueeze(0)  # (1, L)
    src = (lengths - 1 - t).clamp(min=0)  # (B, L): index of the t-th most recent item
    return history.gather(1, src) * mask, mask


def _route(fixed: torch.Tensor, real: torch.Tensor, iters: int,
           x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CapsNet dynamic routing (ComiRec Algorithm 1) on position-major prediction vectors.

    Args:
        fixed: (L, N, D) prediction vectors ``e_hat_{j|i} = W_ij e_i`` (eq. 1), N = B * K (user-major, then
            interest), any strides; the iterations route these (stop-gradient: pass them detached).
        real: (B, 1, L) float, 1 at real behaviours, 0 at padding.
        iters: r >= 1.
        x: the same predictions carrying gradient, or None: the last weighted sum (eq. 2) then uses ``x``, so
            gradients reach W and the embeddings through it only (module docstring).
    Returns:
        interest capsules (B, K, D), the final coupling coefficients c (B, K, L) and the last s (B, K, D).

    Both weighted sums over a user's L behaviours are batched matrix products over the N (user, interest)
    pairs on strided views of ``fixed`` (no copy): eq. (2) as (N, 1, L) @ (N, L, D) and line 6's
    ``v_j^T e_hat_{j|i}`` as (N, 1, D) @ (N, D, L). The latter orientation matters: the same product as
    (N, L, D) @ (N, D, 1) is a batched matrix-vector product that MKL runs ~8x slower (1.7 vs 0.2 ms at
    L 20, N 1024, D 64, one thread), and a broadcast multiply summed over D writes and re-reads an
    (L, N, D) temporary.
    """
    L, N, D = fixed.shape
    B = real.shape[0]
    K = N // B
    fixed_t = fixed.transpose(0, 1)  # (N, L, D) view
    logits = torch.zeros_like(real).expand(-1, K, -1)  # line 1: b_ij = 0, (B, K, L)
    capsules = s = coupling = logits  # overwritten in the first iteration
    for it in range(iters):
        last = it == iters - 1
        coupling = torch.softmax(logits, dim=1) * real  # line 3, eq. (3): over interests; padding -> 0
        c = coupling.reshape(N, 1, L)
        src = x.transpose(0, 1) if last and x is not None else fixed_t
        s = torch.bmm(c, src).view(B, K, D)  # line 4, eq. (2): s_j = sum_i c_ij e_hat_{j|i}
        capsules = squash(s)  # line 5, eq. (4)
        if not last:  # line 6: b_ij += v_j^T W_ij e_i
            logits = logits + torch.bmm(capsules.view(N, 1, D), fixed.permute(1, 2, 0)).view(B, K, L)
    return capsules, coupling, s


def capsnet_routing(predictions: torch.Tensor, mask: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CapsNet dynamic routing (ComiRec Algorithm 1) on (B, K, L, D) prediction vectors, differentiable
    (stop-gradient: through the last weighted sum only). The model itself uses :class:`_DynamicRouting`.

    Args:
        predictions: (B, K, L, D) prediction vectors ``e_hat_{j|i} = W_ij e_i`` (eq. 1).
        mask: (B, L) bool, False at padding.
        iters: r >= 1.
    Returns:
        interest capsules (B, K, D) and the final coupling coefficients c (B, K, L).
    """
    B, K, L, D = predictions.shape
    x = predictions.permute(2, 0, 1, 3).reshape(L, B * K, D)
    caps, coupling, _ = _route(x.detach(), mask.unsqueeze(1).to(predictions.dtype), iters, x=x)
    return caps, coupling


def _hand_written_backward(device: torch.device) -> bool:
    """Whether the training fast path (:class:`_DynamicRouting`, :class:`_RowGather`) applies: eager mode with
    autograd on. Tracing, ``torch.compile``, export and autocast (bf16-mixed) see plain differentiable ops
    instead: the compilers derive their own backward, and the hand-written ones assume one dtype."""
    return (torch.is_grad_enabled() and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
            and not torch.compiler.is_exporting() and not torch.is_autocast_enabled(device.type))


class _RowGather(torch.autograd.Function):
    """``table[ids]`` whose backward accumulates the rows with ``index_add_``: the same gradient as
    ``F.embedding(ids, table, padding_idx=0)`` (row 0 gets none), ~3x cheaper on CPU than the sort-based
    ``embedding_dense_backward`` autograd uses (0.10 vs 0.30 ms for 5,120 ids into 1,350 x 64, one thread).
    ComiRec-DR looks up B * L history ids per step; used only for the plain item table (no category average,
    dense gradient: sparse mode keeps :class:`~models.youtube_dnn.ItemTower`'s path)."""

    @staticmethod
    def forward(ctx, table, ids):
        ctx.save_for_backward(ids)
        ctx.num_rows = table.shape[0]
        return table.index_select(0, ids.reshape(-1)).view(*ids.shape, table.shape[1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        out = grad.new_zeros(ctx.num_rows, grad.shape[-1])
        out.index_add_(0, ids.reshape(-1), grad.reshape(-1, grad.shape[-1]))
        out[0] = 0  # padding_idx=0: the padding row never learns
        return out, None


class _DynamicRouting(torch.autograd.Function):
    """ComiRec-DR's extractor for training: eq. (1) ``e_hat_{j|i} = W_ij e_i`` for every (behaviour, interest)
    as one batched matmul, Algorithm 1 on it without an autograd graph, and the backward written out.

    The stop-gradient makes the backward short: only the last ``s_j = sum_i c_ij e_hat_{j|i}`` with constant
    c carries gradient, so dL/de_hat_{j|i} = c_ij dL/ds_j (dL/ds_j from :func:`squash_backward`), and dL/dW,
    dL/de are two batched matmuls with it (over the live pairs only, :func:`_routing_backward_sparse`, when the
    loss reads few capsules). Autograd would record ~20 ops of the iterations for nothing,
    keep their outputs alive, and build dL/dW in the transposed layout of the forward's matmul and then copy
    it into the parameter's (L, K, D, D) layout; here it is produced in that layout directly. Inputs:
    e (L, B, D) position-major embeddings, maps (L, K, D_out, D_in), real (B, 1, L) float mask, iters.
    Outputs: capsules (B, K, D), coupling (B, K, L) (not differentiable).
    """

    @staticmethod
    def forward(ctx, e, maps, real, iters):
        L, K, D = maps.shape[0], maps.shape[1], maps.shape[2]
        B = e.shape[1]
        x = torch.bmm(e, maps.reshape(L, K * D, D).transpose(1, 2))  # eq. (1): (L, B, D) @ (L, D, K*D)
        caps, coupling, s = _route(x.view(L, B * K, D), real, iters)
        ctx.save_for_backward(e, maps, coupling, s)
        ctx.mark_non_differentiable(coupling)
        return caps, coupling

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_caps, _grad_coupling):
        e, maps, coupling, s = ctx.saved_tensors
        grad_s = squash_backward(s, grad_caps)  # (B, K, D); exactly 0 where grad_caps is
        live = grad_caps.ne(0).any(-1)  # (B, K): the (user, interest) pairs whose capsule gets a gradient
        B, K = live.shape
        if 2 * int(live.sum()) <= B * K:  # e.g. argmax selection (eq. 8): one interest per user
            return _routing_backward_sparse(e, maps, coupling, grad_s, live, ctx.needs_input_grad)
        L, _, D = e.shape
        c = coupling.permute(2, 0, 1).contiguous().unsqueeze(-1)  # (L, B, K, 1): the product is then contiguous
        grad_x = (c * grad_s.unsqueeze(0)).view(L, B, K * D)  # eq. (2) with c constant: c_ij dL/ds_j
        grad_e = grad_maps = None
        if ctx.needs_input_grad[0]:
            grad_e = torch.bmm(grad_x, maps.reshape(L, K * D, D))  # (L, B, K*D) @ (L, K*D, D)
        if ctx.needs_input_grad[1]:
            grad_maps = torch.bmm(grad_x.transpose(1, 2), e).view(L, K, D, D)  # (L, K*D, B) @ (L, B, D)
        return grad_e, grad_maps, None, None


def _routing_backward_sparse(e, maps, coupling, grad_s, live, needs_input_grad):
    """:class:`_DynamicRouting`'s backward when at most half of the (user, interest) capsules get a gradient.

    With ComiRec's argmax selection (eq. 8) the loss reads one interest per user, so dL/dv_j is zero for the
    other K - 1 and so is dL/de_hat_{j|i} = c_ij dL/ds_j: the dense backward's two matmuls over all K
    interests would spend (K - 1) / K of their work multiplying zeros. Here only the live pairs enter them,
    grouped by interest j (each group's maps W_{.j} are one batched matmul over the L positions):
    dL/dW_ij = sum over the group's users of c_ij dL/ds_j e_i^T and dL/de_i = sum_j W_ij^T c_ij dL/ds_j.
    Same values as the dense path up to float rounding (the same products, fewer zero terms).
    """
    L, B, D = e.shape
    K = maps.shape[1]
    kb = live.t().nonzero()  # (M, 2) live (interest, user) pairs, grouped by interest
    k_idx, b_idx = kb[:, 0], kb[:, 1]
    counts = live.sum(0).tolist()  # users per interest
    g = grad_s[b_idx, k_idx]  # (M, D) dL/ds_j
    grad_x = coupling[b_idx, k_idx].t().unsqueeze(-1) * g  # (L, M, D): c_ij dL/ds_j
    e_live = e.index_select(1, b_idx) if needs_input_grad[1] else None  # (L, M, D)
    grad_e_parts, grad_maps_parts, start = [], [], 0
    for k, n in enumerate(counts):
        gx = grad_x[:, start:start + n]  # (L, n, D_out)
        if needs_input_grad[0] and n:
            grad_e_parts.append(torch.bmm(gx, maps[:, k]))  # (L, n, D_out) @ (L, D_out, D_in)
        if needs_input_grad[1]:
            grad_maps_parts.append(torch.bmm(gx.transpose(1, 2), e_live[:, start:start + n]) if n
                                   else maps.new_zeros(L, D, D))  # (L, D_out, n) @ (L, n, D_in)
        start += n
    grad_e = grad_maps = None
    if needs_input_grad[0]:
        grad_e = e.new_zeros(L, B, D)
        if grad_e_parts:
            grad_e.index_add_(1, b_idx, torch.cat(grad_e_parts, dim=1))
    if needs_input_grad[1]:
        grad_maps = torch.stack(grad_maps_parts, dim=1)  # (L, K, D_out, D_in)
    return grad_e, grad_maps, None, None


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
        ids = recent.t()  # (L, B), newest first, position-major (the layout eq. (1)'s matmul takes)
        hand_written = _hand_written_backward(ids.device)
        items = self.items
        if hand_written and ids.device.type == "cpu" and items.category is None and not items.sparse:
            e = _RowGather.apply(items.item.weight, ids)  # (L, B, D): items(ids) with a cheaper backward
        else:
            e = items(ids)  # (L, B, D)
        L, B = ids.shape
        # (L, K, D_out, D_in); whole when L = max_len, so its gradient needs no slice backward (eager only: a
        # trace records shapes as tensors and must not branch on them)
        maps = self.maps if hand_written and L == self.max_len else self.maps[:L]
        K, D = maps.shape[1], maps.shape[2]
        real = rmask.unsqueeze(1).to(e.dtype)  # (B, 1, L)
        if hand_written and (e.requires_grad or maps.requires_grad):
            return _DynamicRouting.apply(e, maps, real, self.routing_iters)  # training
        # eval, serving, export, torch.compile: plain ops (autograd, if on, differentiates the last sum only)
        x = torch.bmm(e, maps.reshape(L, K * D, D).transpose(1, 2)).view(L, B * K, D)  # eq. (1)
        caps, coupling, _ = _route(x.detach(), real, self.routing_iters, x=x)
        return caps, coupling

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
