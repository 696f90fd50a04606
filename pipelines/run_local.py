"""Run the whole Kubeflow pipeline on this machine: ``python -m pipelines.run_local``.

``kfp.local`` with the subprocess runner (``use_venv=False``): every task runs as a subprocess of the current
Python environment (no Docker, no cluster, no network), through the same compiled pipeline a cluster runs,
control flow included (``ParallelFor`` over the models).

By default it runs on **small synthetic data** (:data:`SMALL`: planted-interest generator, a few hundred users,
YouTube DNN and MIND, 2 epochs) so the whole DAG finishes in a minute or two on a laptop; ``--full`` uses
``params.yaml`` as it is (MovieLens-100K and every model: run ``make data`` first). ``--param KEY=VALUE``
overrides any key on top (``--param train.max_epochs=5``, ``--param 'gates.floors={test.recall@50: 0.3}'``).

Outputs land under ``--pipeline-root`` (default ``local_outputs/``, git-ignored), one folder per run:
``<root>/multi-interest-retrieval-<timestamp>/<task>/<output>``; tasks of the ParallelFor are under
``for-loop-*-iteration-<i>/``. With ``--cache`` a task whose inputs did not change is reused from an earlier
run under the same root (KFP's caching; off by default locally, on by default on a cluster).

The model registry is a folder shared by runs, ``--registry PATH`` (default ``local_outputs/registry``): each
run's gate_export resolves the production model there and publishes an approved bundle to it, as a cluster run
does with a PVC path. ``--input PATH`` is the pipeline's ``input_uri``: the file or folder ingest reads instead
of ``ingest.path``.

``--runner docker --image IMAGE`` runs every task in a container of IMAGE with ``kfp.local.DockerRunner`` (a
Docker engine, or podman's Docker-compatible API through ``DOCKER_HOST``). The runner's stock container
handling auto-removes each container and, when it is gone before its status is read, reports success: here
every container is kept until its real exit status is read, then removed, and a run with any non-zero status
or a task without its executor output fails, whatever kfp.local concluded. The pipeline root is made
group-writable (setgid, umask 002) so the image's user (uid 10001, group 0) can write its outputs.

Exit status: 0 when the run succeeded, whatever the verdict (it is printed: promoted or blocked, and the
registry's prod); 1 when a task failed, or the candidate was blocked with ``--fail-if-blocked``; 2 for bad
params or overrides.
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
DEFAULT_REGISTRY = DEFAULT_ROOT / "registry"

#: Overrides for the default small local run: tiny synthetic data, two models, 2 epochs, light evaluation.
SMALL = (
    "ingest.source=synthetic",
    "ingest.synthetic.num_users=300",
    "ingest.synthetic.num_items=200",
    "ingest.synthetic.num_categories=8",
    "ingest.synthetic.interests_per_user=2",
    "ingest.synthetic.mean_length=16",
    "ingest.synthetic.min_length=8",
    "train.models=[most_popular, mind]",
    "train.max_epochs=2",
    "train.batch_size=256",
    "train.num_negatives=20",
    "train.progress_refresh=0",
    "models.mind.dim=16",
    "evaluate.topn=[10, 50]",
    "evaluate.bootstrap_samples=50",
    "evaluate.lambda_sweep=[0.0, 0.5]",
    "export.candidate=mind",
    # tiny data: few test users, so the floor is low; the paired tests vs most_popular and prod stay as they are
    "gates={metric: recall@50, floors: {recall@50: 0.05}, test: {method: bootstrap, alpha: 0.05, samples: 2000},"
    " baseline: {model: most_popular, min_effect: 0.0}, vs_prod: {rule: superiority, min_effect: 0.0}}",
)


@dataclass
class LocalRun:
    """What a local run left behind: its folder, whether it succeeded, the verdict, the registry's state."""

    run_dir: Path | None
    succeeded: bool
    error: str = ""
    promoted: bool | None = None          # gate_export's verdict (None: it did not run)
    verdict: str = ""                     # the Markdown verdict
    verdict_json: dict = field(default_factory=dict)
    bundle: Path | None = None            # the promoted bundle (gate_export's Model artifact); None if blocked
    registry: Path | None = None          # the registry location the run used
    prod: str | None = None               # the registry's prod bundle after the run
    versions: list[str] = field(default_factory=list)  # "v0.0.1=<bundle>", oldest first
    seconds: float = 0.0
    tasks: list[str] = field(default_factory=list)
    container_statuses: list[int] = field(default_factory=list)

    def exit_code(self, fail_if_blocked: bool = False) -> int:
        if not self.succeeded:
            return 1
        return 1 if fail_if_blocked and not self.promoted else 0


def local_params(params_path: str | Path = DEFAULT_PARAMS, overrides: list[str] = (), *, small: bool = True) -> dict:
    """The params a local run uses: the file, then :data:`SMALL` (unless ``small`` is False), then ``overrides``."""
    params = load_params(params_path)
    return apply_overrides(params, [*(SMALL if small else ()), *overrides], allow_compile_time=True)


def check(params: dict, *, registry: str | Path = DEFAULT_REGISTRY, input_uri: str | Path = "") -> list[str]:
    """Load every section strictly in this process (what the pipeline's first task does): fail in a second."""
    from pipelines.settings import pipeline_arguments
    from pipelines.steps import check_params

    return check_params(**pipeline_arguments(params), registry_uri=str(registry),
                        input_uri=str(input_uri) if input_uri else "")


#: git's safe.directory given through the environment (command-line scope, which git trusts): a registry
#: location written by the image's user (uid 10001) is "dubious ownership" to the host user reading it.
_SAFE_DIRECTORY = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": ""}


class _ContainerStatuses:
    """Runs each kfp.local container without auto-remove, reads its real exit status, then removes it.

    ``extra_volumes``: host folders mounted at the same path besides the pipeline root (the registry, the input).
    """

    def __init__(self, extra_volumes: dict) -> None:
        self.extra_volumes = extra_volumes
        self.statuses: list[tuple[str, int]] = []

    def __call__(self, client, image: str, command: list[str], volumes: dict, **run_args) -> int:
        from kfp.local import docker_task_handler

        run_args.pop("auto_remove", None)
        container = client.containers.run(image=docker_task_handler.add_latest_tag_if_not_present(image),
                                          command=command, detach=True, stdout=True, stderr=True,
                                          volumes={**self.extra_volumes, **volumes}, auto_remove=False, **run_args)
        try:
            for line in container.logs(stream=True, follow=True):
                print(line.decode(errors="replace"), end="")
            code = int(container.wait()["StatusCode"])
        finally:
            container.remove(force=True)
        self.statuses.append((container.short_id, code))
        return code


def run(params: dict, *, pipeline_root: str | Path = DEFAULT_ROOT, cache: bool = False,
        registry: str | Path = DEFAULT_REGISTRY, input_uri: str | Path = "", runner: str = "subprocess",
        image: str | None = None) -> LocalRun:
    """Run the pipeline for ``params`` with kfp.local's subprocess runner; describe what it produced.

    ``registry`` is the registry location (a folder, created on first use) shared by runs; ``input_uri`` the
    pipeline's ``input_uri`` (read by ingest instead of ``ingest.path`` when non-empty). ``runner``:
    ``subprocess`` (tasks run in this environment) or ``docker`` (each task in a container of ``image``).
    """
    from kfp import local

    from pipelines.pipeline import PIPELINE_NAME, build_pipeline

    # No retries locally: kfp.local honours the retry policy (with its back-off sleeps), which only delays
    # the report of a deterministic failure here.
    params = apply_overrides(params, ["kfp.retries=0"], allow_compile_time=True)
    root = Path(pipeline_root).resolve()
    registry_dir = Path(registry).resolve()
    root.mkdir(parents=True, exist_ok=True)
    statuses = None
    if runner == "docker":
        if not image:
            raise ParamsError("--runner docker needs --image IMAGE (build it with `make image`)")
        from kfp.local import docker_task_handler

        registry_dir.mkdir(parents=True, exist_ok=True)
        for folder in (root, registry_dir):  # the image's user has group 0: it writes where kfp.local points it
            folder.chmod(0o2775)
        mounts = {str(registry_dir): {"bind": str(registry_dir), "mode": "rw"}}
        if input_uri:
            source = Path(input_uri).resolve()
            mounts[str(source)] = {"bind": str(source), "mode": "ro"}
        statuses = _ContainerStatuses(mounts)
        pipeline = build_pipeline(params, image=image)
        local_runner = local.DockerRunner()
    elif runner == "subprocess":
        pipeline = build_pipeline(params)  # the image is irrelevant here: tasks run in this environment
        local_runner = local.SubprocessRunner(use_venv=False)
    else:
        raise ParamsError(f"runner must be subprocess or docker, got {runner!r}")
    before = set(root.glob(f"{PIPELINE_NAME}-*"))
    local.init(runner=local_runner, pipeline_root=str(root), raise_on_error=True, enable_caching=cache)
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
        saved_umask = os.umask(0o002) if statuses is not None else None
        saved_run = None
        if statuses is not None:
            saved_run, docker_task_handler.run_docker_container = docker_task_handler.run_docker_container, statuses
        try:
            pipeline(registry_uri=str(registry_dir), input_uri=str(Path(input_uri).resolve()) if input_uri else "")
            succeeded = True
        except RuntimeError as exc:  # kfp.local: "Pipeline ... finished with status FAILURE. Inner task failed: ..."
            succeeded, error = False, str(exc)
        finally:
            if saved_threads is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            if saved_run is not None:
                docker_task_handler.run_docker_container = saved_run
            if saved_umask is not None:
                os.umask(saved_umask)
    seconds = time.perf_counter() - t0
    new = sorted(set(root.glob(f"{PIPELINE_NAME}-*")) - before)
    run_dir = new[-1] if new else None
    result = LocalRun(run_dir=run_dir, succeeded=succeeded, error=error, seconds=seconds, registry=registry_dir)
    if run_dir is not None:
        result.tasks = sorted(str(p.parent.relative_to(run_dir)) for p in run_dir.glob("**/executor_output.json"))
        task = run_dir / "gate-export"
        if (task / "executor_output.json").is_file():
            result.promoted = bool(json.loads((task / "executor_output.json").read_text())["parameterValues"]["Output"])
            verdict = task / "verdict"
            result.verdict = verdict.read_text() if verdict.is_file() else ""
            verdict_json = task / "result" / "verdict.json"
            result.verdict_json = json.loads(verdict_json.read_text()) if verdict_json.is_file() else {}
            bundle = task / "bundle"
            result.bundle = bundle if result.promoted and (bundle / "manifest.json").is_file() else None
    if (registry_dir / ".git").exists():
        from components.registry import Registry

        saved_env = {k: os.environ.get(k) for k in _SAFE_DIRECTORY}
        if runner == "docker":  # the containers' user owns the repository: git refuses it unless trusted
            os.environ.update({**_SAFE_DIRECTORY, "GIT_CONFIG_VALUE_0": str(registry_dir)})
        try:
            reg = Registry.location(registry_dir)
            prod = reg.prod()
            result.prod = prod.bundle if prod else None
            result.versions = [f"{v.version}={v.bundle}" for v in reg.versions()]
        finally:
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    if statuses is not None:
        result.container_statuses = [code for _, code in statuses.statuses]
        failed = [f"container {cid} exited {code}" for cid, code in statuses.statuses if code != 0]
        if result.succeeded and failed:  # whatever kfp.local concluded
            result.succeeded, result.error = False, "; ".join(failed)
        elif result.succeeded and len(result.tasks) < len(statuses.statuses):
            result.succeeded = False
            result.error = f"{len(statuses.statuses)} containers ran, {len(result.tasks)} wrote executor outputs"
        if not result.succeeded:
            result.bundle = None
    return result


def summary(result: LocalRun) -> str:
    """A few lines for the terminal: where the run is, the verdict, the registry's prod and versions."""
    lines = [f"local run: {result.run_dir} ({result.seconds:.0f} s, {len(result.tasks)} tasks executed)"]
    if not result.succeeded:
        lines.append(f"FAILED: {result.error}")
    elif result.promoted:
        lines.append(f"promote: true - candidate published to {result.registry} and assigned prod -> {result.bundle}")
    else:
        lines.append(f"promote: false - the candidate was blocked; prod in {result.registry} is unchanged")
    if result.registry is not None:
        lines.append(f"registry {result.registry}: prod = {result.prod or '(none)'}; versions: "
                     f"{', '.join(result.versions) or '(none)'}")
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
    ap.add_argument("--registry", default=str(DEFAULT_REGISTRY),
                    help="registry location shared by runs: prod is resolved there and an approved bundle "
                         f"published to it (default: {DEFAULT_REGISTRY})")
    ap.add_argument("--input", default="", metavar="PATH",
                    help="input_uri: the file or folder ingest reads instead of ingest.path")
    ap.add_argument("--fail-if-blocked", action="store_true", help="exit 1 when the gate blocks the candidate")
    ap.add_argument("--runner", choices=("subprocess", "docker"), default="subprocess",
                    help="subprocess: tasks run in this environment; docker: each in a container of --image")
    ap.add_argument("--image", help="component image for --runner docker (make image)")
    args = ap.parse_args(argv)
    try:
        params = local_params(args.params, args.overrides, small=not args.full)
        check(params, registry=args.registry, input_uri=args.input)
        result = run(params, pipeline_root=args.pipeline_root, cache=args.cache, registry=args.registry,
                     input_uri=args.input, runner=args.runner, image=args.image)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    code = result.exit_code(args.fail_if_blocked)
    print(summary(result), file=sys.stderr if code else sys.stdout)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
