"""UMI: User-aware Multi-Interest learning (Chai et al., SIGIR 2022, §3), the user tower.

File layout: ``squash`` (eq. 6), ``dual_attention_routing`` (eqs. 3–6, Algorithm 1), then the model:
item embeddings (id averaged with category, as MIND §3.2), the user-guided attention network UGANet
(eq. 2), dual-attention routing with per-interest maps W_j, and interest refinement over the profile fields
(eqs. 7–9). Argmax selection (eq. 10) and harder negatives (eqs. 12–13) live in ``models/loss.py``.

Choices the paper leaves open (tested in tests/models/test_umi.py, written up in docs/MODELS.md):

- **Item features are averaged, not concatenated.** §3.2 concatenates field embeddings; averaging id and
  category embeddings keeps d_i = D for every model (the same item tower as MIND).
- **Routing**: coupling softmax over interests (eq. 4); logits replaced each iteration (Algorithm 1 line 8:
  ``b_ij = (W_j e_i)^T v_j``); Gaussian init N(0, sigma^2) (line 2). Padding gets a_i = 0 and coupling 0.
- **Routing init at inference**: as in MIND, eval mode uses a fixed item-keyed Gaussian table
  ``routing_init`` (num_items, K) drawn from ``routing_seed`` and saved in the state dict; training samples
  afresh. Serving is deterministic and invariant to extra padding.
- **Stop-gradient**: iterations before the last route detached inputs (a_i and W_j e_i), so the coupling
  coefficients c_ij are constants for back-propagation; the last ``z_j = sum_i a_i c_ij W_j e_i`` carries
  gradients to UGANet (through a_i), W_j and the embeddings.
- **MLP sizes**: eq. 2 and eq. 7 hidden sizes ``attention_hidden`` (paper, MovieLens: 8); eq. 9 is
  ``Linear(C*P + D, hidden_dim) -> ReLU -> Linear(hidden_dim, D)`` (paper: 32 hidden units), last layer
  linear like every other tower here. With no profile fields (C = 0) UGANet sees only e_i, eqs. 7–8 are
  skipped and eq. 9 refines v_k alone.
- K is fixed (no dynamic interest number in UMI): ``interest_mask`` is all True.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.youtube_dnn import ItemTower, ProfileEmbedding, check_common


def squash(z: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Eq. (6): ``|z|^2 / (|z|^2 + 1) * z / |z|`` over the last dim (finite gradient at z = 0)."""
    sq = (z * z).sum(-1, keepdim=True)
    return z * torch.sqrt(sq + eps) / (1.0 + sq)  # eq. (6)


def dual_attention_routing(transformed: torch.Tensor, attention: torch.Tensor, mask: torch.Tensor,
                           init_logits: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dual-attention routing (Algorithm 1).

    Computed interest-major, as K * B independent (L, D) routings: no copy of ``transformed`` is made when
    it is a (B, K, L, D) view of a (K, B, L, D)-contiguous tensor (what :class:`UMI` passes), and its
    gradient comes back in that layout.

    Args:
        transformed: (B, K, L, D) ``W_j e_i`` for every interest j and position i (any memory layout).
        attention: (B, L) user attention a_i from UGANet (eq. 2).
        mask: (B, L) bool, False at padding.
        init_logits: (B, K, L) initial routing logits b_ij.
        iters: t >= 1.
    Returns:
        interest capsules V (B, K, D) and the final coupling c (B, K, L).
    """
    B, K, L, D = transformed.shape
    x = transformed.transpose(0, 1).reshape(K * B, L, D)  # (N, L, D), N = K * B; a view in the fast case
    real = mask.unsqueeze(0).to(transformed.dtype)  # (1, B, L)
    a = attention.unsqueeze(0) * real  # (1, B, L): padding gets no user attention
    fixed, a_fixed = x.detach(), a.detach()  # stop-gradient inside the iterations
    logits = init_logits.transpose(0, 1)  # (K, B, L)
    capsules, coupling = transformed, logits  # overwritten in the first iteration
    for it in range(iters):
        last = it == iters - 1
        coupling = torch.softmax(logits, dim=0) * real  # line 6, eq. (4): over interests, (K, B, L)
        weights = coupling * (a if last else a_fixed)  # a_i c_ij, (K, B, L)
        z = torch.bmm(weights.reshape(K * B, 1, L), x if last else fixed)  # eq. (3): (N, 1, L) @ (N, L, D)
        capsules = squash(z.view(K, B, D))  # line 7, eq. (6)
        if not last:
            logits = torch.bmm(fixed, capsules.view(K * B, D, 1)).view(K, B, L)  # line 8, eq. (5): (W_j e_i)^T v_j
    return capsules.transpose(0, 1), coupling.transpose(0, 1)  # (B, K, D), (B, K, L)


class UMI(nn.Module):
    """UMI user tower and item embeddings.

    Args:
        num_items, num_categories, profile_cardinalities, max_len: data-derived (see ``models`` package);
            ``max_len`` is unused here.
        dim: embedding and interest dimension D (= d_i).
        num_interests: K.
        routing_iters: t (>= 1).
        routing_sigma: sigma of the N(0, sigma^2) routing-logit init.
        profile_dim: embedding dimension of each profile field (d_u = C * profile_dim).
        attention_hidden: d_h of UGANet (eq. 2) and hidden size of the relevance MLP (eq. 7).
        hidden_dim: hidden size of the refinement MLP (eq. 9).
        use_category: average category embeddings into item embeddings.
        routing_seed: seed of the fixed routing-init table used in eval mode.
    """

    def __init__(self, *, num_items: int, num_categories: int, profile_cardinalities: Sequence[int] = (),
                 max_len: int = 50, dim: int = 64, num_interests: int = 4, routing_iters: int = 3,
                 routing_sigma: float = 1.0, profile_dim: int = 16, attention_hidden: int = 8,
                 hidden_dim: int = 32, use_category: bool = True, routing_seed: int = 0):
        super().__init__()
        check_common(num_items, num_categories, profile_cardinalities, dim, max_len)
        if num_interests < 1:
            raise ValueError(f"num_interests must be >= 1, got {num_interests}")
        if routing_iters < 1:
            raise ValueError(f"routing_iters must be >= 1, got {routing_iters}")
        if routing_sigma < 0:
            raise ValueError(f"routing_sigma must be >= 0, got {routing_sigma}")
        for key, value in (("profile_dim", profile_dim), ("attention_hidden", attention_hidden),
                           ("hidden_dim", hidden_dim)):
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        self.config = dict(num_items=num_items, num_categories=num_categories,
                           profile_cardinalities=[int(c) for c in profile_cardinalities], max_len=max_len,
                           dim=dim, num_interests=num_interests, routing_iters=routing_iters,
                           routing_sigma=float(routing_sigma), profile_dim=profile_dim,
                           attention_hidden=attention_hidden, hidden_dim=hidden_dim, use_category=use_category,
                           routing_seed=routing_seed)
        self.num_interests = num_interests
        self.num_fields = len(profile_cardinalities)
        self.profile_dim = profile_dim
        self.routing_iters = routing_iters
        self.routing_sigma = float(routing_sigma)
        d_u = profile_dim * self.num_fields
        self.items = ItemTower(num_items, num_categories, dim, use_category)
        self.profile = ProfileEmbedding(profile_cardinalities, profile_dim)
        # eq. (2): a_i = sigmoid(W_2^T ReLU(W_1^T [e_i, e_u] + b_1) + b_2)
        self.uganet = nn.Sequential(nn.Linear(dim + d_u, attention_hidden), nn.ReLU(), nn.Linear(attention_hidden, 1))
        self.maps = nn.Parameter(torch.randn(num_interests, dim, dim) * dim ** -0.5)  # W_j in eq. (3), (K, D, D)
        # eq. (7): d_k = sigmoid(MLP([v_k, e_u^(1), ..., e_u^(C)])) in R^C
        self.relevance = (nn.Sequential(nn.Linear(dim + d_u, attention_hidden), nn.ReLU(),
                                        nn.Linear(attention_hidden, self.num_fields))
                          if self.num_fields else None)
        # eq. (9): o_u^k = MLP([e_u^k, v_k])
        self.refine = nn.Sequential(nn.Linear(d_u + dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, dim))
        g = torch.Generator().manual_seed(routing_seed)
        self.register_buffer("routing_init", torch.randn(num_items, num_interests, generator=g))  # eval-mode init

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

    def initial_logits(self, history: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, K, L): fresh N(0, sigma^2) in training (Algorithm 1 line 2), the fixed table in eval."""
        if self.training:
            shape = (history.shape[0], self.num_interests, history.shape[1])
            return torch.randn(shape, device=history.device) * self.routing_sigma
        return self.routing_init[history].transpose(1, 2) * self.routing_sigma  # (B, L, K) -> (B, K, L)

    def user_attention(self, e: torch.Tensor, e_u: torch.Tensor) -> torch.Tensor:
        """UGANet, eq. (2): (B, L, D) behaviours, (B, d_u) profile -> a (B, L) in (0, 1)."""
        x = torch.cat([e, e_u.unsqueeze(1).expand(-1, e.shape[1], -1)], dim=-1)  # [e_i, e_u], (B, L, D + d_u)
        return torch.sigmoid(self.uganet(x)).squeeze(-1)  # eq. (2)

    def capsules(self, history: torch.Tensor, mask: torch.Tensor, profile: torch.Tensor,
                 attention: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """DAR: (capsules V (B, K, D), coupling c (B, K, L), user attention a (B, L)).

        ``attention`` overrides UGANet's a_i (for analysis and tests)."""
        e_u = self.profile(profile)  # (B, C * P)
        (B, L), K, D = history.shape, self.maps.shape[0], self.maps.shape[1]
        if self.items.uses_table(history):
            # W_j e_i computed once per catalogue item (K, N, D) and gathered: the same rows as mapping every
            # behaviour, interest-major (the routing's layout, no copies)
            table = self.items.table()  # (N, D)
            e = F.embedding(history, table, padding_idx=0)  # (B, L, D)
            per_item = torch.bmm(table.unsqueeze(0).expand(K, -1, -1), self.maps.transpose(1, 2))  # (K, N, D)
            transformed = per_item[:, history.reshape(-1)]  # (K, B * L, D)
        else:
            e = self.items(history)  # (B, L, D)
            # W_j e_i for every interest at once, interest-major (K, B * L, D): the routing's layout, no copies
            transformed = torch.bmm(e.reshape(1, B * L, D).expand(K, -1, -1), self.maps.transpose(1, 2))
        a = self.user_attention(e, e_u) if attention is None else attention
        transformed = transformed.view(K, B, L, D).transpose(0, 1)  # (B, K, L, D) view
        caps, c = dual_attention_routing(transformed, a, mask, self.initial_logits(history), self.routing_iters)
        return caps, c, a * mask.to(a.dtype)

    def refine_interests(self, caps: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
        """Interest refinement, eqs. (7)–(9): (B, K, D), (B, C) -> o_u (B, K, D)."""
        e_u = self.profile(profile)  # [e_u^(1), ..., e_u^(C)], (B, C * P)
        e_u_k = e_u.unsqueeze(1).expand(-1, caps.shape[1], -1)  # (B, K, C * P)
        if self.relevance is not None:
            d = torch.sigmoid(self.relevance(torch.cat([caps, e_u_k], dim=-1)))  # eq. (7): d_k, (B, K, C)
            fields = e_u_k.unflatten(-1, (self.num_fields, self.profile_dim))  # (B, K, C, P)
            e_u_k = (d.unsqueeze(-1) * fields).flatten(2)  # eq. (8): Concat(d_kc e_u^(c)), (B, K, C * P)
        return self.refine(torch.cat([e_u_k, caps], dim=-1))  # eq. (9): o_u^k = MLP([e_u^k, v_k])

    def coupling_coefficients(self, history: torch.Tensor, mask: torch.Tensor,
                              profile: torch.Tensor) -> torch.Tensor:
        """Final clustering probabilities c_ij (B, K, L) aligned with the history positions (0 at padding)."""
        return self.capsules(history, mask, profile)[1]

    def user_interests(self, history: torch.Tensor, mask: torch.Tensor,
                       profile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L), (B, L), (B, C) -> interests O_u (B, K, D), interest_mask (B, K) all True."""
        caps, _, _ = self.capsules(history, mask, profile)
        out = self.refine_interests(caps, profile)
        return out, torch.ones_like(mask[:, :1]).repeat(1, out.shape[1])
