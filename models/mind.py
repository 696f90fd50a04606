"""MIND: Multi-Interest Network with Dynamic routing (Li et al., CIKM 2019, §3), the user tower.

File layout: ``squash`` (eq. 7), ``dynamic_interest_number`` (eq. 9), ``b2i_routing`` (eq. 8, Algorithm 1),
then the model: item embeddings averaged with category embeddings (§3.2), B2I routing over the behaviour
embeddings, the H-layer (interest capsules concatenated with the profile embedding, then ReLU layers,
Figure 2). Label-aware attention (§3.4) is a training-time layer and lives in ``models/loss.py``.

Choices the paper leaves open (tested in tests/models/test_mind.py, written up in docs/MODELS.md):

- **Softmax direction.** Eq. (6) normalises over behaviours, Algorithm 1 line 4 ("for all behavior capsule
  i: w_ij <- softmax(b_ij)") and CapsNet normalise over interests. We follow Algorithm 1: each behaviour
  spreads a unit of weight over the (active) interests.
- **Routing logits are replaced, not accumulated** (Algorithm 1 line 7: ``b_ij <- u_j^T S e_i``), so the
  Gaussian init only shapes the first iteration.
- **Stop-gradient.** The coupling coefficients w_ij are constants for back-propagation: every iteration but
  the last routes detached behaviour vectors, and the last computes ``u_j = squash(sum_i w_ij S e_i)`` with
  gradients to S and the embeddings through that weighted sum only (as ComiRec's reference code does).
  Back-propagating through the iterations is unstable and the paper trains no parameter of the routing
  itself besides S.
- **Routing init.** Training: a fresh sample ``b_ij ~ N(0, sigma^2)`` per forward (Algorithm 1 line 2).
  Evaluation/serving must be deterministic, so ``eval()`` uses a fixed Gaussian table ``routing_init``
  (num_items, K), sampled once at construction from ``routing_seed`` and saved in the state dict:
  ``b_ij = sigma * routing_init[item_i, j]``. It is keyed by the *item*, not its position, so the interests
  stay invariant to the order of behaviours and to extra padding, and distinct items still start from
  independent N(0, sigma^2) logits (a per-interest constant would give every capsule the same direction,
  the trap §3.3.2 describes).
- **Dynamic K** (eq. 9): ``K'_u = max(1, min(K, floor(log2 |I_u|)))`` with |I_u| the number of real
  (unmasked) behaviours, computed exactly in integers (``floor(log2 n) >= k  <=>  n >= 2^k``). Floor, because
  K'_u must be an integer and the paper's motivation is saving capsules for short histories. Capsules
  j >= K'_u are *inactive*: their routing logits are -inf before the softmax, so behaviours route only among
  the active capsules (Algorithm 1 computes K'_u before routing); their outputs are zeroed after the H-layer
  and ``interest_mask`` is False for them, so label-aware attention, harder negatives and retrieval ignore
  them. ``dynamic_interests: false`` keeps all K capsules for every user.
- **H-layer**: ``Linear(D + C*P, hidden) -> ReLU -> Linear(hidden, D)``; the last layer is linear so interests
  can have negative coordinates like the item embeddings.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.youtube_dnn import ItemTower, ProfileEmbedding, check_common


def squash(z: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Eq. (7): ``|z|^2 / (1 + |z|^2) * z / |z|`` over the last dim; keeps direction, length in [0, 1).

    Written as ``z * |z| / (1 + |z|^2)`` with ``|z| = sqrt(|z|^2 + eps)`` so z = 0 gives 0 with finite gradient.
    """
    sq = (z * z).sum(-1, keepdim=True)
    return z * torch.sqrt(sq + eps) / (1.0 + sq)  # eq. (7)


def dynamic_interest_number(lengths: torch.Tensor, num_interests: int) -> torch.Tensor:
    """Eq. (9): ``K'_u = max(1, min(K, floor(log2 n)))`` for (B,) behaviour counts n, exactly, in integers."""
    powers = 2 ** torch.arange(1, num_interests + 1, device=lengths.device)  # (K,): 2, 4, ..., 2^K
    return (lengths.unsqueeze(-1) >= powers).sum(-1).clamp(min=1)  # (B,) in [1, K]


def b2i_routing(behaviours: torch.Tensor, mask: torch.Tensor, interest_mask: torch.Tensor,
                init_logits: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B2I dynamic routing (Algorithm 1) on behaviours already mapped by the shared bilinear matrix S.

    Args:
        behaviours: (B, L, D) ``S e_i`` for every history position.
        mask: (B, L) bool, False at padding (no routing weight there).
        interest_mask: (B, K) bool, False for inactive capsules (dynamic K).
        init_logits: (B, K, L) initial routing logits b_ij.
        iters: r >= 1 routing iterations.
    Returns:
        interest capsules (B, K, D) and the final coupling coefficients w (B, K, L).
    """
    fixed = behaviours.detach()  # stop-gradient inside the iterations (module docstring)
    logits = init_logits
    active = interest_mask.unsqueeze(-1)  # (B, K, 1)
    real = mask.unsqueeze(1).to(behaviours.dtype)  # (B, 1, L)
    capsules, weights = behaviours, init_logits  # overwritten in the first iteration (iters >= 1)
    for it in range(iters):
        last = it == iters - 1
        logits = logits.masked_fill(~active, float("-inf"))
        weights = torch.softmax(logits, dim=1) * real  # Algorithm 1 line 4: over interests; padding -> 0
        z = torch.einsum("bkl,bld->bkd", weights, behaviours if last else fixed)  # line 5, eq. (5): (B, K, D)
        capsules = squash(z)  # line 6, eq. (7)
        if not last:
            logits = torch.einsum("bkd,bld->bkl", capsules, fixed)  # line 7, eq. (8): b_ij = u_j^T S e_i
    return capsules, weights


class MIND(nn.Module):
    """MIND user tower and item embeddings.

    Args:
        num_items, num_categories, profile_cardinalities, max_len: data-derived (see ``models`` package);
            ``max_len`` is unused here (routing handles any length).
        dim: embedding and interest dimension D.
        num_interests: K, the maximum number of interest capsules.
        routing_iters: r, routing iterations (>= 1).
        routing_sigma: sigma of the N(0, sigma^2) routing-logit init.
        dynamic_interests: use eq. (9) to choose K'_u per user.
        profile_dim: embedding dimension of each profile field.
        hidden_dim: width of the H-layer's ReLU layer.
        use_category: average category embeddings into item embeddings (§3.2).
        routing_seed: seed of the fixed routing-init table used in eval mode.
    """

    def __init__(self, *, num_items: int, num_categories: int, profile_cardinalities: Sequence[int] = (),
                 max_len: int = 50, dim: int = 64, num_interests: int = 4, routing_iters: int = 3,
                 routing_sigma: float = 1.0, dynamic_interests: bool = True, profile_dim: int = 16,
                 hidden_dim: int = 128, use_category: bool = True, routing_seed: int = 0):
        super().__init__()
        check_common(num_items, num_categories, profile_cardinalities, dim, max_len)
        if num_interests < 1:
            raise ValueError(f"num_interests must be >= 1, got {num_interests}")
        if routing_iters < 1:
            raise ValueError(f"routing_iters must be >= 1, got {routing_iters}")
        if routing_sigma < 0:
            raise ValueError(f"routing_sigma must be >= 0, got {routing_sigma}")
        if profile_dim < 1 or hidden_dim < 1:
            raise ValueError(f"profile_dim and hidden_dim must be >= 1, got {profile_dim}, {hidden_dim}")
        self.config = dict(num_items=num_items, num_categories=num_categories,
                           profile_cardinalities=[int(c) for c in profile_cardinalities], max_len=max_len,
                           dim=dim, num_interests=num_interests, routing_iters=routing_iters,
                           routing_sigma=float(routing_sigma), dynamic_interests=dynamic_interests,
                           profile_dim=profile_dim, hidden_dim=hidden_dim, use_category=use_category,
                           routing_seed=routing_seed)
        self.num_interests = num_interests
        self.routing_iters = routing_iters
        self.routing_sigma = float(routing_sigma)
        self.dynamic_interests = dynamic_interests
        self.items = ItemTower(num_items, num_categories, dim, use_category)
        self.profile = ProfileEmbedding(profile_cardinalities, profile_dim)
        self.bilinear = nn.Linear(dim, dim, bias=False)  # S in eq. (8), shared by all (behaviour, interest) pairs
        nn.init.normal_(self.bilinear.weight, std=dim ** -0.5)
        in_dim = dim + profile_dim * len(profile_cardinalities)
        self.h_layer = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, dim))
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
        """(N,) ids -> (N, D): eq. (2), f_item = average of id and category embeddings."""
        return self.items(item_ids)

    def interest_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) history mask -> (B, K) bool, True for the first K'_u capsules (eq. 9) or all."""
        k = torch.arange(self.num_interests, device=mask.device)  # (K,)
        if not self.dynamic_interests:
            return torch.ones_like(mask[:, :1]).repeat(1, self.num_interests)  # (B, K) all True
        k_user = dynamic_interest_number(mask.sum(1), self.num_interests)  # (B,)
        return k.unsqueeze(0) < k_user.unsqueeze(1)  # (B, K)

    def initial_logits(self, history: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, K, L) routing-logit init: fresh N(0, sigma^2) in training, the fixed table in eval."""
        if self.training:
            shape = (history.shape[0], self.num_interests, history.shape[1])
            return torch.randn(shape, device=history.device) * self.routing_sigma  # Algorithm 1 line 2
        return self.routing_init[history].transpose(1, 2) * self.routing_sigma  # (B, L, K) -> (B, K, L)

    def capsules(self, history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Interest capsules before the H-layer: (capsules (B, K, D), coupling w (B, K, L), interest_mask (B, K))."""
        if self.items.uses_table(history):
            # S e_i computed once per catalogue item and gathered (the same rows as mapping every behaviour)
            behaviours = F.embedding(history, self.bilinear(self.items.table()), padding_idx=0)  # (B, L, D)
        else:
            behaviours = self.bilinear(self.items(history))  # S e_i, (B, L, D)
        imask = self.interest_mask(mask)
        caps, w = b2i_routing(behaviours, mask, imask, self.initial_logits(history), self.routing_iters)
        return caps, w, imask

    def coupling_coefficients(self, history: torch.Tensor, mask: torch.Tensor,
                              profile: torch.Tensor) -> torch.Tensor:
        """Final routing weights w_ij (B, K, L) aligned with the history positions (for MIND Fig. 5 heatmaps);
        0 at padding and for inactive capsules."""
        return self.capsules(history, mask)[1]

    def user_interests(self, history: torch.Tensor, mask: torch.Tensor,
                       profile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L), (B, L), (B, C) -> interests (B, K, D) (zero where masked), interest_mask (B, K)."""
        caps, _, imask = self.capsules(history, mask)
        p = self.profile(profile).unsqueeze(1).expand(-1, caps.shape[1], -1)  # (B, K, C * P)
        out = self.h_layer(torch.cat([caps, p], dim=-1))  # H-layer (Figure 2): (B, K, D)
        return out * imask.unsqueeze(-1).to(out.dtype), imask
