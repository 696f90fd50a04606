"""benchmarks/scale.py end to end on a tiny size (~20k interactions), and its RESULTS.md section.

Every step runs through its CLI in a subprocess as in the real run; what is checked is that the steps
complete, the results block holds the figures the report reads, and the report renders them (the table, the
plot and the cluster estimate computed from the measured figures).
"""
from __future__ import annotations

import json

import pytest
from benchmark_modules import load

scale = load("scale")
report_scale = load("report_scale")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    results = root / "scale.json"
    rc = scale.main(["--sizes", "20k", "--users", "1000", "--items", "2000", "--steps", "3", "--warmup", "1",
                     "--test-users", "50", "--valid-users", "20", "--index-users", "40", "--work", str(root / "work"),
                     "--results", str(results)])
    return rc, json.loads(results.read_text()), root


def test_every_step_completes_and_is_recorded(tiny_run):
    rc, data, root = tiny_run
    assert rc == 0
    block = data["sizes"]["20k"]
    assert block["completed"] is True
    assert [s["step"] for s in block["steps"]] == ["ingest", "validate", "split", "train", "build_index",
                                                   "evaluate"]
    assert all(s["returncode"] == 0 and s["peak_rss_mb"] > 0 for s in block["steps"])
    assert block["validation"]["success"] is True
    assert 15_000 < block["interactions"] < 25_000
    assert block["sample"]["test"]["users"] == 50 and block["sample"]["valid"]["users"] == 20
    tr = block["train"]
    assert tr["steps"] == 3 and tr["warmup_steps"] == 1 and tr["embedding_optimizer"] == "sparse_adam"
    assert tr["samples_per_s"] > 0
    assert block["index"]["num_items"] == block["split_stats"]["items"]
    assert block["evaluate"]["test.num_users"] == 50
    # the big intermediates are gone, the results name no absolute path of this checkout
    assert not (root / "work" / "20k" / "canonical").exists()
    assert str(scale.REPO) not in json.dumps(data)


def test_completed_size_is_skipped_unless_forced(tiny_run, capsys):
    _, _, root = tiny_run
    rc = scale.main(["--sizes", "20k", "--work", str(root / "work"), "--results", str(root / "scale.json")])
    assert rc == 0
    assert "already in" in capsys.readouterr().out


def test_report_section_renders_table_plot_and_estimate(tiny_run, tmp_path):
    _, data, _ = tiny_run
    second = json.loads(json.dumps(data["sizes"]["20k"]))
    second["interactions"] *= 2
    data["sizes"]["40k"] = second
    saved = []

    def save(fig, img_dir, name, rel):
        saved.append(name)
        return f"![{name}]({rel}/{name})"

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = report_scale.section(data, tmp_path, "img", save, lambda: plt)
    text = "\n".join(lines)
    assert saved == ["scale_growth.png"]
    assert "| 20k |" in text and "| 40k |" in text
    assert "At 1B interactions / 20M items" in text
    # the estimate is computed from the measured figures: CPU-s per million interactions of the largest size
    dp = second["data_path"]
    assert f"{dp['cpu_s'] / (second['interactions'] / 1e6):.2f} CPU-s per million interactions" in text


def test_reuse_data_runs_the_rest_on_a_kept_data_only_run(tmp_path):
    """A --data-only --keep run, then --reuse-data: the data path's steps and figures are the recorded ones
    (not run again), the model/index/evaluation steps run on its kept split; without a kept record it refuses."""
    results, work = tmp_path / "scale.json", tmp_path / "work"
    common = ["--sizes", "20k", "--users", "1000", "--items", "2000", "--steps", "2", "--warmup", "1",
              "--test-users", "30", "--valid-users", "10", "--index-users", "20", "--work", str(work),
              "--results", str(results)]
    with pytest.raises(SystemExit, match="reuse-data"):
        scale.main([*common, "--reuse-data"])
    assert scale.main([*common, "--data-only", "--keep"]) == 0
    first = json.loads(results.read_text())["sizes"]["20k"]
    assert first["data_only"] is True and (work / "20k" / "split").exists()
    assert scale.main([*common, "--reuse-data"]) == 0
    block = json.loads(results.read_text())["sizes"]["20k"]
    assert block["completed"] is True and block["data_only"] is False
    assert block["steps"][:3] == first["steps"] and block["data_path"] == first["data_path"]
    assert block["data_path_recorded_at"] == first["recorded_at"]
    assert [s["step"] for s in block["steps"][3:]] == ["train", "build_index", "evaluate"]
    assert block["evaluate"]["test.num_users"] == 30
