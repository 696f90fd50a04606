"""MIND (CIKM 2019 §3): squash (eq. 7), dynamic interest number (eq. 9), B2I routing (eq. 8, Algorithm 1)
and the choices docs/MODELS.md records (softmax over interests, stop-gradient, eval-mode init, masking)."""
from __future__ import annotations

import math

import pytest
import torch

from models.mind import MIND, b2i_routing, dynamic_interest_number, squash
from tests.models.conftest import data_hparams, item_categories, make_batch


def _mind(**kw):
    args = dict(dim=8, num_interests=4, routing_iters=3, routing_sigma=1.0, profile_dim=3, hidden_dim=16)
    args.update(kw)
    m = MIND(**data_hparams(), **args)
    m.item_category = item_categories()
    return m


def test_squash_keeps_direction_and_maps_length_into_unit_interval():
    d = torch.randn(50, 7)
    z = d / d.norm(dim=-1, keepdim=True) * torch.logspace(-3, 3, 50).unsqueeze(1)  # increasing lengths
    v = squash(z)
    n = z.norm(dim=-1)
    assert torch.allclose(v / v.norm(dim=-1, keepdim=True), z / n.unsqueeze(1), atol=1e-5)
    length = v.norm(dim=-1)
    assert (length >= 0).all() and (length < 1).all()
    assert torch.allclose(length, n ** 2 / (1 + n ** 2), rtol=1e-4, atol=1e-7)  # eq. (7)
    assert torch.all(length[1:] >= length[:-1])  # increasing in |z|
    zero = torch.zeros(2, 3, requires_grad=True)
    out = squash(zero)
    out.sum().backward()
    assert torch.equal(out, torch.zeros(2, 3)) and torch.isfinite(zero.grad).all()


def test_dynamic_interest_number_counts():
    lengths = torch.arange(0, 70)
    for K in (1, 2, 4, 6):
        got = dynamic_interest_number(lengths, K)
        expected = [max(1, min(K, math.floor(math.log2(n)))) if n > 0 else 1 for n in range(70)]
        assert got.tolist() == expected
    # exact at powers of two (no float log2 rounding)
    assert dynamic_interest_number(torch.tensor([3, 4, 7, 8, 15, 16]), 10).tolist() == [1, 2, 2, 3, 3, 4]


def test_dynamic_interests_mask_capsules_everywhere():
    model = _mind().eval()
    history, mask, prof = make_batch(lengths=[1, 2, 3, 4, 7, 8, 8], seed=3)
    interests, imask = model.user_interests(history, mask, prof)
    assert imask.sum(1).tolist() == [1, 1, 1, 2, 2, 3, 3]
    assert imask[:, 0].all() and (imask.long().diff(dim=1) <= 0).all()  # the first K'_u are active
    assert (interests[~imask] == 0).all() and (interests[imask].abs().sum(-1) > 0).all()
    caps, w, _ = model.capsules(history, mask)
    # inactive capsules receive no routing weight; every real behaviour spreads exactly 1 over active ones
    assert (w.permute(0, 2, 1)[~imask.unsqueeze(1).expand(-1, w.shape[2], -1)] == 0).all()
    assert torch.allclose(w.sum(1)[mask], torch.ones(int(mask.sum())), atol=1e-6)
    assert (w.sum(1)[~mask] == 0).all()  # padding gets nothing
    assert (caps[~imask] == 0).all()
    # without dynamic K every capsule is active
    fixed = _mind(dynamic_interests=False).eval()
    assert fixed.user_interests(history, mask, prof)[1].all()


def test_b2i_routing_matches_algorithm_1_written_plainly():
    g = torch.Generator().manual_seed(0)
    L, K, D, r = 5, 3, 4, 3
    e = torch.randn(1, L, D, generator=g)
    S = torch.randn(D, D, generator=g)
    b0 = torch.randn(1, K, L, generator=g)
    n = 4  # one padded position
    mask = torch.tensor([[True] * n + [False] * (L - n)])
    caps, _ = b2i_routing(e @ S.T, mask, torch.ones(1, K, dtype=torch.bool), b0, r)
    b = b0[0, :, :n].T.clone()  # (i, j)
    for _ in range(r):
        u = []
        for j in range(K):
            z = sum(math.exp(b[i, j]) / sum(math.exp(b[i, k]) for k in range(K)) * (S @ e[0, i]) for i in range(n))
            u.append(z * z.norm() / (1 + z.norm() ** 2))
        for i in range(n):
            for j in range(K):
                b[i, j] = u[j] @ S @ e[0, i]  # eq. (8), replaced (not accumulated)
    assert torch.allclose(caps[0], torch.stack(u), atol=1e-5)


def test_routing_stop_gradient_treats_coupling_as_constant():
    g = torch.Generator().manual_seed(1)
    beh = torch.randn(2, 6, 5, generator=g, requires_grad=True)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    imask = torch.ones(2, 3, dtype=torch.bool)
    b0 = torch.randn(2, 3, 6, generator=g)
    target = torch.randn(2, 3, 5, generator=g)
    caps, w = b2i_routing(beh, mask, imask, b0, 3)
    (caps * target).sum().backward()
    got = beh.grad.clone()
    beh.grad = None
    w_const = w.detach()
    ref = squash(torch.einsum("bkl,bld->bkd", w_const, beh))
    assert torch.allclose(ref, caps)
    (ref * target).sum().backward()
    assert torch.allclose(got, beh.grad, atol=1e-6)
    assert not w.requires_grad


def test_eval_routing_invariant_to_order_and_extra_padding():
    model = _mind().eval()
    history, mask, prof = make_batch(lengths=[8, 5, 3, 7], seed=4)
    base, bmask = model.user_interests(history, mask, prof)
    g = torch.Generator().manual_seed(9)
    perm_h = history.clone()
    for b in range(history.shape[0]):
        n = int(mask[b].sum())
        perm_h[b, :n] = history[b, torch.randperm(n, generator=g)]
    perm, pmask = model.user_interests(perm_h, mask, prof)
    assert torch.equal(bmask, pmask)
    assert torch.allclose(base, perm, atol=1e-5)
    padded_h = torch.cat([history, torch.zeros(4, 6, dtype=torch.long)], dim=1)
    padded, _ = model.user_interests(padded_h, padded_h != 0, prof)
    assert torch.allclose(base, padded, atol=1e-6)
    # the eval init is the fixed item-keyed table, scaled by sigma
    assert torch.equal(model.initial_logits(history), model.routing_init[history].transpose(1, 2))


def test_training_init_is_random():
    model = _mind(dynamic_interests=False)
    history, mask, prof = make_batch(lengths=[8, 8], seed=5)
    model.train()
    a, b = model.capsules(history, mask)[0], model.capsules(history, mask)[0]
    assert not torch.allclose(a, b)


def test_routing_groups_behaviours_of_separated_clusters():
    # two planted interests: behaviours near two orthogonal directions; the coupling coefficients of the
    # Gaussian-initialised routing should assign each behaviour to one capsule by its cluster
    g = torch.Generator().manual_seed(0)
    purity = []
    for _ in range(40):
        labels = torch.randint(0, 2, (10,), generator=g)
        centres = torch.eye(8)[:2] * 3.0
        e = centres[labels] + 0.1 * torch.randn(10, 8, generator=g)
        b0 = torch.randn(1, 2, 10, generator=g)
        _, w = b2i_routing(e[None], torch.ones(1, 10, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool), b0, 3)
        assign = w[0].argmax(0)
        purity.append(max(float((assign == labels).float().mean()), float((assign != labels).float().mean())))
    assert sum(purity) / len(purity) > 0.95, purity


def test_sigma_zero_collapses_capsules_as_the_paper_warns():
    # §3.3.2: zero init with a shared S makes all capsules identical -- the reason for the Gaussian init
    model = _mind(dynamic_interests=False, routing_sigma=0.0).eval()
    history, mask, prof = make_batch(lengths=[8], seed=6)
    caps = model.capsules(history, mask)[0][0]
    assert torch.allclose(caps, caps[:1].expand_as(caps), atol=1e-6)


def test_constructor_rejects_bad_values():
    for key, value in [("num_interests", 0), ("routing_iters", 0), ("routing_sigma", -1.0)]:
        with pytest.raises(ValueError, match=key):
            _mind(**{key: value})


@pytest.mark.parametrize("batch", [2, 9])  # 2 * MAX_LEN ids < NUM_ITEMS: per-id path; 9: the per-item table
def test_bilinear_on_the_item_table_equals_bilinear_per_behaviour(batch):
    """S e_i computed once per catalogue item and gathered gives the interests and parameter gradients of
    mapping every behaviour (training mode, the same routing-init draws)."""
    model = _mind().train()
    history, mask, prof = make_batch(batch=batch, seed=6)
    target = torch.randn(batch, 4, 8, generator=torch.Generator().manual_seed(3))
    out = []
    for fast in (True, False):
        model.zero_grad()
        torch.manual_seed(9)
        if fast:
            caps, w, _ = model.capsules(history, mask)
        else:
            e = (model.items.item(history) + model.items.category(model.items.item_category[history])) / 2
            behaviours = model.bilinear(e)
            caps, w = b2i_routing(behaviours, mask, model.interest_mask(mask), model.initial_logits(history),
                                  model.routing_iters)
        (caps * target).sum().backward()
        out.append([caps.detach(), w.detach()] + [p.grad.clone() for p in
                                                  (model.bilinear.weight, model.items.item.weight,
                                                   model.items.category.weight)])
    for a, b in zip(*out):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    assert all(g.abs().sum() > 0 for g in out[0][2:])
