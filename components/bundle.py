"""The serving bundle's format (version 2): what a bundle holds, how it is verified, how its model is rebuilt.

A bundle holds data only — nothing executable is read from it:

    weights.safetensors  the model's state dict (safetensors: a JSON header plus raw tensor bytes)
    user_tower.onnx      ONNX export of ``user_interests`` for non-Python servers (Triton, ONNX Runtime in
                         Java/C++) and the ``backend="onnx"`` option of :class:`components.serving.Recommender`:
                         inputs ``history`` (B, L) int64, ``mask`` (B, L) bool, ``profile`` (B, C) int64 with
                         dynamic B and L (1 <= L <= max_len); outputs ``interests`` (B, K, D) float32,
                         ``interest_mask`` (B, K) bool
    item_embeddings.npy  (num_items, D) float32, row 0 = padding (read with ``allow_pickle=False``)
    index.faiss, item_ids.npy, index.json, items.parquet, vocab.json
    manifest.json        ``format``, the model description (model, arch, hparams, max_len, exclude_history,
                         data_version), ``files`` {name: sha256}, ``sizes`` {name: bytes}, ``content_hash``,
                         and outside the hash: ``label`` (the display name, "MIND+HN" for a variant trained
                         with harder negatives: models.variant_label), metrics, gate verdict, params, library
                         versions, created_at

The torch backend rebuilds the user tower from the project's own classes (:func:`models.build_model` with
the manifest's arch + hparams) and the safetensors state dict; the ONNX graph is run only by ONNX Runtime,
which executes a fixed set of operators (no custom-op libraries are registered).

Identity: ``content_hash`` is a sha256 over the format version, the model description and the sha256 of
every file that defines the served answers (:data:`HASHED_FILES`: weights, item table, index, items, vocab)
— not metrics, gate verdict, timestamps or the ONNX file (a derived export whose bytes may vary between
exporter versions). The bundle folder is ``<variant>-<content_hash[:12]>``: the same weights and config give
the same name, and :func:`components.export.build_bundle` returns an existing bundle that verifies untouched.

:func:`verify` runs before anything else is read: the manifest must name format 2, the folder must hold
exactly :data:`BUNDLE_FILES` plus the manifest (a missing, unexpected or non-regular file is refused), each
file's size and sha256 must match, and the content hash must match the files and the model description. An
attacker who can rewrite the manifest can make any bytes "verify", which is why the loaders themselves read
only data formats: a TorchScript or pickle payload under any name is either refused by verify (unknown
name) or rejected by the safetensors / numpy / ONNX parsers without being run (tested).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from components.io import DataError, file_digest

FORMAT = 2
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
ONNX_TOWER = "user_tower.onnx"
#: every file of a format-2 bundle besides the manifest (exactly these: anything else is refused)
BUNDLE_FILES = (WEIGHTS, ONNX_TOWER, "item_embeddings.npy", "index.faiss", "item_ids.npy", "index.json",
                "items.parquet", "vocab.json")
#: the files whose bytes define the served answers (the content hash covers them)
HASHED_FILES = tuple(n for n in BUNDLE_FILES if n != ONNX_TOWER)
#: the manifest keys that describe the served model (the content hash covers them)
IDENT_KEYS = ("model", "arch", "hparams", "max_len", "exclude_history", "data_version")
BACKENDS = ("torch", "onnx")
ONNX_ATOL = 1e-5
_MAX_MANIFEST_BYTES = 16 << 20


# ------------------------------------------------------------------------------------------ identity
def content_hash(files: dict[str, str], ident: dict[str, Any]) -> str:
    """sha256 hex over the format, the model description and the hashed files' sha256 values.

    Args:
        files: {name: sha256 hex} holding at least :data:`HASHED_FILES`.
        ident: {key: value} for every key of :data:`IDENT_KEYS`.
    """
    body = {"format": FORMAT, "files": {n: files[n] for n in HASHED_FILES},
            "ident": {k: ident[k] for k in IDENT_KEYS}}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def verify(bundle_dir: str | Path) -> dict[str, Any]:
    """Check a bundle folder against its manifest before anything else of it is read.

    Returns:
        the manifest (a dict).
    Raises:
        DataError: naming the file — unknown format, a missing, unexpected, non-regular, truncated or
            altered file, or a content hash that does not match the files and the model description.
    """
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise DataError("bundle folder not found", path=bundle_dir)
    mpath = bundle_dir / MANIFEST
    _regular(mpath, _MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(mpath.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"not valid JSON ({exc})", path=mpath) from None
    if not isinstance(manifest, dict):
        raise DataError("not a bundle manifest (a JSON object)", path=mpath)
    fmt = manifest.get("format")
    if fmt != FORMAT:
        hint = (" (format 1 held an executable TorchScript user_tower.pt and is no longer loaded: re-export "
                "the model)") if fmt is None else ""
        raise DataError(f"unknown bundle format {fmt!r}; this code reads format {FORMAT}{hint}", path=mpath)
    for key in ("files", "sizes", "content_hash", *IDENT_KEYS):
        if key not in manifest:
            raise DataError(f"missing key '{key}'", path=mpath)
    files, sizes = manifest["files"], manifest["sizes"]
    if not (isinstance(files, dict) and isinstance(sizes, dict)):
        raise DataError("'files' and 'sizes' must be objects {name: ...}", path=mpath)
    for name in sorted(set(files) | set(sizes)):
        if name not in BUNDLE_FILES:
            raise DataError(f"manifest lists an unexpected file {name!r} (format {FORMAT} holds only "
                            f"{', '.join(BUNDLE_FILES)})", path=bundle_dir / str(name))
    present = {p.name for p in bundle_dir.iterdir()} - {MANIFEST}
    for name in sorted(present - set(BUNDLE_FILES)):
        raise DataError(f"unexpected file in the bundle (format {FORMAT} holds only {', '.join(BUNDLE_FILES)})",
                        path=bundle_dir / name)
    for name in BUNDLE_FILES:
        path = bundle_dir / name
        if name not in files or name not in sizes:
            raise DataError("file not listed in the manifest", path=path)
        if name not in present:
            raise DataError("file missing from the bundle", path=path)
        size = _regular(path)
        if size != sizes[name]:
            raise DataError(f"size {size} bytes, the manifest says {sizes[name]} (truncated or altered)", path=path)
        if file_digest(path) != files[name]:
            raise DataError("sha256 differs from the manifest (altered or swapped file)", path=path)
    want = f"sha256:{content_hash(files, manifest)}"
    if manifest["content_hash"] != want:
        raise DataError(f"content_hash {manifest['content_hash']!r} does not match the files and the model "
                        f"description ({want})", path=mpath)
    return manifest


def _regular(path: Path, max_bytes: int | None = None) -> int:
    """Size of ``path``; DataError unless it is a regular file (a symlink is refused), not above max_bytes."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise DataError("file missing from the bundle", path=path) from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError("not a regular file (symlinks and folders are refused)", path=path)
    if max_bytes is not None and st.st_size > max_bytes:
        raise DataError(f"{st.st_size} bytes, more than {max_bytes}", path=path)
    return st.st_size


def describe_files(bundle_dir: Path) -> tuple[dict[str, str], dict[str, int]]:
    """({name: sha256}, {name: bytes}) of :data:`BUNDLE_FILES` in ``bundle_dir``."""
    files = {n: file_digest(bundle_dir / n) for n in BUNDLE_FILES}
    sizes = {n: (bundle_dir / n).stat().st_size for n in BUNDLE_FILES}
    return files, sizes


# ------------------------------------------------------------------------------------------- weights
def save_weights(model, path: Path) -> None:
    """The model's state dict as safetensors (tensors copied: tied weights are stored once per name)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})


def load_model(bundle_dir: str | Path, manifest: dict[str, Any]):
    """Rebuild the bundle's model from the project's classes (manifest arch + hparams) and its safetensors
    weights, on CPU in eval mode. Call :func:`verify` first (it returns ``manifest``).

    Raises:
        DataError: weights that are not safetensors or do not fit the architecture (named).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    import models
    from components.config import ParamsError

    path = Path(bundle_dir) / WEIGHTS
    if not isinstance(manifest.get("hparams"), dict):
        raise DataError("'hparams' must be an object", path=Path(bundle_dir) / MANIFEST)
    try:
        model = models.build_model(str(manifest["arch"]), **manifest["hparams"])
    except ParamsError as exc:
        raise DataError(f"arch/hparams do not build a model ({exc})", path=Path(bundle_dir) / MANIFEST) from None
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"not a safetensors file ({exc})", path=path) from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DataError(f"weights do not fit arch {manifest['arch']!r} ({exc})", path=path) from None
    return model.eval()


def load_item_table(bundle_dir: str | Path, num_items: int):
    """(num_items, D) float32 torch tensor from ``item_embeddings.npy`` (no pickle)."""
    import torch

    path = Path(bundle_dir) / "item_embeddings.npy"
    try:
        emb = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"not a plain .npy array ({exc})", path=path) from None
    if emb.ndim != 2 or emb.dtype != np.float32 or emb.shape[0] != num_items:
        raise DataError(f"expected ({num_items}, D) float32, got {emb.shape} {emb.dtype}", path=path)
    return torch.from_numpy(np.ascontiguousarray(emb))


# --------------------------------------------------------------------------------------- user towers
def tower_module(model):
    """An ``nn.Module`` whose forward is ``model.user_interests`` (what ONNX exports and torch serves)."""
    from torch import nn

    class UserTower(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, history, mask, profile):
            return self.inner.user_interests(history, mask, profile)

    return UserTower(model).eval()


def export_onnx(model, path: Path, *, max_len: int, num_profile_fields: int, num_items: int, seed: int = 0,
                atol: float = ONNX_ATOL) -> float:
    """Export ``model.user_interests`` to ONNX (dynamo exporter; dynamic batch and history length) and check
    it with ONNX Runtime against the eager model on random batches of other sizes.

    Returns:
        the largest absolute difference of the interests seen in the check.
    Raises:
        ValueError: the architecture cannot be exported, or ONNX Runtime disagrees with eager by more than
            ``atol`` (or on the interest mask); the message names the arch.
    """
    import logging
    import warnings

    import torch

    arch = type(model).__name__
    tower = tower_module(model)
    gen = torch.Generator().manual_seed(seed)
    c = int(num_profile_fields)
    cards = getattr(model, "config", {}).get("profile_cardinalities") or [1] * c

    def batch(b: int, length: int):
        lengths = torch.randint(1, length + 1, (b,), generator=gen)
        mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)  # (B, L) left-aligned, >= 1 item
        history = torch.randint(1, max(num_items, 2), (b, length), generator=gen) * mask
        profile = torch.stack([torch.randint(0, max(int(cards[j]), 1), (b,), generator=gen)
                               for j in range(c)], dim=1) if c else torch.zeros(b, 0, dtype=torch.long)
        return history, mask, profile

    example = batch(3, max_len)
    B = torch.export.Dim("batch", min=1)
    dyn_l = {1: torch.export.Dim("length", min=1, max=max_len)} if max_len > 1 else {}
    onnx_log = logging.getLogger("torch.onnx")  # the exporter logs each optional op set it skips
    level = onnx_log.level
    try:
        onnx_log.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                tower, example, dynamo=True, verbose=False, input_names=["history", "mask", "profile"],
                output_names=["interests", "interest_mask"],
                dynamic_shapes=({0: B, **dyn_l}, {0: B, **dyn_l}, {0: B}))
            program.save(str(path))
    except Exception as exc:  # noqa: BLE001 - any exporter failure: say which arch
        raise ValueError(f"arch {arch}: the user tower cannot be exported to ONNX "
                         f"({type(exc).__name__}: {str(exc)[:500]})") from None
    finally:
        onnx_log.setLevel(level)
    session = onnx_session(path, threads=1)
    worst = 0.0
    for b, length in ((1, max_len), (5, max_len), (2, max(1, max_len // 2)), (7, 1)):
        h, m, p = batch(b, length)
        with torch.no_grad():
            v, vm = tower(h, m, p)
        ov, om = session.run(None, {"history": h.numpy(), "mask": m.numpy(), "profile": p.numpy()})
        if ov.shape != tuple(v.shape) or not np.array_equal(om.astype(bool), vm.bool().numpy()):
            raise ValueError(f"arch {arch}: ONNX Runtime's interests/interest_mask differ from the eager model "
                             f"for a batch of {b} histories of length {length}")
        worst = max(worst, float(np.abs(ov - v.numpy()).max()) if ov.size else 0.0)
        if worst > atol:
            raise ValueError(f"arch {arch}: ONNX Runtime differs from the eager model by {worst:.3g} > {atol} "
                             f"(batch of {b}, length {length})")
    return worst


def onnx_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session (``threads`` intra-op threads; None = ONNX Runtime's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types: name the file
        raise DataError(f"not a loadable ONNX model ({type(exc).__name__}: {str(exc)[:300]})", path=path) from None


class OnnxTower:
    """The user tower served by ONNX Runtime, called like the torch module: tensors in, tensors out.

    ``InferenceSession.run`` is thread-safe, so one tower serves concurrent requests.
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        self.session = onnx_session(path, threads)
        names = [i.name for i in self.session.get_inputs()]
        if names != ["history", "mask", "profile"]:
            raise DataError(f"ONNX inputs {names}, expected ['history', 'mask', 'profile']", path=path)

    def __call__(self, history, mask, profile):
        import torch

        v, m = self.session.run(None, {"history": history.numpy(), "mask": mask.numpy(),
                                       "profile": profile.numpy()})
        return torch.from_numpy(v), torch.from_numpy(m.astype(bool))

    def eval(self) -> "OnnxTower":
        return self
