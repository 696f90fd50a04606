"""benchmarks/sparse_quality.py's bookkeeping (mode names, merging runs across invocations, deltas against dense
Adam of the same seed, the paired k-fold comparison) and its RESULTS.md section, on small hand-written rows."""
from __future__ import annotations

import json

import pytest

from benchmark_modules import load

sq = load("sparse_quality")
rep = load("report_sparse_quality")


def _row(v, mode, seed, r50, val=None):
    return {"variant": v, "mode": mode, "seed": seed, "label": v.upper(), "test.recall@50": r50,
            "train.best_val_recall@50": val}


def test_parse_mode_and_params_copy():
    assert sq.parse_mode("sparse_adam") == ("sparse_adam", None)
    assert sq.parse_mode("rowwise_adagrad@0.3") == ("rowwise_adagrad", 0.3)
    base = {"seed": 1, "train": {"lr": 0.003, "embedding_optimizer": "adam"}}
    p = sq.mode_params(base, "rowwise_adagrad@0.3", 2027)
    assert p == {"seed": 2027, "train": {"lr": 0.003, "embedding_optimizer": "rowwise_adagrad", "embedding_lr": 0.3}}
    assert base["train"] == {"lr": 0.003, "embedding_optimizer": "adam"}  # not modified
    assert "embedding_lr" not in sq.mode_params(base, "sparse_adam", 1)["train"]


def test_merge_replaces_same_key_and_keeps_the_rest():
    old = [_row("mind", "sparse_adam", 2026, 0.30), _row("umi", "sparse_adam", 2026, 0.25)]
    new = [_row("mind", "sparse_adam", 2026, 0.31), _row("mind", "sparse_adam", 2027, 0.29)]
    got = {(r["variant"], r["seed"]): r["test.recall@50"] for r in sq.merge(old, new)}
    assert got == {("mind", 2026): 0.31, ("mind", 2027): 0.29, ("umi", 2026): 0.25}


def test_summarise_uses_committed_for_2026_and_the_rerun_otherwise():
    runs = [_row("mind", "committed", 2026, 0.40), _row("mind", "adam", 2026, 0.39, 0.50),
            _row("mind", "sparse_adam", 2026, 0.385, 0.47), _row("mind", "adam", 2027, 0.36, 0.48),
            _row("mind", "sparse_adam", 2027, 0.37, 0.49), _row("umi", "sparse_adam", 2026, 0.2)]  # no dense: skipped
    s = sq.summarise(runs)
    assert set(s) == {"mind"}
    e = s["mind"]["sparse_adam"]
    assert e["delta_recall@50"] == {"2026": pytest.approx(-0.015), "2027": pytest.approx(0.01)}
    assert e["delta_best_val_recall@50"] == {"2026": pytest.approx(-0.03), "2027": pytest.approx(0.01)}
    assert e["mean_delta_recall@50"] == pytest.approx(-0.0025)
    assert e["seed2026_within_tolerance"] is False and e["mean_within_tolerance"] is True


def _record(path, users, r50):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"per_user": {"user_id": users, "recall@50": r50}}))


def test_kfold_compare_pairs_users_of_the_same_fold(tmp_path, monkeypatch):
    q = load("quality")
    monkeypatch.setattr(q, "OUT", tmp_path / "quality")
    kfold = tmp_path / "kfold.json"
    kfold.write_text(json.dumps({"models": {"mind": {"overrides": {"lr": 0.003}}}}))
    monkeypatch.setattr(q, "KFOLD_RESULT", kfold)
    monkeypatch.setattr(sq, "_bench", lambda name: q if name == "quality" else load(name))
    work = tmp_path / "work"
    dense = {0: [0.5, 0.2, 0.0], 1: [1.0, 0.4]}
    sparse = {0: [0.4, 0.2, 0.1], 1: [0.9, 0.4]}
    users = {0: ["1", "2", "3"], 1: ["4", "5"]}
    for f in (0, 1):
        _record(q.run_path(q.fold_protocol(q.KFOLDS, f), "mind", "lr3e-3", 2026), users[f], dense[f])
        _record(sq.kfold_record_path(work, "mind", "sparse_adam", f), users[f], sparse[f])
    _record(sq.kfold_record_path(work, "mind", "sparse_adam", 2), ["6"], [1.0])  # no dense record: left out
    out = sq.kfold_compare(["mind"], work)["mind"]["sparse_adam"]
    assert out["folds"] == [0, 1] and out["users"] == 5 and out["setting"] == "lr3e-3"
    assert out["dense_records"] == ["quality.py"]
    t = out["paired"]
    assert t["mean_diff"] == pytest.approx((-0.1 + 0 + 0.1 - 0.1 + 0) / 5)
    assert (t["b_better"], t["a_better"], t["ties"]) == (1, 2, 2)
    assert out["per_fold_recall@50"]["1"] == {"adam": pytest.approx(0.7), "sparse_adam": pytest.approx(0.65)}
    # a fold whose sparse run scored other users is an error, not a silent mismatch
    _record(sq.kfold_record_path(work, "mind", "sparse_adam", 1), ["4", "9"], sparse[1])
    with pytest.raises(ValueError, match="other users"):
        sq.kfold_compare(["mind"], work)


def test_report_section_marks_rows_outside_tolerance():
    runs = [_row("mind", "committed", 2026, 0.40), _row("mind", "sparse_adam", 2026, 0.385, 0.47),
            _row("umi", "committed", 2026, 0.30), _row("umi", "sparse_adam", 2026, 0.305, 0.3)]
    data = {"what": "w", "tolerance_recall@50": 0.01, "runs": runs, "summary": sq.summarise(runs),
            "kfold": {"mind": {"sparse_adam": {"folds": [0, 1], "users": 5, "adam_recall@50": 0.42,
                                               "sparse_recall@50": 0.40,
                                               "paired": {"mean_diff": -0.02, "ci_low": -0.05, "ci_high": 0.01,
                                                          "wilcoxon_p": 0.5, "b_better": 1, "a_better": 2,
                                                          "ties": 2}}}},
            "note": "n", "commands": ["c1"]}
    text = "\n".join(rep.section(data, None, "", None, None))
    assert "| MIND | 0.4000 | – | 0.3850 (-0.0150 ✗) |" in text
    assert "| UMI | 0.3000 | – | 0.3050 (+0.0050) |" in text
    assert "| MIND | sparse_adam | 2 (5) | 0.4200 | 0.4000 | -0.0200 | [-0.0500, +0.0100] | 0.5 | 1 / 2 / 2 |" in text
    assert "`c1`" in text
