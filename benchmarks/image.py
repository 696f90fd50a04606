"""The component image's figures: size, where the bytes are, build times, start-up with and without .pyc.

    .venv/bin/python benchmarks/image.py measure --image localhost/multi-interest-retrieval:dev \\
        --base localhost/python:3.11-slim-bookworm --timings benchmarks/out/image_timings.json \\
        --build-s cold=SECONDS --build-s code_edit=SECONDS --trim-log BUILD_LOG \\
        --out benchmarks/results/image.json

What is measured, all with the container engine (podman or docker) on this machine:

- ``image_bytes``: the engine's size of the image (``image inspect --format {{.Size}}``), the figure the
  target (<= 1.4 GB for the CPU variant) is about; ``base_bytes`` the same for the base image, so what the
  Dockerfile adds is their difference.
- ``venv_bytes``, ``pyc_bytes_in_venv``, ``venv_largest_mb``: ``du``/``find`` inside a container of the image.
- ``import_s``: wall seconds of ``python -c "import <what a train step imports>"`` in a fresh container, with
  the image's byte-compiled ``.pyc`` and without them (``-X pycache_prefix=/nonexistent``: Python then looks
  for ``.pyc`` elsewhere, finds none and compiles in memory; ``PYTHONDONTWRITEBYTECODE`` keeps it from writing),
  alternated ``--tries`` times.
- Build times are passed in (``--build-s name=seconds``): the engine's build is timed by the caller, under the
  shared CPU lock's exclusive mode when the figures are recorded.
- ``--timings``: the wall times tests/infra/test_image.py writes (MIR_IMAGE_TIMINGS) under ``make image-test``.
- ``--trim-log``: the build log; the JSON that infra/trim_venv.py prints there (bytes saved per rule) is kept.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from components.io import relative_paths  # noqa: E402

STEP_IMPORTS = ("torch, pytorch_lightning, lightning_fabric, pandas, pyarrow.parquet, scipy.stats, "
                "matplotlib.pyplot, faiss, yaml, torchmetrics")
SITE = "/app/.venv/lib/python3.11/site-packages"


def engine() -> str:
    for name in ("podman", "docker"):
        if shutil.which(name):
            return name
    raise SystemExit("no container engine (podman or docker)")


def size(eng: str, image: str) -> int:
    return int(subprocess.run([eng, "image", "inspect", image, "--format", "{{.Size}}"], check=True,
                              capture_output=True, text=True).stdout.strip())


def in_image(eng: str, image: str, script: str, *extra: str) -> str:
    return subprocess.run([eng, "run", "--rm", "--network", "none", *extra, image, "sh", "-c", script],
                          check=True, capture_output=True, text=True, timeout=600).stdout


def import_seconds(eng: str, image: str, tries: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"with_pyc": [], "without_pyc": []}
    for _ in range(tries):
        for key, flags in (("with_pyc", ""), ("without_pyc", "-X pycache_prefix=/nonexistent")):
            script = (f'python {flags} -c "import time; t = time.perf_counter(); import {STEP_IMPORTS}; '
                      f'print(time.perf_counter() - t)"')
            out[key].append(round(float(in_image(eng, image, script, "-e", "OMP_NUM_THREADS=1").split()[-1]), 2))
    return out


def trim_report(log: Path) -> dict:
    """The JSON object infra/trim_venv.py printed in a build log (the last one)."""
    text = log.read_text()
    start = text.rfind('{\n "removed_bytes"')
    if start < 0:
        raise SystemExit(f"no infra/trim_venv.py report in {log}")
    report, _ = json.JSONDecoder().raw_decode(text[start:])
    return report


def measure(args) -> dict:
    eng = engine()
    t0 = time.perf_counter()
    image_bytes, base_bytes = size(eng, args.image), size(eng, args.base)
    du = in_image(eng, args.image, f"du -sb /app/.venv | cut -f1; "
                                   f"find /app/.venv -name '*.pyc' -printf '%s\\n' | awk '{{s+=$1}} END {{print s}}'; "
                                   f"cd {SITE} && du -sm * | sort -rn | head -12", "--user", "0")
    lines = du.split("\n")
    largest = {name: int(mb) for mb, name in (line.split("\t") for line in lines[2:] if "\t" in line)}
    result = {
        "what": "the CPU component image (infra/Dockerfile) built and run with podman on this shared 2-core box",
        "commands": {
            "build": 'make image IMAGE_BUILD_FLAGS="--network host --build-arg PYTHON_IMAGE=localhost/python:3.11-'
                     'slim-bookworm --build-arg TORCH_CPU_INDEX=<file indexes> -v <pip mirrors and pip config>:ro"',
            "record": "benchmarks/image.py measure ... (this file's figures)",
            "runs": "MIR_IMAGE_TIMINGS=benchmarks/out/image_timings.json make image-test BUILD_IMAGE=0",
        },
        "image": args.image,
        "variant": "cpu",
        "base_image": "localhost/python:3.11-slim-bookworm: the mmdebstrap stand-in of ../shared/containers "
                      "(Debian python3 + git + pip); the real python:3.11-slim-bookworm is not measurable here",
        "image_bytes": image_bytes,
        "base_bytes": base_bytes,
        "added_over_base_bytes": image_bytes - base_bytes,
        "target_image_bytes": 1_400_000_000,
        "target_met": image_bytes <= 1_400_000_000,
        "venv_bytes": int(lines[0]),
        "pyc_bytes_in_venv": int(lines[1] or 0),
        "venv_largest_mb": largest,
        "import_s": {"what": f'python -c "import {STEP_IMPORTS}" in a fresh container (OMP_NUM_THREADS=1), '
                             "alternating with and without the image's .pyc",
                     **import_seconds(eng, args.image, args.tries)},
        "build_s": {name: float(s) for name, s in (b.split("=", 1) for b in args.build_s)},
        "quiet": args.quiet,
    }
    if args.trim_log:
        result["trim"] = trim_report(args.trim_log)
    if args.timings and args.timings.is_file():
        result["runs_s"] = json.loads(args.timings.read_text())
    if args.previous and args.previous.is_file():
        prev = json.loads(args.previous.read_text())
        result["history_bytes"] = {**prev.get("history_bytes", {}), "before_trim_venv": prev.get("image_bytes"),
                                   "now": image_bytes}
    result["measure_s"] = round(time.perf_counter() - t0, 1)
    return relative_paths(result, REPO)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--image", default="localhost/multi-interest-retrieval:dev")
    m.add_argument("--base", default="localhost/python:3.11-slim-bookworm")
    m.add_argument("--timings", type=Path, help="tests/infra/test_image.py's MIR_IMAGE_TIMINGS file")
    m.add_argument("--trim-log", type=Path, help="a build log holding infra/trim_venv.py's report")
    m.add_argument("--build-s", action="append", default=[], metavar="NAME=SECONDS")
    m.add_argument("--tries", type=int, default=2)
    m.add_argument("--quiet", default="", help="how busy the box was (free text, recorded)")
    m.add_argument("--previous", type=Path, help="the image.json this replaces (its history is carried over)")
    m.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    result = measure(args)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("image_bytes", "target_met", "import_s", "build_s")}, indent=1))


if __name__ == "__main__":
    main()
