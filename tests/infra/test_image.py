"""The component image, run: the whole pipeline through export inside it, three ways, and the DockerRunner run.

Needs a container engine (docker with a running daemon, or podman) and the image (``make image``); ``make
image-test`` builds it and runs this file (``MIR_IMAGE_TEST=require``: no engine or no image is a failure). Under
``make test`` / CI the container tests are skipped with the reason printed (``-ra``): an image lying on the machine
need not be this checkout's, so they run only when asked (``MIR_IMAGE_TEST=1`` runs them on an existing image).

- as the image's user (uid 10001, group 0);
- as an arbitrary uid with group 0 (OpenShift's restricted SCC);
- with a read-only root filesystem, a writable ``/tmp`` (the manifests' emptyDir) and the output volume;
- ``python -m pipelines.run_local --runner docker --image IMAGE --registry PATH`` (kfp.local.DockerRunner; with
  podman through its Docker-compatible API, started here when ``DOCKER_HOST`` is not set).

Environment: ``MIR_IMAGE`` (default ``localhost/multi-interest-retrieval:dev``), ``MIR_CONTAINER_ENGINE`` (default:
docker when its daemon answers, else podman), ``MIR_IMAGE_TEST=require``, ``MIR_IMAGE_TIMINGS=FILE`` (write the
wall times measured here as JSON; benchmarks/results/image.json quotes them).

The tests without an engine (always run): infra/requirements-runtime.txt is what the lock gives, every
third-party module the code imports is installed in the image, and the Dockerfile's byte-compiled warm-up list
covers them.
"""
from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "infra"))
import runtime_requirements  # noqa: E402  (infra/ is not a package)

IMAGE = os.environ.get("MIR_IMAGE", "localhost/multi-interest-retrieval:dev")
IMAGE_UID = 10001
ARBITRARY_UID = 1000730000  # the first uid of an OpenShift project's range, typically
TIMINGS: dict[str, float] = {}
#: floors only: a first candidate has no prod to beat, and 2 epochs of MIND do not beat most_popular on 30 users
#: (as in tests/pipelines/test_run_local.py); the gate's paired tests are not what this file tests
PASSING_GATE = "gates={metric: recall@50, floors: {recall@50: 0.05}, baseline: null}"


# --------------------------------------------------------------------------- without an engine (always run)
def test_runtime_requirements_are_generated_from_the_lock():
    committed = (REPO / "infra" / "requirements-runtime.txt").read_text()
    assert committed == runtime_requirements.render(), \
        "infra/requirements-runtime.txt is stale: run .venv/bin/python infra/runtime_requirements.py"


def test_render_refuses_a_dependency_missing_from_the_lock(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("".join(line + "\n" for name, line in runtime_requirements.lock_lines().items() if name != "scipy"))
    with pytest.raises(SystemExit, match="scipy is required but not in"):
        runtime_requirements.render(lock=lock)


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level third-party module -> the project files importing it (anywhere in the file)."""
    own = {"components", "models", "pipelines"}
    found: dict[str, set[str]] = {}
    for folder in own:
        for f in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in own:
                        found.setdefault(top, set()).add(str(f.relative_to(REPO)))
    return found


def test_every_module_the_code_imports_is_installed_in_the_image():
    runtime = {runtime_requirements.requirement_name(line)
               for line in (REPO / "infra" / "requirements-runtime.txt").read_text().splitlines()
               if line and not line.startswith("#")}
    providers = md.packages_distributions()
    missing = {}
    for module, files in _third_party_imports().items():
        dists = {runtime_requirements.canonical(d) for d in providers.get(module, [])}
        if not dists & runtime:
            missing[module] = sorted(files)
    # pipelines.run_local --runner docker drives containers from the host: the docker client is not in the image
    missing.pop("docker", None)
    assert not missing, f"imported by the code but not installed in the image: {missing}"


def test_the_byte_compiled_warm_up_covers_the_steps_imports():
    text = re.sub(r"\\\n", " ", (REPO / "infra" / "Dockerfile").read_text())
    (warm,) = [w for w in re.findall(r'python -c "import ([^";]+)"', text) if "pytorch_lightning" in w]
    # the warm-up compiles what its imports load, transitively: import the same list here and see what loads
    probe = subprocess.run([sys.executable, "-c", f"import sys, {warm}; print(' '.join(sys.modules))"],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert probe.returncode == 0, probe.stderr[-3000:]
    loaded = {name.split(".")[0] for name in probe.stdout.split()}
    wanted = set(_third_party_imports()) - {"docker"}
    assert wanted <= loaded, f"imported by the code but not byte-compiled in the image: {sorted(wanted - loaded)}"


# ------------------------------------------------------------------------------------- the container engine
def _engine() -> str | None:
    chosen = os.environ.get("MIR_CONTAINER_ENGINE")
    if chosen:
        return chosen if shutil.which(chosen) else None
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return "docker"
    return "podman" if shutil.which("podman") else None


def _image_present(engine: str) -> bool:
    return subprocess.run([engine, "image", "inspect", IMAGE], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def engine() -> str:
    mode = os.environ.get("MIR_IMAGE_TEST", "")
    required = mode == "require"
    if mode not in ("require", "1"):
        # make test / CI: an image found on the machine need not be built from this checkout, and a container
        # run adds minutes; the image is tested by `make image-test`, which builds it first
        pytest.skip("container tests run under `make image-test` (MIR_IMAGE_TEST=require builds and runs the "
                    "image of this checkout); set MIR_IMAGE_TEST=1 to run them against an existing image")
    found = _engine()
    if found is None:
        reason = ("no container engine (a running docker daemon or podman): the image is not run here; "
                  "make image-test runs it where one exists")
        if required:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    if not _image_present(found):
        reason = f"image {IMAGE} not built ({found} image inspect failed): make image, or make image-test"
        if required:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def small_params(tmp_path_factory) -> dict:
    """The small synthetic run of pipelines.run_local (seeded by params.yaml), gated on the floors alone."""
    from pipelines.run_local import local_params

    return local_params(REPO / "params.yaml", [PASSING_GATE])


def _shared_folder(path: Path) -> Path:
    """A folder like a volume with fsGroup 0: group 0, group-writable, setgid (the image's users have gid 0)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        os.chown(path, -1, 0)
        path.chmod(0o2775)
    except PermissionError:  # not root here (rootless engine, docker group): let any container user write
        path.chmod(0o2777)
    return path


STEPS = """
set -eu
P=/out/params.yaml
cd /app
python -m components.ingest run --params $P --out /out/data/canonical
python -m components.validate --params $P --data /out/data/canonical --out /out/data/validation
python -m components.split --params $P --data /out/data/canonical --out /out/data/split
for m in {models}; do
  python -m components.train --params $P --model $m --split /out/data/split --out /out/artifacts/models/$m
  python -m components.evaluate --params $P --model $m --split /out/data/split --models-dir /out/artifacts/models \\
    --out /out/artifacts/eval/$m
  python -m components.build_index --params $P --model $m --models-dir /out/artifacts/models --split /out/data/split \\
    --out /out/artifacts/index/$m
done
python -m components.export --params $P --models-dir /out/artifacts/models --eval-dir /out/artifacts/eval \\
  --index-dir /out/artifacts/index --split /out/data/split --bundles /out/artifacts/bundles \\
  --out /out/artifacts/export --registry /out/registry
# what this run may and may not write
id -u > /out/uid
find /out/artifacts -printf '%U %G %m %p\n' > /out/owners   # as the container sees them (rootless engines remap)
if touch /app/probe 2>/dev/null; then echo writable > /out/app_root; else echo read-only > /out/app_root; fi
if touch "$HOME/probe" 2>/dev/null; then echo writable > /out/home; else echo read-only > /out/home; fi
"""

MODES = {
    "image_user": [],
    "arbitrary_uid_gid0": ["--user", f"{ARBITRARY_UID}:0"],
    "read_only_root": ["--read-only"],
}


def _run_steps(engine: str, mode: str, out: Path, tmp: Path, params: dict) -> subprocess.CompletedProcess:
    (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if mode == "arbitrary_uid_gid0":
        # a registry location someone else created (here: this test's user), as on a shared volume: git in the
        # container must still use it (the image trusts it: safe.directory)
        _shared_folder(out / "registry")
    args = [engine, "run", "--rm", "-v", f"{out}:/out", "-e", "OMP_NUM_THREADS=1", *MODES[mode]]
    if mode == "read_only_root":
        # Kubernetes' readOnlyRootFilesystem with an emptyDir at /tmp: nothing else writable (podman would add
        # tmpfs mounts of its own at /tmp, /var/tmp and /run without --read-only-tmpfs=false)
        if engine.endswith("podman"):
            args.append("--read-only-tmpfs=false")
        args += ["-v", f"{_shared_folder(tmp)}:/tmp"]
    models = " ".join(params["train"]["models"])
    t0 = time.perf_counter()
    proc = subprocess.run([*args, IMAGE, "sh", "-c", STEPS.format(models=models)], capture_output=True, text=True,
                          timeout=1200)
    TIMINGS[f"{mode}_s"] = round(time.perf_counter() - t0, 1)
    return proc


@pytest.fixture(scope="module")
def mode_runs(engine, small_params, tmp_path_factory) -> dict[str, Path]:
    outs = {}
    for mode in MODES:
        out = _shared_folder(tmp_path_factory.mktemp(mode) / "out")
        proc = _run_steps(engine, mode, out, tmp_path_factory.mktemp(f"{mode}-tmp"), small_params)
        assert proc.returncode == 0, f"{mode}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        outs[mode] = out
    return outs


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_the_pipeline_runs_through_export_in_the_image(mode_runs, small_params, mode):
    out = mode_runs[mode]
    verdict = json.loads((out / "artifacts" / "export" / "verdict.json").read_text())
    # a fresh registry location: the first candidate on the floors is approved, published and made prod
    assert verdict["promote"] is True, verdict.get("reasons")
    registered = verdict["registered"]
    assert registered["version"] == "v0.0.1"
    bundle = out / "registry" / "bundles" / registered["bundle"]
    assert (bundle / "manifest.json").is_file(), sorted(p.name for p in (out / "registry").rglob("*"))[:20]
    for model in small_params["train"]["models"]:
        assert json.loads((out / "artifacts" / "eval" / model / "metrics.json").read_text())
    uid = int((out / "uid").read_text())
    assert uid == {"image_user": IMAGE_UID, "arbitrary_uid_gid0": ARBITRARY_UID}.get(mode, IMAGE_UID)
    # every output belongs to the container's user and group 0, and is readable by another pod's user
    owners = [line.split(" ", 3) for line in (out / "owners").read_text().splitlines()]
    assert len(owners) > 20, owners
    for owner, group, perm, path in owners:
        assert (int(owner), int(group)) == (uid, 0), (path, owner, group)
        assert int(perm, 8) & 0o040, f"{path} is not group-readable: {perm}"
    assert (out / "app_root").read_text().strip() == "read-only"  # the code is root's in every mode
    home = (out / "home").read_text().strip()
    assert home == ("read-only" if mode == "read_only_root" else "writable"), home


@pytest.mark.slow
def test_the_three_ways_train_the_same_model(mode_runs, small_params):
    """Same seeds, same image: the run's user and root filesystem change nothing in the results."""
    metrics = {mode: {m: json.loads((out / "artifacts" / "eval" / m / "metrics.json").read_text())
                      for m in small_params["train"]["models"]} for mode, out in mode_runs.items()}
    first = metrics["image_user"]
    for mode, found in metrics.items():
        assert found == first, mode


# ----------------------------------------------------------------------------------- kfp.local.DockerRunner
@pytest.fixture(scope="module")
def docker_host(engine, tmp_path_factory):
    """DOCKER_HOST for the docker client: as set, docker's default, or podman's API service started here."""
    if os.environ.get("DOCKER_HOST") or engine.endswith("docker"):
        yield os.environ.get("DOCKER_HOST", "")
        return
    sock = tmp_path_factory.mktemp("podman") / "podman.sock"
    service = subprocess.Popen([engine, "system", "service", "--time=0", f"unix://{sock}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if service.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"podman system service did not start: {service.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        yield f"unix://{sock}"
    finally:
        service.terminate()
        service.wait(timeout=30)


def test_a_failing_container_reports_its_real_exit_status(docker_host):
    """run_local's container handling reads the status before removal (stock auto-remove could lose it)."""
    import docker

    from pipelines.run_local import _ContainerStatuses

    client = docker.DockerClient(base_url=docker_host) if docker_host else docker.from_env()
    statuses = _ContainerStatuses({})
    assert statuses(client, IMAGE, ["sh", "-c", "echo failing; exit 3"], {}) == 3
    assert statuses(client, IMAGE, ["python", "-c", "import components.train"], {}) == 0
    assert [code for _, code in statuses.statuses] == [3, 0]
    names = {c.short_id for c in client.containers.list(all=True)}
    assert not names & {cid for cid, _ in statuses.statuses}, "containers are removed once their status is read"


@pytest.mark.slow
def test_the_docker_runner_runs_the_whole_pipeline(docker_host, tmp_path):
    root = _shared_folder(tmp_path / "root")
    registry = tmp_path / "registry"
    env = {**os.environ, "DOCKER_HOST": docker_host} if docker_host else dict(os.environ)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipelines.run_local", "--runner", "docker", "--image", IMAGE,
                           "--pipeline-root", str(root), "--registry", str(registry), "--param", PASSING_GATE],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    TIMINGS["docker_runner_pipeline_s"] = round(time.perf_counter() - t0, 1)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "promote: true" in proc.stdout, proc.stdout[-3000:]
    (run_dir,) = sorted(root.glob("multi-interest-retrieval-*"))
    tasks = sorted(str(p.parent.relative_to(run_dir)) for p in run_dir.glob("**/executor_output.json"))
    assert "gate-export" in tasks and "check-params" in tasks and len(tasks) >= 10, tasks
    bundle = json.loads((run_dir / "gate-export" / "result" / "verdict.json").read_text())["registered"]["bundle"]
    assert (registry / "bundles" / bundle / "manifest.json").is_file()
    if os.geteuid() == 0:  # a rootful engine maps uids 1:1: written by the image's user into the pipeline root
        st = (run_dir / "gate-export" / "executor_output.json").stat()
        assert (st.st_uid, st.st_gid) == (IMAGE_UID, 0)


def teardown_module(module):
    path = os.environ.get("MIR_IMAGE_TIMINGS")
    if path and TIMINGS:
        Path(path).write_text(json.dumps({"image": IMAGE, **TIMINGS}, indent=2) + "\n")
