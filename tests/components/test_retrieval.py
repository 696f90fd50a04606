"""Multi-interest retrieval against plain reference implementations written from the papers' text."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from components import retrieval as R


def _random_case(B=5, K=3, N=40, D=6, seed=0, ints=False):
    g = torch.Generator().manual_seed(seed)
    if ints:  # integer-valued embeddings: many exact score ties
        v = torch.randint(-2, 3, (B, K, D), generator=g).float()
        e = torch.randint(-2, 3, (N, D), generator=g).float()
    else:
        v = torch.randn(B, K, D, generator=g)
        e = torch.randn(N, D, generator=g)
    m = torch.rand(B, K, generator=g) > 0.3
    m[:, 0] = True  # at least one interest per user
    return v, m, e


def _reference_topn(v, m, e, n, exclude=None):
    """ComiRec §4.2 literally: each unmasked interest retrieves its top-n, merge by best score (eq. 11),
    drop duplicates/exclusions, order by (score desc, index asc)."""
    out = []
    for b in range(v.shape[0]):
        ex = set() if exclude is None else set(exclude[b].tolist())
        ex.add(0)
        best = {}
        for k in range(v.shape[1]):
            if not m[b, k]:
                continue
            scores = (e @ v[b, k]).tolist()
            cand = sorted((i for i in range(e.shape[0]) if i not in ex), key=lambda i: (-scores[i], i))[:n]
            for i in cand:
                best[i] = max(best.get(i, -np.inf), scores[i])
        out.append([i for i, _ in sorted(best.items(), key=lambda t: (-t[1], t[0]))[:n]])
    return out


@pytest.mark.parametrize("ints", [False, True])
def test_topn_equals_per_interest_retrieve_and_merge(ints):
    v, m, e = _random_case(ints=ints)
    exclude = torch.tensor([[1, 2, 0], [5, 0, 0], [0, 0, 0], [7, 8, 9], [3, 3, 0]])
    for n in (1, 5, 12):
        _, items = R.topn(v, m, e, n, exclude)
        assert items.tolist() == _reference_topn(v, m, e, n, exclude)


def test_stable_topk_matches_full_stable_sort_with_ties():
    g = torch.Generator().manual_seed(1)
    s = torch.randint(0, 4, (20, 50), generator=g).float()  # heavy ties
    s[3] = float("-inf")  # an all -inf row
    for n in (1, 7, 50):
        vals, idx = R.stable_topk(s, n)
        ref_v, ref_i = torch.sort(s, dim=1, descending=True, stable=True)
        assert torch.equal(idx, ref_i[:, :n])
        assert torch.equal(vals, ref_v[:, :n])


def test_masked_interests_are_ignored_and_padding_never_returned():
    v, m, e = _random_case(B=4, K=3)
    m[:, 2] = False
    _, a = R.topn(v, m, e, 10)
    v2 = v.clone()
    v2[:, 2] = 100.0 * torch.randn(4, e.shape[1])  # a masked interest that would dominate
    _, b = R.topn(v2, m, e, 10)
    assert torch.equal(a, b)
    assert (a != 0).all()


def test_chunking_does_not_change_results():
    v, m, e = _random_case(B=9)
    _, a = R.topn(v, m, e, 7)
    _, b = R.topn(v, m, e, 7, chunk_size=2)
    assert torch.equal(a, b)


def test_pad_histories_keeps_most_recent_left_aligned():
    h, mask = R.pad_histories([[1, 2, 3, 4, 5], [7], []], 3)
    assert h.tolist() == [[3, 4, 5], [7, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[True] * 3, [True, False, False], [False] * 3]
    ex = R.pad_exclusions([[1, 2, 3], [4]])
    assert ex.tolist() == [[1, 2, 3], [4, 0, 0]]


def _reference_greedy(v, m, e, cats, n, lam, exclude=None):
    """ComiRec Algorithm 2 written plainly: M = union of the K per-interest top-n, then n greedy steps of
    argmax f(u, i) + λ Σ_{k∈S} δ(CATE(i) ≠ CATE(k)); ties to the candidate with higher f, then lower index."""
    out = []
    for b in range(v.shape[0]):
        ex = set() if exclude is None else set(exclude[b].tolist())
        ex.add(0)
        M, f = set(), {}
        for k in range(v.shape[1]):
            if not m[b, k]:
                continue
            scores = (e @ v[b, k]).tolist()
            M.update(sorted((i for i in range(e.shape[0]) if i not in ex), key=lambda i: (-scores[i], i))[:n])
        for i in M:
            f[i] = max(float(e[i] @ v[b, k]) for k in range(v.shape[1]) if m[b, k])
        S = []
        for _ in range(min(n, len(M))):
            rest = [i for i in M if i not in S]
            val = {i: f[i] + lam * sum(cats[i] != cats[j] for j in S) for i in rest}
            S.append(max(rest, key=lambda i: (val[i], f[i], -i)))
        out.append(S)
    return out


def test_controllable_lambda_zero_is_exact_topn():
    v, m, e = _random_case()
    cats = torch.randint(1, 4, (e.shape[0],), generator=torch.Generator().manual_seed(3))
    exclude = torch.tensor([[1, 2], [0, 0], [4, 0], [9, 9], [0, 0]])
    a = R.controllable_topn(v, m, e, 8, cats, 0.0, exclude)
    b = R.topn(v, m, e, 8, exclude)
    assert torch.equal(a[1], b[1])


@pytest.mark.parametrize("lam", [0.05, 0.5, 3.0])
def test_controllable_matches_plain_algorithm_2(lam):
    v, m, e = _random_case(B=6, K=3, N=30, seed=4)
    cats = torch.randint(1, 5, (e.shape[0],), generator=torch.Generator().manual_seed(5))
    cats[0] = 0
    exclude = torch.tensor([[1, 2], [0, 0], [4, 0], [9, 11], [0, 0], [3, 0]])
    scores, items = R.controllable_topn(v, m, e, 6, cats, lam, exclude)
    assert items.tolist() == _reference_greedy(v, m, e, cats.tolist(), 6, lam, exclude)
    # the returned score is the accuracy term f(u, i) of eq. 11
    f = R.merged_scores(v, m, e)
    assert torch.allclose(scores, f.gather(1, items))


def test_controllable_hand_worked_case():
    """Two interests, along axis 0 and axis 1. Items 1..4 = (4,0), (3,0), (0,2), (0,1), categories 1, 1, 2, 2.
    f (eq. 11) = 4, 3, 2, 1. Per-interest top-2: {1, 2} and {3, 4}, so M = {1, 2, 3, 4}.
    λ = 0: [1, 2]. λ = 1.5: step 1 takes item 1 (4); step 2 values: item 2 = 3 + 0, item 3 = 2 + 1.5 = 3.5,
    item 4 = 1 + 1.5 = 2.5 -> item 3. λ = 0.5: item 2 = 3 > item 3 = 2.5 -> item 2.
    With only the first interest, M = {1, 2} and no λ can reach item 3 (candidates come from retrieval)."""
    e = torch.tensor([[0.0, 0.0], [4.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 1.0]])
    v = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    m = torch.ones(1, 2, dtype=torch.bool)
    cats = torch.tensor([0, 1, 1, 2, 2])
    assert R.controllable_topn(v, m, e, 2, cats, 0.0)[1].tolist() == [[1, 2]]
    assert R.controllable_topn(v, m, e, 2, cats, 1.5)[1].tolist() == [[1, 3]]
    assert R.controllable_topn(v, m, e, 2, cats, 0.5)[1].tolist() == [[1, 2]]
    one = torch.tensor([[True, False]])
    assert R.controllable_topn(v, one, e, 2, cats, 100.0)[1].tolist() == [[1, 2]]


def test_controllable_large_lambda_maximises_category_spread():
    """λ → ∞ (§3.3 "the most diverse case"): the first picks cover every category of the candidate set M."""
    v, m, e = _random_case(B=4, K=4, N=60, seed=7)
    cats = torch.randint(1, 6, (e.shape[0],), generator=torch.Generator().manual_seed(8))
    _, items = R.controllable_topn(v, m, e, 10, cats, 1e6)
    for b in range(4):
        M = set()
        for k in range(4):
            if m[b, k]:
                s = (e @ v[b, k]).tolist()
                M.update(sorted(range(1, 60), key=lambda i: (-s[i], i))[:10])
        c = len({int(cats[i]) for i in M})
        chosen = cats[items[b]].tolist()
        assert len(set(chosen[:c])) == min(c, 10)


def test_faiss_flat_search_equals_exact():
    import faiss

    v, m, e = _random_case(B=6, K=3, N=80, D=8, seed=9)
    index = faiss.IndexFlatIP(8)
    index.add(e[1:].numpy())
    rows = np.arange(1, 80)
    exclude = torch.tensor([[1, 2, 3], [0, 0, 0], [4, 0, 0], [9, 11, 12], [0, 0, 0], [3, 0, 0]])
    s_f, i_f = R.faiss_topn(index, rows, v.numpy(), m.numpy(), 15, exclude.numpy())
    s_t, i_t = R.topn(v, m, e, 15, exclude)
    assert (i_f == i_t.numpy()).all()
    assert np.allclose(s_f, s_t.numpy(), atol=1e-5)


def test_retrieve_dispatch_and_bad_lambda():
    v, m, e = _random_case()
    with pytest.raises(ValueError, match="categories"):
        R.retrieve(v, m, e, 3, diversity_lambda=0.5)
    with pytest.raises(ValueError, match="diversity_lambda"):
        R.controllable_topn(v, m, e, 3, torch.zeros(e.shape[0], dtype=torch.long), -1.0)


@pytest.mark.parametrize("k", [1, 2])
def test_merged_scores_of_one_user_are_bit_identical_to_a_batch(k):
    # serving scores one user at a time, evaluate a batch: the same user must get the same floats. A 1-row
    # product goes through MKL's matrix-vector kernel (different rounding) unless merged_scores pads it.
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(20_000, 64, generator=g)
    users = torch.randn(64, k, 64, generator=g)
    mask = torch.ones(64, k, dtype=torch.bool)
    batch = R.merged_scores(users, mask, emb)
    for u in range(0, 64, 7):
        one = R.merged_scores(users[u:u + 1], mask[u:u + 1], emb)
        assert torch.equal(one[0], batch[u]), u


def test_merged_scores_padding_is_what_makes_single_rows_exact(monkeypatch):
    # the guard above is not vacuous: without the padding a single row differs from the batched product
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(20_000, 64, generator=g)
    users = torch.randn(64, 1, 64, generator=g)
    mask = torch.ones(64, 1, dtype=torch.bool)
    batch = R.merged_scores(users, mask, emb)
    monkeypatch.setattr(R, "MIN_GEMM_ROWS", 1)
    differs = [not torch.equal(R.merged_scores(users[u:u + 1], mask[u:u + 1], emb)[0], batch[u]) for u in range(64)]
    assert any(differs)
