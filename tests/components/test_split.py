"""Tests of components/split.py: ComiRec strong generalization (§4.1), leave-one-out, k-core, index maps.

Each check is against a plain-Python reference written here (sorted(), a loop k-core, Counter) on tiny
canonical tables that the tests build themselves.
"""
from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.config import ParamsError, from_dict
from components.io import DataError
from components.split import SplitConfig, assign_folds, assign_users, kcore, main, run, time_order

OUT_FILES = ("train.parquet", "valid.parquet", "test.parquet", "items.parquet", "users.parquet",
             "vocab.json", "stats.json")


# ------------------------------------------------------------------------------------------- fixtures

def write_canonical(d: Path, inter: list[tuple[str, str, int]], categories: dict[str, str],
                    profiles: dict[str, dict[str, str | None]] | None = None,
                    users: list[str] | None = None) -> Path:
    """Write interactions/items/users parquet in the canonical layout (docs/CONTRACTS.md)."""
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"user_id": pa.array([r[0] for r in inter], pa.string()),
                             "item_id": pa.array([r[1] for r in inter], pa.string()),
                             "timestamp": pa.array([r[2] for r in inter], pa.int64())}),
                   d / "interactions.parquet")
    pq.write_table(pa.table({"item_id": pa.array(list(categories), pa.string()),
                             "category": pa.array(list(categories.values()), pa.string())}),
                   d / "items.parquet")
    users = users if users is not None else sorted({r[0] for r in inter})
    cols = {"user_id": pa.array(users, pa.string())}
    for field, values in (profiles or {}).items():
        cols[field] = pa.array([values.get(u) for u in users], pa.string())
    pq.write_table(pa.table(cols), d / "users.parquet")
    return d


def random_log(seed: int, num_users=50, num_items=40, rows=320, max_ts=30):
    """A skewed log (the k-core bites, in several passes) with many timestamp ties, repeats, and item ids
    whose string order differs from their numeric order."""
    rng = random.Random(seed)
    inter = [(f"u{int(num_users * rng.random() ** 1.5)}", f"{int(num_items * rng.random() ** 2) * 7 % 41}",
              rng.randrange(max_ts)) for _ in range(rows)]
    cats = {f"{i * 7 % 41}": f"cat{i % 4}" for i in range(num_items)}
    cats["orphan"] = "catX"  # an item nobody interacted with
    genders = {f"u{u}": ["F", "M", None, ""][u % 4] for u in range(num_users)}
    ages = {f"u{u}": str(18 + u % 5) for u in range(num_users)}
    return inter, cats, {"gender": genders, "age": ages}


def ref_kcore(inter, min_user, min_item):
    """k-core by a plain loop: drop violating rows until none is left."""
    rows = list(inter)
    while True:
        uc = Counter(r[0] for r in rows)
        ic = Counter(r[1] for r in rows)
        kept = [r for r in rows if uc[r[0]] >= min_user and ic[r[1]] >= min_item]
        if len(kept) == len(rows):
            return rows
        rows = kept


def ref_sequences(inter, min_user, min_item):
    """user_id -> item ids in time order, ties by item id (the issue's rule), after the k-core."""
    seqs = defaultdict(list)
    for u, i, t in sorted(ref_kcore(inter, min_user, min_item), key=lambda r: (r[0], r[2], r[1])):
        seqs[u].append(i)
    return dict(seqs)


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def load_out(out: Path) -> dict:
    items = read_rows(out / "items.parquet")
    users = read_rows(out / "users.parquet")
    return {
        "items": items, "users": users,
        "item_id": {r["item_idx"]: r["item_id"] for r in items},
        "user_id": {r["user_idx"]: r["user_id"] for r in users},
        "train": read_rows(out / "train.parquet"),
        "valid": read_rows(out / "valid.parquet"),
        "test": read_rows(out / "test.parquet"),
        "vocab": json.loads((out / "vocab.json").read_text()),
        "stats": json.loads((out / "stats.json").read_text()),
    }


def digests(out: Path) -> dict[str, str]:
    return {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in OUT_FILES}


CFG3 = SplitConfig(min_user_interactions=3, min_item_interactions=4)


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One random log split by strong generalization, shared by the read-only checks."""
    base = tmp_path_factory.mktemp("split")
    inter, cats, profiles = random_log(0)
    data = write_canonical(base / "canonical", inter, cats, profiles)
    stats = run(CFG3, data, base / "out", seed=7)
    return {"inter": inter, "cats": cats, "profiles": profiles, "data": data, "out": base / "out",
            "returned": stats, **load_out(base / "out")}


# ------------------------------------------------------------------------------ strong generalization

def test_every_user_in_exactly_one_split(logged):
    ids = {s: [r["user_idx"] for r in logged[s]] for s in ("train", "valid", "test")}
    for s, lst in ids.items():
        assert len(lst) == len(set(lst)), s
        assert lst == sorted(lst), s
    assert not set(ids["train"]) & set(ids["valid"])
    assert not set(ids["train"]) & set(ids["test"])
    assert not set(ids["valid"]) & set(ids["test"])
    everyone = set(ids["train"]) | set(ids["valid"]) | set(ids["test"])
    assert everyone == {r["user_idx"] for r in logged["users"]}
    for r in logged["users"]:  # users.parquet's split column agrees with the files
        assert r["user_idx"] in ids[r["split"]]


def test_sequences_match_reference_in_time_order(logged):
    """train = whole sequence; valid/test: history + targets = sequence, |history| = int(0.8 n)."""
    ref = ref_sequences(logged["inter"], 3, 4)
    iid, uid = logged["item_id"], logged["user_id"]
    assert set(uid.values()) == set(ref)
    for r in logged["train"]:
        assert [iid[i] for i in r["items"]] == ref[uid[r["user_idx"]]]
    for s in ("valid", "test"):
        assert logged[s], f"no {s} users"
        for r in logged[s]:
            seq = ref[uid[r["user_idx"]]]
            n = len(seq)
            assert len(r["history"]) == int(0.8 * n) >= 1
            assert len(r["targets"]) == n - int(0.8 * n) >= 1
            assert [iid[i] for i in r["history"] + r["targets"]] == seq


def test_kcore_holds_and_is_maximal(logged):
    ref = ref_kcore(logged["inter"], 3, 4)
    assert len(ref) < len(logged["inter"])  # the fixture does exercise the filter...
    assert logged["stats"]["kcore"]["passes"] >= 3  # ...and needs more than one pass
    uc, ic = Counter(), Counter()
    iid = logged["item_id"]
    for r in logged["train"]:
        seq = r["items"]
        uc[r["user_idx"]] += len(seq)
        ic.update(seq)
    for s in ("valid", "test"):
        for r in logged[s]:
            uc[r["user_idx"]] += len(r["history"]) + len(r["targets"])
            ic.update(r["history"] + r["targets"])
    assert min(uc.values()) >= 3 and min(ic.values()) >= 4
    assert sum(uc.values()) == len(ref) == logged["stats"]["interactions"]
    assert {iid[i] for i in ic} == {r[1] for r in ref}


def test_padding_zero_unused_and_indices_contiguous(logged):
    items, users, vocab = logged["items"], logged["users"], logged["vocab"]
    assert [r["item_idx"] for r in items] == list(range(1, len(items) + 1))
    assert vocab["num_items"] == len(items) + 1
    cats = sorted({r["category_idx"] for r in items})
    assert cats == list(range(1, vocab["num_categories"]))
    assert [r["user_idx"] for r in users] == list(range(1, len(users) + 1))
    for s, cols in (("train", ["items"]), ("valid", ["history", "targets"]),
                    ("test", ["history", "targets"])):
        for r in logged[s]:
            for c in cols:
                assert all(1 <= i < vocab["num_items"] for i in r[c]), (s, c)
    assert "orphan" not in {r["item_id"] for r in items}  # no interactions, so no index


def test_index_maps_sorted_by_original_id(logged):
    item_ids = [r["item_id"] for r in logged["items"]]
    assert item_ids == sorted(item_ids)
    assert item_ids != sorted(item_ids, key=int)  # string order, not numeric, is the documented rule
    user_ids = [r["user_id"] for r in logged["users"]]
    assert user_ids == sorted(user_ids)
    by_cat = {}
    for r in logged["items"]:
        by_cat.setdefault(r["category"], r["category_idx"])
        assert by_cat[r["category"]] == r["category_idx"]
    assert sorted(by_cat, key=by_cat.get) == sorted(by_cat)


def test_vocab_round_trip(logged):
    """Index -> original id -> canonical attribute, for items, categories and profiles."""
    cats, profiles, vocab = logged["cats"], logged["profiles"], logged["vocab"]
    for r in logged["items"]:
        assert cats[r["item_id"]] == r["category"]
    assert vocab["profile_fields"] == ["gender", "age"]  # users.parquet column order
    assert vocab["profile_values"]["gender"] == ["<unk>", "F", "M"]
    assert vocab["profile_cardinalities"] == [len(vocab["profile_values"][f]) for f in ("gender", "age")]
    for r in logged["users"]:
        for f in vocab["profile_fields"]:
            raw = profiles[f][r["user_id"]]
            value = vocab["profile_values"][f][r[f"profile_{f}"]]
            assert value == (raw if raw else "<unk>")
    assert vocab["protocol"] == "strong_generalization"


def test_train_count_and_stats(logged):
    counts = Counter(i for r in logged["train"] for i in r["items"])
    for r in logged["items"]:
        assert r["train_count"] == counts.get(r["item_idx"], 0)
    st = logged["stats"]
    assert st == logged["returned"] and st["protocol"] == "strong_generalization"
    assert st["users"] == len(logged["users"]) and st["items"] == len(logged["items"])
    assert st["categories"] == logged["vocab"]["num_categories"] - 1
    assert st["input"]["interactions"] == len(logged["inter"])
    for s in ("train", "valid", "test"):
        assert st["splits"][s]["users"] == len(logged[s])
    n_valid = sum(len(r["history"]) + len(r["targets"]) for r in logged["valid"])
    assert st["splits"]["valid"]["interactions"] == n_valid
    lens = [len(r["items"]) for r in logged["train"]]
    assert st["splits"]["train"]["seq_len"]["max"] == max(lens)
    assert st["splits"]["train"]["seq_len"]["p50"] == pytest.approx(float(np.median(lens)))


def test_split_sizes_follow_ratios():
    code = assign_users(1000, (0.8, 0.1, 0.1), seed=3)
    assert np.bincount(code).tolist() == [800, 100, 100]
    code = assign_users(943, (0.7, 0.2, 0.1), seed=3)
    assert np.bincount(code).tolist() == [943 - 189 - 94, 189, 94]


# --------------------------------------------------------------------------------------- determinism

def test_same_seed_byte_identical_any_row_order(tmp_path, logged):
    inter = list(logged["inter"])
    random.Random(1).shuffle(inter)
    data = write_canonical(tmp_path / "shuffled", inter, logged["cats"], logged["profiles"],
                           users=sorted({r[0] for r in inter}, reverse=True))
    run(CFG3, logged["data"], tmp_path / "again", seed=7)
    run(CFG3, data, tmp_path / "shuffled_out", seed=7)
    assert digests(tmp_path / "again") == digests(logged["out"])
    assert digests(tmp_path / "shuffled_out") == digests(logged["out"])


def test_other_seed_other_split(tmp_path, logged):
    run(CFG3, logged["data"], tmp_path / "s8", seed=8)
    other = {r["user_id"]: r["split"] for r in read_rows(tmp_path / "s8" / "users.parquet")}
    mine = {r["user_id"]: r["split"] for r in logged["users"]}
    assert other.keys() == mine.keys() and other != mine
    assert Counter(other.values()) == Counter(mine.values())


# ------------------------------------------------------------------------------------------- k-core

def test_kcore_needs_iteration_worked_by_hand(tmp_path):
    """min 2/2. u1: a b; u2: a b; u3: b c; u4: c d.
    Pass 1: d has 1 row -> drop (u4, d). Pass 2: u4 has 1 -> drop (u4, c). Pass 3: c has 1 -> drop (u3, c).
    Pass 4: u3 has 1 -> drop (u3, b). Pass 5: u1, u2 x a, b all have 2: done. One pass would keep u3, u4."""
    inter = [("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 1), ("u2", "b", 2),
             ("u3", "b", 1), ("u3", "c", 2), ("u4", "c", 1), ("u4", "d", 2)]
    data = write_canonical(tmp_path / "c", inter, {"a": "x", "b": "x", "c": "y", "d": "y"})
    stats = run(SplitConfig(min_user_interactions=2, min_item_interactions=2, ratios=(1.0, 0.0, 0.0)),
                data, tmp_path / "out", seed=0)
    out = load_out(tmp_path / "out")
    assert stats["kcore"]["passes"] == 5
    assert sorted(out["user_id"].values()) == ["u1", "u2"]
    assert sorted(out["item_id"].values()) == ["a", "b"]
    assert [r["items"] for r in out["train"]] == [[1, 2], [1, 2]]
    assert out["vocab"]["num_categories"] == 2  # only 'x' survives
    assert stats["interactions"] == 4 and stats["kcore"]["removed_interactions"] == 4


def test_kcore_function_matches_reference():
    rng = np.random.default_rng(5)
    for _ in range(20):
        u = rng.integers(0, 30, 200)
        i = rng.integers(0, 25, 200)
        rows, passes = kcore(u, i, 30, 25, 4, 6)
        ref = ref_kcore([(a, b, k) for k, (a, b) in enumerate(zip(u.tolist(), i.tolist()))], 4, 6)
        assert rows.tolist() == [r[2] for r in ref]
        assert passes >= 1


# ------------------------------------------------------------------------------------- time order

def test_ties_broken_by_item_id(tmp_path):
    # u1 sees items at t=5 in the input order c, a, b, and '10' vs '9' (string order: '10' < '9').
    inter = [("u1", "c", 5), ("u1", "a", 5), ("u1", "9", 3), ("u1", "10", 3), ("u1", "b", 5), ("u1", "z", 1)]
    data = write_canonical(tmp_path / "c", inter, {k: "x" for k in ("a", "b", "c", "9", "10", "z")})
    run(SplitConfig(min_user_interactions=2, min_item_interactions=1, ratios=(1.0, 0.0, 0.0)),
        data, tmp_path / "out", seed=0)
    out = load_out(tmp_path / "out")
    assert [out["item_id"][i] for i in out["train"][0]["items"]] == ["z", "10", "9", "a", "b", "c"]


@pytest.mark.parametrize("num_users,num_items,ts_scale", [
    (50, 20, 1000),              # packed raw time offsets
    (50, 20, 2 ** 60),           # time range too wide: packed time ranks
    (2 ** 44, 2 ** 20, 1000),    # users x ranks x items beyond 64 bits: item prefix + ties by item
    (2 ** 30, 2 ** 30, 1000),    # same, ties on the item prefix (items differing in the lowest bit)
    (2 ** 62, 2 ** 20, 1000),    # users x ranks beyond 64 bits: lexsort
])
def test_time_order_paths_match_sorted(num_users, num_items, ts_scale):
    rng = np.random.default_rng(0)
    n = 500
    user = rng.integers(1, 51, n)
    item = rng.integers(1, 20, n)
    ts = rng.integers(0, 12, n) * (ts_scale // 12) - 7
    u, i = time_order(user, ts, item, num_users, num_items)
    ref = sorted(zip(user.tolist(), ts.tolist(), item.tolist()))
    assert u.tolist() == [r[0] for r in ref] and i.tolist() == [r[2] for r in ref]


@pytest.mark.parametrize("num_users,num_items,ts_span", [
    (1000, 2 ** 26, 2 ** 29),            # 10 + 29 + 26 = 65 bits: 2 user blocks, raw times
    (1000, 2 ** 26, 2 ** 31),            # 67 bits: 8 user blocks
    (2 ** 20, 2 ** 26, 2 ** 24 - 1),     # 21 + 24 + 26 = 71 bits: times ranked through the presence table
    (1000, 2 ** 26, 2 ** 40),            # 76 bits: times ranked through unique + searchsorted
    (7, 50, 1000),                       # fits in one key: one block
])
def test_time_order_user_blocks_and_time_ranks_match_sorted(num_users, num_items, ts_span):
    # users spread over the whole index range (so every block is populated), values drawn from small pools
    # so that equal times and equal (time, item) pairs occur; the reference is Python's tuple sort
    rng = np.random.default_rng(1)
    n = 3000
    user = rng.choice(rng.integers(1, num_users + 1, 40), n)
    item = rng.choice(rng.integers(1, num_items, 30), n)
    ts = rng.choice(np.concatenate([[0, ts_span - 1], rng.integers(0, ts_span, 60)]), n) + 1_600_000_000
    u, i = time_order(user, ts, item, num_users, num_items)
    ref = sorted(zip(user.tolist(), ts.tolist(), item.tolist()))
    assert u.dtype == i.dtype == np.int64
    assert u.tolist() == [r[0] for r in ref] and i.tolist() == [r[2] for r in ref]


# ----------------------------------------------------------------------------------- leave-one-out

def test_leave_one_out_layout(tmp_path, logged):
    cfg = SplitConfig(protocol="leave_one_out", min_user_interactions=3, min_item_interactions=4)
    run(cfg, logged["data"], tmp_path / "loo", seed=7)
    out = load_out(tmp_path / "loo")
    ref = ref_sequences(logged["inter"], 3, 4)
    iid, uid = out["item_id"], out["user_id"]
    assert [r["user_idx"] for r in out["train"]] == list(range(1, len(ref) + 1))
    assert {r["split"] for r in out["users"]} == {"train"}
    valid = {r["user_idx"]: r for r in out["valid"]}
    test = {r["user_idx"]: r for r in out["test"]}
    assert valid.keys() == test.keys() == set(uid)
    for r in out["train"]:
        seq = ref[uid[r["user_idx"]]]
        v, t = valid[r["user_idx"]], test[r["user_idx"]]
        assert [iid[i] for i in r["items"]] == seq[:-2]
        assert [iid[i] for i in v["history"]] == seq[:-2] and [iid[i] for i in v["targets"]] == [seq[-2]]
        assert [iid[i] for i in t["history"]] == seq[:-1] and [iid[i] for i in t["targets"]] == [seq[-1]]
    counts = Counter(i for r in out["train"] for i in r["items"])
    assert all(r["train_count"] == counts.get(r["item_idx"], 0) for r in out["items"])
    assert out["vocab"]["protocol"] == "leave_one_out" == out["stats"]["protocol"]
    assert out["stats"]["splits"]["test"]["users"] == len(ref)


# ------------------------------------------------------------------------------- config and inputs

@pytest.mark.parametrize("bad,key", [
    ({"ratios": [0.8, 0.1, 0.2]}, "sum to 1"),
    ({"ratios": [0.8, 0.2]}, "3 entries"),
    ({"ratios": [1.2, -0.1, -0.1]}, "ratios"),
    ({"history_fraction": 1.0}, "history_fraction"),
    ({"min_item_interactions": 0}, "min_item_interactions"),
    ({"protocol": "leave_one_out", "min_user_interactions": 2}, "min_user_interactions"),
    ({"min_user_interactions": 1}, "min_user_interactions"),  # int(0.8 * 1) = 0: empty history
    ({"protocol": "random"}, "split.protocol"),
    ({"min_users": 5}, "'min_users'"),                          # typo
    ({"min_user_interactions": "5"}, "split.min_user_interactions"),  # wrong type
    ({"folds": 2}, r"split\.folds must be 1 .* or >= 3"),
    ({"folds": 0}, r"split\.folds must be"),
    ({"folds": 3, "fold": 3}, r"split\.fold must lie in \[0, folds\) = \[0, 3\), got 3"),
    ({"folds": 3, "fold": -1}, r"split\.fold must lie"),
    ({"folds": 3, "protocol": "leave_one_out"}, r"split\.folds: k-fold"),
    ({"folds": True}, r"split\.folds: expected an integer"),
])
def test_bad_params(bad, key):
    with pytest.raises(ParamsError, match=key):
        from_dict(SplitConfig, bad, "split")


@pytest.fixture
def good_out(tmp_path):
    inter, cats, profiles = random_log(2)
    data = write_canonical(tmp_path / "canonical", inter, cats, profiles)
    run(CFG3, data, tmp_path / "out", seed=1)
    return data, tmp_path / "out", digests(tmp_path / "out")


def rewrite(path: Path, **cols) -> None:
    t = pq.read_table(path)
    for name, values in cols.items():
        if values is None:
            t = t.drop_columns([name])
        else:
            t = t.set_column(t.column_names.index(name), name, values)
    pq.write_table(t, path)


@pytest.mark.parametrize("breakage,message", [
    (lambda d: rewrite(d / "interactions.parquet", timestamp=None), r"interactions.parquet.*'timestamp'"),
    (lambda d: rewrite(d / "items.parquet", category=None), r"items.parquet.*'category'"),
    (lambda d: (d / "users.parquet").unlink(), r"users.parquet.*not found"),
    (lambda d: rewrite(d / "interactions.parquet", item_id=pa.array(
        ["ghost"] + pq.read_table(d / "interactions.parquet").column("item_id").to_pylist()[1:])),
     r"interactions.parquet.*'item_id'.*not found in .*items.parquet.*'ghost'"),
    (lambda d: rewrite(d / "interactions.parquet", user_id=pa.array(
        ["nobody"] + pq.read_table(d / "interactions.parquet").column("user_id").to_pylist()[1:])),
     r"'user_id'.*not found in .*users.parquet.*'nobody'"),
    (lambda d: rewrite(d / "interactions.parquet", timestamp=pa.array(
        [str(x) for x in pq.read_table(d / "interactions.parquet").column("timestamp").to_pylist()])),
     r"'timestamp'.*int64"),
    (lambda d: pq.write_table(pq.read_table(d / "interactions.parquet").slice(0, 0),
                              d / "interactions.parquet"),
     r"interactions.parquet.*empty"),
    (lambda d: (d / "interactions.parquet").write_bytes((d / "interactions.parquet").read_bytes()[:200]),
     r"interactions.parquet.*not a readable parquet"),
    (lambda d: rewrite(d / "items.parquet", item_id=pa.array(
        pq.read_table(d / "items.parquet").column("item_id").to_pylist()[1:2] * 2
        + pq.read_table(d / "items.parquet").column("item_id").to_pylist()[2:])),
     r"items.parquet.*'item_id'.*duplicated"),
    (lambda d: rewrite(d / "items.parquet", category=pa.array(
        [""] + pq.read_table(d / "items.parquet").column("category").to_pylist()[1:])),
     r"items.parquet.*'category'.*empty"),
    (lambda d: rewrite(d / "users.parquet", age=pa.array(
        range(pq.read_metadata(d / "users.parquet").num_rows))),
     r"users.parquet.*'age'.*expected a string column"),
    (lambda d: rewrite(d / "users.parquet", user_id=pa.array(
        [None] + pq.read_table(d / "users.parquet").column("user_id").to_pylist()[1:], pa.string())),
     r"users.parquet.*'user_id'.*1 null"),
])
def test_bad_input_names_the_problem_and_keeps_outputs(good_out, breakage, message):
    data, out, before = good_out
    breakage(data)
    with pytest.raises(DataError, match=message):
        run(CFG3, data, out, seed=1)
    assert digests(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["canonical", "out"]  # no temp dir left


def test_nothing_left_after_filter(good_out):
    data, out, before = good_out
    with pytest.raises(DataError, match="no interactions left"):
        run(SplitConfig(min_user_interactions=10_000), data, out, seed=1)
    assert digests(out) == before


# ----------------------------------------------------------------------------------------------- CLI

def test_cli_reads_params_and_fails_cleanly(good_out, tmp_path, capsys):
    data, out, before = good_out
    params = tmp_path / "params.yaml"
    params.write_text("seed: 1\nsplit:\n  min_user_interactions: 3\n  min_item_interactions: 4\n")
    main(["--params", str(params), "--data", str(data), "--out", str(tmp_path / "cli")])
    assert digests(tmp_path / "cli") == before  # same as run() with the same config and seed

    params.write_text("seed: 1\nsplit:\n  min_user_interaction: 3\n")
    with pytest.raises(SystemExit) as exc:
        main(["--params", str(params), "--data", str(data), "--out", str(out)])
    assert exc.value.code == 2
    assert "split: unknown key(s) 'min_user_interaction'" in capsys.readouterr().err
    params.write_text("seed: one\nsplit: {}\n")
    with pytest.raises(SystemExit) as exc:
        main(["--params", str(params), "--data", str(data), "--out", str(out)])
    assert exc.value.code == 2 and "seed" in capsys.readouterr().err
    (data / "items.parquet").write_bytes(b"not parquet")
    params.write_text("seed: 1\nsplit: {}\n")
    with pytest.raises(SystemExit) as exc:
        main(["--params", str(params), "--data", str(data), "--out", str(out)])
    assert exc.value.code == 2 and "items.parquet" in capsys.readouterr().err
    assert digests(out) == before


def test_cli_help_runs():
    res = subprocess.run([sys.executable, "-m", "components.split", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and "--params" in res.stdout


# ------------------------------------------------------------------------------------ tiny data (issue 13)

def tiny_log(num_users: int, length: int = 5):
    inter = [(f"u{u}", f"i{(u + k) % 7}", k) for u in range(num_users) for k in range(length)]
    return inter, {f"i{i}": "c" for i in range(7)}


def test_tiny_data_refuses_an_empty_split_naming_counts_and_keys(tmp_path, capsys):
    """4 users at 8:1:1: round(0.1 * 4) = 0 valid and 0 test users; refused, no output written."""
    inter, cats = tiny_log(4)
    data = write_canonical(tmp_path / "c", inter, cats)
    with pytest.raises(DataError, match=r"interactions.parquet: the split leaves no valid / test user\(s\): "
                                        r"4 user\(s\) after the k-core give train/valid/test = 4/0/0; "
                                        r"raise the valid/test shares of split.ratios.*split.min_user_interactions"):
        run(SplitConfig(min_user_interactions=2, min_item_interactions=1), data, tmp_path / "out", seed=0)
    assert not (tmp_path / "out").exists()
    params = tmp_path / "params.yaml"
    params.write_text("seed: 0\nsplit:\n  min_user_interactions: 2\n  min_item_interactions: 1\n")
    with pytest.raises(SystemExit) as exc:
        main(["--params", str(params), "--data", str(data), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "4/0/0" in err and "split.ratios" in err
    # enough users for one in each split: 20 users -> 16/2/2
    stats = run(SplitConfig(min_user_interactions=2, min_item_interactions=1),
                write_canonical(tmp_path / "c20", *tiny_log(20)), tmp_path / "out", seed=0)
    assert [stats["splits"][s]["users"] for s in ("train", "valid", "test")] == [16, 2, 2]


def test_more_folds_than_users_is_refused_naming_folds(tmp_path):
    data = write_canonical(tmp_path / "c", *tiny_log(4))
    with pytest.raises(DataError, match=r"train/valid/test = \d/\d/\d; lower split.folds \(now 5"):
        run(SplitConfig(min_user_interactions=2, min_item_interactions=1, folds=5, fold=4), data,
            tmp_path / "out", seed=0)


# ---------------------------------------------------------------------------------------- k-fold

@pytest.mark.parametrize("num_users,k", [(10, 3), (31, 4), (100, 5), (7, 7)])
def test_folds_cover_every_user_once_as_test_and_once_as_valid(num_users, k):
    codes = [assign_folds(num_users, k, f, seed=11) for f in range(k)]
    tests = [set(np.flatnonzero(c == 2).tolist()) for c in codes]
    valids = [set(np.flatnonzero(c == 1).tolist()) for c in codes]
    test_count = Counter(u for t in tests for u in t)
    valid_count = Counter(u for v in valids for u in v)
    assert test_count == valid_count == Counter({u: 1 for u in range(num_users)})
    for f in range(k):
        assert not tests[f] & valids[f]
        assert valids[f] == tests[(f + 1) % k]  # fold f's valid users are fold f+1's test users
        train = set(np.flatnonzero(codes[f] == 0).tolist())
        assert train == set(range(num_users)) - tests[f] - valids[f] and train
        for g in range(f + 1, k):
            assert not tests[f] & tests[g]  # the folds are disjoint
    sizes = sorted(len(t) for t in tests)
    assert sizes[-1] - sizes[0] <= 1 and sum(sizes) == num_users


def test_folds_deterministic_by_seed():
    a = assign_folds(50, 5, 2, seed=3)
    assert np.array_equal(a, assign_folds(50, 5, 2, seed=3))
    assert not np.array_equal(a, assign_folds(50, 5, 2, seed=4))


def test_folds_end_to_end(tmp_path, logged):
    """3 folds through run(): users.parquet agrees with the files, each user tests once, same seed same bytes."""
    test_users, valid_users = Counter(), Counter()
    for f in range(3):
        cfg = SplitConfig(min_user_interactions=3, min_item_interactions=4, folds=3, fold=f)
        stats = run(cfg, logged["data"], tmp_path / f"f{f}", seed=7)
        out = load_out(tmp_path / f"f{f}")
        assert stats["folds"] == 3 and stats["fold"] == f
        by_split = {s: {r["user_id"] for r in out["users"] if r["split"] == s} for s in ("train", "valid", "test")}
        for s in ("valid", "test"):
            assert {out["user_id"][r["user_idx"]] for r in out[s]} == by_split[s]
        test_users.update(by_split["test"])
        valid_users.update(by_split["valid"])
    everyone = {r["user_id"] for r in logged["users"]}
    assert test_users == valid_users == Counter({u: 1 for u in everyone})
    run(SplitConfig(min_user_interactions=3, min_item_interactions=4, folds=3, fold=1), logged["data"],
        tmp_path / "again", seed=7)
    assert digests(tmp_path / "again") == digests(tmp_path / "f1")


def test_one_fold_is_exactly_the_ratio_split(tmp_path, logged):
    """folds: 1 (the default) writes the same bytes as before the key existed, stats.json included."""
    run(SplitConfig(min_user_interactions=3, min_item_interactions=4, folds=1, fold=0), logged["data"],
        tmp_path / "one", seed=7)
    assert digests(tmp_path / "one") == digests(logged["out"])
    assert "folds" not in logged["stats"]
    code = assign_users(len(logged["users"]), (0.8, 0.1, 0.1), seed=7)
    assert [r["split"] for r in logged["users"]] == [("train", "valid", "test")[c] for c in code]


# ------------------------------------------------------------------------------ interactions read in chunks

def test_chunked_read_gives_byte_identical_outputs(tmp_path, logged, monkeypatch):
    """Interactions encoded in chunks of 7 rows (320 rows: 46 chunks) give the same split files."""
    import components.split as split_module

    monkeypatch.setattr(split_module, "READ_CHUNK_ROWS", 7)
    run(CFG3, logged["data"], tmp_path / "chunked", seed=7)
    assert digests(tmp_path / "chunked") == digests(logged["out"])


def test_error_in_a_later_chunk_is_reported_for_the_whole_table(good_out, monkeypatch):
    """Unknown ids in two chunks: one error counting both (the whole table's message), outputs kept."""
    import components.split as split_module

    data, out, before = good_out
    items = pq.read_table(data / "interactions.parquet").column("item_id").to_pylist()
    items[-1], items[-20] = "ghost", "phantom"
    rewrite(data / "interactions.parquet", item_id=pa.array(items))
    monkeypatch.setattr(split_module, "READ_CHUNK_ROWS", 10)
    with pytest.raises(DataError, match=r"2 id\(s\) not found in .*items.parquet") as info:
        run(CFG3, data, out, seed=1)
    assert {"ghost", "phantom"} <= set(str(info.value).replace("'", " ").split())
    assert digests(out) == before
