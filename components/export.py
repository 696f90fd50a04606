"""export: gate the candidate model, write its serving bundle, promote it to champion, write the A/B spec.

Layout under ``--bundles`` (docs/CONTRACTS.md)::

    <model>-<hash12>/      one self-contained, versioned serving bundle
        user_tower.pt        TorchScript (torch.jit.trace) of user_interests: (history (B, L) long,
                             mask (B, L) bool, profile (B, C) long) -> (interests (B, K, D), interest_mask (B, K))
        item_embeddings.npy  (num_items, D) float32, row 0 = padding
        index.faiss, item_ids.npy, index.json   the faiss index (from build_index, else exact Flat)
        items.parquet        item_idx, item_id (original), category, category_idx, train_count
        vocab.json           the split's vocabularies (profile values with their original strings)
        manifest.json        model, arch, hparams, params, max_len, data version, metrics, gate result,
                             library versions, per-file sha256 and the bundle's content hash
    champion               pointer file (JSON {"bundle": ..., "model": ...}), replaced atomically
    ab.json                A/B spec: control = the champion before this run, treatment = the candidate
    gate.json              the last gate decision, both figures side by side

Flow: with no champion yet (first run) the baseline variant's bundle is written and becomes the champion
ungated — it is the reference by definition. Then the candidate is gated (:mod:`components.gates`: floors,
and no worse than the champion minus a tolerance). Passing: candidate bundle written (temp folder + rename),
champion pointer replaced (temp file + ``os.replace``), ``ab.json`` written. Failing: nothing but
``gate.json`` changes and :class:`GateFailed` is raised (CLI exit 1 with the failing rule and both figures).

Choices the papers/issue leave open:
- The champion's figure is its manifest's metric when its data version equals the current split's; if the
  data changed, the champion bundle is re-evaluated on the current split's test users through the serving
  path (so both figures measure the same users) and that figure is used.
- Bundle name = model variant + first 12 hex digits of the content hash (sha256 over the bundle files but
  the manifest, and the manifest's model/params/data-version block), so re-exporting the same model is a
  no-op rename.
- Data version: the DVC md5 of the split from ``dvc.lock`` (the folder's hash, or a hash of its files'
  recorded md5s when they still match the files), else a sha256 over the split folder's files.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import platform
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.config import load_params, section
from components.gates import GateFailed, GateResult, GatesConfig, check
from components.io import DataError, atomic_dir, cli_main, file_digest, read_json, write_json

from components.bundle import BUNDLE_FILES  # noqa: F401 - re-exported: the bundle's files (format 2, no code)


@dataclass(frozen=True)
class ABConfig:
    salt: str = "mir-ab"
    """salt of the bucketing hash; change it to re-randomise users for a new experiment."""
    treatment_share: float = 0.1
    """share of users (buckets) on the treatment arm."""
    num_buckets: int = 10000
    """hash buckets; the traffic split is in units of 1 / num_buckets."""

    def __post_init__(self) -> None:
        if not self.salt:
            raise ValueError("ab.salt must be a non-empty string")
        if not 0.0 <= self.treatment_share <= 1.0:
            raise ValueError(f"ab.treatment_share must lie in [0, 1], got {self.treatment_share}")
        if self.num_buckets < 1:
            raise ValueError(f"ab.num_buckets must be >= 1, got {self.num_buckets}")


@dataclass(frozen=True)
class ExportConfig:
    candidate: str = "mind"
    """model variant proposed for promotion."""
    baseline: str = "youtube_dnn"
    """variant that becomes the first champion when there is none."""
    ab: ABConfig = field(default_factory=ABConfig)
    """A/B experiment settings."""

    def __post_init__(self) -> None:
        if not self.candidate or not self.baseline:
            raise ValueError("candidate and baseline must name model variants")


class ExportPaths:
    """Where export reads and writes (all CLI arguments)."""

    def __init__(self, *, models_dir: Path, eval_dir: Path, index_dir: Path, split_dir: Path, bundles_dir: Path,
                 dvc_lock: Path | None = None):
        self.models_dir, self.eval_dir, self.index_dir = Path(models_dir), Path(eval_dir), Path(index_dir)
        self.split_dir, self.bundles_dir = Path(split_dir), Path(bundles_dir)
        self.dvc_lock = Path(dvc_lock) if dvc_lock is not None else None


# ----------------------------------------------------------------------------------------------- helpers
sha256_file = file_digest  # the bundle's file hashes (sha256, the default)


def data_version(split_dir: Path, dvc_lock: Path | None = None) -> str:
    """The split's DVC hash from ``dvc.lock``, else ``sha256:<hash>`` of the split folder's files.

    ``dvc.lock`` may record the split folder as one output (``md5:<hash>.dir``, returned as is) or its files
    one by one; then the version is ``md5:`` + the md5 of the sorted ``relative path:md5`` lines, used only
    if every recorded md5 still matches the file on disk (a stale lock falls back to the content hash).
    """
    split_dir = Path(split_dir)
    if dvc_lock is not None and Path(dvc_lock).exists():
        import yaml

        try:
            lock = yaml.safe_load(Path(dvc_lock).read_text()) or {}
        except yaml.YAMLError as exc:
            raise DataError(f"not valid YAML ({exc})", path=dvc_lock) from None
        target = split_dir.resolve()
        files: dict[str, str] = {}
        for stage in (lock.get("stages") or {}).values():
            for out in (stage or {}).get("outs") or []:
                if not (isinstance(out, dict) and "path" in out and out.get("md5")):
                    continue
                p = (Path(dvc_lock).parent / out["path"]).resolve()
                if p == target:
                    return f"md5:{out['md5']}"
                if target in p.parents:
                    files[str(p.relative_to(target))] = str(out["md5"])
        if files and all((target / rel).is_file() and file_digest(target / rel, "md5") == md5
                         for rel, md5 in files.items()):
            lines = "".join(f"{rel}:{files[rel]}\n" for rel in sorted(files))
            return f"md5:{hashlib.md5(lines.encode()).hexdigest()}"
    if not split_dir.is_dir():
        raise DataError("split folder not found", path=split_dir)
    h = hashlib.sha256()
    for p in sorted(q for q in split_dir.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(split_dir)).encode() + b"\0" + sha256_file(p).encode() + b"\0")
    return f"sha256:{h.hexdigest()}"


def library_versions() -> dict[str, str]:
    import faiss
    import pandas
    import pyarrow
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "faiss": faiss.__version__,
            "numpy": np.__version__, "pandas": pandas.__version__, "pyarrow": pyarrow.__version__}




class UserTower:
    """Factory of the ``nn.Module`` whose forward is ``model.user_interests`` (see components.bundle)."""

    @staticmethod
    def make(model):
        from components.bundle import tower_module

        return tower_module(model)


# ------------------------------------------------------------------------------------------------ bundles
def build_bundle(variant: str, paths: ExportPaths, params: dict[str, Any], metrics: dict[str, Any],
                 gate: dict[str, Any], version: str, *, exclude_history: bool = True) -> Path:
    """Write the serving bundle of ``variant`` (format 2, :mod:`components.bundle`) into
    ``bundles_dir/<variant>-<hash12>``: staged in a temporary folder, renamed into place.

    The hash covers only what defines the served answers (weights, item table, index, items, vocab, model
    description, data version), so when that folder already exists and verifies it is returned untouched
    (its manifest keeps the metrics and gate verdict of the first export). The ONNX user tower is exported
    and checked against the eager model (1e-5) only when a new bundle is written.

    Returns:
        the bundle folder.
    Raises:
        DataError: unusable inputs (named), or an architecture that cannot be exported to ONNX.
    """
    import tempfile

    from components import bundle as B
    from components.build_index import build_faiss_index, load_index
    from components.evaluate import item_table, load_catalogue
    from components.io import apply_umask, replace_dir
    from models import arch_of, load_model

    model_path = paths.models_dir / variant / "model.pt"
    model = load_model(model_path)
    cat = load_catalogue(paths.split_dir)
    max_len = int(model.config.get("max_len", 0))
    if max_len < 1:
        raise DataError("model hparams have no max_len", path=model_path)
    item_emb = item_table(model, cat.num_items)
    if item_emb.shape[0] != cat.num_items:
        raise DataError(f"model has {item_emb.shape[0]} items, split has {cat.num_items}",
                        path=paths.split_dir / "vocab.json")
    bundles = paths.bundles_dir
    bundles.mkdir(parents=True, exist_ok=True)
    tmp = apply_umask(Path(tempfile.mkdtemp(prefix=f".staging-{variant}-", dir=bundles)))
    try:
        B.save_weights(model, tmp / B.WEIGHTS)
        np.save(tmp / "item_embeddings.npy", item_emb.numpy().astype(np.float32))
        index_dir = paths.index_dir / variant
        if (index_dir / "index.faiss").exists():
            load_index(index_dir)  # validates index and id map agree
            for name in ("index.faiss", "item_ids.npy", "index.json"):
                shutil.copyfile(index_dir / name, tmp / name)  # copyfile: new files get the umask's mode
        else:
            import faiss

            index, rows, used = build_faiss_index(item_emb.numpy(), "Flat")
            faiss.write_index(index, str(tmp / "index.faiss"))
            np.save(tmp / "item_ids.npy", rows)
            write_json(tmp / "index.json", {"factory": used, "nprobe": 1, "ef_search": 16,
                                            "note": "built by export: no build_index output found"})
        shutil.copyfile(paths.split_dir / "items.parquet", tmp / "items.parquet")
        shutil.copyfile(paths.split_dir / "vocab.json", tmp / "vocab.json")
        ident = {"model": variant, "arch": arch_of(model), "hparams": dict(model.config), "max_len": max_len,
                 "exclude_history": exclude_history, "data_version": version}
        ident = json.loads(json.dumps(ident, default=str))  # the JSON form the manifest will hold
        content_hash = B.content_hash({n: sha256_file(tmp / n) for n in B.HASHED_FILES}, ident)
        final = bundles / f"{variant}-{content_hash[:12]}"
        if final.is_dir():
            try:
                if B.verify(final)["content_hash"] == f"sha256:{content_hash}":
                    return final  # the same model: a re-export is a no-op
            except DataError:
                pass  # a damaged copy: replaced below
        try:
            onnx_max_diff = B.export_onnx(model, tmp / B.ONNX_TOWER, max_len=max_len,
                                          num_profile_fields=len(cat.profile_fields), num_items=cat.num_items)
        except ValueError as exc:
            raise DataError(f"model {variant!r}: {exc}", path=model_path) from None
        files, sizes = B.describe_files(tmp)
        manifest = {
            "format": B.FORMAT, "name": final.name, **ident,
            "params": (params.get("models") or {}).get(variant, {}),
            "params_sections": {k: params.get(k) for k in ("evaluate", "index", "export", "gates")},
            "metrics": metrics, "gate": gate, "libraries": library_versions(), "files": files, "sizes": sizes,
            "content_hash": f"sha256:{content_hash}",
            "onnx": {"file": B.ONNX_TOWER, "opset": _onnx_opset(tmp / B.ONNX_TOWER),
                     "max_abs_diff_vs_eager": onnx_max_diff, "inputs": ["history", "mask", "profile"],
                     "outputs": ["interests", "interest_mask"], "dynamic": ["batch", "history length"]},
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(tmp / B.MANIFEST, manifest)
        B.verify(tmp)
        replace_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _onnx_opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def read_champion(bundles_dir: Path) -> dict[str, Any] | None:
    """The champion pointer, or None when there is none yet."""
    p = Path(bundles_dir) / "champion"
    if not p.exists():
        return None
    ptr = read_json(p)
    if not isinstance(ptr, dict) or "bundle" not in ptr:
        raise DataError("champion pointer has no 'bundle' key", path=p)
    if not (Path(bundles_dir) / ptr["bundle"] / "manifest.json").exists():
        raise DataError(f"champion bundle {ptr['bundle']!r} is missing", path=p)
    return ptr


def promote(bundles_dir: Path, bundle: Path, manifest: dict[str, Any]) -> None:
    """Atomic pointer update: temp file + ``os.replace`` (components.io.write_json)."""
    write_json(Path(bundles_dir) / "champion", {
        "bundle": bundle.name, "model": manifest["model"], "content_hash": manifest["content_hash"],
        "promoted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})


def evaluate_bundle(bundle_dir: Path, split_dir: Path, topn: list[int]) -> dict[str, float]:
    """Test-user metrics of a bundle on a (possibly newer) split, through the serving path.

    Recommended original ids are mapped onto the split's item indices (ids the split lacks count as misses).
    """
    from components.evaluate import load_catalogue, load_users, user_metrics
    from components.serving import Recommender

    rec = Recommender.load(bundle_dir)
    cat = load_catalogue(split_dir)
    users = load_users(split_dir, "test", cat)
    index_of = {str(i): k for k, i in enumerate(cat.item_ids) if k > 0}
    vocab = json.loads((Path(split_dir) / "vocab.json").read_text())
    values = vocab.get("profile_values", {})

    def decode(field_name: str, j: int) -> str | None:  # profile index -> original value (0 = unknown)
        vals = values.get(field_name, [])
        return str(vals[j]) if 0 < j < len(vals) else None

    profiles = [{f: decode(f, int(j)) for f, j in zip(cat.profile_fields, row) if f in rec.profile_fields}
                for row in users.profile]
    hist_ids = [[str(cat.item_ids[k]) for k in h] for h in users.history]
    n = max(topn)
    lists = rec.recommend_batch(hist_ids, profiles, n)
    items = np.zeros((len(users), n), dtype=np.int64)
    for u, lst in enumerate(lists):
        for j, (iid, _) in enumerate(lst):
            items[u, j] = index_of.get(iid, 0)
    per_user = user_metrics({k: items[:, :k] for k in topn}, users.targets, cat.item_category)
    return {f"test.{k}": float(v.mean()) for k, v in per_user.items()}


# ---------------------------------------------------------------------------------------------------- run
def run(cfg: ExportConfig, gates: GatesConfig, paths: ExportPaths, params: dict[str, Any]) -> dict[str, Any]:
    """Gate, bundle, promote, and write the A/B spec (see the module docstring).

    Returns:
        {"gate": GateResult dict, "champion": bundle name, "candidate": bundle name, "ab": spec dict,
         "initial_champion": bundle name or None}
    Raises:
        GateFailed: the candidate failed a rule (nothing but gate.json is written).
    """
    from components.serving import ABSpec

    bundles = paths.bundles_dir
    version = data_version(paths.split_dir, paths.dvc_lock)
    exclude_history = bool((params.get("evaluate") or {}).get("exclude_history", True))
    cand_metrics = read_json(paths.eval_dir / cfg.candidate / "metrics.json")
    initial = None
    ptr = read_champion(bundles)
    if ptr is None:
        base_metrics = read_json(paths.eval_dir / cfg.baseline / "metrics.json")
        gate0 = {"passed": True, "rules": [], "note": "initial champion (the baseline), not gated"}
        base_bundle = build_bundle(cfg.baseline, paths, params, base_metrics, gate0, version,
                                   exclude_history=exclude_history)
        promote(bundles, base_bundle, read_json(base_bundle / "manifest.json"))
        initial = base_bundle.name
        ptr = read_champion(bundles)
    champ_dir = bundles / ptr["bundle"]
    champ_manifest = read_json(champ_dir / "manifest.json")
    champ_metrics = dict(champ_manifest.get("metrics") or {})
    champ_source = "manifest"
    if champ_manifest.get("data_version") != version:
        topn = sorted({int(k.split("@")[1]) for k in cand_metrics if k.startswith("test.recall@")
                       and "_ci" not in k}) or [50]
        champ_metrics = evaluate_bundle(champ_dir, paths.split_dir, topn)
        champ_source = "re-evaluated on the current split"
    result = check(gates, cand_metrics, champ_metrics, candidate_name=cfg.candidate,
                   champion_name=ptr["bundle"])
    decision = {**result.to_dict(), "champion_metrics_source": champ_source, "data_version": version}
    if not result.passed:
        write_json(bundles / "gate.json", decision)
        raise GateFailed(result)
    cand_bundle = build_bundle(cfg.candidate, paths, params, cand_metrics, decision, version,
                               exclude_history=exclude_history)
    cand_manifest = read_json(cand_bundle / "manifest.json")
    control = {"bundle": ptr["bundle"], "model": champ_manifest["model"],
               "content_hash": champ_manifest.get("content_hash")}
    treatment = {"bundle": cand_bundle.name, "model": cand_manifest["model"],
                 "content_hash": cand_manifest["content_hash"]}
    spec = ABSpec(salt=cfg.ab.salt, num_buckets=cfg.ab.num_buckets, treatment_share=cfg.ab.treatment_share,
                  control=control, treatment=treatment)
    ab = {**spec.to_dict(), "same_bundle": control["bundle"] == treatment["bundle"], "data_version": version,
          "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    write_json(bundles / "ab.json", ab)
    promote(bundles, cand_bundle, cand_manifest)
    write_json(bundles / "gate.json", decision)
    return {"gate": result.to_dict(), "champion": cand_bundle.name, "candidate": cand_bundle.name,
            "previous_champion": ptr["bundle"], "ab": ab, "initial_champion": initial}


# ---------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> None:
    import sys

    parser = argparse.ArgumentParser(prog="python -m components.export",
                                     description="Gate the candidate, write its serving bundle, promote it, "
                                                 "write the A/B spec. Exit 1 when the gate fails.")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--models-dir", type=Path, default=Path("artifacts/models"))
    parser.add_argument("--eval-dir", type=Path, default=Path("artifacts/eval"))
    parser.add_argument("--index-dir", type=Path, default=Path("artifacts/index"))
    parser.add_argument("--split", type=Path, default=Path("data/split"))
    parser.add_argument("--bundles", type=Path, default=Path("artifacts/bundles"))
    parser.add_argument("--dvc-lock", type=Path, default=Path("dvc.lock"),
                        help="where to read the split's DVC hash (falls back to hashing the split)")
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_params(args.params)
        cfg = section(params, "export", ExportConfig)
        gates = section(params, "gates", GatesConfig)
        paths = ExportPaths(models_dir=args.models_dir, eval_dir=args.eval_dir, index_dir=args.index_dir,
                            split_dir=args.split, bundles_dir=args.bundles, dvc_lock=args.dvc_lock)
        try:
            out = run(cfg, gates, paths, params)
        except GateFailed as exc:
            print(f"export: candidate {cfg.candidate} NOT promoted.\n{exc}", file=sys.stderr)
            raise SystemExit(1) from None
        if out["initial_champion"]:
            print(f"export: no champion yet; baseline bundle {out['initial_champion']} is the first champion")
        print(GateResult(**{**out["gate"], "rules": []}).describe().splitlines()[0])
        for r in out["gate"]["rules"]:
            print(f"  {r['rule']}: candidate {r['candidate']:.4f}, reference {r['reference']:.4f}")
        print(f"export: {out['candidate']} promoted to champion; A/B {out['ab']['control']['bundle']} (control) "
              f"vs {out['ab']['treatment']['bundle']} (treatment, {out['ab']['treatment_share']:.0%}) "
              f"-> {args.bundles}")

    cli_main(body)


if __name__ == "__main__":
    main()
