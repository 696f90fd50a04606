"""The mutation list of tools/mutation_check.py stays alive: every pattern matches the current source exactly
as often as the list says, every mutant changes the file and names test files that exist, and applying one
touches only the copy. (The full run, which executes the tests on each mutant, is ``make mutation``.)"""
from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "tools" / "mutation_check.py")
MC = importlib.util.module_from_spec(_spec)
sys.modules["mutation_check"] = MC  # dataclasses resolve their module while the class is built
_spec.loader.exec_module(MC)

REQUIRED = {  # kinds the issue asks for -> at least one mutant of that kind
    "dr_squash_identity", "trainer_log_q_off", "eval_targets_not_deduplicated", "sa_attention_softmax_axis",
    "mind_squash_unit_length", "mind_routing_stop_gradient_removed", "idcg_over_n_positions",
}


@pytest.mark.parametrize("m", MC.MUTATIONS, ids=lambda m: m.name)
def test_pattern_matches_the_source_exactly(m):
    text = (ROOT / m.path).read_text()
    assert text.count(m.old) == m.count, (
        f"{m.name}: {m.old!r} occurs {text.count(m.old)} time(s) in {m.path}, the list says {m.count}: "
        "the code moved, update tools/mutation_check.py")
    assert m.old != m.new and text.replace(m.old, m.new) != text
    assert text.count(m.new) == 0 or m.new in m.old, f"{m.name}: the mutated text is already in {m.path}"


@pytest.mark.parametrize("m", MC.MUTATIONS, ids=lambda m: m.name)
def test_named_tests_exist(m):
    assert m.tests
    for t in m.tests:
        path, _, func = t.partition("::")
        assert (ROOT / path).is_file(), f"{m.name}: {path} not found"
        if func:
            assert re.search(rf"^def {re.escape(func)}\(", (ROOT / path).read_text(), re.M), \
                f"{m.name}: no test {func} in {path}"


def test_list_covers_the_issue_and_names_are_unique():
    names = [m.name for m in MC.MUTATIONS]
    assert len(names) == len(set(names))
    assert REQUIRED <= set(names), sorted(REQUIRED - set(names))


def test_apply_changes_only_the_copy_and_refuses_moved_code(tmp_path):
    m = next(x for x in MC.MUTATIONS if x.name == "dr_squash_identity")
    original = (ROOT / m.path).read_text()
    (tmp_path / m.path).parent.mkdir(parents=True)
    shutil.copy2(ROOT / m.path, tmp_path / m.path)
    MC.apply(m, tmp_path)
    mutated = (tmp_path / m.path).read_text()
    assert m.old not in mutated and m.new in mutated
    assert (ROOT / m.path).read_text() == original
    with pytest.raises(MC.MutationError, match=r"expected 1 match.*found 0.*code moved"):
        MC.apply(m, tmp_path)  # already applied: the pattern is gone


def test_cli_lists_mutants_and_rejects_unknown_names(capsys):
    assert MC.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(m.name in out for m in MC.MUTATIONS)
    with pytest.raises(SystemExit) as exc:
        MC.main(["--only", "no_such_mutant"])
    assert exc.value.code == 2
