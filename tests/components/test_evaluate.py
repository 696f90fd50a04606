"""evaluate: metric maths worked by hand, the protocol end to end on a tiny split, outputs and the report.

``make_split``/``save_random_model``/``CategoryOracle`` are reused by the build_index, export, serving and
gate tests (imported from this module).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from components import evaluate as E
from components.config import ParamsError, from_dict

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


# ------------------------------------------------------------------------------------------------ fixtures
def make_split(root: Path, *, num_items: int = 41, num_categories: int = 5, num_users: int = 60,
               seed: int = 0, min_len: int = 8, max_len: int = 14) -> Path:
    """A tiny split folder per docs/CONTRACTS.md. Item ``i`` (1..) has category ``1 + (i - 1) % (C - 1)`` and
    original id ``"m<7 i>"``; every user draws all behaviours from one home category (so a category-aware
    model can be perfect); users are 60/20/20 % train/valid/test; one profile field ``gender``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    idx = np.arange(1, num_items)
    cats = 1 + (idx - 1) % (num_categories - 1)
    counts = np.zeros(num_items, dtype=np.int64)
    seqs = []
    for u in range(num_users):
        home = 1 + u % (num_categories - 1)
        pool = idx[cats == home]
        n = int(rng.integers(min_len, min(max_len, len(pool)) + 1))
        seqs.append(rng.permutation(pool)[:n].tolist())
    split = np.array(["train"] * num_users, dtype=object)
    order = rng.permutation(num_users)
    split[order[: num_users // 5]] = "valid"
    split[order[num_users // 5: 2 * num_users // 5]] = "test"
    for u, s in enumerate(seqs):
        if split[u] == "train":
            counts[s] += 1
    pd.DataFrame({"item_idx": idx, "item_id": [f"m{7 * i}" for i in idx],
                  "category": [f"c{c}" for c in cats], "category_idx": cats,
                  "train_count": counts[idx]}).to_parquet(root / "items.parquet", index=False)
    gender = rng.integers(0, 3, num_users)
    pd.DataFrame({"user_idx": np.arange(1, num_users + 1), "user_id": [f"u{u}" for u in range(num_users)],
                  "split": split, "profile_gender": gender}).to_parquet(root / "users.parquet", index=False)
    train = [(u + 1, s) for u, s in enumerate(seqs) if split[u] == "train"]
    pd.DataFrame({"user_idx": [u for u, _ in train], "items": [s for _, s in train]}).to_parquet(
        root / "train.parquet", index=False)
    for name in ("valid", "test"):
        rows = [(u + 1, s[: int(0.8 * len(s))], s[int(0.8 * len(s)):]) for u, s in enumerate(seqs)
                if split[u] == name]
        pd.DataFrame({"user_idx": [r[0] for r in rows], "history": [r[1] for r in rows],
                      "targets": [r[2] for r in rows]}).to_parquet(root / f"{name}.parquet", index=False)
    vocab = {"num_items": num_items, "num_categories": num_categories, "profile_fields": ["gender"],
             "profile_cardinalities": [3], "profile_values": {"gender": ["<unk>", "F", "M"]},
             "protocol": "strong_generalization"}
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "stats.json").write_text("{}")
    return root


def save_random_model(split_dir: Path, model_dir: Path, *, arch: str = "youtube_dnn", max_len: int = 6,
                      seed: int = 0, **hparams) -> Path:
    """A random-init registered model sized for ``split_dir``, saved as ``model_dir/model.pt``."""
    import models

    vocab = json.loads((split_dir / "vocab.json").read_text())
    torch.manual_seed(seed)
    extra = dict(dim=8) if arch != "most_popular" else {}
    extra.update(hparams)
    model = models.build_model(arch, num_items=vocab["num_items"], num_categories=vocab["num_categories"],
                               profile_cardinalities=vocab["profile_cardinalities"], max_len=max_len, **extra)
    items = pd.read_parquet(split_dir / "items.parquet")
    cats = np.zeros(vocab["num_items"], dtype=np.int64)
    cats[items["item_idx"]] = items["category_idx"]
    if arch == "most_popular":
        counts = np.zeros(vocab["num_items"], dtype=np.int64)
        counts[items["item_idx"]] = items["train_count"]
        model.fit_counts(counts)
    else:
        models.set_item_category(model, cats)
    model_dir.mkdir(parents=True, exist_ok=True)
    models.save_model(model, model_dir / "model.pt")
    return model_dir


class CategoryOracle(nn.Module):
    """Plain interface model: item embedding = one-hot category, one interest = the history's category mix.
    On :func:`make_split` data every item of the home category scores 1 and all others 0."""

    def __init__(self, item_category: torch.Tensor, num_categories: int):
        super().__init__()
        self.register_buffer("onehot", torch.eye(num_categories)[item_category])
        self.onehot[0] = 0

    def item_embeddings(self, ids):
        return self.onehot[ids]

    def user_interests(self, history, mask, profile):
        e = self.onehot[history] * mask.unsqueeze(-1)
        v = e.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return v.unsqueeze(1), torch.ones_like(mask[:, :1])


class MixtureOracle(CategoryOracle):
    """K = C − 1 interests, one per category: weight 1 on the history's main category, 0.9 on the others.
    Each interest retrieves its own category, so λ > 0 can trade home items for other categories."""

    def user_interests(self, history, mask, profile):
        C = self.onehot.shape[1]
        counts = (self.onehot[history] * mask.unsqueeze(-1)).sum(1)  # (B, C)
        main = counts.argmax(dim=1)  # (B,)
        basis = torch.eye(C)[1:]  # (K, C)
        w = torch.full((history.shape[0], C - 1), 0.9)
        w[torch.arange(history.shape[0]), main - 1] = 1.0
        return w.unsqueeze(-1) * basis, torch.ones(history.shape[0], C - 1, dtype=torch.bool)


def _cfg(**kw) -> E.EvaluateConfig:
    base = dict(topn=[2, 5, 10], bootstrap_samples=200, lambda_sweep=[0.0, 1.0], heatmap_users=2)
    base.update(kw)
    return from_dict(E.EvaluateConfig, base, "evaluate")


def _oracle(split_dir: Path) -> CategoryOracle:
    cat = E.load_catalogue(split_dir)
    return CategoryOracle(torch.as_tensor(cat.item_category), cat.num_categories)


# ----------------------------------------------------------------------------------------- metric maths
def test_metrics_hand_worked_case():
    """List [1, 2, 3, 4], targets {2, 4, 9}, categories 1, 1, 2, 3.
    N = 4: hits at ranks 2 and 4: DCG = 1/log2(3) + 1/log2(5) = 0.63093 + 0.43068 = 1.06161;
    IDCG over min(3, 4) = 3 positions = 1 + 0.63093 + 0.5 = 2.13093; NDCG = 0.49819.
    Recall = 2/3, HR = 1, Precision = 2/4, Diversity = 5 different-category pairs of 6.
    N = 2: DCG = 0.63093; IDCG = 1 + 0.63093; NDCG = 0.38685; Recall = 1/3; Precision = 1/2;
    Diversity = 0 (items 1, 2 share category 1)."""
    items = np.array([[1, 2, 3, 4]])
    cats = np.array([0, 1, 1, 2, 3, 0, 0, 0, 0, 0])
    m = E.user_metrics({4: items, 2: items[:, :2]}, [np.array([2, 4, 9])], cats)
    assert m["ndcg@4"][0] == pytest.approx(0.49819, abs=1e-5)
    assert m["recall@4"][0] == pytest.approx(2 / 3)
    assert m["hitrate@4"][0] == 1.0
    assert m["precision@4"][0] == pytest.approx(0.5)
    assert m["diversity@4"][0] == pytest.approx(5 / 6)
    assert m["ndcg@2"][0] == pytest.approx(0.38685, abs=1e-5)
    assert m["recall@2"][0] == pytest.approx(1 / 3)
    assert m["precision@2"][0] == pytest.approx(0.5)
    assert m["diversity@2"][0] == 0.0


def test_ndcg_is_one_for_a_perfect_list_and_idcg_uses_min_targets_n():
    # 5 targets, N = 3, perfect list: IDCG over min(5, 3) = 3 positions, so NDCG = 1 (not 3/5-weighted)
    m = E.user_metrics({3: np.array([[7, 8, 9]])}, [np.array([5, 6, 7, 8, 9])], np.zeros(10, np.int64))
    assert m["ndcg@3"][0] == pytest.approx(1.0)
    assert m["recall@3"][0] == pytest.approx(3 / 5)
    # one target at rank 1 of a 3-list: NDCG = 1 whatever N (IDCG = 1)
    m = E.user_metrics({3: np.array([[4, 1, 2]])}, [np.array([4])], np.zeros(10, np.int64))
    assert m["ndcg@3"][0] == pytest.approx(1.0)
    # no hit: all zero
    m = E.user_metrics({3: np.array([[1, 2, 3]])}, [np.array([4])], np.zeros(10, np.int64))
    assert m["ndcg@3"][0] == m["recall@3"][0] == m["hitrate@3"][0] == 0.0


def test_ndcg_matches_slow_reference_on_random_lists():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 12))
        items = rng.permutation(np.arange(1, 40))[:n][None]
        targets = np.unique(rng.integers(1, 40, rng.integers(1, 15)))
        got = E.user_metrics({n: items}, [targets], np.zeros(40, np.int64))["ndcg@" + str(n)][0]
        dcg = sum(1 / math.log2(k + 2) for k, i in enumerate(items[0]) if i in set(targets))
        idcg = sum(1 / math.log2(k + 2) for k in range(min(len(targets), n)))
        assert got == pytest.approx(dcg / idcg)
        assert 0.0 <= got <= 1.0


def test_bootstrap_interval_brackets_mean_and_shrinks_with_users():
    rng = np.random.default_rng(1)
    small = rng.random((30, 1))
    big = rng.random((3000, 1))
    lo_s, hi_s = E.bootstrap_ci(small, 500, 0.95, seed=3)
    lo_b, hi_b = E.bootstrap_ci(big, 500, 0.95, seed=3)
    assert lo_s[0] < small.mean() < hi_s[0]
    assert (hi_b - lo_b)[0] < (hi_s - lo_s)[0] / 4  # ~ 1/sqrt(100) as wide
    const = np.full((20, 1), 0.3)
    assert E.bootstrap_ci(const, 100, 0.9, seed=0) == (pytest.approx([0.3]), pytest.approx([0.3]))
    a = E.bootstrap_ci(small, 200, 0.95, seed=7)
    b = E.bootstrap_ci(small, 200, 0.95, seed=7)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_config_rejects_bad_values_naming_the_key():
    with pytest.raises(ParamsError, match="topn"):
        from_dict(E.EvaluateConfig, {"topn": [0, 10]}, "evaluate")
    with pytest.raises(ParamsError, match="confidence"):
        from_dict(E.EvaluateConfig, {"confidence": 1.5}, "evaluate")
    with pytest.raises(ParamsError, match="lambda_sweep"):
        from_dict(E.EvaluateConfig, {"lambda_sweep": [-1.0]}, "evaluate")
    with pytest.raises(ParamsError, match="faiss_nprobe"):
        from_dict(E.EvaluateConfig, {"faiss_nprobe": 0}, "evaluate")
    with pytest.raises(ParamsError, match="evaluate: unknown key.*nope"):
        from_dict(E.EvaluateConfig, {"nope": 1}, "evaluate")


def test_params_yaml_evaluate_section_loads():
    from components.config import load_params, section

    cfg = section(load_params(ROOT / "params.yaml"), "evaluate", E.EvaluateConfig)
    assert cfg.topn == [10, 20, 50, 100]


# ------------------------------------------------------------------------------------------ the protocol
def test_oracle_model_is_perfect_and_history_is_excluded(tmp_path):
    split = make_split(tmp_path / "split")
    res = E.evaluate_model(_cfg(), _oracle(split), split, max_len=6, seed=0)
    m = res["metrics"]
    # every target is in the home category, which has <= 10 items outside the history
    assert m["test.recall@10"] == pytest.approx(1.0)
    assert m["test.hitrate@10"] == pytest.approx(1.0)
    assert m["valid.recall@10"] == pytest.approx(1.0)
    df = res["per_user"]
    users = res["users"]["test"]
    cat = res["catalogue"]
    for uid, rec in zip(df[df.split == "test"].user_id, df[df.split == "test"].recommended):
        i = list(users.user_id).index(uid)
        assert not set(rec) & set(cat.item_ids[users.history[i]])  # history excluded
    # summary = mean of the per-user values
    assert m["test.ndcg@5"] == pytest.approx(df[df.split == "test"]["ndcg@5"].mean())
    assert m["test.recall@5_ci_low"] <= m["test.recall@5"] <= m["test.recall@5_ci_high"]


def test_without_exclusion_history_items_come_back(tmp_path):
    split = make_split(tmp_path / "split")
    res = E.evaluate_model(_cfg(exclude_history=False), _oracle(split), split, max_len=6, seed=0)
    df = res["per_user"]
    users = res["users"]["test"]
    cat = res["catalogue"]
    overlaps = [len(set(rec) & set(cat.item_ids[users.history[list(users.user_id).index(uid)]]))
                for uid, rec in zip(df[df.split == "test"].user_id, df[df.split == "test"].recommended)]
    assert sum(overlaps) > 0
    assert res["metrics"]["test.recall@5"] < E.evaluate_model(_cfg(), _oracle(split), split, max_len=6,
                                                              seed=0)["metrics"]["test.recall@5"]


def test_lambda_sweep_trades_accuracy_for_diversity(tmp_path):
    """ComiRec Table 5: raising λ raises Diversity@N and lowers Recall@N."""
    split = make_split(tmp_path / "split")
    cat = E.load_catalogue(split)
    model = MixtureOracle(torch.as_tensor(cat.item_category), cat.num_categories)
    res = E.evaluate_model(_cfg(lambda_sweep=[0.0, 5.0]), model, split, max_len=6, seed=0)
    s0, s1 = res["lambda_sweep"]
    assert s0["lambda"] == 0.0 and s1["lambda"] == 5.0
    # the λ = 0 row of the sweep equals the main (λ = 0) numbers
    assert s0["test.recall@5"] == pytest.approx(res["metrics"]["test.recall@5"])
    for n in (2, 5):
        assert s1[f"test.diversity@{n}"] > s0[f"test.diversity@{n}"]
        assert s1[f"test.recall@{n}"] < s0[f"test.recall@{n}"]
    # λ = 5 > score gaps of 0.1: the first C − 1 = 4 picks cover 4 categories, so Diversity@2 = 1
    assert s1["test.diversity@2"] == pytest.approx(1.0)
    # main numbers at λ > 0 come from the controllable aggregation too
    res5 = E.evaluate_model(_cfg(diversity_lambda=5.0, lambda_sweep=[]), model, split, max_len=6, seed=0)
    assert res5["metrics"]["test.diversity@5"] == pytest.approx(s1["test.diversity@5"])


def test_faiss_check_agrees_with_exact(tmp_path):
    split = make_split(tmp_path / "split")
    model_dir = save_random_model(split, tmp_path / "m")
    import models

    model = models.load_model(model_dir / "model.pt")
    res = E.evaluate_model(_cfg(), model, split, max_len=6, seed=0)
    assert res["faiss_check"]["max_abs_gap"] < 1e-9
    assert res["faiss_check"]["list_agreement"] == pytest.approx(1.0)
    assert res["faiss_check"]["exact_metrics"]["test.recall@10"] == res["metrics"]["test.recall@10"]
    # an approximate index (IVF: 16 of 32 lists probed) shows up as a gap or disagreement
    res = E.evaluate_model(_cfg(faiss_factory="IVF32,Flat", diversity_lambda=0.5), model, split, max_len=6,
                           seed=0)
    assert res["faiss_check"]["factory"] == "IVF32,Flat" and res["faiss_check"]["nprobe"] == 16
    assert res["faiss_check"]["list_agreement"] < 1.0
    # every list probed (evaluate.faiss_nprobe 32 of 32) the IVF index is exact again
    res = E.evaluate_model(_cfg(faiss_factory="IVF32,Flat", faiss_nprobe=32), model, split, max_len=6, seed=0)
    assert res["faiss_check"]["nprobe"] == 32 and res["faiss_check"]["list_agreement"] == pytest.approx(1.0)


def test_run_writes_dvc_outputs_and_keeps_old_outputs_on_failure(tmp_path):
    split = make_split(tmp_path / "split")
    model_dir = save_random_model(split, tmp_path / "models" / "youtube_dnn")
    logs = model_dir / "logs"
    logs.mkdir()
    pd.DataFrame({"epoch": [0, 0, 1, 1], "step": [1, 1, 2, 2], "train_loss": [2.0, None, 1.5, None],
                  "val_recall@50": [None, 0.1, None, 0.2]}).to_csv(logs / "metrics.csv", index=False)
    out = tmp_path / "eval" / "youtube_dnn"
    m = E.run(_cfg(), split, model_dir, out, max_len=6, seed=0)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == pytest.approx(m)
    for key in ("test.recall@10", "test.recall@10_ci_low", "test.recall@10_ci_high", "valid.ndcg@5",
                "test.diversity@2", "test.precision@5", "test.hitrate@10", "faiss_check.max_abs_gap"):
        assert key in saved
    per_user = pd.read_parquet(out / "per_user.parquet")
    assert set(per_user.split) == {"valid", "test"} and len(per_user) == saved["test.num_users"] + \
        saved["valid.num_users"]
    for f in ("recall_curve.csv", "recall_curve.png", "lambda_tradeoff.csv", "lambda_tradeoff.png",
              "training_curve.csv", "training_curve.png"):
        assert (out / "plots" / f).stat().st_size > 0, f
    assert not (out / "plots" / "coupling_heatmap.png").exists()  # YouTube DNN has no routing
    curve = pd.read_csv(out / "plots" / "recall_curve.csv")
    assert list(curve[curve.split == "test"].n) == [2, 5, 10]
    assert (np.diff(curve[curve.split == "test"].recall) >= 0).all()  # Recall@N is monotone in N
    # a failing run (corrupt model) leaves the previous outputs untouched
    (model_dir / "model.pt").write_bytes(b"garbage")
    from components.io import DataError

    with pytest.raises(DataError, match="model.pt"):
        E.run(_cfg(), split, model_dir, out, max_len=6, seed=0)
    assert json.loads((out / "metrics.json").read_text()) == saved


@pytest.mark.parametrize("arch", ["mind", "comirec_dr"])
def test_coupling_heatmap_for_routing_models(tmp_path, arch):
    """MIND Fig. 5: per behaviour, the coupling coefficients over the (active) interests sum to 1
    (Algorithm 1 line 4 / CapsNet: softmax over interests); columns follow the history order."""
    split = make_split(tmp_path / "split")
    mdir = save_random_model(split, tmp_path / "models" / arch, arch=arch, num_interests=3)
    out = tmp_path / "eval"
    E.run(_cfg(faiss_check=False, lambda_sweep=[], bootstrap_samples=0), split, mdir, out, max_len=6, seed=0)
    assert (out / "plots" / "coupling_heatmap.png").stat().st_size > 0
    users = json.loads((out / "plots" / "coupling.json").read_text())["users"]
    assert len(users) == 2
    for u in users:
        w = np.asarray(u["weights"])  # (K', L)
        assert w.shape[1] == len(u["items"]) == 6  # the longest test histories fill max_len
        assert all(c.startswith("c") for c in u["categories"])  # labelled by category name
        assert np.allclose(w.sum(axis=0), 1.0, atol=1e-4)
    if arch == "comirec_dr":  # newest-first routing positions are mapped back to history order
        import models

        model = models.load_model(mdir / "model.pt")
        h = torch.tensor([[3, 7, 11, 0, 0, 0]])
        raw = model.capsules(h, h != 0)[1]
        mapped = E.coupling_weights(model, h, h != 0, torch.zeros(1, 1, dtype=torch.long))
        assert torch.allclose(mapped[0, :, :3], raw[0, :, :3].flip(-1))


def test_bad_split_is_a_data_error_naming_file_and_column(tmp_path):
    from components.io import DataError

    split = make_split(tmp_path / "split")
    df = pd.read_parquet(split / "test.parquet")
    df.loc[0, "targets"] = [999]
    df.to_parquet(split / "test.parquet", index=False)
    with pytest.raises(DataError, match=r"test.parquet.*targets"):
        E.evaluate_model(_cfg(), _oracle(split), split, max_len=6, seed=0)


def test_report_table_side_by_side(tmp_path):
    for name, r in (("most_popular", 0.05), ("mind", 0.12)):
        d = tmp_path / "eval" / name
        d.mkdir(parents=True)
        m = {"test.num_users": 95, "confidence": 0.95}
        for n in (20, 50):
            for k in E.METRICS:
                m[f"test.{k}@{n}"] = r
                m[f"test.{k}@{n}_ci_low"] = r - 0.01
                m[f"test.{k}@{n}_ci_high"] = r + 0.01
        (d / "metrics.json").write_text(json.dumps(m))
    out = tmp_path / "report.md"
    E.report(E.discover(tmp_path / "eval", ["most_popular", "mind"]), out)
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| model | variant | users | Recall@20 | NDCG@20 | HR@20 | Recall@50")
    assert rows[1].startswith("| most_popular | `most_popular` | 95 | 5.00 [4.0, 6.0]")  # no label: the name
    assert rows[2].startswith("| mind | `mind` | 95 | **12.00** [11.0, 13.0]")
    assert "95% bootstrap" in text


def test_cli_help_is_fast_and_bad_params_exit_2(tmp_path):
    r = subprocess.run([PY, "-X", "importtime", "-m", "components.evaluate", "--help"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "--models-dir" in r.stdout
    assert "torch" not in {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines()}
    params = tmp_path / "params.yaml"
    params.write_text("seed: 1\ntrain: {max_len: 5}\nevaluate: {topn: [0]}\n")
    r = subprocess.run([PY, "-m", "components.evaluate", "--params", str(params), "--model", "x",
                        "--split", str(tmp_path), "--models-dir", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "evaluate" in r.stderr and "topn" in r.stderr
