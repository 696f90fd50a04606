"""The quality_kfold section of docs/RESULTS.md (benchmarks/report_kfold.py, dispatched by report.py) from a
k-fold result built out of hand-made run records."""
from __future__ import annotations

import json

import pytest

from benchmark_modules import load

quality = load("quality")
report = load("report")
rk = load("report_kfold")


def _rec(fold, variant, users, r50):
    return {"variant": variant, "protocol": f"kf3_f{fold}", "setting": "lr3e-3", "seed": 2026,
            "metrics": {"valid.recall@50": 0.5}, "train": {"epochs": 10, "best_epoch": 9}, "max_epochs": 10,
            "train_wall_s": 2.0, "per_user": {"user_id": users, **{m: r50 for m in quality.PER_USER_METRICS}}}


@pytest.fixture(scope="module")
def result():
    """3 folds x 8 users; MostPopular 0.1 below YouTube DNN for every user, MIND = YouTube DNN +/- noise."""
    runs = []
    for f in range(3):
        users = [f"u{f}{i}" for i in range(8)]
        ytb = [0.2 + 0.05 * i for i in range(8)]
        runs += [_rec(f, "youtube_dnn", users, ytb),
                 {**_rec(f, "most_popular", users, [x - 0.1 for x in ytb]), "setting": "default"},
                 _rec(f, "mind", users, [x + (0.02 if i % 2 else -0.02) for i, x in enumerate(ytb)])]
        if f == 0:  # the fold-0 tuning runs of the other grid points, worse on valid
            runs += [{**_rec(0, v, users, [0.0] * 8), "setting": g, "metrics": {"valid.recall@50": 0.1}}
                     for v in ("youtube_dnn", "mind") for g in quality.KFOLD_GRID if g != "lr3e-3"]
    return quality.build_kfold_result(runs, ["most_popular", "youtube_dnn", "mind"], 3, 2026, samples=500)


def test_diff_matrix_is_antisymmetric(result):
    variants, mat = rk.diff_matrix(result)
    assert variants == ["most_popular", "youtube_dnn", "mind"]
    assert mat[0][0] is None
    assert mat[1][0]["d"] == pytest.approx(0.1) and mat[0][1]["d"] == pytest.approx(-0.1)  # row − column
    assert (mat[0][1]["lo"], mat[0][1]["hi"]) == pytest.approx((-mat[1][0]["hi"], -mat[1][0]["lo"]))


def test_section_renders_table_matrix_heatmap_and_verdicts(result, tmp_path):
    res_dir = tmp_path / "results"
    res_dir.mkdir()
    (res_dir / "quality_kfold.json").write_text(json.dumps(result))
    out, img = tmp_path / "docs" / "RESULTS.md", tmp_path / "docs" / "img"
    text = report.render(res_dir, out, img)
    assert "## quality_kfold" in text
    assert "Folds complete: 3 of 3" in text and "Only" not in text
    row = next(line for line in text.splitlines() if line.startswith("| YouTube DNN | `youtube_dnn` |"))
    assert row.split(" | ")[2] == "24"
    mean = sum(0.2 + 0.05 * i for i in range(8)) / 8
    assert f"{mean:.4f} [" in row
    # matrix: YouTube DNN row, MostPopular column = +10.0 points, separated by both tests
    mrow = next(line for line in text.splitlines() if line.startswith("| YouTube DNN | ") and "*" in line)
    assert mrow.split(" | ")[1] == "+10.0*"
    assert (img / "quality_kfold_pairwise.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(img/quality_kfold_pairwise.png)" in text
    # verdicts from the paired tests: MostPopular < YouTube DNN holds; MIND vs YouTube DNN within noise
    verdict = lambda claim: next(line for line in text.splitlines() if f"| {claim} |" in line).split(" | ")[2]  # noqa: E731
    assert verdict("YouTube DNN beats MostPopular") == "**holds**"
    assert verdict("MIND < YouTube DNN") == "**within noise**"
    assert verdict("HN lifts MIND") == "not run"
    assert "**Headline (3 of 3 folds, 24 test users" in text


def test_partial_folds_are_flagged(result, tmp_path):
    partial = json.loads(json.dumps(result))
    partial["meta"]["folds_complete"] = [0, 1]
    partial["meta"]["k"] = 10
    text = "\n".join(rk.kfold_section(partial, tmp_path, "img", report.save, report._plt))
    assert "**Only 2 of 10 folds finished" in text


def test_single_split_section_leaves_orderings_to_the_paired_tests(tmp_path):
    """With a k-fold result present, the single-split findings table has no model-ordering verdicts."""
    data = json.loads((report.REPO / "benchmarks" / "results" / "quality.json").read_text())
    report._PLOTS["on"] = False
    try:
        plain = "\n".join(report.quality_section(data, tmp_path, "img"))
        paired = "\n".join(report.quality_section(data, tmp_path, "img", paired=True))
    finally:
        report._PLOTS["on"] = True
    assert "| UMI Table 2 | MIND < YouTube DNN |" in plain and "| ComiRec Table 3 |" in plain
    assert "| UMI Table 2 |" not in paired and "| ComiRec Table 3 |" not in paired
    assert "[quality_kfold](#quality-kfold)" in paired and "| ComiRec Table 4 |" in paired


def test_display_order_survives_sorted_json(result):
    """write_json sorts keys: the section follows meta.variants, not the file's key order."""
    again = json.loads(json.dumps(result, sort_keys=True))
    assert list(again["models"]) == ["mind", "most_popular", "youtube_dnn"]
    assert rk.diff_matrix(again)[0] == ["most_popular", "youtube_dnn", "mind"]
