"""Mutation check: known bugs, applied to a copy of the source tree, must make the tests fail.

    python tools/mutation_check.py            # every mutant (what `make mutation` runs)
    python tools/mutation_check.py --list     # the mutants and the tests each one runs
    python tools/mutation_check.py --only dr_squash_identity --only eval_targets_not_deduplicated
    python tools/mutation_check.py --rev HEAD # copy a commit (git archive) instead of the working tree

Each mutant is one textual replacement in one file with an exact expected number of matches; if the code
moved (the pattern matches a different number of times) the check fails loudly instead of testing nothing.
For every mutant the repository (tracked and untracked-but-not-ignored files: no data, no .venv) is copied
into a temporary folder, the mutation is applied *there*, and ``python -m pytest`` runs only that mutant's
test files with the copy first on ``PYTHONPATH``; the shared tree is never written. Before the mutants, the
union of all their tests runs once on an unmutated copy and must pass (a test that fails anyway kills
nothing). A mutant is killed when pytest reports failing tests (exit status 1); a collection or usage error
(any other non-zero status) is reported as ``error`` and counts as not killed.

Prints a table (mutant, tests run, killed, seconds) and exits 1 if the baseline fails or any mutant
survives, 0 otherwise. The list itself is checked against the source by tests/tools/test_mutation_check.py
(part of ``make test``); this full run is ``make mutation`` (not part of ``make test``).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    """One known bug: replace ``old`` by ``new`` in ``path`` (relative to the repository root), where ``old``
    occurs exactly ``count`` times; ``tests`` are the pytest paths / node ids that must then fail."""

    name: str
    path: str
    old: str
    new: str
    count: int
    tests: tuple[str, ...]
    why: str


MUTATIONS: tuple[Mutation, ...] = (
    # --- the three bugs of issue 13 that used to pass the whole suite: each runs only the new test file
    Mutation("dr_squash_identity", "models/comirec_dr.py",
             "return s * torch.sqrt(sq + eps) / (1.0 + sq)  # eq. (4)", "return s  # eq. (4)", 1,
             ("tests/models/test_independent_refs.py",),  # test_comirec.py alone lets it through
             "ComiRec-DR squash (eq. 4) replaced by the identity"),
    Mutation("trainer_log_q_off", "components/task.py",
             "if self._log_q is not None:", "if False:", 1,
             ("tests/components/test_logq.py",),
             "the trainer no longer passes log Q to the loss (non-uniform sampler uncorrected)"),
    Mutation("eval_targets_not_deduplicated", "components/evaluate.py",
             'targets = [np.unique(np.asarray(t, dtype=np.int64)) for t in df["targets"]]',
             'targets = [np.asarray(t, dtype=np.int64) for t in df["targets"]]', 1,
             ("tests/components/test_eval_dedupe.py",),
             "evaluation counts a repeated target once per occurrence"),
    # --- log-Q in the loss itself
    Mutation("loss_log_q_positive_dropped", "models/loss.py",
             "pos_logit = pos_logit - pos_log_q.unsqueeze(-1)", "pos_logit = pos_logit", 1,
             ("tests/models/test_loss.py", "tests/components/test_logq.py"),
             "sampled softmax ignores log Q of the positive"),
    # --- softmax over the wrong axis
    Mutation("sa_attention_softmax_axis", "models/comirec_sa.py",
             "return torch.softmax(scores, dim=1), h  # eq. (6)", "return torch.softmax(scores, dim=2), h  # eq. (6)",
             1, ("tests/models/test_comirec.py",),
             "ComiRec-SA attention (eq. 6) normalised over interests instead of behaviours"),
    Mutation("label_aware_attention_softmax_axis", "models/loss.py",
             "return torch.softmax(logits, dim=1)", "return torch.softmax(logits, dim=2)", 1,
             ("tests/models/test_loss.py",),
             "MIND label-aware attention normalised over candidates instead of interests"),
    Mutation("dr_routing_softmax_axis", "models/comirec_dr.py",
             "coupling = torch.softmax(logits, dim=1) * real", "coupling = torch.softmax(logits, dim=2) * real", 1,
             ("tests/models/test_independent_refs.py", "tests/models/test_comirec.py"),
             "ComiRec-DR coupling (eq. 3) normalised over behaviours instead of interests"),
    # --- squash formula altered
    Mutation("mind_squash_unit_length", "models/mind.py",
             "return z * torch.sqrt(sq + eps) / (1.0 + sq)  # eq. (7)",
             "return z / torch.sqrt(sq + eps)  # eq. (7)", 1,
             ("tests/models/test_independent_refs.py", "tests/models/test_mind.py"),
             "MIND squash (eq. 7) normalises to unit length (drops |z|^2 / (1 + |z|^2))"),
    Mutation("umi_squash_wrong_denominator", "models/umi.py",
             "return z * torch.sqrt(sq + eps) / (1.0 + sq)  # eq. (6)",
             "return z * torch.sqrt(sq + eps) / (1.0 + torch.sqrt(sq + eps))  # eq. (6)", 1,
             ("tests/models/test_independent_refs.py", "tests/models/test_umi.py"),
             "UMI squash (eq. 6) with |z| instead of |z|^2 in the denominator"),
    # --- stop-gradient removed / added
    Mutation("mind_routing_stop_gradient_removed", "models/mind.py",
             "fixed = behaviours.detach()", "fixed = behaviours", 1,
             ("tests/models/test_mind.py",),
             "MIND back-propagates through the routing iterations (the paper routes without gradient)"),
    Mutation("umi_routing_stop_gradient_removed", "models/umi.py",
             "fixed, a_fixed = x.detach(), a.detach()", "fixed, a_fixed = x, a", 1,
             ("tests/models/test_umi.py",),
             "UMI back-propagates through the routing iterations"),
    Mutation("dr_last_iteration_detached", "models/comirec_dr.py",
             "grad_s = squash_backward(s, grad_caps)", "grad_s = torch.zeros_like(s)", 1,
             ("tests/models/test_independent_refs.py", "tests/models/test_comirec.py"),
             "ComiRec-DR also detaches the last weighted sum: W and the embeddings get no gradient"),
    # --- NDCG
    Mutation("idcg_over_n_positions", "components/evaluate.py",
             "idcg = np.cumsum(discounts)[ideal - 1]", "idcg = np.cumsum(discounts)[n - 1]", 1,
             ("tests/components/test_evaluate.py::test_metrics_hand_worked_case",
              "tests/components/test_evaluate.py::test_ndcg_is_one_for_a_perfect_list_and_idcg_uses_min_targets_n",
              "tests/components/test_evaluate.py::test_ndcg_matches_slow_reference_on_random_lists",
              "tests/components/test_eval_dedupe.py"),
             "IDCG summed over N positions instead of min(|T|, N)"),
)


class MutationError(RuntimeError):
    """A mutation no longer matches the source as expected (the code moved)."""


def count_matches(text: str, m: Mutation) -> int:
    return text.count(m.old)


def apply(m: Mutation, root: Path) -> None:
    """Apply ``m`` to the tree under ``root`` in place; MutationError when ``old`` does not occur exactly
    ``m.count`` times."""
    path = root / m.path
    if not path.is_file():
        raise MutationError(f"{m.name}: {m.path} not found under {root}")
    text = path.read_text()
    found = count_matches(text, m)
    if found != m.count:
        raise MutationError(f"{m.name}: expected {m.count} match(es) of {m.old!r} in {m.path}, found {found} "
                            "(the code moved: update tools/mutation_check.py)")
    path.write_text(text.replace(m.old, m.new))


def copy_tree(dest: Path, rev: str | None) -> None:
    """The repository's files into ``dest``: tracked + untracked-but-not-ignored of the working tree, or
    ``git archive rev``."""
    if rev is not None:
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if not src.is_file() or "__pycache__" in src.parts:  # deleted in the working tree, or a cache
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, str]:
    """``python -m pytest`` on ``tests`` inside ``tree`` (the copy first on PYTHONPATH). Returns (status,
    output tail)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-W", "ignore", *tests]
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s"
    return proc.returncode, (proc.stdout + proc.stderr)[-3000:]


def imports_from(tree: Path) -> bool:
    """Whether ``components`` and ``models`` are imported from the copy (not the editable install)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    code = "import components, models; print(components.__file__); print(models.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return all(Path(p).resolve().is_relative_to(tree.resolve()) for p in out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], help="run only this mutant (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--rev", default=None, help="copy this git revision instead of the working tree")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run")
    args = parser.parse_args(argv)

    names = {m.name for m in MUTATIONS}
    unknown = sorted(set(args.only) - names)
    if unknown:
        parser.error(f"unknown mutant(s) {unknown}; known: {sorted(names)}")
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.path} ({m.why})\n    tests: {' '.join(m.tests)}")
        return 0

    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        base = Path(tmp) / "base"
        base.mkdir()
        copy_tree(base, args.rev)
        if not imports_from(base):
            print("mutation check: the copy's packages are shadowed (components/models import from elsewhere)",
                  file=sys.stderr)
            return 1
        for m in chosen:  # every pattern must match before anything runs
            try:
                found = count_matches((base / m.path).read_text(), m) if (base / m.path).is_file() else -1
            except OSError as exc:
                raise MutationError(f"{m.name}: {exc}") from None
            if found != m.count:
                print(f"mutation check: {m.name}: expected {m.count} match(es) of {m.old!r} in {m.path}, "
                      f"found {found} (the code moved: update tools/mutation_check.py)", file=sys.stderr)
                return 1
        union = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        t0 = time.perf_counter()
        status, tail = run_tests(base, union, args.timeout)
        base_s = time.perf_counter() - t0
        if status != 0:
            print(f"mutation check: the unmutated tests fail (status {status}); fix them first:\n{tail}",
                  file=sys.stderr)
            return 1
        rows = []
        for m in chosen:
            tree = Path(tmp) / m.name
            shutil.copytree(base, tree)
            apply(m, tree)
            t0 = time.perf_counter()
            status, tail = run_tests(tree, m.tests, args.timeout)
            seconds = time.perf_counter() - t0
            killed = "yes" if status == 1 else ("error" if status != 0 else "NO")
            rows.append((m.name, ", ".join(t.removeprefix("tests/") for t in m.tests), killed, seconds, tail))
            shutil.rmtree(tree)

    w_name = max(len(r[0]) for r in rows + [("mutation",)])
    print(f"baseline (unmutated, {len(union)} test path(s)): passed in {base_s:.1f} s")
    print(f"{'mutation':<{w_name}}  killed  seconds  tests run")
    for name, tests, killed, seconds, _ in rows:
        print(f"{name:<{w_name}}  {killed:<6}  {seconds:7.1f}  {tests}")
    survivors = [r for r in rows if r[2] != "yes"]
    for name, _, killed, _, tail in survivors:
        print(f"\n--- {name}: {'survived' if killed == 'NO' else 'pytest error'}; pytest output tail:\n{tail}")
    print(f"\n{len(rows) - len(survivors)}/{len(rows)} mutants killed in {time.perf_counter() - t_all:.1f} s")
    return 1 if survivors else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MutationError as exc:
        print(f"mutation check: {exc}", file=sys.stderr)
        sys.exit(1)
