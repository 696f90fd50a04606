"""The model-quality gate's decision (components.gates.decide): paired per-user tests against the production
model and the baseline, floors, validation of every value, strict config, the verdict's JSON and Markdown.

The reference statistics are written here independently of the code under test: an exact sign-flip
enumeration in rational arithmetic, scipy's bootstrap and permutation tests, recall computed by hand."""
from __future__ import annotations

import copy
import itertools
import json
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import yaml

from components import gates as G
from components.config import ParamsError, from_dict
from components.gates import Evidence, GateFailed, GatesConfig, decide, enforce, load_evidence
from components.io import DataError

# The gates section proposed for params.yaml (kept in step with the report; the test below loads it).
PROPOSED = """
gates:
  metric: recall@50
  floors:
    recall@50: 0.10
  test:
    method: bootstrap
    alpha: 0.05
    samples: 10000
  baseline:
    model: most_popular
    min_effect: 0.0
  vs_prod:
    rule: superiority
    min_effect: 0.0
    margin: null
"""


def _cfg(**over) -> GatesConfig:
    doc = copy.deepcopy(yaml.safe_load(PROPOSED)["gates"])
    for key, value in over.items():
        if key != "floors" and isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key].update(value)
        else:
            doc[key] = value
    return from_dict(GatesConfig, doc, "gates")


def _ev(name: str, values, ids=None) -> Evidence:
    values = list(values)
    ids = ids if ids is not None else [f"u{i}" for i in range(len(values))]
    return Evidence(name, pd.DataFrame({"user_id": ids, "recall@50": values}))


def _recalls(p, n=94, seed=0):
    """Per-user recall = hits / targets with per-user ease shared across models (paired, like real models)."""
    rng = np.random.default_rng(seed)
    ease = np.random.default_rng(123).beta(2, 2, n) * 2  # the same users are easy for every model
    targets = np.random.default_rng(321).integers(1, 30, n)
    return rng.binomial(targets, np.clip(p * ease, 0, 1)) / targets


# ---------------------------------------------------------------------------------------------- decisions
@pytest.mark.parametrize("method", ["bootstrap", "permutation"])
def test_clearly_better_promotes_clearly_worse_is_blocked(method):
    cfg = _cfg(test={"method": method})
    base, prod = _ev("most_popular", _recalls(0.2, seed=1)), _ev("prod-1", _recalls(0.35, seed=2))
    better = decide(cfg, _ev("cand", _recalls(0.5, seed=3)), prod, base, seed=7)
    assert better.promote and [r.kind for r in better.rules] == ["floor", "baseline", "vs_prod"]
    assert all(r.passed for r in better.rules)
    vs = better.rules[2]
    assert vs.reference_name == "prod-1" and vs.test.difference > 0.1 and vs.test.n_users == 94
    worse = decide(cfg, _ev("cand", _recalls(0.27, seed=3)), prod, base, seed=7)
    assert not worse.promote
    assert not worse.rules[2].passed and worse.rules[2].test.difference < -0.05
    assert "vs_prod prod-1" in worse.reasons[0]
    with pytest.raises(GateFailed) as exc:
        enforce(cfg, _ev("cand", _recalls(0.27, seed=3)), prod, base, seed=7)
    assert exc.value.verdict == worse and "[FAIL] vs_prod prod-1" in str(exc.value)


@pytest.mark.parametrize("method", ["bootstrap", "permutation"])
def test_a_tie_within_noise_is_blocked_by_superiority_and_passes_non_inferiority(method):
    prod_values = np.linspace(0.2, 0.8, 94)
    swing = np.where(np.arange(94) % 2 == 0, 0.1, -0.1)  # mean difference exactly 0, sd 0.1
    cand, prod = _ev("cand", prod_values + swing), _ev("prod", prod_values)
    base = _ev("most_popular", prod_values - 0.15)
    sup = decide(_cfg(test={"method": method}), cand, prod, base, seed=1)
    assert abs(sup.rules[2].test.difference) < 1e-12 and not sup.promote and not sup.rules[2].passed
    ni = decide(_cfg(test={"method": method}, vs_prod={"rule": "non_inferiority", "margin": 0.05}),
                cand, prod, base, seed=1)
    assert ni.promote and ni.rules[2].threshold == -0.05
    assert ni.rules[2].test.hypothesis == "H0: mean(candidate - prod) <= -0.0500"
    # a real loss beyond the margin is still blocked under non-inferiority
    worse = decide(_cfg(test={"method": method}, vs_prod={"rule": "non_inferiority", "margin": 0.05}),
                   _ev("cand", prod_values - 0.08 + swing), prod, base, seed=1)
    assert not worse.rules[2].passed


def _exact_sign_flip_p(cand, prod, theta):
    """All 2**n sign vectors in exact rational arithmetic: share with sum s_u (d_u - theta) >= sum (d_u - theta)."""
    x = [Fraction(c) - Fraction(p) - theta for c, p in zip(cand, prod)]
    observed = sum(x)
    hits = sum(sum(s * v for s, v in zip(signs, x)) >= observed
               for signs in itertools.product((1, -1), repeat=len(x)))
    return Fraction(hits, 2 ** len(x))


@pytest.mark.parametrize("theta", [Fraction(0), Fraction(1, 20)])
def test_permutation_p_value_equals_exact_enumeration_of_all_sign_flips(theta):
    # 8 users, recall = hits / targets; d has a zero and equal magnitudes, so ties occur in the null
    cand = [Fraction(3, 10), Fraction(1, 2), Fraction(2, 5), Fraction(1, 4), Fraction(3, 5), Fraction(1, 5),
            Fraction(1, 2), Fraction(7, 10)]
    prod = [Fraction(1, 5), Fraction(1, 2), Fraction(3, 10), Fraction(1, 4), Fraction(2, 5), Fraction(3, 10),
            Fraction(2, 5), Fraction(1, 2)]
    expected = _exact_sign_flip_p(cand, prod, theta)
    cfg = _cfg(test={"method": "permutation", "samples": 256},
               vs_prod={"min_effect": float(theta)})
    v = decide(cfg, _ev("cand", map(float, cand)), _ev("prod", map(float, prod)),
               _ev("most_popular", [0.0] * 8), seed=0)
    t = v.rules[2].test
    assert t.exact and t.samples == 256 and t.ci_low is None
    assert t.p_value == float(expected)  # k / 256 is exact in binary floating point
    assert v.rules[2].passed == (expected <= Fraction(5, 100))
    assert 0 < expected < 1


def test_bootstrap_lower_bound_matches_scipy_percentile_bootstrap(monkeypatch):
    rng = np.random.default_rng(5)
    n = 60
    prod_values = rng.uniform(0.1, 0.6, n)
    cand_values = np.clip(prod_values + rng.normal(0.03, 0.12, n), 0, 1)
    diff = cand_values - prod_values
    ref = scipy.stats.bootstrap((diff,), np.mean, confidence_level=0.95, alternative="greater",
                                method="percentile", n_resamples=40000, rng=np.random.default_rng(0))
    ids = [f"u{i}" for i in range(n)]
    shuffled = rng.permutation(n)  # prod's rows in another order: pairing must go by user_id
    prod = _ev("prod", prod_values[shuffled], ids=[ids[i] for i in shuffled])
    monkeypatch.setattr(G, "_MAX_CELLS", 600)  # resample in blocks of 10 rows
    v = decide(_cfg(test={"samples": 20000}), _ev("cand", cand_values, ids=ids), prod,
               _ev("most_popular", np.zeros(n)), seed=3)
    t = v.rules[2].test
    assert t.difference == pytest.approx(diff.mean(), abs=1e-12)
    assert t.ci_low == pytest.approx(ref.confidence_interval.low, abs=0.003)
    # the bootstrap p-value: share of resampled means <= 0, by a plain loop
    loop = np.random.default_rng(11)
    means = np.array([diff[loop.integers(0, n, n)].mean() for _ in range(4000)])
    assert t.p_value == pytest.approx(np.mean(means <= 0), abs=0.015)
    assert v.rules[2].passed == (t.ci_low > 0)


def test_monte_carlo_permutation_p_value_matches_scipy():
    rng = np.random.default_rng(8)
    d = rng.normal(0.02, 0.1, 40)
    ref = scipy.stats.permutation_test((d,), np.mean, permutation_type="samples", alternative="greater",
                                       n_resamples=40000, rng=np.random.default_rng(1)).pvalue
    p, exact, flips = G.paired_permutation(d, 0.0, 20000, np.random.default_rng(2))
    assert not exact and flips == 20000
    assert 0.02 < ref < 0.5 and p == pytest.approx(ref, abs=0.012)
    # all differences positive and distinct: only the identity reaches T, which 500 random flips miss;
    # the Monte Carlo p-value counts the observed statistic itself: (1 + 0) / (500 + 1), never 0
    p, exact, _ = G.paired_permutation(np.linspace(0.01, 0.4, 40), 0.0, 500, np.random.default_rng(3))
    assert not exact and p == 1 / 501


# ----------------------------------------------------------------------------------- MostPopular / random
def test_random_scoring_candidate_fails_the_baseline_rule_though_it_passes_the_floor():
    """Popularity-skewed catalogue; targets drawn by popularity; recall@50 computed by hand per user."""
    rng = np.random.default_rng(0)
    num_items, users = 400, 150
    pop = 1.0 / np.arange(1, num_items + 1) ** 0.8
    pop /= pop.sum()
    most_popular = set(np.argsort(-rng.multinomial(20000, pop))[:50])  # counted on "train" interactions
    targets = [set(rng.choice(num_items, 10, replace=False, p=pop)) for _ in range(users)]

    def recall(lists):
        return [len(lst & t) / len(t) for lst, t in zip(lists, targets)]

    base = _ev("most_popular", recall([most_popular] * users))
    random_lists = [set(rng.choice(num_items, 50, replace=False)) for _ in range(users)]
    cand = _ev("random", recall(random_lists))
    cfg = _cfg(floors={"recall@50": 0.05})
    v = decide(cfg, cand, None, base, seed=0)
    floor, baseline = v.rules
    assert floor.passed and 0.08 < floor.candidate < 0.2  # ~ 50 / 400: a floor alone would promote it
    assert not baseline.passed and not v.promote
    assert baseline.reference > 0.3  # MostPopular is far above random on a popularity-skewed log
    # MostPopular itself cannot pass the baseline rule (it does not beat itself), under either test
    for method in ("bootstrap", "permutation"):
        same = decide(_cfg(test={"method": method}), _ev("mp-copy", base.per_user["recall@50"]), None, base,
                      seed=0)
        assert not same.promote and not same.rules[1].passed
    # a model that adds one hit per user to MostPopular's list passes: the rule is not impossible
    extra = [mp | {next(iter(t - mp))} if t - mp else mp for mp, t in zip([most_popular] * users, targets)]
    assert decide(cfg, _ev("better", recall(extra)), None, base, seed=0).promote


def test_first_candidate_is_promoted_on_floors_and_baseline_only():
    base = _ev("most_popular", _recalls(0.2, seed=1))
    v = decide(_cfg(), _ev("cand", _recalls(0.4, seed=3)), None, base, seed=0)
    assert v.promote and v.prod is None and [r.kind for r in v.rules] == ["floor", "baseline"]
    assert any("no production model yet" in r for r in v.reasons)
    low = decide(_cfg(floors={"recall@50": 0.9}), _ev("cand", _recalls(0.4, seed=3)), None, base, seed=0)
    assert not low.promote and not low.rules[0].passed and low.rules[1].passed


def test_baseline_configured_but_not_given_is_a_params_error():
    with pytest.raises(ParamsError, match="gates.baseline.model: .*'most_popular'.*train.models"):
        decide(_cfg(), _ev("cand", [0.5, 0.6]), None, None, seed=0)
    with pytest.raises(ParamsError, match="not in train.models"):
        _cfg().require_models(["mind", "youtube_dnn"])
    _cfg().require_models(["mind", "most_popular"])


# ---------------------------------------------------------------------------------------------- validation
def _object_column(value):
    values = np.full(20, 0.3, dtype=object)
    values[4] = value
    return values


@pytest.mark.parametrize("bad, message", [
    (_object_column("0.9"), r"1 values are not real numbers; e\.g\. rows \('u4', '0\.9'\)"),
    (_object_column(None), r"1 values are missing"),
    (_object_column(True), r"not real numbers; e\.g\. rows \('u4', True\)"),
    (np.where(np.arange(20) == 4, np.nan, 0.3), r"1 values are missing \(None/NaN\); e\.g\. rows \('u4'"),
    (np.where(np.arange(20) == 4, np.inf, 0.3), r"1 values are infinite"),
    (np.where(np.arange(20) >= 18, 5.0, 0.3), r"2 values are outside \[0, 1\]; e\.g\. rows \('u18', 5\.0\)"),
    (np.where(np.arange(20) == 4, -0.1, 0.3), r"outside \[0, 1\]"),
    (np.arange(20) % 2 == 0, r"booleans"),
])
@pytest.mark.parametrize("role", ["candidate", "prod", "baseline"])
def test_every_metric_value_is_validated_before_deciding(bad, message, role):
    good = np.full(20, 0.3)
    evs = {"candidate": _ev("cand", good), "prod": _ev("prod-9", good), "baseline": _ev("most_popular", good)}
    evs[role] = _ev(evs[role].name, bad)
    with pytest.raises(DataError, match=message) as exc:
        decide(_cfg(), evs["candidate"], evs["prod"], evs["baseline"], seed=0)
    text = str(exc.value)
    assert f"{role} model '{evs[role].name}'" in text and "column 'recall@50'" in text


def test_missing_column_duplicates_and_unpaired_users_are_data_errors():
    good = np.full(20, 0.3)
    ids = [f"u{i}" for i in range(20)]
    no_col = Evidence("most_popular", pd.DataFrame({"user_id": ids, "ndcg@50": good}))
    with pytest.raises(DataError, match=r"baseline model 'most_popular'.*no column 'recall@50'.*ndcg@50"):
        decide(_cfg(), _ev("cand", good), None, no_col, seed=0)
    with pytest.raises(DataError, match=r"candidate model 'cand'.*no column 'recall@20'"):
        decide(_cfg(floors={"recall@20": 0.1}), _ev("cand", good), None, _ev("most_popular", good), seed=0)
    with pytest.raises(DataError, match=r"no column 'user_id'"):
        decide(_cfg(), Evidence("cand", pd.DataFrame({"recall@50": good})), None, _ev("most_popular", good),
               seed=0)
    dup = _ev("cand", good, ids=ids[:19] + ["u3"])
    with pytest.raises(DataError, match=r"candidate model 'cand'.*1 user ids appear more than once.*'u3'"):
        decide(_cfg(), dup, None, _ev("most_popular", good), seed=0)
    other = _ev("prod-2", good, ids=ids[:17] + ["x1", "x2", "x3"])
    with pytest.raises(DataError, match=r"prod model 'prod-2'.* not evaluated on the same test users: 3 of the "
                                        r"candidate's 20 users are missing, 3 others are extra"):
        decide(_cfg(), _ev("cand", good), other, _ev("most_popular", good), seed=0)
    fewer = _ev("most_popular", good[:19], ids=ids[:19])
    with pytest.raises(DataError, match=r"baseline model 'most_popular'.*1 of the candidate's 20 users"):
        decide(_cfg(), _ev("cand", good), None, fewer, seed=0)
    with pytest.raises(DataError, match=r"no test users"):
        decide(_cfg(), _ev("cand", []), None, _ev("most_popular", []), seed=0)


@pytest.mark.parametrize("value, message", [
    ("0.9", r"'test\.recall@50' is '0\.9' \(str\), not a number"),
    (None, r"is None"),
    (True, r"is True \(bool\)"),
    (float("inf"), r"not a finite number in \[0, 1\]"),
    (5.0, r"not a finite number in \[0, 1\]"),
    (0.25, r"'test\.recall@50' = 0\.250000 contradicts the per-user mean 0\.300000"),
])
def test_summary_metrics_given_with_the_evidence_are_validated(value, message):
    good = np.full(20, 0.3)
    cand = Evidence("cand", _ev("cand", good).per_user, {"test.recall@50": value, "test.ndcg@50": "ignored: not gated"})
    with pytest.raises(DataError, match=r"candidate model 'cand' metrics: .*" + message):
        decide(_cfg(), cand, None, _ev("most_popular", good - 0.2), seed=0)
    ok = Evidence("cand", cand.per_user, {"test.recall@50": 0.3 + 1e-9})
    assert decide(_cfg(), ok, None, _ev("most_popular", good - 0.2), seed=0).promote


# ---------------------------------------------------------------------------------------------- config
def test_proposed_section_loads():
    cfg = _cfg()
    assert cfg.metric == "recall@50" and cfg.floors == {"recall@50": 0.10}
    assert cfg.test.method == "bootstrap" and cfg.test.alpha == 0.05 and cfg.test.samples == 10000
    assert cfg.baseline.model == "most_popular" and cfg.vs_prod.rule == "superiority"
    assert cfg.vs_prod.theta == 0.0 and cfg.gated_metrics == ["recall@50"]


@pytest.mark.parametrize("over, message", [
    ({"floors": {}, "baseline": None, "vs_prod": None}, r"gates: the gate cannot fail"),
    ({"floors": {}, "baseline": None}, r"gates: the gate cannot fail for a first candidate"),
    ({"test": {"alpha": 0.7}}, r"gates\.test(\.|: )alpha must be in \(0, 0.5\]"),
    ({"test": {"alpha": 0.0}}, r"gates\.test(\.|: )alpha must be"),
    ({"test": {"samples": 50}}, r"gates\.test(\.|: )samples must be >= 100"),
    ({"test": {"method": "ttest"}}, r"gates.test.method: 'ttest' is not one of"),
    ({"test": {"alpha": "0.05"}}, r"gates.test.alpha: expected a number"),
    ({"vs_prod": {"rule": "better"}}, r"gates.vs_prod.rule: 'better' is not one of"),
    ({"vs_prod": {"min_effect": -0.01}}, r"gates\.vs_prod(\.|: )min_effect must be in \[0, 1\)"),
    ({"vs_prod": {"margin": 0.02}}, r"gates\.vs_prod(\.|: )margin is for rule: non_inferiority"),
    ({"vs_prod": {"rule": "non_inferiority"}}, 
     r"gates\.vs_prod(\.|: )margin in \(0, 1\) is required by rule: non_inferiority"),
    ({"vs_prod": {"rule": "non_inferiority", "margin": 0.02, "min_effect": 0.01}}, r"min_effect is for rule"),
    ({"baseline": {"model": " "}}, r"gates\.baseline(\.|: )model must name a model"),
    ({"baseline": {"min_effect": -0.1}}, r"gates\.baseline(\.|: )min_effect must be"),
    ({"floors": {"test.recall@50": 0.1}}, r"floors.test.recall@50: .*'recall@50'"),
    ({"floors": {"recall@50": 0.0}}, r"floors.recall@50 must be in \(0, 1\]"),
    ({"floors": {"recall@50": 1.5}}, r"floors.recall@50 must be in \(0, 1\]"),
    ({"floors": {"recall@50": float("nan")}}, r"gates.floors.recall@50: expected a finite number"),
    ({"floors": {"recall@50": "0.9"}}, r"gates.floors.recall@50: expected a number"),
    ({"metric": "loss@5"}, r"gates(\.|: )metric: 'loss@5' is not a gated metric"),
    ({"relative": {"tolerance": 0.02}}, r"gates: unknown key\(s\) 'relative'"),
])
def test_empty_or_contradictory_gate_config_is_a_params_error(over, message):
    with pytest.raises(ParamsError, match=message):
        _cfg(**over)


# ---------------------------------------------------------------------------------------------- verdict
def test_same_seed_same_verdict_and_plain_json():
    args = (_ev("cand", _recalls(0.4, seed=3)), _ev("prod", _recalls(0.38, seed=4)),
            _ev("most_popular", _recalls(0.2, seed=1)))
    a, b = (decide(_cfg(), *args, seed=2026).to_dict() for _ in range(2))
    assert a == b
    assert json.loads(json.dumps(a, allow_nan=False)) == a  # plain JSON types only
    other = decide(_cfg(), *args, seed=2027).to_dict()
    assert other["rules"][2]["test"]["ci_low"] != a["rules"][2]["test"]["ci_low"]
    assert a["config"]["test"]["samples"] == 10000 and a["seed"] == 2026


def test_markdown_and_describe_carry_both_figures_and_the_decision(tmp_path):
    cand, prod = _recalls(0.3, seed=3), _recalls(0.38, seed=4)
    v = decide(_cfg(), _ev("mind-3f2a", cand), _ev("comirec_sa-77aa", prod),
               _ev("most_popular", _recalls(0.2, seed=1)), seed=0)
    assert not v.promote
    md = v.to_markdown()
    assert md.startswith("# Quality gate: BLOCKED")
    assert f"| mind-3f2a | candidate | {cand.mean():.4f} |" in md
    assert f"| comirec_sa-77aa | production | {prod.mean():.4f} |" in md
    assert "| vs_prod comirec_sa-77aa | H0: mean(candidate - prod) <= +0.0000 |" in md and "**FAIL**" in md
    assert f"{v.rules[2].test.ci_low:+.4f}" in md
    text = v.describe()
    assert text.startswith("gate BLOCKED: candidate mind-3f2a vs prod comirec_sa-77aa")
    assert f"[FAIL] vs_prod comirec_sa-77aa: recall@50 candidate {cand.mean():.4f} vs comirec_sa-77aa " \
           f"{prod.mean():.4f}" in text
    G.write_verdict(v, tmp_path / "gate.json", tmp_path / "gate.md")
    assert json.loads((tmp_path / "gate.json").read_text()) == json.loads(json.dumps(v.to_dict()))
    assert (tmp_path / "gate.md").read_text() == md


# ------------------------------------------------------------------------------------- files and the CLI
def _write_eval(folder, recall, *, split_extra=True, metrics=None):
    folder.mkdir(parents=True)
    n = len(recall)
    frames = [pd.DataFrame({"user_idx": np.arange(n), "user_id": np.arange(n) + 100, "split": "test",
                            "recommended": [["1", "2"]] * n, "recall@50": recall})]
    if split_extra:  # other splits' users must be ignored
        frames.append(pd.DataFrame({"user_idx": [900], "user_id": [900], "split": ["valid"],
                                    "recommended": [["3"]], "recall@50": [7.0]}))
    pd.concat(frames, ignore_index=True).to_parquet(folder / "per_user.parquet", index=False)
    (folder / "metrics.json").write_text(json.dumps(metrics if metrics is not None
                                                    else {"test.recall@50": float(np.mean(recall))}))


def test_load_evidence_keeps_the_test_users(tmp_path):
    _write_eval(tmp_path / "mind", [0.5, 0.25, 0.75])
    ev = load_evidence("mind", tmp_path / "mind" / "per_user.parquet", tmp_path / "mind" / "metrics.json")
    assert list(ev.per_user.columns) == ["user_id", "recall@50"]
    assert ev.per_user["user_id"].tolist() == ["100", "101", "102"]
    assert ev.metrics == {"test.recall@50": 0.5}
    pd.DataFrame({"user_id": ["1"], "recall@50": [0.1]}).to_parquet(tmp_path / "nosplit.parquet")
    with pytest.raises(DataError, match=r"nosplit.parquet, column 'split': missing required column"):
        load_evidence("x", tmp_path / "nosplit.parquet")
    pd.DataFrame({"user_id": ["1"], "split": ["train"], "recall@50": [0.1]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"t.parquet, column 'split': no test users \(split values: \['train'\]"):
        load_evidence("x", tmp_path / "t.parquet")
    with pytest.raises(DataError, match="file not found"):
        load_evidence("x", tmp_path / "absent.parquet")


def test_cli_exit_status_promote_block_and_bad_input(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 3, **yaml.safe_load(PROPOSED)}))
    _write_eval(tmp_path / "eval" / "most_popular", list(_recalls(0.2, seed=1)))
    _write_eval(tmp_path / "eval" / "mind", list(_recalls(0.4, seed=3)))
    _write_eval(tmp_path / "eval" / "prod", list(_recalls(0.5, seed=4)))
    base = ["--params", str(params), "--baseline", str(tmp_path / "eval" / "most_popular")]
    G.main([*base, "--candidate", str(tmp_path / "eval" / "mind"), "--json", str(tmp_path / "v.json"),
            "--markdown", str(tmp_path / "v.md")])
    assert json.loads((tmp_path / "v.json").read_text())["promote"] is True
    assert "gate PROMOTE: candidate mind" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        G.main([*base, "--candidate", str(tmp_path / "eval" / "mind"), "--prod", str(tmp_path / "eval" / "prod")])
    assert exc.value.code == 1 and "[FAIL] vs_prod prod" in capsys.readouterr().err
    _write_eval(tmp_path / "eval" / "bad", [0.1, 0.2, 0.3], metrics={"test.recall@50": "0.9"})
    with pytest.raises(SystemExit) as exc:
        G.main([*base, "--candidate", str(tmp_path / "eval" / "bad")])
    assert exc.value.code == 2 and "candidate model 'bad' metrics: 'test.recall@50' is '0.9'" in \
        capsys.readouterr().err
