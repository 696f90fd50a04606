"""The ``train_speed_2threads`` section of docs/RESULTS.md: ``benchmarks/train_speed.py --threads 2``, rendered
like ``train_speed`` (benchmarks/report_train_speed.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable


def section(data: dict, img_dir: Path, rel: str, save: Callable, plt_fn: Callable) -> list[str]:
    spec = importlib.util.spec_from_file_location("bench_report_train_speed", Path(__file__).with_name("report_train_speed.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.body(data, explain=False)
