"""YouTube DNN (Covington et al., RecSys 2016) as the single-interest baseline of MIND §3.6 and ComiRec §4.

The user tower mean-pools the embeddings of the (unmasked) behaviours, concatenates the user-profile
embedding and applies a ReLU MLP; it returns one interest (K = 1). Items share the behaviour embedding table;
with ``use_category`` an item's embedding is the average of its id and category embeddings (MIND §3.2, so
the baseline sees the same features as MIND).

Choice: the MLP's last layer is linear (no ReLU) so the user vector can have negative coordinates like the
item embeddings it is matched against by inner product.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ItemTower(nn.Module):
    """Item embeddings: the id embedding, averaged with the category embedding when ``use_category``
    (MIND §3.2 average pooling). Row 0 (padding) is the zero vector.

    Sparse mode (:meth:`set_sparse`, ``train.embedding_optimizer: sparse_adam``): the item and category
    tables produce sparse gradients (only the rows a step looked up), and the whole-table shortcut
    (:meth:`uses_table`) is off, since it would give the table a dense gradient over every row. The mode is
    a training setting, not a hyper-parameter: it changes neither the state dict nor the forward values.
    """

    def __init__(self, num_items: int, num_categories: int, dim: int, use_category: bool):
        super().__init__()
        self.use_category = use_category
        self.sparse = False
        self.item = nn.Embedding(num_items, dim, padding_idx=0)
        self.category = nn.Embedding(num_categories, dim, padding_idx=0) if use_category else None
        # item -> category index; filled by the trainer from data/split/items.parquet (0 = padding/unknown)
        self.register_buffer("item_category", torch.zeros(num_items, dtype=torch.long))
        for emb in (self.item, self.category):
            if emb is not None:
                nn.init.normal_(emb.weight, std=dim ** -0.5)  # inner products start at O(1)
                with torch.no_grad():
                    emb.weight[0].zero_()

    def set_sparse(self, sparse: bool) -> list[nn.Parameter]:
        """Switch sparse gradients of the item/category tables on or off; returns those tables' weights
        (the parameters a row-wise optimizer must own)."""
        self.sparse = bool(sparse)
        for emb in (self.item, self.category):
            if emb is not None:
                emb.sparse = self.sparse
        return self.embedding_parameters()

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The item table's weight, and the category table's when ``use_category``."""
        return [emb.weight for emb in (self.item, self.category) if emb is not None]

    def table(self) -> torch.Tensor:
        """(num_items, D) the embedding of every item (row 0 = padding), differentiable."""
        if self.category is None:
            return self.item.weight
        cat = F.embedding(self.item_category, self.category.weight, padding_idx=0)  # (N, D)
        return (self.item.weight + cat) / 2  # MIND §3.2: average pooling of id features

    def uses_table(self, ids: torch.Tensor) -> bool:
        """Whether looking ``ids`` up in :meth:`table` is cheaper than averaging per id: with category
        features and at least as many ids as items (a batch of histories on a small catalogue). Never while
        tracing (export): a branch on the batch size would be frozen into the trace. Never in sparse mode:
        the table's gradient would be dense."""
        if self.sparse or self.category is None or torch.jit.is_tracing():
            return False
        return ids.numel() >= self.item.num_embeddings

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids (...,) -> (..., D)
        if self.uses_table(ids):
            # the same values, the average computed once per item instead of once per id; padding_idx keeps
            # row 0's gradient at zero as the per-id path's two padding_idx embeddings do
            return F.embedding(ids, self.table(), padding_idx=0)
        if self.sparse and ids.numel() > 1:
            # each distinct row looked up once and gathered: the sparse gradient then has one row per distinct
            # id (already sorted), which makes the optimizer's coalesce and lazy update cheaper
            uniq, inverse = torch.unique(ids, return_inverse=True)
            return self._per_id(uniq)[inverse]
        return self._per_id(ids)

    def _per_id(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.item(ids)
        if self.category is not None:
            e = (e + self.category(self.item_category[ids])) / 2  # MIND §3.2: average pooling of id features
        return e


class ProfileEmbedding(nn.Module):
    """One embedding table per profile field (index 0 = unknown = zero vector); output the C field embeddings."""

    def __init__(self, cardinalities: Sequence[int], dim: int):
        super().__init__()
        self.fields = nn.ModuleList(nn.Embedding(c, dim, padding_idx=0) for c in cardinalities)
        for emb in self.fields:
            nn.init.normal_(emb.weight, std=dim ** -0.5)
            with torch.no_grad():
                emb.weight[0].zero_()

    def forward(self, profile: torch.Tensor) -> torch.Tensor:  # (B, C) -> (B, C * P)
        if len(self.fields) == 0:
            return profile[:, :0].float()  # (B, 0): no profile fields
        return torch.cat([emb(profile[:, c]) for c, emb in enumerate(self.fields)], dim=-1)


def check_common(num_items: int, num_categories: int, profile_cardinalities: Sequence[int], dim: int,
                 max_len: int) -> None:
    """Shared argument checks (ValueError naming the key)."""
    if num_items < 2:
        raise ValueError(f"num_items must be >= 2 (padding + one item), got {num_items}")
    if num_categories < 1:
        raise ValueError(f"num_categories must be >= 1 (incl. padding), got {num_categories}")
    if any(int(c) < 1 for c in profile_cardinalities):
        raise ValueError(f"profile_cardinalities must all be >= 1 (incl. unknown), got {list(profile_cardinalities)}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")


class YouTubeDNN(nn.Module):
    """Mean-pooled behaviours + profile -> ReLU MLP -> one user vector (K = 1).

    Args:
        num_items: item vocabulary incl. padding 0.
        num_categories: category vocabulary incl. padding 0.
        profile_cardinalities: per profile field, its vocabulary incl. unknown 0 (may be empty).
        max_len: longest history the model is fed (unused here; accepted so every model takes the same
            data-derived arguments).
        dim: embedding and output dimension D.
        profile_dim: embedding dimension of each profile field.
        hidden_dim: width of the ReLU hidden layer.
        use_category: average the category embedding into each item embedding (MIND §3.2).
    """

    def __init__(self, *, num_items: int, num_categories: int, profile_cardinalities: Sequence[int] = (),
                 max_len: int = 50, dim: int = 64, profile_dim: int = 16, hidden_dim: int = 128,
                 use_category: bool = True):
        super().__init__()
        check_common(num_items, num_categories, profile_cardinalities, dim, max_len)
        if profile_dim < 1 or hidden_dim < 1:
            raise ValueError(f"profile_dim and hidden_dim must be >= 1, got {profile_dim}, {hidden_dim}")
        self.config = dict(num_items=num_items, num_categories=num_categories,
                           profile_cardinalities=[int(c) for c in profile_cardinalities], max_len=max_len,
                           dim=dim, profile_dim=profile_dim, hidden_dim=hidden_dim, use_category=use_category)
        self.items = ItemTower(num_items, num_categories, dim, use_category)
        self.profile = ProfileEmbedding(profile_cardinalities, profile_dim)
        in_dim = dim + profile_dim * len(profile_cardinalities)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, dim))

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

    def user_interests(self, history: torch.Tensor, mask: torch.Tensor,
                       profile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L), (B, L), (B, C) -> interests (B, 1, D), interest_mask (B, 1) all True."""
        w = mask.to(self.items.item.weight.dtype)  # (B, L)
        if self.items.sparse:
            # sparse gradients: one embedding_bag per table (the mean of (id + category) / 2 is the mean of
            # the ids' plus the mean of the categories', halved); padding_idx rows and w = 0 add nothing
            summed = F.embedding_bag(history, self.items.item.weight, per_sample_weights=w, mode="sum",
                                     padding_idx=0, sparse=True)  # (B, D)
            if self.items.category is not None:
                cats = self.items.item_category[history]  # (B, L)
                summed = (summed + F.embedding_bag(cats, self.items.category.weight, per_sample_weights=w,
                                                   mode="sum", padding_idx=0, sparse=True)) / 2
        elif self.items.uses_table(history) or self.items.category is None:
            # masked mean as one embedding_bag: sum of mask-weighted rows, no (B, L, D) tensor forward or back
            summed = F.embedding_bag(history, self.items.table(), per_sample_weights=w, mode="sum",
                                     padding_idx=0)  # (B, D)
        else:
            summed = (self.items(history) * w.unsqueeze(-1)).sum(1)  # (B, D)
        pooled = summed / w.sum(1, keepdim=True).clamp(min=1.0)  # masked mean, (B, D)
        x = torch.cat([pooled, self.profile(profile)], dim=-1)  # (B, D + C * P)
        user = self.mlp(x).unsqueeze(1)  # (B, 1, D)
        return user, torch.ones_like(mask[:, :1])
