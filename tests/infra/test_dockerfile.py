"""infra/Dockerfile, read as text (no Docker engine here, so the image is not built in tests).

Checks the promises the docs make: the same pinned install as ``make setup`` (requirements.lock, then the
project with --no-deps), a CPU/CUDA switch, a non-root numeric USER, kfp present for
``install_kfp_package=False``, no secrets, and a build context that carries every path it copies.
"""
from __future__ import annotations

import fnmatch
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "infra" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def makefile_install_commands() -> list[str]:
    make = (REPO / "Makefile").read_text()
    return [line.strip().split("pip install", 1)[1] for line in make.splitlines() if "pip install" in line]


def test_installs_the_runtime_part_of_the_lock_and_the_project_like_the_makefile():
    runs = " ; ".join(args for word, args in instructions() if word == "RUN")
    # the base image's pip installs into the venv (`pip --python VENV`): the venv itself carries no pip
    pip = r"-m pip --python \S+\s+"
    assert re.search(pip + r"install --no-deps --no-compile -r /tmp/requirements-runtime\.txt", runs)
    assert re.search(pip + "check", runs)
    assert re.search(pip + r"install --no-deps --no-build-isolation --no-compile -e \.", runs)
    assert "venv --without-pip" in runs
    make = makefile_install_commands()
    assert any("--no-deps --no-build-isolation -e ." in m for m in make)
    copies = [args for word, args in instructions() if word == "COPY"]
    # the dependency layer sees only the generated requirements file: a README or code edit keeps it cached
    first_copy = copies[0]
    assert first_copy.split()[0] == "infra/requirements-runtime.txt", first_copy
    runtime = (REPO / "infra" / "requirements-runtime.txt").read_text()
    lock = (REPO / "requirements.lock").read_text()
    assert re.search(r"^kfp==", runtime, re.M), "the image must contain kfp (components use install_kfp_package=False)"
    assert re.search(r"^torch==", runtime, re.M)
    for line in runtime.splitlines():
        if line and not line.startswith("#") and not line.startswith("setuptools=="):
            assert re.search(rf"^{re.escape(line)}$", lock, re.M), f"{line} is not the lock's pin"
    assert re.search(r"^setuptools==\d", runtime, re.M), "setuptools must be pinned"
    for dev in ("pytest", "dvc", "docker", "celery"):  # asyncssh comes with gto (scmrepo)
        assert not re.search(rf"^{dev}==", runtime, re.M | re.I), dev
    assert re.search(r"^gto==", runtime, re.M), "gate_export needs the registry (GTO)"


def test_multi_stage_runtime_carries_no_build_or_dev_tools():
    froms = [a for w, a in instructions() if w == "FROM"]
    assert [f.split()[-1] for f in froms] == ["deps", "movielens", "runtime"]
    text = DOCKERFILE.read_text()
    runtime_stage = text[text.index("AS runtime"):]
    apt = [a.split() for a in re.findall(r"apt-get install ([^&;\n]+)", re.sub(r"\\\n", " ", runtime_stage))]
    assert apt == [["-y", "--no-install-recommends", "git"]], f"from apt into the runtime image: git alone: {apt}"
    # binutils (strip) only in the deps stage, which the runtime image copies the venv from; the trim runs there
    deps_stage = text[:text.index("AS movielens")]
    assert "binutils" in deps_stage and "python /tmp/trim_venv.py" in deps_stage
    assert "dvc.yaml" not in text.split("# ----", 1)[1], "the image holds no DVC project"
    assert "COPY --from=deps /app/.venv /app/.venv" in runtime_stage


def test_cpu_and_cuda_variants_via_a_build_argument():
    args = {a.split("=")[0]: a.split("=", 1)[1] if "=" in a else None for w, a in instructions() if w == "ARG"}
    assert args["VARIANT"] == "cpu"
    runs = " ".join(a for w, a in instructions() if w == "RUN")
    assert "cpu)" in runs and "cuda)" in runs and "download.pytorch.org/whl/cpu" in args["TORCH_CPU_INDEX"]


def test_runs_as_a_non_root_numeric_user_created_in_the_image():
    users = [a for w, a in instructions() if w == "USER"]
    assert users, "no USER instruction: the image would run as root"
    final = users[-1]
    assert final.isdigit() and int(final) != 0
    runs = " ".join(a for w, a in instructions() if w == "RUN")
    assert re.search(rf"useradd[^;&]*--uid {final}\b", runs)
    # KFP's launcher stages artifacts under /minio, /s3 or /gcs: they must be writable by that user, and (group
    # 0, group-writable) by an arbitrary uid with gid 0, as HOME must be
    assert re.search(rf"chown {final}:0 /gcs /minio /s3 /home/app", runs)
    assert re.search(r"chmod 2775 /gcs /minio /s3 /home/app", runs)
    env = " ".join(a for w, a in instructions() if w == "ENV")
    assert "HOME=/home/app" in env and "MPLCONFIGDIR=/tmp/" in env and "XDG_CACHE_HOME=/tmp/" in env


def test_no_secrets_in_the_image():
    text = DOCKERFILE.read_text()
    for word in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "PASSWORD", "TOKEN", "PRIVATE KEY"):
        assert word not in text.upper().replace("NO SECRETS", ""), word
    for word, args in instructions():
        if word in ("ENV", "ARG"):
            assert not re.search(r"(secret|passw|token|credential)", args, re.I), args


def test_build_context_keeps_every_copied_path_and_drops_the_venv():
    ignore = [ln.strip() for ln in (REPO / "infra" / "Dockerfile.dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]

    def included(path: str) -> bool:
        keep = True
        for pattern in ignore:
            negate = pattern.startswith("!")
            pat = pattern[1:].rstrip("/") if negate else pattern.rstrip("/")
            if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat + "/*") or path.startswith(pat + "/"):
                keep = negate
        return keep

    for word, args in instructions():
        if word == "COPY" and not args.startswith("--from"):
            for src in args.split()[:-1]:
                assert (REPO / src).exists(), src
                assert included(src), f"{src} is copied but excluded from the build context"
    for heavy in (".venv/bin/python", "data/raw/x", "artifacts/models/x", ".git/config"):
        assert not included(heavy), heavy


def _component_imports(module: str) -> set[str]:
    """components.* modules that ``module`` imports, transitively (files under components/)."""
    import ast

    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse((REPO / "components" / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "components":
                todo += [a.name for a in node.names if (REPO / "components" / f"{a.name}.py").is_file()]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("components."):
                todo.append(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                todo += [a.name.split(".")[1] for a in node.names if a.name.startswith("components.")]
    return seen


def test_the_movielens_layer_copies_what_the_fetch_imports_and_nothing_else():
    text = DOCKERFILE.read_text()
    stage = text[text.index("AS movielens"):text.index("AS runtime")]
    (copy,) = [a for w, a in instructions() if w == "COPY" and "components/ingest.py" in a]
    assert "components/ingest.py" in stage, "the fetch's COPY belongs to the movielens stage"
    copied = {Path(src).stem for src in copy.split()[:-1]}
    needed = _component_imports("ingest") | {"__init__"}
    assert needed <= copied, f"components.ingest fetch also imports {sorted(needed - copied)}"
    assert copied <= needed, f"copied but not imported by the fetch (rebuilds the layer needlessly): {copied - needed}"
