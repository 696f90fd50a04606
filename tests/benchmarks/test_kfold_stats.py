"""The k-fold benchmark's statistics (issue 13 part 1) on small hand-made inputs: pooling folds, the bootstrap
intervals, the paired tests (Wilcoxon p-values computed by hand from the exact null distribution), Holm,
the verdict rule, and quality.py's k-fold result built from hand-made run records."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from benchmark_modules import load

ks = load("kfold_stats")
quality = load("quality")


def _exact_two_sided_wilcoxon(d):
    """Reference: enumerate every sign assignment of the ranks (no ties, no zeros): two-sided p =
    min(1, 2 P(W+ <= min(W+, W-)))."""
    d = [x for x in d if x != 0]
    ranks = {abs(x): r + 1 for r, x in enumerate(sorted(d, key=abs))}
    w_plus = sum(ranks[abs(x)] for x in d if x > 0)
    w_minus = sum(ranks[abs(x)] for x in d if x < 0)
    stat = min(w_plus, w_minus)
    n = len(d)
    count = sum(1 for signs in itertools.product((0, 1), repeat=n)
                if sum(r for r, s in zip(range(1, n + 1), signs) if s) <= stat)
    return min(1.0, 2 * count / 2 ** n)


@pytest.mark.parametrize("d,p", [([1, 2, 3, 4, 5], 2 / 32), ([1, -2, 3, 4, 5], 6 / 32),
                                 ([0.5, -0.25, 0.75, -1.0, 2.0, 3.0], None)])
def test_wilcoxon_p_matches_the_exact_null(d, p):
    ref = _exact_two_sided_wilcoxon(d)
    if p is not None:
        assert ref == pytest.approx(p)
    assert ks.wilcoxon_p(np.array(d)) == pytest.approx(ref)


def test_wilcoxon_all_zero_is_one_and_zeros_are_dropped():
    assert ks.wilcoxon_p(np.zeros(4)) == 1.0
    assert ks.wilcoxon_p(np.array([0, 0, 1, 2, 3, 4, 5])) == pytest.approx(2 / 32)


def test_bootstrap_ci_by_hand():
    x = np.array([0.0, 1.0])
    index = np.array([[0, 0], [0, 1], [1, 1], [1, 0]])  # means 0, .5, 1, .5
    lo, hi = ks.bootstrap_ci(x, index, confidence=0.5)   # quartiles of [0, .5, .5, 1], linear interpolation
    assert (lo, hi) == pytest.approx((0.375, 0.625))
    c = np.full(7, 0.3)
    assert ks.bootstrap_ci(c, ks.resample_index(7, 50, seed=1)) == pytest.approx((0.3, 0.3))


def test_paired_test_uses_the_same_users_for_both_models():
    a = np.array([0.0, 0.5, 1.0, 0.2])
    b = a + 0.1                              # b better by exactly 0.1 for every user
    t = ks.paired_test(a, b, ks.resample_index(4, 200, seed=0))
    assert t["mean_diff"] == pytest.approx(0.1)
    assert (t["ci_low"], t["ci_high"]) == pytest.approx((0.1, 0.1))  # paired: no between-user noise
    assert (t["b_better"], t["a_better"], t["ties"], t["n"]) == (4, 0, 0, 4)
    assert 0 < t["wilcoxon_p"] < 1
    with pytest.raises(ValueError, match="same users"):
        ks.paired_test(a, b[:3], ks.resample_index(4, 10))


def test_holm_by_hand():
    assert ks.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert ks.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("lo,hi,p,kind,want", [
    (0.01, 0.05, 0.001, "order", "holds"),
    (-0.05, -0.01, 0.001, "order", "does not hold"),
    (-0.01, 0.05, 0.001, "order", "within noise"),     # interval covers 0
    (0.01, 0.05, 0.2, "order", "within noise"),        # Wilcoxon does not reject
    (-0.05, -0.01, 0.001, "reaches", "does not hold"),
    (-0.01, 0.05, 0.3, "reaches", "holds"),
    (0.01, 0.05, 0.001, "reaches", "holds"),
])
def test_verdict_rule(lo, hi, p, kind, want):
    assert ks.verdict({"ci_low": lo, "ci_high": hi, "wilcoxon_p": p}, kind) == want


def _rec(fold, variant, users, r50, protocol=None, setting="lr3e-3", valid=None):
    return {"fold": fold, "variant": variant, "protocol": protocol or f"kf3_f{fold}", "setting": setting,
            "seed": 2026, "metrics": {"valid.recall@50": 0.4 + fold / 100 if valid is None else valid},
            "train": {"epochs": 5, "best_epoch": 2},
            "max_epochs": 10, "train_wall_s": 1.0,
            "per_user": {"user_id": list(users), **{m: list(r50) for m in quality.PER_USER_METRICS}}}


def test_pool_folds_aligns_users_and_skips_incomplete_folds():
    runs = [_rec(0, "a", ["u1", "u2"], [0.1, 0.2]), _rec(0, "b", ["u2", "u1"], [0.6, 0.5]),  # other order
            _rec(1, "a", ["u3"], [0.3]), _rec(1, "b", ["u3"], [0.7]),
            _rec(2, "a", ["u4"], [0.9])]                                                      # b missing
    out = ks.pool_folds(runs, ["a", "b"], ["recall@50"])
    assert out["folds"] == [0, 1] and out["incomplete"] == {2: ["b"]}
    assert out["user_id"] == ["u1", "u2", "u3"] and out["fold_of_user"] == [0, 0, 1]
    assert out["values"]["a"]["recall@50"].tolist() == [0.1, 0.2, 0.3]
    assert out["values"]["b"]["recall@50"].tolist() == [0.5, 0.6, 0.7]


def test_pool_folds_refuses_inconsistent_folds():
    twice = [_rec(0, "a", ["u1"], [0.1]), _rec(1, "a", ["u1"], [0.2])]
    with pytest.raises(ks.FoldError, match="u1.*folds 0 and 1"):
        ks.pool_folds(twice, ["a"], ["recall@50"])
    other = [_rec(0, "a", ["u1", "u2"], [0.1, 0.2]), _rec(0, "b", ["u1", "u9"], [0.1, 0.2])]
    with pytest.raises(ks.FoldError, match="fold 0: b"):
        ks.pool_folds(other, ["a", "b"], ["recall@50"])


def test_build_kfold_result_from_records():
    """Two variants, three folds of 2 users; the pooled means, pairs and claims are checked by hand."""
    users = {0: ["u1", "u2"], 1: ["u3", "u4"], 2: ["u5", "u6"]}
    mind = {0: [0.2, 0.4], 1: [0.0, 0.6], 2: [0.5, 0.3]}
    ytb = {0: [0.3, 0.5], 1: [0.1, 0.7], 2: [0.6, 0.4]}   # YouTube DNN = MIND + 0.1 for every user
    runs = [_rec(f, "mind", users[f], mind[f]) for f in users] + [_rec(f, "youtube_dnn", users[f], ytb[f])
                                                                  for f in users]
    runs.append(_rec(0, "mind", ["x"], [1.0], protocol="kf5_f0"))  # another k: ignored
    runs += _other_grid_points(["mind", "youtube_dnn"], users[0])
    res = quality.build_kfold_result(runs, ["youtube_dnn", "mind"], 3, 2026, samples=300)
    assert res["meta"]["folds_complete"] == [0, 1, 2] and res["meta"]["users"] == 6
    m = res["models"]["mind"]
    assert m["label"] == "MIND" and m["recall@50"]["mean"] == pytest.approx(2.0 / 6)
    assert m["per_fold_recall@50"] == pytest.approx({"0": 0.3, "1": 0.3, "2": 0.4})
    assert m["fold0_valid_recall@50"] == pytest.approx(0.4)
    assert res["models"]["youtube_dnn"]["recall@50"]["mean"] == pytest.approx(2.6 / 6)
    (pair,) = res["pairwise"]
    assert (pair["a"], pair["b"]) == ("youtube_dnn", "mind")
    assert pair["mean_diff"] == pytest.approx(-0.1) and pair["a_better"] == 6
    assert pair["wilcoxon_p"] == pytest.approx(pair["holm_p"])  # one pair: Holm changes nothing
    claim = next(c for c in res["claims"] if c["lower"] == "mind" and c["higher"] == "youtube_dnn")
    assert claim["claim"] == "MIND < YouTube DNN"
    assert claim["test"]["mean_diff"] == pytest.approx(0.1)
    assert claim["test"]["ci_low"] == pytest.approx(0.1)
    # 6 equal differences: ties among the ranks, scipy's normal approximation; p < 0.05 here
    assert claim["verdict"] == "holds"
    assert next(c for c in res["claims"] if c["higher"] == "umi_hn")["verdict"] == "not run"


def _other_grid_points(variants, users, valid=0.1, value=0.9):
    """Fold-0 runs of the KFOLD_GRID points other than lr3e-3, worse on valid (so lr3e-3 is chosen) and with a
    test value that would show if they were pooled."""
    return [_rec(0, v, users, [value] * len(users), setting=g, valid=valid)
            for v in variants for g in quality.KFOLD_GRID if g != "lr3e-3"]


def test_kfold_tuning_chooses_on_fold0_valid_and_pools_only_the_choice():
    users = {0: ["u1", "u2"], 1: ["u3", "u4"], 2: ["u5", "u6"]}
    # lr 1e-3 ("default") wins on fold 0's valid users: its runs are pooled on every fold, lr3e-3's are not
    runs = [_rec(f, "mind", users[f], [0.2, 0.2], setting="default", valid=0.5) for f in users]
    runs += [_rec(f, "mind", users[f], [0.9, 0.9], setting="lr3e-3", valid=0.3) for f in users]
    runs += [_rec(0, "mind", users[0], [0.9, 0.9], setting="lr1e-2", valid=0.5)]  # a tie: the earlier point wins
    chosen = quality.kfold_chosen(runs, ["mind"], 3, 2026)
    assert chosen["mind"]["setting"] == "default"
    assert chosen["mind"]["valid_recall@50"] == {"lr3e-3": 0.3, "default": 0.5, "lr1e-2": 0.5}
    res = quality.build_kfold_result(runs, ["mind"], 3, 2026, samples=100)
    m = res["models"]["mind"]
    assert m["setting"] == "default" and m["overrides"] == {"lr": 0.001}
    assert m["recall@50"]["mean"] == pytest.approx(0.2) and res["meta"]["users"] == 6


def test_kfold_tuning_unfinished_grid_leaves_the_variant_out():
    users = {0: ["u1", "u2"], 1: ["u3", "u4"], 2: ["u5", "u6"]}
    runs = [_rec(f, "mind", users[f], [0.2, 0.2]) for f in users]  # only lr3e-3 on fold 0
    assert quality.kfold_chosen(runs, ["mind"], 3, 2026) == {}
    assert quality.kfold_chosen(runs, ["most_popular"], 3, 2026)["most_popular"]["setting"] == "default"
