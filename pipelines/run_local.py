"""Run the whole Kubeflow pipeline on this machine: ``python -m pipelines.run_local``.

``kfp.local`` with the subprocess runner (``use_venv=False``): every task runs as a subprocess of the current
Python environment (no Docker, no cluster, no network), through the same compiled pipeline a cluster runs,
control flow included (``ParallelFor`` over the models, ``dsl.If`` on the gate).

By default it runs on **small synthetic data** (:data:`SMALL`: planted-interest generator, a few hundred users,
YouTube DNN and MIND, 2 epochs) so the whole DAG finishes in a minute or two on a laptop; ``--full`` uses
``params.yaml`` as it is (MovieLens-100K and every model: run ``make data`` first). ``--param KEY=VALUE``
overrides any key on top (``--param train.max_epochs=5``, ``--param 'gates.floors={test.recall@50: 0.3}'``).

Outputs land under ``--pipeline-root`` (default ``local_outputs/``, git-ignored), one folder per run:
``<root>/multi-interest-retrieval-<timestamp>/<task>/<output>``; tasks of the ParallelFor are under
``for-loop-*-iteration-<i>/``. With ``--cache`` a task whose inputs did not change is reused from an earlier
run under the same root (KFP's caching; off by default locally, on by default on a cluster).

Exit status: 0 when the run succeeded and the gate promoted a bundle; 1 when a task failed or the gate blocked
the candidate (no bundle; the gate's verdict is printed); 2 for bad params or overrides.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from components.config import DEFAULT_PARAMS, ParamsError, load_params
from pipelines.settings import apply_overrides

DEFAULT_ROOT = Path("local_outputs")

#: Overrides for the default small local run: tiny synthetic data, two models, 2 epochs, light evaluation.
SMALL = (
    "ingest.source=synthetic",
    "ingest.synthetic.num_users=300",
    "ingest.synthetic.num_items=200",
    "ingest.synthetic.num_categories=8",
    "ingest.synthetic.interests_per_user=2",
    "ingest.synthetic.mean_length=16",
    "ingest.synthetic.min_length=8",
    "train.models=[youtube_dnn, mind]",
    "train.max_epochs=2",
    "train.batch_size=256",
    "train.num_negatives=20",
    "train.progress_refresh=0",
    "models.youtube_dnn.dim=16",
    "models.mind.dim=16",
    "evaluate.topn=[10, 50]",
    "evaluate.bootstrap_samples=50",
    "evaluate.lambda_sweep=[0.0, 0.5]",
    "export.candidate=mind",
    "export.baseline=youtube_dnn",
    # tiny data, 2 epochs: figures are noisy, so the gate's rules are exercised with loose thresholds
    "gates.floors={test.recall@50: 0.05}",
    "gates.relative.tolerance=0.1",
)


@dataclass
class LocalRun:
    """What a local run left behind: its folder, whether it succeeded, the gate's decision, the bundle."""

    run_dir: Path | None
    succeeded: bool
    error: str = ""
    gate_passed: bool | None = None
    verdict: str = ""
    bundle: Path | None = None
    seconds: float = 0.0
    tasks: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 0 if self.succeeded and self.bundle is not None else 1


def local_params(params_path: str | Path = DEFAULT_PARAMS, overrides: list[str] = (), *, small: bool = True) -> dict:
    """The params a local run uses: the file, then :data:`SMALL` (unless ``small`` is False), then ``overrides``."""
    params = load_params(params_path)
    return apply_overrides(params, [*(SMALL if small else ()), *overrides], allow_compile_time=True)


def check(params: dict) -> list[str]:
    """Load every section strictly in this process (what the pipeline's first task does): fail in a second."""
    from pipelines.settings import pipeline_arguments
    from pipelines.steps import check_params

    return check_params(**pipeline_arguments(params))


def run(params: dict, *, pipeline_root: str | Path = DEFAULT_ROOT, cache: bool = False) -> LocalRun:
    """Run the pipeline for ``params`` with kfp.local's subprocess runner; describe what it produced."""
    from kfp import local

    from pipelines.pipeline import PIPELINE_NAME, build_pipeline

    # No retries locally: kfp.local honours the retry policy (with its back-off sleeps), which only delays
    # the report of a deterministic failure here.
    params = apply_overrides(params, ["kfp.retries=0"], allow_compile_time=True)
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    pipeline = build_pipeline(params)  # the image is irrelevant locally: tasks run in this environment
    before = set(root.glob(f"{PIPELINE_NAME}-*"))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True,
               enable_caching=cache)
    t0 = time.perf_counter()
    error = ""
    # One OpenMP thread per task unless the caller chose otherwise: the ParallelFor runs two tasks at once, and
    # torch's default (a thread per core in every process) oversubscribes a small machine - measured 2,249 vs
    # 307 training samples/s for MIND on a loaded 2-core box.
    saved_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with warnings.catch_warnings():
        # The subprocess runner warns when a component's image name lacks "python"; locally the image is unused.
        warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*", category=RuntimeWarning)
        # ...and that CPU/memory requests and accelerators have no effect locally (they are for the cluster).
        warnings.filterwarnings("ignore", message=".*have no effect.*", category=UserWarning)
        try:
            pipeline()
            succeeded = True
        except RuntimeError as exc:  # kfp.local: "Pipeline ... finished with status FAILURE. Inner task failed: ..."
            succeeded, error = False, str(exc)
        finally:
            if saved_threads is None:
                os.environ.pop("OMP_NUM_THREADS", None)
    seconds = time.perf_counter() - t0
    new = sorted(set(root.glob(f"{PIPELINE_NAME}-*")) - before)
    run_dir = new[-1] if new else None
    result = LocalRun(run_dir=run_dir, succeeded=succeeded, error=error, seconds=seconds)
    if run_dir is not None:
        result.tasks = sorted(str(p.parent.relative_to(run_dir)) for p in run_dir.glob("**/executor_output.json"))
        gate_out = run_dir / "gate" / "executor_output.json"
        if gate_out.is_file():
            result.gate_passed = bool(json.loads(gate_out.read_text())["parameterValues"]["Output"])
            verdict = run_dir / "gate" / "verdict"
            result.verdict = verdict.read_text() if verdict.is_file() else ""
        bundle = run_dir / "export" / "bundle"
        result.bundle = bundle if bundle.is_dir() else None
    return result


def summary(result: LocalRun) -> str:
    """A few lines for the terminal: where the run is, what the gate decided, where the bundle is."""
    lines = [f"local run: {result.run_dir} ({result.seconds:.0f} s, {len(result.tasks)} tasks executed)"]
    if not result.succeeded:
        lines.append(f"FAILED: {result.error}")
    elif result.gate_passed:
        lines.append(f"gate passed: bundle promoted -> {result.bundle}")
    else:
        lines.append("gate BLOCKED the candidate: export skipped, no bundle promoted")
    if result.verdict:
        lines.append(result.verdict.strip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipelines.run_local", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file (default: params.yaml)")
    ap.add_argument("--param", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params key (YAML value), e.g. --param train.max_epochs=3; repeatable")
    ap.add_argument("--full", action="store_true",
                    help="use params.yaml as it is (MovieLens-100K, every model) instead of the small synthetic run")
    ap.add_argument("--pipeline-root", default=str(DEFAULT_ROOT), help="where runs are written (local_outputs/)")
    ap.add_argument("--cache", action="store_true", help="reuse unchanged tasks from earlier runs in this root")
    args = ap.parse_args(argv)
    try:
        params = local_params(args.params, args.overrides, small=not args.full)
        check(params)
        result = run(params, pipeline_root=args.pipeline_root, cache=args.cache)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(summary(result), file=sys.stderr if result.exit_code else sys.stdout)
    raise SystemExit(result.exit_code)


if __name__ == "__main__":
    main()
