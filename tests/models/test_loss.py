"""The training objective: interest selection (MIND §3.4, ComiRec eq. 8, UMI eq. 10), harder negatives (UMI
eqs. 12–13), sampled softmax with accidental-hit removal, log-Q and in-batch negatives, and the samplers."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.loss import NegativeSampler, interest_weights, sampled_softmax_loss, select_interest

B, K, D, N = 5, 4, 6, 40


def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    interests = torch.randn(B, K, D, generator=g)
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[1, 2:] = False
    mask[3, 1:] = False
    items = torch.randn(N, D, generator=g)
    pos_ids = torch.tensor([3, 7, 7, 12, 39])
    return interests, mask, items, pos_ids


def _full_softmax_reference(interests, mask, items, pos_ids, p, harder):
    """Plain loops: -log softmax over all real items 1..N-1 (padding 0 excluded)."""
    losses = []
    for b in range(B):
        ks = [k for k in range(K) if mask[b, k]]
        V = interests[b, ks]  # (K', D)

        def user_vec(e):
            c = V @ e
            if p is None:
                return V[int(torch.argmax(c))]
            w = torch.softmax(p * c, 0)
            return (w[:, None] * V).sum(0)

        v_pos = user_vec(items[pos_ids[b]])
        logits = []
        for j in range(1, N):
            v = user_vec(items[j]) if (harder and j != pos_ids[b]) else v_pos
            logits.append(v @ items[j])
        logits = torch.stack(logits)
        losses.append(-torch.log_softmax(logits, 0)[pos_ids[b] - 1])
    return torch.stack(losses).mean()


@pytest.mark.parametrize("p", [None, 0.0, 1.5, 4.0])
@pytest.mark.parametrize("harder", [False, True])
def test_every_item_as_negative_equals_full_softmax(p, harder):
    interests, mask, items, pos_ids = _setup()
    neg_ids = torch.arange(1, N)
    loss = sampled_softmax_loss(interests, mask, pos_ids, items[pos_ids], neg_ids, items[neg_ids],
                                attention_pow=p, harder_negatives=harder)
    ref = _full_softmax_reference(interests, mask, items, pos_ids, p, harder)
    assert torch.allclose(loss, ref, atol=1e-5), (loss, ref)
    # and the plain (non-harder) case equals F.cross_entropy on the full logit matrix
    if not harder:
        v = select_interest(interests, mask, items[pos_ids], p)
        ce = F.cross_entropy(v @ items[1:].T, pos_ids - 1)
        assert torch.allclose(loss, ce, atol=1e-5)


def test_accidental_hits_removed():
    interests, mask, items, pos_ids = _setup()
    neg_ids = torch.tensor([1, 3, 7, 7, 20, 12])  # 3, 7, 12 are positives of some rows
    loss = sampled_softmax_loss(interests, mask, pos_ids, items[pos_ids], neg_ids, items[neg_ids],
                                attention_pow=None, harder_negatives=False)
    v = select_interest(interests, mask, items[pos_ids], None)
    manual = []
    for b in range(B):
        keep = [int(j) for j in neg_ids if int(j) != int(pos_ids[b])]
        logits = torch.cat([(v[b] @ items[pos_ids[b]]).view(1), items[keep] @ v[b]])
        manual.append(-torch.log_softmax(logits, 0)[0])
    assert torch.allclose(loss, torch.stack(manual).mean(), atol=1e-6)
    # without the removal the value would differ (the test can fail)
    naive = torch.stack([-torch.log_softmax(torch.cat([(v[b] @ items[pos_ids[b]]).view(1), items[neg_ids] @ v[b]]), 0)[0]
                         for b in range(B)]).mean()
    assert not torch.allclose(loss, naive, atol=1e-4)


def test_log_q_correction_by_hand():
    interests, mask, items, pos_ids = _setup()
    neg_ids = torch.tensor([1, 2, 5, 30])
    pos_lq = torch.log(torch.tensor([0.1, 0.2, 0.2, 0.05, 0.01]))
    neg_lq = torch.log(torch.tensor([0.3, 0.1, 0.02, 0.001]))
    loss = sampled_softmax_loss(interests, mask, pos_ids, items[pos_ids], neg_ids, items[neg_ids],
                                attention_pow=2.0, harder_negatives=False, pos_log_q=pos_lq, neg_log_q=neg_lq,
                                temperature=0.5)
    v = select_interest(interests, mask, items[pos_ids], 2.0)
    manual = []
    for b in range(B):
        logits = torch.cat([(v[b] @ items[pos_ids[b]] - pos_lq[b]).view(1), items[neg_ids] @ v[b] - neg_lq]) / 0.5
        manual.append(-torch.log_softmax(logits, 0)[0])
    assert torch.allclose(loss, torch.stack(manual).mean(), atol=1e-5)


@pytest.mark.parametrize("harder", [False, True])
def test_in_batch_negatives_by_hand(harder):
    interests, mask, items, pos_ids = _setup()  # rows 1 and 2 share positive 7
    neg_ids = torch.tensor([4, 7])
    blq = torch.log(torch.tensor([0.1, 0.3, 0.3, 0.2, 0.1]))
    loss = sampled_softmax_loss(interests, mask, pos_ids, items[pos_ids], neg_ids, items[neg_ids],
                                attention_pow=None, harder_negatives=harder, in_batch=True, batch_log_q=blq)
    v = select_interest(interests, mask, items[pos_ids], None)
    manual = []
    for b in range(B):
        V = interests[b][mask[b]]

        def score(j):
            return (V @ items[j]).max() if harder else v[b] @ items[j]

        logits = [v[b] @ items[pos_ids[b]]]
        logits += [score(j) for j in neg_ids if int(j) != int(pos_ids[b])]
        logits += [score(pos_ids[c]) - blq[c] for c in range(B) if int(pos_ids[c]) != int(pos_ids[b])]
        manual.append(-torch.log_softmax(torch.stack(logits), 0)[0])
    assert torch.allclose(loss, torch.stack(manual).mean(), atol=1e-5)


@pytest.mark.parametrize("p", [None, 0.5, 3.0])
def test_harder_negatives_with_one_interest_equal_plain_loss(p):
    g = torch.Generator().manual_seed(1)
    interests = torch.randn(B, 1, D, generator=g)
    mask = torch.ones(B, 1, dtype=torch.bool)
    items = torch.randn(N, D, generator=g)
    pos_ids = torch.tensor([1, 2, 3, 4, 5])
    neg_ids = torch.tensor([9, 10, 11, 3])
    kw = dict(attention_pow=p, in_batch=True)
    a = sampled_softmax_loss(interests, mask, pos_ids, items[pos_ids], neg_ids, items[neg_ids], harder_negatives=True, **kw)
    b = sampled_softmax_loss(interests, mask, pos_ids, items[pos_ids], neg_ids, items[neg_ids], harder_negatives=False, **kw)
    assert torch.allclose(a, b, atol=1e-6)
    # with K = 4 harder negatives make the loss larger (each negative meets its best interest)
    interests4 = torch.randn(B, 4, D, generator=g)
    mask4 = torch.ones(B, 4, dtype=torch.bool)
    h = sampled_softmax_loss(interests4, mask4, pos_ids, items[pos_ids], neg_ids, items[neg_ids],
                             attention_pow=None, harder_negatives=True)
    plain = sampled_softmax_loss(interests4, mask4, pos_ids, items[pos_ids], neg_ids, items[neg_ids],
                                 attention_pow=None, harder_negatives=False)
    assert h > plain


def test_label_aware_attention_limits():
    interests, mask, items, pos_ids = _setup()
    target = items[pos_ids]
    # p = 0: the mean of the unmasked interests
    v0 = select_interest(interests, mask, target, 0.0)
    mean = (interests * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert torch.allclose(v0, mean, atol=1e-6)
    # large p tends to the argmax (hard) selection
    hard = select_interest(interests, mask, target, None)
    assert torch.allclose(select_interest(interests, mask, target, float("inf")), hard)
    err = [float((select_interest(interests, mask, target, p) - hard).abs().max()) for p in (1.0, 10.0, 100.0, 1000.0)]
    assert err[-1] < 1e-4 and err == sorted(err, reverse=True), err


def test_negative_compatibilities_are_well_defined():
    interests = -torch.rand(2, 3, 4) - 0.1  # every compatibility with a positive target is negative
    target = torch.rand(2, 4) + 0.1
    mask = torch.ones(2, 3, dtype=torch.bool)
    interests.requires_grad_(True)
    for p in (0.0, 0.5, 1.0, 2.0, 3.0):
        v = select_interest(interests, mask, target, p)
        assert torch.isfinite(v).all()
        v.sum().backward()
        assert torch.isfinite(interests.grad).all()
    # the weight is increasing in the compatibility even when all are negative (no sign flip of pow)
    compat = torch.tensor([[-3.0, -1.0, -2.0]]).unsqueeze(-1)
    w = interest_weights(compat, torch.ones(1, 3, dtype=torch.bool), 2.0)[0, :, 0]
    assert w[1] > w[2] > w[0]


@pytest.mark.parametrize("p", [None, 0.0, 2.0, 1e6])
def test_masked_interests_never_selected(p):
    interests, mask, items, pos_ids = _setup()
    interests = interests.clone()
    target = items[pos_ids]
    # make the masked interests the best match by far
    interests[1, 3] = target[1] * 100
    interests[3, 2] = target[3] * 100
    w = interest_weights(torch.einsum("bkd,bd->bk", interests, target).unsqueeze(-1), mask, p)[..., 0]
    assert (w[~mask] == 0).all()
    assert torch.allclose(w.sum(1), torch.ones(B))
    v = select_interest(interests, mask, target, p)
    assert torch.isfinite(v).all()
    assert torch.allclose(v[3], interests[3, 0])  # row 3 has one unmasked interest
    # harder negatives never use a masked interest either: compare with the masked interests deleted
    neg_ids = torch.arange(1, N)
    kw = dict(attention_pow=p, harder_negatives=True)
    full = sampled_softmax_loss(interests, mask, pos_ids, target, neg_ids, items[neg_ids], **kw)
    zeroed = interests.masked_fill(~mask[..., None], -1e3)
    assert torch.allclose(full, sampled_softmax_loss(zeroed, mask, pos_ids, target, neg_ids, items[neg_ids], **kw))


def test_sampler_uniform_and_popularity():
    counts = torch.tensor([0, 50, 0, 10, 5, 100])
    g = torch.Generator().manual_seed(0)
    for kind in ("uniform", "popularity", "log_uniform"):
        s = NegativeSampler(kind, counts)
        ids = s.sample(20000, g)
        assert ids.dtype == torch.long and ids.min() >= 1 and ids.max() <= 5
        probs = s.log_q(torch.arange(1, 6)).exp()
        assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-5)
        assert s.log_q(torch.tensor([0])).item() == float("-inf")
        freq = torch.bincount(ids, minlength=6)[1:].float() / ids.numel()
        assert torch.allclose(freq, probs, atol=0.015), (kind, freq, probs)
    pop = NegativeSampler("popularity", counts).log_q(torch.arange(1, 6)).exp()
    assert torch.allclose(pop, torch.tensor([51.0, 1, 11, 6, 101]) / 170)
    # log-uniform: P(rank r) = log((r+2)/(r+1)) / log(n+1), ranks by descending count (ties by id)
    lu = NegativeSampler("log_uniform", counts).log_q(torch.arange(1, 6)).exp()
    rank = torch.tensor([1, 4, 2, 3, 0])  # item 5 most popular, then 1, 3, 4, 2
    expected = torch.log((rank + 2.0) / (rank + 1.0)) / math.log(6)
    assert torch.allclose(lu, expected, atol=1e-6)
    assert torch.allclose(NegativeSampler("uniform", 6).log_q(torch.arange(1, 6)).exp(), torch.full((5,), 0.2))


def test_sampler_rejects_bad_input():
    with pytest.raises(ValueError, match="kind"):
        NegativeSampler("zipf", 10)
    with pytest.raises(ValueError, match="counts"):
        NegativeSampler("popularity", 10)
    with pytest.raises(ValueError, match="num_items"):
        NegativeSampler("uniform", 1)


def _one_hot_reference_loss(interests, mask, pos_ids, pos_emb, neg_ids, neg_emb, harder):
    """The straightforward hard selection: a one-hot of ``argmax`` times the compatibilities, summed over K
    (ComiRec eq. 8, UMI eqs. 10 and 12), for the user vector and, with ``harder``, for every negative."""
    def one_hot(compat):  # (B, K, N)
        best = compat.masked_fill(~mask[..., None], float("-inf")).argmax(dim=1, keepdim=True)
        return torch.zeros_like(compat).scatter_(1, best, 1.0)

    c_pos = torch.einsum("bkd,bd->bk", interests, pos_emb).unsqueeze(-1)
    user = torch.einsum("bk,bkd->bd", one_hot(c_pos).squeeze(-1), interests)
    if harder:
        c_neg = torch.einsum("bkd,nd->bkn", interests, neg_emb)
        neg_logit = (one_hot(c_neg) * c_neg).sum(1)
    else:
        neg_logit = user @ neg_emb.T
    neg_logit = neg_logit.masked_fill(neg_ids[None, :] == pos_ids[:, None], float("-inf"))
    logits = torch.cat([(user * pos_emb).sum(-1, keepdim=True), neg_logit], dim=1)
    return -F.log_softmax(logits, dim=1)[:, 0].mean()


@pytest.mark.parametrize("harder", [False, True])
def test_hard_selection_by_gather_equals_one_hot_sum(harder):
    """The gather-based hard selection (max(dim).indices) gives the same loss and gradients as the one-hot
    formulation, ties (two identical interests) and masked interests included."""
    interests, mask, items, pos_ids = _setup(3)
    interests = interests.clone()
    interests[0, 0] = interests[0, 2] = 3 * items[pos_ids[0]]  # exact ties, and the positive's best interest
    interests[2, 1] = interests[2, 3]
    neg_ids = torch.tensor([1, 3, 7, 9, 20, 39])
    out = []
    for fn in (sampled_softmax_loss, _one_hot_reference_loss):
        v = interests.clone().requires_grad_(True)
        e = items.clone().requires_grad_(True)
        if fn is sampled_softmax_loss:
            loss = fn(v, mask, pos_ids, e[pos_ids], neg_ids, e[neg_ids], attention_pow=None, harder_negatives=harder)
        else:
            loss = fn(v, mask, pos_ids, e[pos_ids], neg_ids, e[neg_ids], harder)
        loss.backward()
        out.append((loss.detach(), v.grad, e.grad))
    (l1, gv1, ge1), (l2, gv2, ge2) = out
    assert torch.allclose(l1, l2, atol=1e-6, rtol=0)
    assert torch.allclose(gv1, gv2, atol=1e-6, rtol=0) and torch.allclose(ge1, ge2, atol=1e-6, rtol=0)
    # the tie goes to the lowest index, as argmax's does: the duplicate interest 2 of row 0 gets no gradient
    assert (gv1[0, 2] == 0).all() and gv1[0, 0].abs().sum() > 0
