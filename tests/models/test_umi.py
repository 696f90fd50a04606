"""UMI (SIGIR 2022 §3): UGANet (eq. 2), dual-attention routing (eqs. 3–6, Algorithm 1), interest refinement
(eqs. 7–9), checked against plain re-implementations, its reductions and invariances."""
from __future__ import annotations

import math

import pytest
import torch

from models.mind import b2i_routing
from models.umi import UMI, dual_attention_routing, squash
from tests.models.conftest import data_hparams, item_categories, make_batch


def _umi(**kw):
    args = dict(dim=6, num_interests=3, routing_iters=3, routing_sigma=1.0, profile_dim=3, attention_hidden=5,
                hidden_dim=7)
    args.update(kw)
    m = UMI(**data_hparams(), **args)
    m.item_category = item_categories()
    return m.eval()


def _all_ones_uganet(model):
    """Make UGANet output a_i = sigmoid(0 + 40) == 1.0 exactly in float32 for every behaviour."""
    with torch.no_grad():
        model.uganet[2].weight.zero_()
        model.uganet[2].bias.fill_(40.0)


def test_dar_matches_algorithm_1_written_plainly():
    g = torch.Generator().manual_seed(0)
    K, L, D, n = 3, 5, 4, 4
    e = torch.randn(L, D, generator=g)
    W = torch.randn(K, D, D, generator=g)
    a = torch.rand(L, generator=g)
    b0 = torch.randn(1, K, L, generator=g)
    mask = torch.tensor([[True] * n + [False] * (L - n)])
    transformed = torch.einsum("kod,ld->klo", W, e).unsqueeze(0)
    caps, _ = dual_attention_routing(transformed, a.unsqueeze(0), mask, b0, 3)
    b = b0[0].clone()
    for _ in range(3):
        v = []
        for j in range(K):
            z = sum(a[i] * math.exp(b[j, i]) / sum(math.exp(b[k, i]) for k in range(K)) * (W[j] @ e[i])
                    for i in range(n))  # eqs. (3)-(4)
            v.append(squash(z))  # eq. (6)
        b = torch.stack([torch.stack([(W[j] @ e[i]) @ v[j] for i in range(L)]) for j in range(K)])  # eq. (5)
    assert torch.allclose(caps[0], torch.stack(v), atol=1e-5)


def test_all_user_attention_equal_to_one_reduces_to_unweighted_routing():
    model = _umi()
    history, mask, prof = make_batch(lengths=[4, 8, 2], seed=1)
    _all_ones_uganet(model)
    caps, _, a = model.capsules(history, mask, prof)
    assert torch.equal(a, mask.float())
    unweighted, _, _ = model.capsules(history, mask, prof, attention=torch.ones(3, history.shape[1]))
    assert torch.allclose(caps, unweighted)
    # ... and with every W_j equal to one shared S it is exactly MIND's B2I routing of the same behaviours
    S = model.maps[0].detach().clone()
    with torch.no_grad():
        model.maps.copy_(S.expand_as(model.maps))
    caps, _, _ = model.capsules(history, mask, prof)
    e = model.item_embeddings(history)
    mind_caps, _ = b2i_routing(e @ S.T, mask, torch.ones(3, 3, dtype=torch.bool), model.initial_logits(history), 3)
    assert torch.allclose(caps, mind_caps, atol=1e-6)
    # whereas non-uniform user attention changes the interests (the test can fail)
    weighted, _, _ = model.capsules(history, mask, prof, attention=torch.rand(3, history.shape[1]))
    assert not torch.allclose(weighted, caps, atol=1e-4)


def test_uganet_eq_2_and_padding():
    model = _umi()
    history, mask, prof = make_batch(lengths=[3, 6], seed=2)
    _, c, a = model.capsules(history, mask, prof)
    assert (a[~mask] == 0).all() and (a[mask] > 0).all() and (a[mask] < 1).all()
    assert (c.permute(0, 2, 1)[~mask] == 0).all()
    # eq. (2) by hand for one behaviour
    e_i = model.item_embeddings(history[1, 2])
    e_u = torch.cat([model.profile.fields[c](prof[1, c]) for c in range(2)])
    W1, b1 = model.uganet[0].weight, model.uganet[0].bias
    W2, b2 = model.uganet[2].weight[0], model.uganet[2].bias[0]
    expected = torch.sigmoid(W2 @ torch.relu(W1 @ torch.cat([e_i, e_u]) + b1) + b2)
    assert torch.allclose(a[1, 2], expected, atol=1e-6)


def test_interest_refinement_eqs_7_to_9_by_hand():
    model = _umi()
    history, mask, prof = make_batch(lengths=[5], seed=3)
    interests = model.user_interests(history, mask, prof)[0][0]
    caps = model.capsules(history, mask, prof)[0][0]
    fields = [model.profile.fields[c](prof[0, c]) for c in range(2)]
    for k in range(3):
        d = torch.sigmoid(model.relevance(torch.cat([caps[k], *fields])))  # eq. (7): (C,)
        e_u_k = torch.cat([d[c] * fields[c] for c in range(2)])  # eq. (8)
        o = model.refine(torch.cat([e_u_k, caps[k]]))  # eq. (9)
        assert torch.allclose(interests[k], o, atol=1e-6)


def test_eval_invariant_to_order_and_padding_and_deterministic():
    model = _umi()
    history, mask, prof = make_batch(lengths=[8, 3, 5], seed=4)
    base = model.user_interests(history, mask, prof)[0]
    perm = history.clone()
    perm[0, :8] = history[0, [3, 1, 7, 0, 2, 6, 5, 4]]
    perm[2, :5] = history[2, [4, 3, 2, 1, 0]]
    assert torch.allclose(model.user_interests(perm, mask, prof)[0], base, atol=1e-5)
    longer = torch.cat([history, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    assert torch.allclose(model.user_interests(longer, longer != 0, prof)[0], base, atol=1e-6)
    model.train()
    assert not torch.allclose(model.user_interests(history, mask, prof)[0], base, atol=1e-4)  # random init


def test_profile_changes_interests_and_no_profile_works():
    model = _umi()
    history, mask, prof = make_batch(lengths=[6, 6], seed=5)
    other = prof.clone()
    other[:, 0] = (prof[:, 0] + 1) % 3
    other[:, 1] = (prof[:, 1] + 1) % 4
    assert not torch.allclose(model.user_interests(history, mask, prof)[0],
                              model.user_interests(history, mask, other)[0], atol=1e-5)
    bare = UMI(**data_hparams(profile=[]), dim=6, num_interests=3).eval()
    out, imask = bare.user_interests(history, mask, torch.zeros(2, 0, dtype=torch.long))
    assert out.shape == (2, 3, 6) and imask.all() and bare.relevance is None


def test_constructor_rejects_bad_values():
    for key, value in [("num_interests", 0), ("routing_iters", 0), ("routing_sigma", -0.5), ("attention_hidden", 0)]:
        with pytest.raises(ValueError, match=key):
            _umi(**{key: value})


def _umi_capsules_plainly(model, history, mask, profile, init_logits):
    """UMI's capsules written the straightforward way: one (B*L, D) @ (D, K*D) map, a (B, K, L, D)-contiguous
    copy, and 4-D matmuls in the routing (the reference for the interest-major fast path)."""
    e = model.items(history)
    a = model.user_attention(e, model.profile(profile))
    K, D = model.maps.shape[0], model.maps.shape[1]
    t = (e @ model.maps.reshape(K * D, D).T).unflatten(-1, (K, D)).permute(0, 2, 1, 3).contiguous()
    real = mask.unsqueeze(1).float()
    a = a.unsqueeze(1) * real
    fixed, a_fixed = t.detach(), a.detach()
    logits = init_logits
    for it in range(model.routing_iters):
        last = it == model.routing_iters - 1
        c = torch.softmax(logits, dim=1) * real
        w = c * (a if last else a_fixed)
        caps = squash((w.unsqueeze(2) @ (t if last else fixed)).squeeze(2))
        if not last:
            logits = (fixed @ caps.unsqueeze(-1)).squeeze(-1)
    return caps, c


@pytest.mark.parametrize("batch", [2, 6])  # 2 * MAX_LEN ids < NUM_ITEMS: per-id path; 6: the per-item table
@pytest.mark.parametrize("iters", [1, 3])
def test_interest_major_routing_equals_plain_routing(iters, batch):
    """The fast path (W_j e_i computed interest-major, per catalogue item when that is cheaper, routed
    without permute copies) gives the capsules,
    coupling coefficients and parameter gradients of the plain formulation, in training mode (random init
    logits: the same draws, since the fast path consumes the generator identically)."""
    model = _umi(routing_iters=iters).train()
    history, mask, prof = make_batch(batch=batch, seed=4)
    D = model.maps.shape[1]
    target = torch.randn(batch, model.maps.shape[0], D, generator=torch.Generator().manual_seed(5))
    out = []
    for fast in (True, False):
        model.zero_grad()
        torch.manual_seed(11)
        if fast:
            caps, c, _ = model.capsules(history, mask, prof)
        else:
            caps, c = _umi_capsules_plainly(model, history, mask, prof, model.initial_logits(history))
        (caps * target).sum().backward()
        out.append((caps.detach(), c.detach(), model.maps.grad.clone(), model.items.item.weight.grad.clone(),
                    model.uganet[0].weight.grad.clone()))
    for x, y in zip(*out):
        assert torch.allclose(x, y, atol=1e-6, rtol=1e-5)
    assert all(g.abs().sum() > 0 for g in out[0][2:])
    assert (out[0][3][0] == 0).all()  # padding row 0 of the item table gets no gradient
