"""ComiRec (KDD 2020 §3.2): CapsNet routing with per-pair maps (eqs. 1–4, Algorithm 1) and the
self-attentive extractor (eqs. 5–7), checked against plain re-implementations and their invariances."""
from __future__ import annotations

import math

import pytest
import torch

from models.comirec_dr import ComiRecDR, capsnet_routing, recency_order, squash
from models.comirec_sa import ComiRecSA
from tests.models.conftest import data_hparams, item_categories, make_batch


def _dr(**kw):
    m = ComiRecDR(**data_hparams(), **{"dim": 6, "num_interests": 3, "routing_iters": 3, **kw})
    m.item_category = item_categories()
    return m.eval()


def _sa(**kw):
    m = ComiRecSA(**data_hparams(), **{"dim": 6, "num_interests": 3, "attention_dim": 10, **kw})
    m.item_category = item_categories()
    return m.eval()


def test_recency_order():
    history = torch.tensor([[4, 5, 6, 0], [7, 0, 0, 0], [1, 2, 3, 9]])
    recent, mask = recency_order(history, history != 0)
    assert recent.tolist() == [[6, 5, 4, 0], [7, 0, 0, 0], [9, 3, 2, 1]]
    assert torch.equal(mask, history != 0)


def test_dr_matches_algorithm_1_written_plainly():
    model = _dr()
    history, mask, prof = make_batch(lengths=[5, 8, 1], seed=1)
    caps = model.user_interests(history, mask, prof)[0]
    E, W = model.item_embeddings, model.maps.detach()
    K = W.shape[1]
    for b in range(history.shape[0]):
        items = [int(x) for x in history[b] if x != 0]
        n = len(items)
        # eq. (1): behaviour i (oldest first) is the (n-1-i)-th most recent -> map W[n-1-i, j]
        pred = [[W[n - 1 - i, j] @ E(torch.tensor(items[i])) for j in range(K)] for i in range(n)]
        bl = [[0.0] * K for _ in range(n)]  # line 1
        for _ in range(3):
            c = [[math.exp(bl[i][j]) / sum(math.exp(x) for x in bl[i]) for j in range(K)] for i in range(n)]  # eq. (3)
            v = [squash(sum(c[i][j] * pred[i][j] for i in range(n))) for j in range(K)]  # eqs. (2), (4)
            bl = [[bl[i][j] + float(v[j] @ pred[i][j]) for j in range(K)] for i in range(n)]  # line 6
        assert torch.allclose(caps[b], torch.stack(v), atol=1e-5), b


def test_dr_padding_gets_no_coupling_and_extra_padding_changes_nothing():
    model = _dr()
    history, mask, prof = make_batch(lengths=[2, 5, 4], seed=2, max_len=5)
    caps, coupling = model.capsules(history, mask)
    assert (coupling.permute(0, 2, 1)[~mask] == 0).all()  # (n_pad, K): padding gets no coupling
    real = coupling.permute(0, 2, 1)[mask]  # (n_real, K) -- left-aligned mask equals the newest-first mask
    assert torch.allclose(real.sum(-1), torch.ones(real.shape[0]), atol=1e-6)
    longer = torch.cat([history, torch.zeros(3, 3, dtype=torch.long)], dim=1)
    assert torch.allclose(model.user_interests(longer, longer != 0, prof)[0],
                          model.user_interests(history, mask, prof)[0], atol=1e-6)
    # zero init: eval and train give the same interests (nothing random)
    model.train()
    assert torch.allclose(model.user_interests(history, mask, prof)[0], caps, atol=1e-6)


def test_dr_stop_gradient_and_max_len():
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(2, 3, 4, 5, generator=g, requires_grad=True)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    target = torch.randn(2, 3, 5, generator=g)
    caps, c = capsnet_routing(pred, mask, 3)
    (caps * target).sum().backward()
    got = pred.grad.clone()
    pred.grad = None
    ref = squash(torch.einsum("bkl,bkld->bkd", c.detach(), pred))
    (ref * target).sum().backward()
    assert torch.allclose(ref, caps) and torch.allclose(got, pred.grad, atol=1e-6)
    model = _dr()
    too_long = torch.ones(1, 9, dtype=torch.long)
    with pytest.raises(ValueError, match="max_len"):
        model.user_interests(too_long, too_long != 0, torch.zeros(1, 2, dtype=torch.long))


def test_sa_attention_is_zero_on_padding_and_matches_eqs_5_to_7():
    model = _sa()
    history, mask, prof = make_batch(lengths=[3, 8, 1, 6], seed=4)
    a, h = model.attention(history, mask)
    assert (a[~mask] == 0).all()  # exactly zero, every interest
    assert torch.allclose(a.sum(1), torch.ones(4, 3), atol=1e-6)
    interests = model.user_interests(history, mask, prof)[0]
    W1, W2 = model.w1.weight.detach(), model.w2.weight.detach()  # (d_a, D), (K, d_a)
    for b in range(4):
        items = [int(x) for x in history[b] if x != 0]
        n = len(items)
        H = model.item_embeddings(torch.tensor(items)).T  # (D, n)
        P = model.positions.weight[torch.tensor([n - 1 - i for i in range(n)])].T  # newest has position 0
        A = torch.softmax(W2 @ torch.tanh(W1 @ (H + P)), dim=1).T  # eq. (6): (n, K)
        assert torch.allclose(interests[b], (H @ A).T, atol=1e-5)  # eq. (7): V_u = H A


def test_sa_extra_padding_changes_nothing_but_order_matters():
    model = _sa()
    history, mask, prof = make_batch(lengths=[3, 5], seed=5, max_len=5)
    base = model.user_interests(history, mask, prof)[0]
    longer = torch.cat([history, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    assert torch.allclose(model.user_interests(longer, longer != 0, prof)[0], base, atol=1e-6)
    swapped = history.clone()
    swapped[1, :5] = history[1, [4, 3, 2, 1, 0]]
    assert not torch.allclose(model.user_interests(swapped, mask, prof)[0][1], base[1], atol=1e-4)


def test_sa_empty_history_gives_finite_zero_interests():
    model = _sa()
    history = torch.zeros(2, 4, dtype=torch.long)
    history[1, 0] = 3
    interests = model.user_interests(history, history != 0, torch.zeros(2, 2, dtype=torch.long))[0]
    assert torch.isfinite(interests).all() and (interests[0] == 0).all()


def test_dr_maps_start_near_identity_but_differ_per_interest():
    model = ComiRecDR(**data_hparams(), dim=16, num_interests=4)
    W = model.maps.detach()  # (max_len, K, D, D)
    assert (W.mean((0, 1)) - torch.eye(16)).abs().max() < 0.2  # centred on the identity
    assert not torch.allclose(W[0, 0], W[0, 1], atol=0.05)  # interests differ, so the capsules do
    history, mask, prof = make_batch(lengths=[8], seed=6)
    caps = model.eval().user_interests(history, mask, prof)[0][0]
    assert not torch.allclose(caps[0], caps[1], atol=1e-3)


def _dr_interests_plainly(model, history, mask):
    """ComiRec-DR's user tower written the straightforward way: (B, K, L, D)-contiguous predictions and
    4-D matmuls in the routing (the layout-free reference for the position-major fast path)."""
    recent, rmask = recency_order(history, mask)
    e = model.items(recent)
    L = history.shape[1]
    pred = torch.einsum("lkod,bld->bklo", model.maps[:L], e).contiguous()  # eq. (1), (B, K, L, D)
    fixed = pred.detach()
    real = rmask.unsqueeze(1).float()
    logits = torch.zeros(pred.shape[:3])
    for it in range(model.routing_iters):
        last = it == model.routing_iters - 1
        c = torch.softmax(logits, dim=1) * real
        caps = squash((c.unsqueeze(2) @ (pred if last else fixed)).squeeze(2))
        if not last:
            logits = logits + (fixed @ caps.unsqueeze(-1)).squeeze(-1)
    return caps, c


@pytest.mark.parametrize("iters", [1, 3])
def test_dr_position_major_routing_equals_plain_routing(iters):
    """The fast path (predictions kept position-major, a custom backward for the last weighted sum) gives
    the interests, coupling coefficients and parameter gradients of the plain formulation."""
    model = _dr(routing_iters=iters, dim=8).train()
    history, mask, prof = make_batch(batch=6, seed=4)
    target = torch.randn(6, 3, 8, generator=torch.Generator().manual_seed(5))
    out = []
    for fast in (True, False):
        model.zero_grad()
        if fast:
            caps, c = model.capsules(history, mask)
        else:
            caps, c = _dr_interests_plainly(model, history, mask)
        (caps * target).sum().backward()
        out.append((caps.detach(), c.detach(), model.maps.grad.clone(), model.items.item.weight.grad.clone()))
    for a, b in zip(*out):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    assert out[0][2].abs().sum() > 0 and out[0][3].abs().sum() > 0
    # no grad (eval, serving): the plain batched matmul path, same values
    with torch.no_grad():
        assert torch.allclose(model.capsules(history, mask)[0], out[1][0], atol=1e-6)
