"""ComiRec-DR's training fast path (issue 12 part 2) gives the paper's values and gradients.

``models/comirec_dr.py`` trains through ``_DynamicRouting``: eq. (1) and Algorithm 1 without an autograd graph, a
hand-written backward through the last weighted sum (the stop-gradient of the module docstring), and, when at
most half of the (user, interest) capsules receive a gradient (argmax selection, eq. 8), a backward that only
multiplies those pairs. The history lookup uses ``_RowGather`` (``index_add_`` backward). Everything here is
checked against references written in this file from the paper (ComiRec §3.2, Algorithm 1), per user, in
float64, with autograd differentiating the reference; the module's only project choice the reference shares is
the recency indexing of the maps (behaviour i of n uses ``W[n - 1 - i]``) and the stop-gradient.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import comirec_dr
from models.comirec_dr import ComiRecDR
from models.loss import sampled_softmax_loss

NUM_ITEMS, D, K, MAX_LEN, ITERS = 40, 5, 4, 6, 3
# oldest first, 0 = padding; a full history, a single item, repeats within and across users
HISTORIES = [[3, 7, 1, 9, 4, 2], [5, 2], [11], [6, 6, 8, 10], [3, 7, 12, 13, 14], [9, 9, 9]]


def _squash_ref(s: torch.Tensor) -> torch.Tensor:
    """Eq. (4) as printed: |s|^2 / (1 + |s|^2) * s / |s|."""
    n2 = (s * s).sum(-1, keepdim=True)
    return n2 / (1.0 + n2) * s / n2.sqrt()


def _reference(table: torch.Tensor, maps: torch.Tensor, histories, iters: int = ITERS):
    """Algorithm 1 per user: capsules (B, K, D) and couplings [(n, K)], differentiable in table and maps
    through the last s_j = sum_i c_ij W_ij e_i only (the earlier iterations and c use detached values)."""
    caps, couplings = [], []
    for items in histories:
        n = len(items)
        e = table[torch.tensor(items)]  # (n, D)
        w = maps[torch.tensor([n - 1 - i for i in range(n)])]  # (n, K, D_out, D_in): recency slot per behaviour
        pred = torch.einsum("ikoj,ij->iko", w, e)  # eq. (1): e_hat_{k|i}, (n, K, D)
        fixed = pred.detach()
        b = torch.zeros(n, w.shape[1], dtype=table.dtype)  # line 1
        for it in range(iters):
            c = torch.softmax(b, dim=1)  # eq. (3): over interests
            last = it == iters - 1
            s = torch.einsum("ik,ikd->kd", c, pred if last else fixed)  # eq. (2)
            v = _squash_ref(s)  # eq. (4)
            if not last:
                b = b + torch.einsum("kd,ikd->ik", v, fixed)  # line 6
        caps.append(v)
        couplings.append(c)
    return torch.stack(caps), couplings


def _batch(histories=HISTORIES, length=MAX_LEN):
    history = torch.zeros(len(histories), length, dtype=torch.long)
    for b, h in enumerate(histories):
        history[b, : len(h)] = torch.tensor(h)
    return history, history != 0


def _model(seed: int = 0, **kw) -> ComiRecDR:
    torch.manual_seed(seed)
    model = ComiRecDR(num_items=NUM_ITEMS, num_categories=3, max_len=MAX_LEN, dim=D, num_interests=K,
                      routing_iters=ITERS, **kw).double()
    with torch.no_grad():  # maps far from the identity so that the K interests clearly differ
        model.maps.add_(torch.randn_like(model.maps) * 0.5)
    return model.train()


def _spy(monkeypatch) -> list[str]:
    """Record which backward of _DynamicRouting ran ('sparse' or 'dense')."""
    calls: list[str] = []
    real = comirec_dr._routing_backward_sparse

    def sparse(*args, **kwargs):
        calls.append("sparse")
        return real(*args, **kwargs)

    monkeypatch.setattr(comirec_dr, "_routing_backward_sparse", sparse)
    orig = comirec_dr._DynamicRouting.backward

    def backward(ctx, *grads):
        calls.append("backward")
        return orig(ctx, *grads)

    monkeypatch.setattr(comirec_dr._DynamicRouting, "backward", staticmethod(backward))
    return calls


def _upstream(kind: str, caps: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """A scalar loss of the capsules: 'dense' (every capsule weighted), 'argmax' (the project's sampled softmax
    with ComiRec's argmax selection: one interest per user), 'mixed' (hand-picked live pairs: two interests of
    one user, none of another, <= half of all pairs)."""
    g = torch.Generator().manual_seed(seed)
    B = caps.shape[0]
    if kind == "dense":
        return (caps * torch.randn(caps.shape, generator=g, dtype=caps.dtype)).sum()
    if kind == "argmax":
        pos = torch.arange(1, B + 1)
        neg = torch.tensor([20, 21, 22, 23, 24])
        emb = torch.randn(NUM_ITEMS, D, generator=g, dtype=caps.dtype)
        return sampled_softmax_loss(caps, torch.ones(B, K, dtype=torch.bool), pos, emb[pos], neg, emb[neg],
                                    attention_pow=None, harder_negatives=False)
    live = torch.zeros(B, K, 1, dtype=caps.dtype)
    live[0, 1] = live[0, 3] = live[2, 0] = live[3, 2] = live[4, 1] = live[5, 3] = 1.0  # user 1: none
    return (caps * live * torch.randn(caps.shape, generator=g, dtype=caps.dtype)).sum()


@pytest.mark.parametrize("kind, path", [("dense", "dense"), ("argmax", "sparse"), ("mixed", "sparse")])
def test_training_path_values_and_gradients_equal_algorithm_1(monkeypatch, kind, path):
    model = _model()
    calls = _spy(monkeypatch)
    history, mask = _batch()  # L = max_len: the maps are used whole
    caps, coupling = model.capsules(history, mask)
    _upstream(kind, caps).backward()
    assert calls[0] == "backward" and (("sparse" in calls) == (path == "sparse"))
    got_maps, got_table = model.maps.grad.clone(), model.items.item.weight.grad.clone()

    table = model.items.item.weight.detach().clone().requires_grad_()
    maps = model.maps.detach().clone().requires_grad_()
    ref, ref_c = _reference(table, maps, HISTORIES)
    _upstream(kind, ref).backward()
    torch.testing.assert_close(caps.detach(), ref.detach(), rtol=1e-6, atol=1e-9)
    for b, c in enumerate(ref_c):  # coupling over newest-first positions; padding exactly 0
        n = len(HISTORIES[b])
        torch.testing.assert_close(coupling[b, :, :n], c.detach().flip(0).T, rtol=1e-6, atol=1e-9)
        assert (coupling[b, :, n:] == 0).all()
    assert maps.grad.abs().max() > 1e-3 and table.grad.abs().max() > 1e-3
    torch.testing.assert_close(got_maps, maps.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(got_table, table.grad, rtol=1e-6, atol=1e-9)
    assert (got_table[0] == 0).all()  # padding row never learns


def test_short_batch_uses_a_slice_of_the_maps_and_sparse_grads_reach_only_its_slots(monkeypatch):
    """A batch whose L < max_len routes with maps[:L]; the other slots get exactly zero gradient."""
    model = _model(seed=3)
    calls = _spy(monkeypatch)
    short = [h[-3:] for h in HISTORIES]
    history, mask = _batch(short, length=3)
    caps, _ = model.capsules(history, mask)
    _upstream("argmax", caps).backward()
    assert "sparse" in calls
    table = model.items.item.weight.detach().clone().requires_grad_()
    maps = model.maps.detach().clone().requires_grad_()
    ref, _ = _reference(table, maps, short)
    _upstream("argmax", ref).backward()
    torch.testing.assert_close(caps.detach(), ref.detach(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(model.maps.grad, maps.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(model.items.item.weight.grad, table.grad, rtol=1e-6, atol=1e-9)
    assert (model.maps.grad[3:] == 0).all()


@pytest.mark.parametrize("frozen", ["maps", "table"])
@pytest.mark.parametrize("kind", ["dense", "argmax"])
def test_frozen_inputs_get_no_gradient_and_the_other_the_right_one(frozen, kind):
    model = _model(seed=4)
    (model.maps if frozen == "maps" else model.items.item.weight).requires_grad_(False)
    history, mask = _batch()
    caps, _ = model.capsules(history, mask)
    _upstream(kind, caps).backward()
    table = model.items.item.weight.detach().clone().requires_grad_()
    maps = model.maps.detach().clone().requires_grad_()
    ref, _ = _reference(table, maps, HISTORIES)
    _upstream(kind, ref).backward()
    if frozen == "maps":
        assert model.maps.grad is None
        torch.testing.assert_close(model.items.item.weight.grad, table.grad, rtol=1e-6, atol=1e-9)
    else:
        assert model.items.item.weight.grad is None
        torch.testing.assert_close(model.maps.grad, maps.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kind", ["dense", "argmax"])
def test_category_average_takes_the_item_tower_and_matches_the_plain_ops(monkeypatch, kind):
    """With use_category (and in sparse-gradient mode) the history goes through ItemTower; the hand-written
    routing backward then gives the gradients autograd computes on the plain ops (_route with x)."""
    out = []
    for fast in (True, False):
        model = _model(seed=5, use_category=True)
        model.item_category = torch.arange(NUM_ITEMS) % 3
        monkeypatch.setattr(comirec_dr, "_hand_written_backward", lambda device, fast=fast: fast)
        history, mask = _batch()
        caps, coupling = model.capsules(history, mask)
        _upstream(kind, caps).backward()
        out.append([caps.detach(), coupling, *(p.grad for p in model.parameters())])
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_eval_path_equals_training_path():
    model = _model(seed=6)
    history, mask = _batch()
    caps, coupling = model.capsules(history, mask)
    with torch.no_grad():
        caps0, coupling0 = model.eval().capsules(history, mask)
    torch.testing.assert_close(caps0, caps.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(coupling0, coupling, rtol=1e-12, atol=1e-14)


def test_squash_backward_equals_autograd_of_eq_4():
    g = torch.Generator().manual_seed(7)
    s = torch.randn(50, 6, generator=g, dtype=torch.float64)
    s[0] *= 1e-3  # nearly zero
    s[1] *= 40.0  # long
    grad = torch.randn(50, 6, generator=g, dtype=torch.float64)
    eps = 1e-9

    def squash_eps(x):  # eq. (4), |s|^2 / (1 + |s|^2) * s / |s| = s |s| / (1 + |s|^2), |s| as sqrt(|s|^2 + eps)
        n2 = (x * x).sum(-1, keepdim=True)
        return x * torch.sqrt(n2 + eps) / (1.0 + n2)

    _, vjp = torch.autograd.functional.vjp(squash_eps, s, grad)
    torch.testing.assert_close(comirec_dr.squash_backward(s, grad), vjp, rtol=1e-10, atol=1e-12)
    assert (comirec_dr.squash_backward(s, torch.zeros_like(s)) == 0).all()  # no gradient in, none out


def test_row_gather_equals_embedding_with_padding_idx():
    g = torch.Generator().manual_seed(8)
    table = torch.randn(9, 4, generator=g, dtype=torch.float64)
    ids = torch.tensor([[1, 3, 3, 0], [8, 0, 3, 1], [2, 2, 2, 2]]).t()  # repeats and padding, non-contiguous
    up = torch.randn(4, 3, 4, generator=g, dtype=torch.float64)
    a = table.clone().requires_grad_()
    out = comirec_dr._RowGather.apply(a, ids)
    (out * up).sum().backward()
    b = table.clone().requires_grad_()
    ref = F.embedding(ids, b, padding_idx=0)
    (ref * up).sum().backward()
    assert torch.equal(out, ref)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-14)
    assert (a.grad[0] == 0).all() and (a.grad[[4, 5, 6, 7]] == 0).all()
