"""Serving: answers equal evaluate's for the same users, requests are validated, A/B bucketing is stable."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from components import evaluate as E
from components.export import ExportPaths, build_bundle
from components.serving import ABSpec, Recommender, RequestError
from test_evaluate import ROOT, _cfg, make_split, save_random_model


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A random-init MIND (dynamic K: masked interests) evaluated and exported."""
    root = tmp_path_factory.mktemp("serving")
    split = make_split(root / "split", num_items=61, num_categories=6, num_users=80, min_len=3, max_len=12)
    save_random_model(split, root / "models" / "mind", arch="mind", max_len=8, num_interests=3)
    m = E.run(_cfg(topn=[5, 20], faiss_check=False, lambda_sweep=[]), split, root / "models" / "mind",
              root / "eval" / "mind", max_len=8, seed=0)
    m_div = E.run(_cfg(topn=[5, 20], faiss_check=False, lambda_sweep=[], diversity_lambda=0.3), split,
                  root / "models" / "mind", root / "eval" / "mind_div", max_len=8, seed=0)
    paths = ExportPaths(models_dir=root / "models", eval_dir=root / "eval", index_dir=root / "index",
                        split_dir=split, bundles_dir=root / "bundles")
    b = build_bundle("mind", paths, {}, m, {"passed": True}, "test-version")
    return {"root": root, "split": split, "bundle": b, "metrics": m, "metrics_div": m_div}


def _users(split):
    cat = E.load_catalogue(split)
    vocab = json.loads((split / "vocab.json").read_text())
    out = []
    for s in ("valid", "test"):
        users = E.load_users(split, s, cat)
        for i in range(len(users)):
            prof = {f: vocab["profile_values"][f][int(j)] if int(j) else None
                    for f, j in zip(cat.profile_fields, users.profile[i])}
            out.append((str(users.user_id[i]), [str(cat.item_ids[k]) for k in users.history[i]], prof))
    return out


@pytest.mark.parametrize("which,lam", [("mind", 0.0), ("mind_div", 0.3)])
def test_answers_match_evaluate_exactly(bundle, which, lam):
    rec = Recommender.load(bundle["bundle"])
    per_user = pd.read_parquet(bundle["root"] / "eval" / which / "per_user.parquet").set_index("user_id")
    users = _users(bundle["split"])
    assert len(users) == len(per_user)
    for uid, hist, prof in users:
        got = rec.recommend(hist, prof, n=20, diversity_lambda=lam)
        assert [i for i, _ in got] == list(per_user.loc[uid, "recommended"]), uid
    # the batch path gives the same lists as one request at a time
    batch = rec.recommend_batch([h for _, h, _ in users], [p for _, _, p in users], 20, lam)
    assert [[i for i, _ in r] for r in batch] == [list(per_user.loc[u, "recommended"]) for u, _, _ in users]
    assert rec.stats["unknown_items"] == 0 and rec.stats["fallbacks"] == 0


def test_faiss_path_equals_exact_for_flat_bundle(bundle):
    exact = Recommender.load(bundle["bundle"])
    via_index = Recommender.load(bundle["bundle"], use_index=True)
    for _, hist, prof in _users(bundle["split"])[:10]:
        a = exact.recommend(hist, prof, n=10)
        b = via_index.recommend(hist, prof, n=10)
        assert [i for i, _ in a] == [i for i, _ in b]
        assert np.allclose([s for _, s in a], [s for _, s in b], atol=1e-5)


def test_unknown_items_ignored_and_counted_and_popular_fallback(bundle):
    rec = Recommender.load(bundle["bundle"])
    _, hist, prof = _users(bundle["split"])[0]
    clean = rec.recommend(hist, prof, n=10)
    noisy = rec.recommend(["nope-1", *hist, "nope-2"], prof, n=10)
    assert noisy == clean
    assert rec.stats["unknown_items"] == 2
    items = pd.read_parquet(bundle["split"] / "items.parquet")
    expected = items.sort_values(["train_count", "item_idx"], ascending=[False, True]).item_id.head(5).tolist()
    for history in ([], ["nope-3"]):
        got = rec.recommend(history, None, n=5)
        assert [i for i, _ in got] == expected
        assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
    assert rec.stats["fallbacks"] == 2 and rec.stats["unknown_items"] == 3
    # ints are accepted as ids; history items are never recommended back; n larger than the catalogue is capped
    ids = [int(h[1:]) for h in hist]  # "m<7 i>" ids are not ints: all unknown -> fallback
    assert rec.recommend(ids, None, n=3) == rec.recommend([], None, n=3)
    full = rec.recommend(hist, prof, n=10_000)
    assert len(full) == rec.num_items - len(set(hist)) and not {i for i, _ in full} & set(hist)


@pytest.mark.parametrize("kwargs,match", [
    (dict(history_item_ids="m7"), "history_item_ids must be a list"),
    (dict(history_item_ids=["m7", None]), r"history_item_ids\[1\]"),
    (dict(history_item_ids=["m7", True]), r"history_item_ids\[1\]"),
    (dict(history_item_ids=["m7"], n=0), "n must be a positive integer"),
    (dict(history_item_ids=["m7"], n="5"), "n must be a positive integer"),
    (dict(history_item_ids=["m7"], diversity_lambda=-0.1), "diversity_lambda"),
    (dict(history_item_ids=["m7"], diversity_lambda=float("nan")), "diversity_lambda"),
    (dict(history_item_ids=["m7"], profile={"age": "18"}), r"profile: unknown field\(s\) \['age'\]"),
    (dict(history_item_ids=["m7"], profile=["F"]), "profile must be a mapping"),
])
def test_malformed_requests_get_clear_errors(bundle, kwargs, match):
    rec = Recommender.load(bundle["bundle"])
    with pytest.raises(RequestError, match=match):
        rec.recommend(**kwargs)


def test_unknown_profile_value_is_unk(bundle):
    rec = Recommender.load(bundle["bundle"])
    _, hist, _ = _users(bundle["split"])[0]
    assert rec.recommend(hist, {"gender": "X"}, n=5) == rec.recommend(hist, {"gender": None}, n=5)
    assert rec.stats["unknown_profile_values"] == 1


# ------------------------------------------------------------------------------------------------------ A/B
def test_ab_bucketing_is_sha256_of_salt_and_user_and_splits_traffic():
    spec = ABSpec(salt="s1", num_buckets=1000, treatment_share=0.1)
    digest = hashlib.sha256("s1\x1fuser-42".encode()).digest()
    assert spec.bucket("user-42") == int.from_bytes(digest[:8], "big") % 1000
    arms = [spec.assign(f"u{i}") for i in range(20000)]
    share = arms.count("treatment") / len(arms)
    assert abs(share - 0.1) < 0.01  # binomial sd = 0.002
    other = ABSpec(salt="s2", num_buckets=1000, treatment_share=0.1)
    assert [other.assign(f"u{i}") for i in range(2000)] != arms[:2000]  # the salt re-randomises
    assert {ABSpec(salt="s", num_buckets=10, treatment_share=0.0).assign(f"u{i}") for i in range(100)} == {"control"}
    assert {ABSpec(salt="s", num_buckets=10, treatment_share=1.0).assign(f"u{i}") for i in range(100)} == {"treatment"}
    with pytest.raises(ValueError, match="treatment_share"):
        ABSpec(salt="s", num_buckets=10, treatment_share=1.5)


def test_ab_assignment_is_stable_across_processes(tmp_path):
    spec = ABSpec(salt="mir-ab-2026", num_buckets=10000, treatment_share=0.3,
                  control={"bundle": "a"}, treatment={"bundle": "b"})
    path = tmp_path / "ab.json"
    path.write_text(json.dumps(spec.to_dict()))
    ids = [f"user{i}" for i in range(300)] + [str(i) for i in range(300)]
    code = ("import json, sys\nfrom components.serving import ABSpec\n"
            "spec = ABSpec.load(sys.argv[1])\n"
            "print(json.dumps([spec.assign(u) for u in json.loads(sys.argv[2])]))")
    results = []
    for hashseed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        r = subprocess.run([sys.executable, "-c", code, str(path), json.dumps(ids)], cwd=ROOT, env=env,
                           capture_output=True, text=True, check=True)
        results.append(json.loads(r.stdout))
    here = [spec.assign(u) for u in ids]
    assert results[0] == results[1] == here
    assert 0 < here.count("treatment") < len(ids)


# ---------------------------------------------------------------------------------- fast single-user path
def test_block_topn_equals_stable_topk_with_ties_and_exclusions():
    import torch

    from components.retrieval import stable_topk
    from components.serving import block_topn

    gen = torch.Generator().manual_seed(0)
    cases = []
    for size in (1, 7, 300, 1000, 5000, 20_000):
        s = torch.randn(size, generator=gen)
        cases.append(s)
        cases.append(torch.round(s * 3) / 3)  # few distinct values: ties everywhere, also at the boundary
        t = s.clone()
        t[torch.randperm(size, generator=gen)[: size // 2]] = float("-inf")  # half excluded
        cases.append(t)
    cases.append(torch.full((3000,), float("-inf")))  # nothing left: n -inf entries, lowest indices
    cases.append(torch.zeros(3000))  # all tied: the n lowest indices
    for s in cases:
        for n in (1, 5, 50, 400):
            want_v, want_i = stable_topk(s.unsqueeze(0), n)
            got_v, got_i = block_topn(s, n)
            assert got_i.tolist() == want_i[0].tolist(), (len(s), n)
            assert got_v.tolist() == want_v[0].tolist()
    got_v, got_i = block_topn(torch.tensor([1.0, 3.0, 3.0, 2.0]), 2)  # worked by hand: ties by lower index
    assert got_i.tolist() == [1, 2] and got_v.tolist() == [3.0, 3.0]


@pytest.mark.parametrize("rows", [1, 2, 4])
def test_single_user_scores_equal_the_rows_of_a_batched_product(rows):
    """Recommender._scores (packed MKL product, block padded to >= 4 rows) gives bit for bit the rows that
    evaluate's batched torch.matmul gives, for any K (a plain one-row product does not: MKL's
    matrix-vector kernel rounds differently)."""
    import torch

    from components.serving import Recommender, pack_item_table

    gen = torch.Generator().manual_seed(rows)
    for dim in (16, 64):
        emb = torch.randn(3001, dim, generator=gen) * 0.1
        rec = Recommender(tower=None, item_emb=emb, item_ids=np.array([""] * 3001, dtype=object),
                          item_category=np.zeros(3001, np.int64), train_count=np.ones(3001, np.int64),
                          profile_fields=[], profile_values={}, max_len=4, exclude_history=True)
        users = torch.randn(40, rows, dim, generator=gen)
        batch = torch.matmul(users, emb.T)  # components.retrieval.merged_scores' product for 40 users
        for u in range(0, 40, 7):
            assert torch.equal(rec._scores(users[u])[:rows], batch[u])
        assert max(rows, 4) in rec._packed
    if torch.backends.mkl.is_available():
        assert rec._packed[max(rows, 4)] is not None  # the packed path is the one exercised above
    assert pack_item_table(emb.double(), 4) is None  # only float32 tables are packed


def test_single_request_path_equals_batch_retrieval_on_a_larger_catalogue(bundle):
    """The fast path (_exact_one: packed scores + block top-n) against components.retrieval.topn on a
    catalogue big enough for the block threshold to prune, with masked interests and exclusions."""
    import torch

    from components.retrieval import pad_exclusions, topn

    rec = Recommender.load(bundle["bundle"])
    gen = torch.Generator().manual_seed(3)
    emb = torch.randn(20_001, rec.item_emb.shape[1], generator=gen)
    emb[0] = 0
    big = Recommender(tower=rec.tower, item_emb=emb, item_ids=np.array([""] + [f"x{i}" for i in range(1, 20_001)],
                                                                          dtype=object),
                      item_category=np.zeros(20_001, np.int64), train_count=np.ones(20_001, np.int64),
                      profile_fields=[], profile_values={}, max_len=8, exclude_history=True)
    for k in range(30):
        v = torch.randn(3, emb.shape[1], generator=gen)
        m = torch.tensor([True, k % 3 != 0, k % 2 == 0])
        hist = torch.randint(1, 20_001, (k,), generator=gen).tolist()
        s, i = big._exact_one(v, m, hist, 50)
        ref_s, ref_i = topn(v.unsqueeze(0), m.unsqueeze(0), emb, 50, pad_exclusions([hist]))
        assert i == ref_i[0].tolist() and s == ref_s[0].tolist()
        assert not set(i) & set(hist)


# ------------------------------------------------------------------------------------ fused batch path
@pytest.fixture
def one_torch_thread():
    """The service runs torch with one intra-op thread (--threads 1). With two, MKL splits small products
    differently and the load-time check (rightly) sends some batch sizes to the plain path instead."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _big_recommender(tower, dim, *, items=20_001, score_threads=1, seed=5, ties=True):
    """A Recommender over a random catalogue spanning several scoring chunks (with duplicated rows: ties)."""
    import torch

    from components import serving as S

    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(items, dim, generator=gen)
    if ties:  # every 7th item duplicates item 3: equal scores for every user, broken by the lower index
        emb[torch.arange(10, items, 7)] = emb[3].clone()
    emb[0] = 0
    assert items > 2 * S._CHUNK  # the product walks several chunks
    ids = np.array([""] + [f"x{i}" for i in range(1, items)], dtype=object)
    return S.Recommender(tower=tower, item_emb=emb, item_ids=ids, item_category=np.zeros(items, np.int64),
                         train_count=np.ones(items, np.int64), profile_fields=[], profile_values={}, max_len=8,
                         exclude_history=True, score_threads=score_threads), gen


@pytest.mark.parametrize("score_threads", [1, 2, 3])
def test_fused_batch_path_equals_topn_bit_for_bit(bundle, score_threads, one_torch_thread):
    """_exact_batch (chunked product into scratch buffers, max over K, batched block threshold; catalogue
    chunks shared among score_threads threads) gives exactly components.retrieval.topn's scores and items,
    with masked interests, history exclusions, ties, several chunks and more users than one fused group."""
    import torch

    from components import serving as S
    from components.retrieval import pad_exclusions, topn

    rec = Recommender.load(bundle["bundle"])
    dim = rec.item_emb.shape[1]
    big, gen = _big_recommender(rec.tower, dim, score_threads=score_threads)
    for users in (2, 5, 17, S._FUSED_MAX_USERS + 6):
        for k in (1, 3):
            v = torch.randn(users, k, dim, generator=gen)
            m = torch.rand(users, k, generator=gen) > 0.3
            m[:, 0] = True
            hists = [torch.randint(1, 20_001, (j % 40,), generator=gen).tolist() for j in range(users)]
            hists[0] = [3]  # the tied item itself is excluded, its copies are not
            assert big._fused_ok(users * k)
            got = big._exact_batch(v, m, hists, 50)
            ref_s, ref_i = topn(v, m, big.item_emb, 50, pad_exclusions(hists))
            for j in range(users):
                assert got[j][1] == ref_i[j].tolist(), (users, k, j)
                assert got[j][0] == ref_s[j].tolist()
                assert not set(got[j][1]) & set(hists[j])
    big.close()


def test_batch_topn_equals_stable_topk_row_by_row():
    import torch

    from components.retrieval import stable_topk
    from components.serving import batch_topn

    gen = torch.Generator().manual_seed(1)
    for size in (1, 7, 300, 5000, 20_000):
        s = torch.randn(6, size, generator=gen)
        s[1] = torch.round(s[1] * 3) / 3  # ties everywhere, also at the boundary
        s[2, torch.randperm(size, generator=gen)[: size // 2]] = float("-inf")  # half excluded
        s[3] = float("-inf")  # nothing left: an empty list (-inf entries are dropped)
        s[4] = 0.0  # all tied: the lowest indices (0, the padding, dropped)
        for n in (1, 5, 50, 400):
            got = batch_topn(s, n)
            want_v, want_i = stable_topk(s, n)
            for row in range(6):
                keep = [(v, i) for v, i in zip(want_v[row].tolist(), want_i[row].tolist())
                        if v != float("-inf") and i != 0]
                assert list(zip(*got[row])) == keep, (size, n, row)


def test_fused_product_check_and_fallback(bundle, one_torch_thread):
    """check_chunked_product: True for a float32 table (this MKL), False for float64; where it says False
    recommend_batch takes the plain retrieval path with the same answer."""
    import torch

    from components.serving import check_chunked_product

    emb = torch.randn(9000, 16)
    assert all(check_chunked_product(emb, [4, 8, 64, 128]).values())
    assert check_chunked_product(emb.double(), [4]) == {4: False}
    rec = Recommender.load(bundle["bundle"])
    assert rec._chunk_ok and all(rec._chunk_ok.values())  # warmed up for batches of 2..32 users
    users = _users(bundle["split"])
    hists, profs = [h for _, h, _ in users], [p for _, _, p in users]
    fused = rec.recommend_batch(hists, profs, 20)
    rec._chunk_ok = {r: False for r in range(1, 4 * len(users) + 4)}  # as if the check had failed
    assert rec.recommend_batch(hists, profs, 20) == fused


def test_fused_path_is_thread_safe_with_helpers(bundle, one_torch_thread):
    """Several threads answering batches at once, each sharing chunks with the helper threads: every answer
    equals the one computed alone."""
    import threading

    import torch

    gen0 = torch.Generator().manual_seed(11)
    proj = torch.randn(20_001, 3 * 8, generator=gen0)

    def tower(history, mask, profile):  # a stand-in user tower over the 20k-item catalogue: 3 interests, D = 8
        v = (proj[history] * mask.unsqueeze(-1)).sum(1).view(-1, 3, 8)
        return v, torch.ones(v.shape[:2], dtype=torch.bool)

    big, gen = _big_recommender(tower, 8, score_threads=2, seed=9)
    assert all(big._fused_ok(rows) for rows in range(4, 4 * 7, 1))
    batches = [[[f"x{int(i)}" for i in torch.randint(1, 20_001, (3 + b,), generator=gen)] for _ in range(2 + b % 5)]
               for b in range(24)]
    alone = [big.recommend_batch(h, None, 30) for h in batches]
    got: dict[int, list] = {}

    def run(t):
        torch.set_num_threads(1)  # as the service's worker threads do (their executor's initializer)
        for b in range(t, len(batches), 4):
            got[b] = big.recommend_batch(batches[b], None, 30)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[b] for b in range(len(batches))] == alone
    big.close()
    assert big.recommend_batch(batches[0], None, 30) == alone[0]  # after close: scored by the caller alone
