"""Compile the pipeline to the YAML a KFP cluster runs: ``python -m pipelines.compile``.

Writes ``pipelines/pipeline.yaml`` (committed; ``tests/pipelines/test_compile.py`` recompiles and diffs it, so
it always matches ``params.yaml`` and the code). Compile-time settings: the component image (``--image``, else
``$MIR_IMAGE``, else a placeholder registry path), the ``kfp`` section of params (resources, retries,
parallelism) and the train task's accelerators (``train.accelerator``/``devices``). The committed file uses the
placeholder image; compile your own with ``--image <registry>/multi-interest-retrieval:<tag>`` before
uploading (docs/RUNNING.md).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from components.config import DEFAULT_PARAMS, load_params
from components.io import atomic_path, cli_main
from pipelines.settings import IMAGE_ENV, resolve_image

DEFAULT_OUT = Path(__file__).resolve().parent / "pipeline.yaml"


def compile_pipeline(params_path: str | Path = DEFAULT_PARAMS, out: str | Path = DEFAULT_OUT, *,
                     image: str | None = None) -> Path:
    """Compile the pipeline for the params in ``params_path`` into ``out`` (atomically); return ``out``."""
    from kfp import compiler

    from pipelines.pipeline import build_pipeline

    pipeline = build_pipeline(load_params(params_path), image=resolve_image(image))
    out = Path(out)
    with tempfile.TemporaryDirectory() as scratch:
        compiled = Path(scratch) / "pipeline.yaml"  # the compiler picks the format from the suffix
        compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(compiled))
        with atomic_path(out) as tmp:
            tmp.write_bytes(compiled.read_bytes())
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipelines.compile", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file (default: params.yaml)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output YAML (default: pipelines/pipeline.yaml)")
    ap.add_argument("--image", default=None,
                    help=f"component image (default: ${IMAGE_ENV}, else the placeholder {resolve_image(None)!r})")
    args = ap.parse_args(argv)
    cli_main(lambda: print(compile_pipeline(args.params, args.out, image=args.image)))


if __name__ == "__main__":
    main()
