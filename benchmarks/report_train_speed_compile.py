"""The ``train_speed_compile`` section of docs/RESULTS.md: ``train.compile`` on and off, per model
(``benchmarks/rechub_speed.py --sides ours,ours_compiled``): training-step samples/s and the warm-up that
holds the compilation. Rendered by the table code of ``benchmarks/report_train_speed_vs_rechub.py``."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable


def _vs_rechub():
    spec = importlib.util.spec_from_file_location("bench_report_train_speed_vs_rechub",
                                                  Path(__file__).with_name("report_train_speed_vs_rechub.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def section(data: dict, img_dir: Path, rel: str, save: Callable, plt_fn: Callable) -> list[str]:
    vs = _vs_rechub()
    machine, setting = data.get("machine", {}), data.get("setting", {})
    out = ["`train.compile: true` runs the user tower through `torch.compile` while training "
           "(components/train.py `compile_user_tower`: weights, checkpoints and validation unchanged). Timed as "
           "in the side-by-side above (training steps on pre-gathered batches, wall clock); the warm-up column "
           "holds the compilation.", "",
           f"Run: {setting.get('repeats', '?')} repeat(s) × {setting.get('steps', '?')} timed steps; load average "
           f"before/after {vs._cell((machine.get('load_average_before') or [None])[0], '.2f')} / "
           f"{vs._cell((machine.get('load_average_after') or [None])[0], '.2f')}. {data.get('note', '')}".rstrip(),
           ""]
    rows = vs.compile_rows(data)
    if not rows:
        return out + ["No compiled runs in this file."]
    return out + vs._table(["model", "threads", "eager samples/s", "compiled samples/s", "compiled / eager",
                            "compiled warm-up s (incl. compilation)", "eager warm-up s"], rows)
