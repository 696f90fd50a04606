"""The planted-interest generator: determinism, the planted structure, its distributions, streaming."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from components import synthetic
from components.synthetic import SyntheticConfig, generate, write

SMALL = SyntheticConfig(num_users=1500, num_items=300, num_categories=12, interests_per_user=3,
                        mean_length=25, min_length=5, noise=0.2, popularity_skew=0.8)


@pytest.fixture(scope="module")
def small():
    return generate(SMALL, seed=11)


def _category_index(tables) -> np.ndarray:
    """Category index of every interaction's item (categories are named cat<index>)."""
    cat = tables.items.set_index("item_id")["category"].str.slice(3).astype(int)
    return cat.loc[tables.ground_truth["item_id"]].to_numpy()


def test_same_seed_same_data_other_seed_other_data(small):
    again = generate(SMALL, seed=11)
    other = generate(SMALL, seed=12)
    pd.testing.assert_frame_equal(small.ground_truth, again.ground_truth)
    pd.testing.assert_frame_equal(small.users, again.users)
    pd.testing.assert_frame_equal(small.items, again.items)
    assert not small.ground_truth["item_id"].head(200).equals(other.ground_truth["item_id"].head(200))


def test_streamed_write_equals_in_memory_generate(small, tmp_path):
    stats = write(SMALL, tmp_path, seed=11, chunk_rows=5000)       # one row group per block of users
    assert pq.ParquetFile(tmp_path / "interactions.parquet").metadata.num_row_groups == 2
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "ground_truth.parquet"), small.ground_truth)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "interactions.parquet"), small.interactions)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "users.parquet"), small.users)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "items.parquet"), small.items)
    lengths = small.interactions.groupby("user_id").size()
    assert stats["interactions"] == len(small.interactions)
    assert stats["noise_interactions"] == int((small.ground_truth["interest"] == -1).sum())
    assert (stats["min_length"], stats["max_length"]) == (lengths.min(), lengths.max())


def test_no_ground_truth_file_unless_asked(tmp_path):
    write(synthetic.replace(SMALL, num_users=50, save_ground_truth=False), tmp_path, seed=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["interactions.parquet", "items.parquet",
                                                          "users.parquet"]


def test_canonical_schema(small):
    assert list(small.interactions.columns) == ["user_id", "item_id", "timestamp"]
    assert small.interactions["timestamp"].dtype == np.int64
    assert small.ground_truth["interest"].dtype == np.int64
    assert small.items["item_id"].is_unique and small.users["user_id"].is_unique
    assert set(small.interactions["item_id"]) <= set(small.items["item_id"])
    assert set(small.interactions["user_id"]) == set(small.users["user_id"])
    assert len(small.users) == SMALL.num_users and len(small.items) == SMALL.num_items
    assert small.items["category"].nunique() == SMALL.num_categories
    # equal-size categories (they differ by at most one item)
    sizes = small.items["category"].value_counts()
    assert sizes.max() - sizes.min() <= 1
    assert set(small.users["age"]) <= set(synthetic.AGE_GROUPS)


def test_planted_interest_is_the_item_category_and_at_most_k_per_user(small):
    gt = small.ground_truth
    planted = gt["interest"].to_numpy() >= 0
    np.testing.assert_array_equal(_category_index(small)[planted], gt["interest"].to_numpy()[planted])
    per_user = gt[planted].groupby("user_id")["interest"].nunique()
    assert per_user.max() == SMALL.interests_per_user
    assert (per_user <= SMALL.interests_per_user).all()


def test_noise_share_and_lengths_match_the_config(small):
    gt = small.ground_truth
    n = len(gt)
    share = (gt["interest"] == -1).mean()
    assert abs(share - SMALL.noise) < 5 * np.sqrt(SMALL.noise * (1 - SMALL.noise) / n)
    lengths = gt.groupby("user_id").size()
    assert lengths.min() >= SMALL.min_length
    # min_length + Geometric: mean mean_length, sd sqrt((1 - p) / p^2) with p = 1 / (extra + 1)
    extra = SMALL.mean_length - SMALL.min_length
    sd = np.sqrt(extra * (extra + 1))
    assert abs(lengths.mean() - SMALL.mean_length) < 5 * sd / np.sqrt(len(lengths))


def test_timestamps_strictly_increase_per_user(small):
    gt = small.ground_truth
    diffs = gt.groupby("user_id")["timestamp"].diff().dropna()
    assert (diffs >= 1).all()
    assert gt["timestamp"].min() >= synthetic.START_TIME


def test_single_interest_without_noise_stays_in_one_category():
    cfg = synthetic.replace(SMALL, num_users=200, interests_per_user=1, noise=0.0)
    t = generate(cfg, seed=3)
    cats = pd.Series(_category_index(t), index=t.ground_truth["user_id"])
    assert (cats.groupby(level=0).nunique() == 1).all()
    assert (t.ground_truth["interest"] >= 0).all()


@pytest.mark.parametrize("num_items,num_categories", [(5, 1), (7, 2)])
def test_within_category_popularity_is_zipf(num_items, num_categories):
    """Item frequencies in a category follow p(rank r) = (r+1)^-s / sum_j (j+1)^-s over its own size."""
    s = 1.0
    cfg = SyntheticConfig(num_users=400, num_items=num_items, num_categories=num_categories,
                          interests_per_user=1, mean_length=100, min_length=100, noise=0.0, popularity_skew=s)
    t = generate(cfg, seed=5)
    n = len(t.ground_truth)
    for c, grp in t.ground_truth.groupby("interest"):
        freq = np.sort(grp["item_id"].value_counts().to_numpy())[::-1] / len(grp)
        size = int((t.items["category"] == synthetic.category_names(num_categories)[c]).sum())
        expected = (np.arange(size) + 1.0) ** -s
        expected /= expected.sum()
        assert len(freq) == size
        np.testing.assert_allclose(freq, expected, atol=5 * np.sqrt(0.25 / len(grp)))
    assert n == 400 * 100


def test_zero_skew_is_uniform_within_category():
    cfg = SyntheticConfig(num_users=300, num_items=6, num_categories=1, interests_per_user=1,
                          mean_length=100, min_length=100, noise=0.0, popularity_skew=0.0)
    counts = generate(cfg, seed=9).interactions["item_id"].value_counts().to_numpy()
    n = counts.sum()
    chi2 = ((counts - n / 6) ** 2 / (n / 6)).sum()
    assert chi2 < 25.0                      # 5 d.o.f.: P(chi2 > 25) < 2e-4


def test_subsets_are_distinct_and_uniform():
    rng = np.random.default_rng(0)
    chosen = synthetic._choose_subsets(rng, 20000, 6, 3)
    assert (np.sort(chosen, axis=1)[:, 1:] != np.sort(chosen, axis=1)[:, :-1]).all()
    # every value appears in a row with probability k / population = 1/2
    freq = np.bincount(chosen.ravel(), minlength=6) / 20000
    np.testing.assert_allclose(freq, 0.5, atol=5 * np.sqrt(0.25 / 20000))
    # all C(6, 3) = 20 subsets equally likely
    keys = np.sort(chosen, axis=1) @ np.array([36, 6, 1])
    counts = np.unique(keys, return_counts=True)[1]
    assert len(counts) == 20
    chi2 = ((counts - 1000) ** 2 / 1000).sum()
    assert chi2 < 50.0                      # 19 d.o.f.: P(chi2 > 50) < 2e-4


def _mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    joint = pd.crosstab(a, b).to_numpy() / len(a)
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum())


@pytest.mark.parametrize("field", ["gender", "age", "occupation"])
def test_profile_is_correlated_with_interests(small, field):
    """Each profile value is drawn from the table of one of the user's interests, so it carries
    information about the user's main interest; a shuffled profile carries (almost) none."""
    gt = small.ground_truth[small.ground_truth["interest"] >= 0]
    counts = pd.crosstab(gt["user_id"], gt["interest"])                  # (users, categories)
    main = counts.columns.to_numpy()[counts.to_numpy().argmax(axis=1)]   # the most used interest
    value = small.users.set_index("user_id").loc[counts.index, field].to_numpy()
    mi = _mutual_information(main, value)
    shuffled = [_mutual_information(main, np.random.default_rng(i).permutation(value))
                for i in range(5)]
    assert mi > 2 * max(shuffled)


@pytest.mark.parametrize("changes,key", [
    ({"interests_per_user": 13}, "interests_per_user"),
    ({"num_items": 5}, "num_items"),
    ({"mean_length": 3.0}, "mean_length"),
    ({"noise": 1.5}, "noise"),
    ({"num_users": 0}, "num_users"),
    ({"popularity_skew": -1.0}, "popularity_skew"),
])
def test_config_rejects_bad_values(changes, key):
    with pytest.raises(ValueError, match=f"synthetic.{key}"):
        synthetic.replace(SMALL, **changes)
