"""ingest: the verified MovieLens-100K fetch, every source reader on small files in its published format,
and bad input (clear DataError/ParamsError, exit status 2, previous outputs intact)."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components import ingest
from components.config import ParamsError, from_dict, load_params
from components.ingest import ColumnMapping, IngestConfig, run
from components.io import DataError
from components.synthetic import SyntheticConfig

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "downloads"        # where `make data` leaves the wheel: the fetch test is offline then


def _tables(out: Path) -> dict[str, pd.DataFrame]:
    return {n: pd.read_parquet(out / f"{n}.parquet") for n in ("interactions", "items", "users")}


def _check_canonical(t: dict[str, pd.DataFrame]) -> None:
    inter, items, users = t["interactions"], t["items"], t["users"]
    assert list(inter.columns[:3]) == ["user_id", "item_id", "timestamp"]
    assert inter["timestamp"].dtype == "int64"
    for df, col in ((inter, "user_id"), (inter, "item_id"), (items, "item_id"), (items, "category"),
                    (users, "user_id")):
        assert pd.api.types.is_string_dtype(df[col]), col
        assert (df[col].str.len() > 0).all(), col
    assert items["item_id"].is_unique and users["user_id"].is_unique


# --- fetch: the recbole wheel -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ml100k_raw(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("raw") / "ml-100k"
    res = ingest.fetch(dest, CACHE)
    assert res["status"] in ("cached wheel", "downloaded")
    return dest


def test_fetch_verifies_and_is_idempotent(ml100k_raw):
    names = sorted(p.name for p in ml100k_raw.iterdir())
    assert names == [".verified", "ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    for name, digest in ingest.ML100K_FILES.items():
        assert hashlib.sha256((ml100k_raw / name).read_bytes()).hexdigest() == digest
    record = json.loads((ml100k_raw / ".verified").read_text())
    assert record["files"] == ingest.ML100K_FILES
    # second call: files present with the right hashes -> no download, no wheel needed at all
    assert ingest.fetch(ml100k_raw, ml100k_raw / "no-cache-here")["status"] == "present"


def test_fetch_refuses_a_wheel_with_the_wrong_hash(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    with zipfile.ZipFile(cache / ingest.RECBOLE_WHEEL, "w") as zf:
        for name in ingest.ML100K_FILES:
            zf.writestr(ingest.RECBOLE_ML100K_DIR + name, "tampered\n")
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        ingest.fetch(tmp_path / "dest", cache)
    assert not (tmp_path / "dest" / ".verified").exists()


def test_a_corrupted_file_is_replaced_from_the_wheel(ml100k_raw, tmp_path):
    dest = tmp_path / "ml"
    shutil.copytree(ml100k_raw, dest)
    (dest / "ml-100k.user").write_text("user_id:token\n1\n")
    assert ingest.fetch(dest, CACHE)["status"] == "cached wheel"
    assert hashlib.sha256((dest / "ml-100k.user").read_bytes()).hexdigest() == ingest.ML100K_FILES["ml-100k.user"]


def test_extracted_files_are_checked_one_by_one(tmp_path):
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/a.txt", "hello\n")
        zf.writestr("pkg/b.txt", "world\n")
    good = hashlib.sha256(b"hello\n").hexdigest()
    ingest.extract_verified(wheel, tmp_path / "ok", files={"a.txt": good}, prefix="pkg/")
    assert (tmp_path / "ok" / "a.txt").read_text() == "hello\n"
    with pytest.raises(DataError, match="SHA-256 mismatch for pkg/b.txt"):
        ingest.extract_verified(wheel, tmp_path / "bad", files={"b.txt": good}, prefix="pkg/")
    assert list((tmp_path / "bad").iterdir()) == []          # nothing unverified under a final name


# --- movielens-100k (the real files) -----------------------------------------------------------------------

def test_movielens_100k_counts_and_fields(ml100k_raw, tmp_path):
    stats = run(IngestConfig(path=ml100k_raw), tmp_path / "out", seed=0)
    t = _tables(tmp_path / "out")
    _check_canonical(t)
    assert (stats["interactions"], stats["users"], stats["items"]) == (100_000, 943, 1_682)
    assert len(t["interactions"]) == 100_000 and t["interactions"].drop_duplicates().shape[0] == 100_000
    items = t["items"].set_index("item_id")
    assert items.loc["1", "category"] == "Animation"                     # Toy Story: Animation Children's Comedy
    assert items.loc["1", "genres"] == "Animation|Children's|Comedy"
    assert items.loc["2", "category"] == "Action"                        # GoldenEye: Action Adventure Thriller
    users = t["users"].set_index("user_id")
    assert list(users.columns) == ["gender", "age", "occupation"]
    assert users.loc["1"].tolist() == ["M", "18-24", "technician"]      # age 24
    assert users.loc["2"].tolist() == ["F", "50-55", "other"]            # age 53
    assert set(users["age"]) == {"<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"}
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["items"] == 1_682
    run(IngestConfig(path=ml100k_raw, age_groups=False), tmp_path / "raw_age", seed=0)
    assert _tables(tmp_path / "raw_age")["users"].set_index("user_id").loc["2", "age"] == "53"


@pytest.mark.parametrize("age,group", [(1, "<18"), (17, "<18"), (18, "18-24"), (24, "18-24"), (25, "25-34"),
                                       (44, "35-44"), (45, "45-49"), (49, "45-49"), (50, "50-55"),
                                       (55, "50-55"), (56, "56+"), (73, "56+")])
def test_movielens_1m_age_groups(age, group):
    assert ingest._age_values(pd.Series([str(age)]), Path("u"), True).iloc[0] == group


# --- grouplens (original files) and its agreement with the recbole files ------------------------------------

U_DATA = "1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881250951\n"
U_USER = "1|24|M|technician|85711\n2|53|F|other|94043\n"
FLAGS = ["0"] * 19


def _u_item() -> str:
    a, b = FLAGS.copy(), FLAGS.copy()
    a[3] = a[5] = "1"                        # Animation, Comedy
    b[1] = b[16] = "1"                       # Action, Thriller
    return (f"10|Caf\xe9 Story (1995)|01-Jan-1995||http://x|{'|'.join(a)}\n"
            f"20|Heat (1995)|01-Jan-1995||http://y|{'|'.join(b)}\n")


def _write_grouplens(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text(U_DATA, encoding="latin-1")
    (folder / "u.user").write_text(U_USER, encoding="latin-1")
    (folder / "u.item").write_text(_u_item(), encoding="latin-1")
    return folder


def _write_recbole_same(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                          + U_DATA)
    (folder / "ml-100k.user").write_text("user_id:token\tage:token\tgender:token\toccupation:token\t"
                                         "zip_code:token\n" + U_USER.replace("|", "\t"))
    (folder / "ml-100k.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\t"
                                         "class:token_seq\n10\tCafé Story\t1995\tAnimation Comedy\n"
                                         "20\tHeat\t1995\tAction Thriller\n")
    return folder


def test_grouplens_folder_zip_and_recbole_agree(tmp_path):
    gl = _write_grouplens(tmp_path / "gl" / "ml-100k")
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("u.data", "u.user", "u.item"):
            zf.write(gl / name, f"ml-100k/{name}")
        zf.writestr("ml-100k/README", "readme")
    run(IngestConfig(source="grouplens", path=tmp_path / "gl"), tmp_path / "from_dir", seed=0)
    run(IngestConfig(source="grouplens", path=archive), tmp_path / "from_zip", seed=0)
    run(IngestConfig(path=_write_recbole_same(tmp_path / "rb")), tmp_path / "from_recbole", seed=0)
    d, z, r = (_tables(tmp_path / n) for n in ("from_dir", "from_zip", "from_recbole"))
    _check_canonical(d)
    for name in ("interactions", "items", "users"):
        pd.testing.assert_frame_equal(d[name], z[name])
    for name in ("interactions", "users"):
        pd.testing.assert_frame_equal(d[name], r[name])
    cols = ["item_id", "category", "genres"]
    pd.testing.assert_frame_equal(d["items"][cols], r["items"][cols])
    assert d["items"]["category"].tolist() == ["Animation", "Action"]
    assert d["items"]["title"].tolist()[0] == "Caf\xe9 Story (1995)"     # latin-1 decoded
    assert d["users"]["age"].tolist() == ["18-24", "50-55"]


@pytest.mark.parametrize("entry", ["../evil.txt", "/abs/evil.txt", "ml-100k/../../evil.txt"])
def test_grouplens_zip_with_path_traversal_is_refused(tmp_path, entry):
    gl = _write_grouplens(tmp_path / "gl")
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("u.data", "u.user", "u.item"):
            zf.write(gl / name, f"ml-100k/{name}")
        zf.writestr(entry, "pwned")
    out = tmp_path / "out"
    run(IngestConfig(source="grouplens", path=gl), out, seed=0)           # previous good outputs
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(DataError, match="escape the target folder") as exc:
        run(IngestConfig(source="grouplens", path=archive), out, seed=0)
    assert entry in str(exc.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tmp_path.rglob("evil.txt"))


def test_zip_symlink_entry_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("ml-100k/u.data")
        info.external_attr = (0o120777 << 16)                 # a symlink entry
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match="escape"):
        ingest.safe_extract(archive, tmp_path / "x", wanted=("u.data",))


# --- synthetic ---------------------------------------------------------------------------------------------

def test_synthetic_source_writes_ground_truth(tiny_synthetic):
    t = _tables(tiny_synthetic)
    _check_canonical(t)
    gt = pd.read_parquet(tiny_synthetic / "ground_truth.parquet")
    pd.testing.assert_frame_equal(gt[["user_id", "item_id", "timestamp"]], t["interactions"])
    stats = json.loads((tiny_synthetic / "stats.json").read_text())
    assert stats["source"] == "synthetic" and stats["users"] == 300 and stats["interactions"] == len(gt)
    assert stats["profile_fields"] == list(t["users"].columns[1:])


# --- csv / parquet logs ------------------------------------------------------------------------------------

def test_csv_log_with_mapping_category_and_behavior(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("uid,sku,ts,kind,cat,price\n"
                   "a,x,100,click,shoes,1\n"
                   "a,y,101,buy,hats,2\n"
                   "b,x,102,click,shoes,1\n"
                   "b,x,103,click,boots,1\n"
                   "c,z,104,click,,3\n"
                   "7,8,105.0,click,hats,4\n")
    cfg = IngestConfig(source="csv", path=log,
                       columns=ColumnMapping(user_id="uid", item_id="sku", timestamp="ts", behavior="kind",
                                             category="cat"))
    stats = run(cfg, tmp_path / "out", seed=0)
    t = _tables(tmp_path / "out")
    _check_canonical(t)
    assert list(t["interactions"].columns) == ["user_id", "item_id", "timestamp", "behavior"]
    assert t["interactions"]["timestamp"].tolist() == [100, 101, 102, 103, 104, 105]
    assert dict(zip(t["items"]["item_id"], t["items"]["category"])) == \
        {"x": "shoes", "y": "hats", "z": "unknown", "8": "hats"}          # x: shoes 2 times, boots once
    assert t["users"]["user_id"].tolist() == ["7", "a", "b", "c"]
    assert list(t["users"].columns) == ["user_id"]
    assert stats["categories"] == 3 and stats["interactions"] == 6


def test_csv_without_category_gets_unknown_and_gz_is_read(tmp_path):
    log = tmp_path / "log.csv.gz"
    with gzip.open(log, "wt") as fh:
        fh.write("user_id,item_id,timestamp\n1,2,10\n1,3,11\n")
    run(IngestConfig(source="csv", path=log), tmp_path / "out", seed=0)
    items = _tables(tmp_path / "out")["items"]
    assert items["category"].tolist() == ["unknown", "unknown"]


def test_parquet_log_with_integer_ids_and_timestamp_type(tmp_path):
    log = tmp_path / "log.parquet"
    ts = pd.to_datetime(["2020-01-01 00:00:00", "2020-01-01 00:00:01", "2020-01-02 00:00:00"], utc=True)
    pq.write_table(pa.table({"u": [1, 1, 2], "i": [5, 6, 5], "when": pa.array(ts, pa.timestamp("ms", "UTC")),
                             "c": ["a", "b", "a"]}), log)
    cfg = IngestConfig(source="parquet", path=log,
                       columns=ColumnMapping(user_id="u", item_id="i", timestamp="when", category="c"))
    run(cfg, tmp_path / "out", seed=0)
    t = _tables(tmp_path / "out")
    _check_canonical(t)
    assert t["interactions"]["timestamp"].tolist() == [1577836800, 1577836801, 1577923200]
    assert t["interactions"]["user_id"].tolist() == ["1", "1", "2"]


# --- Amazon Books and Taobao in their published formats ----------------------------------------------------

def test_amazon_books_ratings_and_mcauley_metadata(tmp_path):
    ratings = tmp_path / "ratings_Books.csv"
    ratings.write_text("U1,B001,5.0,1300000000\nU1,B002,4.0,1300000100\nU2,B001,3.0,1300000200\n"
                       "U2,B003,1.0,1300000300\nU3,B004,2.0,1300000400\n")
    meta = tmp_path / "meta_Books.json.gz"
    lines = [
        # the 2014 dump: Python literals with single quotes
        "{'asin': 'B001', 'title': 'A', 'categories': [['Books', 'Literature & Fiction', 'Classics'], "
        "['Kindle Store']]}",
        # strict JSON also accepted; the first path under Books wins, not the first path
        json.dumps({"asin": "B002", "categories": [["Movies & TV"], ["Books", "Science Fiction", "Space"]]}),
        "{'asin': 'B003', 'categories': [['Books']]}",                    # no non-root level -> unknown
        "{'asin': 'B999', 'description': 'not rated, never parsed: ' + broken",
        # B004 has no metadata at all -> unknown
    ]
    with gzip.open(meta, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    run(IngestConfig(source="amazon-books", path=ratings, meta_path=meta), tmp_path / "out", seed=0)
    t = _tables(tmp_path / "out")
    _check_canonical(t)
    assert len(t["interactions"]) == 5
    assert dict(zip(t["items"]["item_id"], t["items"]["category"])) == {
        "B001": "Literature & Fiction", "B002": "Science Fiction", "B003": "unknown", "B004": "unknown"}


@pytest.mark.parametrize("paths,expected", [
    ([["Books", "Children's Books", "Animals"]], "Children's Books"),
    ([["Kindle Store", "Kindle eBooks"], ["Books", "Mystery"]], "Mystery"),
    ([["Books"]], "unknown"),
    ([], "unknown"),
    (None, "unknown"),
])
def test_primary_book_category(paths, expected):
    assert ingest.primary_book_category(paths) == expected


def test_amazon_metadata_bad_line_names_the_line(tmp_path):
    meta = tmp_path / "meta.json"
    meta.write_text("{'asin': 'B001', 'categories': [['Books', 'X']]}\n{'asin': 'B002', 'categories': [[\n")
    with pytest.raises(DataError, match="line 2"):
        ingest.read_amazon_categories(meta, {"B001", "B002"})


def test_taobao_keeps_only_clicks(tmp_path):
    ub = tmp_path / "UserBehavior.csv"
    ub.write_text("1,100,7,pv,1511544070\n1,101,7,buy,1511544071\n1,102,8,pv,1511544072\n"
                  "2,100,7,cart,1511544073\n2,103,9,fav,1511544074\n2,100,7,pv,1511544075\n")
    run(IngestConfig(source="taobao", path=ub), tmp_path / "out", seed=0)
    t = _tables(tmp_path / "out")
    _check_canonical(t)
    inter = t["interactions"]
    assert inter[["user_id", "item_id"]].values.tolist() == [["1", "100"], ["1", "102"], ["2", "100"]]
    assert set(inter["behavior"]) == {"pv"}
    assert dict(zip(t["items"]["item_id"], t["items"]["category"])) == {"100": "7", "102": "8"}


# --- bad input ---------------------------------------------------------------------------------------------

def _csv_cfg(path: Path) -> IngestConfig:
    return IngestConfig(source="csv", path=path)


def test_missing_column(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item,timestamp\n1,2,3\n")
    with pytest.raises(DataError, match=r"log.csv, column 'item_id': missing required column"):
        run(_csv_cfg(log), tmp_path / "out", seed=0)


def test_non_numeric_timestamp_names_rows(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\n1,2,100\n1,3,yesterday\n2,3,200\n2,4,soon\n")
    with pytest.raises(DataError, match="column 'timestamp': non-numeric") as exc:
        run(_csv_cfg(log), tmp_path / "out", seed=0)
    assert "(1, 'yesterday')" in str(exc.value) and "(3, 'soon')" in str(exc.value)


def test_missing_ids_and_timestamps(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\n1,2,100\n,3,101\n")
    with pytest.raises(DataError, match="column 'user_id': missing"):
        run(_csv_cfg(log), tmp_path / "out", seed=0)
    log.write_text("user_id,item_id,timestamp\n1,2,100\n1,3,\n")
    with pytest.raises(DataError, match="column 'timestamp': missing timestamps"):
        run(_csv_cfg(log), tmp_path / "out", seed=0)


def test_id_and_timestamp_types():
    assert ingest._ids(pa.array([3.0, 4.0]), "f", "c").to_pylist() == ["3", "4"]
    assert ingest._ids(pa.array(["a", "b"]).dictionary_encode(), "f", "c").to_pylist() == ["a", "b"]
    with pytest.raises(DataError, match="non-integer ids"):
        ingest._ids(pa.array([1.0, float("nan")]), "f", "c")
    with pytest.raises(DataError, match="ids must be strings or integers"):
        ingest._ids(pa.array([True]), "f", "c")
    assert ingest._timestamps(pa.array([" 10 ", "11.9"], pa.large_string()), "f", "c").to_pylist() == [10, 11]
    with pytest.raises(DataError, match="non-finite"):
        ingest._timestamps(pa.array([1.0, float("inf")]), "f", "c")


@pytest.mark.parametrize("content", ["", "user_id,item_id,timestamp\n"])
def test_empty_file(tmp_path, content):
    log = tmp_path / "log.csv"
    log.write_text(content)
    with pytest.raises(DataError, match="empty file|no data rows"):
        run(_csv_cfg(log), tmp_path / "out", seed=0)


def test_empty_recbole_file(tmp_path):
    raw = _write_recbole_same(tmp_path / "rb")
    (raw / "ml-100k.user").write_text("")
    with pytest.raises(DataError, match="ml-100k.user: empty file"):
        run(IngestConfig(path=raw), tmp_path / "out", seed=0)


def test_truncated_parquet(tmp_path):
    log = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": ["1"] * 100, "item_id": ["2"] * 100, "timestamp": list(range(100))}),
                   log)
    data = log.read_bytes()
    log.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="not a readable parquet file"):
        run(IngestConfig(source="parquet", path=log), tmp_path / "out", seed=0)


def test_failed_run_leaves_previous_outputs_intact(tiny_synthetic, tmp_path):
    out = tmp_path / "canonical"
    shutil.copytree(tiny_synthetic, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    log = tmp_path / "bad.csv"
    log.write_text("user_id,item_id,timestamp\n1,2,oops\n")
    with pytest.raises(DataError):
        run(_csv_cfg(log), out, seed=0)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temp leftovers


@pytest.mark.parametrize("patch,key", [
    ({"sorce": "csv"}, "sorce"),
    ({"source": "movielens"}, "ingest.source"),
    ({"age_groups": "yes"}, "ingest.age_groups"),
    ({"synthetic": {"num_users": "many"}}, "ingest.synthetic.num_users"),
    ({"synthetic": {"num_userz": 5}}, "num_userz"),
    ({"columns": {"user": "u"}}, "user"),
    ({"source": "csv"}, "ingest.path"),
    ({"source": "amazon-books", "path": "r.csv"}, "ingest.meta_path"),
])
def test_params_typos_name_the_key(patch, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")) as exc:
        from_dict(IngestConfig, patch, "ingest")
    assert "ingest" in str(exc.value)


def test_params_yaml_ingest_section_loads():
    cfg, seed = ingest.load_config(load_params(REPO / "params.yaml"))
    assert isinstance(cfg.synthetic, SyntheticConfig) and isinstance(seed, int)


# --- CLI ---------------------------------------------------------------------------------------------------

def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "components.ingest", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def test_cli_bad_timestamp_and_params_typo_exit_2(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\n1,2,100\n1,3,noon\n")
    (tmp_path / "params.yaml").write_text(f"seed: 1\ningest:\n  source: csv\n  path: {log}\n")
    res = _cli("run", "--params", "params.yaml", "--out", "out", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: {log}, column 'timestamp': non-numeric timestamps (need seconds since the epoch); "
        "e.g. rows (1, 'noon')"]
    assert not (tmp_path / "out").exists()
    (tmp_path / "params.yaml").write_text("seed: 1\ningest:\n  source: csv\n  path: 3\n")
    res = _cli("--params", "params.yaml", "--out", "out", cwd=tmp_path)         # `run` is the default
    assert res.returncode == 2 and "ingest.path" in res.stderr and "Traceback" not in res.stderr


def test_cli_default_run_writes_tables(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\n1,2,100\n1,3,101\n")
    (tmp_path / "params.yaml").write_text(f"seed: 1\ningest:\n  source: csv\n  path: {log}\n")
    res = _cli("--params", "params.yaml", "--out", "out", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["interactions"] == 2


def test_cli_fetch_as_make_data_calls_it(ml100k_raw, tmp_path):
    dest = tmp_path / "data" / "raw" / "ml-100k"
    shutil.copytree(ml100k_raw, dest)
    (dest / ".verified").unlink()
    res = _cli("fetch", "--dest", str(dest), "--cache", str(tmp_path / "empty-cache"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "verified (present)" in res.stdout
    assert json.loads((dest / ".verified").read_text())["files"] == ingest.ML100K_FILES
