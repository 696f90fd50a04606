"""Shared tiny fixtures for the model tests: a small vocabulary and random padded batches."""
from __future__ import annotations

import pytest
import torch

NUM_ITEMS = 30
NUM_CATEGORIES = 5
PROFILE = [3, 4]  # two profile fields incl. unknown 0
MAX_LEN = 8


def make_batch(batch: int = 4, max_len: int = MAX_LEN, lengths=None, seed: int = 0, profile=PROFILE):
    """Left-aligned padded histories: (history (B, L), mask (B, L), profile (B, C))."""
    g = torch.Generator().manual_seed(seed)
    if lengths is None:
        lengths = torch.randint(1, max_len + 1, (batch,), generator=g).tolist()
    history = torch.zeros(len(lengths), max_len, dtype=torch.long)
    for b, n in enumerate(lengths):
        history[b, :n] = torch.randint(1, NUM_ITEMS, (n,), generator=g)
    mask = history != 0
    prof = torch.stack([torch.randint(0, c, (len(lengths),), generator=g) for c in profile], dim=1) \
        if profile else torch.zeros(len(lengths), 0, dtype=torch.long)
    return history, mask, prof


def item_categories(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cats = torch.randint(1, NUM_CATEGORIES, (NUM_ITEMS,), generator=g)
    cats[0] = 0
    return cats


def data_hparams(profile=PROFILE) -> dict:
    return dict(num_items=NUM_ITEMS, num_categories=NUM_CATEGORIES, profile_cardinalities=list(profile),
                max_len=MAX_LEN)


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Fixed seed; one intra-op thread (these tensors are tiny, and on a loaded 2-core machine OpenMP
    barriers make multi-threaded tiny ops 10x slower). The previous thread count is restored."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
