"""Shared I/O discipline for every step: clear data errors, atomic outputs, and the CLI shell.

Rules this module enforces for all steps:
- bad input raises :class:`DataError` naming the file, the column and a few offending rows;
- outputs are written to a temporary sibling path and renamed into place, so a failed run leaves the
  previous artifacts untouched;
- every CLI goes through :func:`cli_main`, which turns a ``DataError``/``ParamsError`` into one line on
  stderr and exit status 2 (any other exception keeps its traceback and exits 1).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from components.config import ParamsError

EXIT_BAD_INPUT = 2


class DataError(ValueError):
    """Input data is unusable. The message names file, column and example rows."""

    def __init__(self, message: str, *, path: str | Path | None = None, column: str | None = None,
                 rows: Sequence[Any] | None = None):
        parts = []
        if path is not None:
            parts.append(str(path))
        if column is not None:
            parts.append(f"column '{column}'")
        head = ": ".join([", ".join(parts), message]) if parts else message
        if rows is not None and len(rows):
            shown = ", ".join(repr(r) for r in list(rows)[:5])
            more = f" (and {len(rows) - 5} more)" if len(rows) > 5 else ""
            head += f"; e.g. rows {shown}{more}"
        super().__init__(head)
        self.path = path
        self.column = column
        self.rows = list(rows) if rows is not None else []


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``out_dir`` only if the block succeeds.

    On an exception the temporary directory is deleted and ``out_dir`` is left exactly as it was. The
    yielded path is absolute (some libraries, e.g. GX's Data Docs store, refuse relative directories).
    """
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = apply_umask(Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent)))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out_dir)


def current_umask() -> int:
    """The process umask, read without changing it (Linux ``/proc/self/status``; elsewhere set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # not thread-safe, hence only the fallback
    os.umask(mask)
    return mask


def apply_umask(path: Path) -> Path:
    """Give ``path`` the mode a plain ``mkdir`` / ``open`` would have: 0o777 (folder) or 0o666 (file) minus
    the umask. For folders made by ``tempfile.mkdtemp`` (always 0700) and files some writers create 0600
    (safetensors), so a server running as another user can read the outputs the umask allows."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~current_umask())
    return path


def replace_dir(src: Path, dst: Path) -> None:
    """Move directory ``src`` to ``dst``, replacing ``dst``: two renames, the old copy removed last."""
    old = None
    if dst.exists() or dst.is_symlink():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; it is renamed onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically, with sorted keys and a trailing newline (stable diffs)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def relative_paths(obj: Any, root: str | Path) -> Any:
    """``obj`` (JSON-like) with the absolute folder ``root`` cut from every string: recorded results name paths
    relative to the repository, never one machine's checkout."""
    prefix = str(Path(root).resolve()) + os.sep
    if isinstance(obj, str):
        return obj.replace(prefix, "")
    if isinstance(obj, dict):
        return {k: relative_paths(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [relative_paths(v, root) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks (``algorithm``: any hashlib name, e.g. md5)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_parquet(path: str | Path, columns: Sequence[str] | None = None):
    """Read a parquet file into pandas with a :class:`DataError` for a missing, corrupt or short file."""
    import pandas as pd
    import pyarrow as pa

    path = Path(path)
    _check_parquet(path, columns)
    try:
        return pd.read_parquet(path, columns=list(columns) if columns is not None else None)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable parquet file ({exc})", path=path) from None


def read_table(path: str | Path, columns: Sequence[str] | None = None):
    """Like :func:`read_parquet` but return a ``pyarrow.Table``: no pandas conversion, for big tables."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    _check_parquet(path, columns)
    try:
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable parquet file ({exc})", path=path) from None


def _check_parquet(path: Path, columns: Sequence[str] | None) -> None:
    """DataError unless ``path`` is a readable parquet file holding every name in ``columns``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists():
        raise DataError("file not found", path=path)
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable parquet file ({exc})", path=path) from None
    if columns is not None:
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(f"missing required column(s) {missing}; found {names}", path=path,
                            column=missing[0])


def cli_main(fn: Callable[[], Any]) -> None:
    """Run a step's CLI body; bad input or params become one line on stderr and exit status 2."""
    try:
        fn()
    except (DataError, ParamsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None


def read_json(path: str | Path, required: Sequence[str] = ()) -> Any:
    """Read a JSON file with a :class:`DataError` for a missing file, bad JSON or a missing required key."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc})", path=path) from None
    for key in required:
        if not isinstance(obj, dict) or key not in obj:
            raise DataError(f"missing key '{key}'", path=path)
    return obj
