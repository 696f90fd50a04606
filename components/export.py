"""export: bundle this run's candidate, gate it against the production model, write the verdict and A/B spec.

Layout::

    artifacts/bundles/<model>-<hash12>/   one self-contained, content-addressed serving bundle (components.bundle);
                                          the same weights and config give the same name, so a re-export is a
                                          no-op; bundles accumulate (persisted DVC output, pushed to the remote)
    artifacts/export/verdict.json         the gate's decision for CI: both models' figures, the tests, promote
    artifacts/export/verdict.md           the same for humans and the KFP UI
    artifacts/export/ab.json              the A/B spec when the candidate was approved over a prod model:
                                          control = prod, treatment = the candidate (else ``active: false``)

Flow: the candidate (``export.candidate``, which must be among this run's ``train.models``) is bundled. The
current production model is resolved from the registry (:mod:`components.registry`, GTO): never a model trained
in the same run. Both bundles are evaluated now, on the current split's test users, through the serving path, and
:func:`components.gates.decide` applies the floors, the paired test against the baseline trained in this run
(``gates.baseline``, e.g. MostPopular on the same users) and the paired test against prod. With no prod yet, the
first candidate passing the floors and the baseline is approved. If the candidate's bundle *is* prod (same content
hash), nothing is promoted.

Promotion itself: in the project repository it is a step after ``git commit`` (``python -m components.registry
promote`` registers the commit whose dvc.lock records the bundle and assigns ``prod``); with ``--registry PATH``
(a registry location, as in a Kubeflow run) an approved bundle is published there and assigned ``prod`` at once.
The CLI exits 0 whatever the verdict (the run did its job; the verdict says no), or 1 with ``--fail-if-blocked``.

Data version: the DVC md5 of the split from ``dvc.lock`` (the folder's hash, or a hash of its files' recorded md5s
when they still match the files), else a sha256 over the split folder's files.
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

from components.config import ParamsError, load_params, section
from components.evaluate import read_seed
from components.gates import Evidence, GatesConfig, decide, load_evidence
from components.io import DataError, atomic_dir, atomic_path, cli_main, file_digest, read_json, write_json
from components.registry import Registry, RegistryError
from components.report import run_models

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
    """model variant proposed for promotion; must be among this run's train.models."""
    ab: ABConfig = field(default_factory=ABConfig)
    """A/B experiment settings."""

    def __post_init__(self) -> None:
        if not self.candidate:
            raise ValueError("candidate must name a model variant")


class ExportPaths:
    """Where export reads and writes (all CLI arguments)."""

    def __init__(self, *, models_dir: Path, eval_dir: Path, index_dir: Path, split_dir: Path, bundles_dir: Path,
                 dvc_lock: Path | None = None):
        self.models_dir, self.eval_dir, self.index_dir = Path(models_dir), Path(eval_dir), Path(index_dir)
        self.split_dir, self.bundles_dir = Path(split_dir), Path(bundles_dir)
        self.dvc_lock = Path(dvc_lock) if dvc_lock is not None else None


#: the keys of build_index's index.json a bundle keeps: what the served index is and how it is searched
INDEX_SETTINGS = ("factory", "factory_requested", "auto_fallback", "nprobe", "ef_search", "dim", "num_items")

# ----------------------------------------------------------------------------------------------- helpers
sha256_file = file_digest  # the bundle's file hashes (sha256, the default)


def _display_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies inside it (``.`` for the directory itself)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        return str(p)


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
    from components.evaluate import item_table, load_catalogue, model_label
    from components.io import apply_umask, replace_dir
    from models import arch_of, load_model

    model_path = paths.models_dir / variant / "model.pt"
    model, extra = load_model(model_path, with_extra=True)
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
            _, _, info = load_index(index_dir)  # validates index and id map agree
            for name in ("index.faiss", "item_ids.npy"):
                shutil.copyfile(index_dir / name, tmp / name)  # copyfile: new files get the umask's mode
            # only the settings that shape the answers: build_index's measurements (build time, queries/s) vary
            # run to run and would give the same weights another bundle id
            write_json(tmp / "index.json", {k: info[k] for k in INDEX_SETTINGS if k in info})
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
        for name in B.BUNDLE_FILES:
            apply_umask(tmp / name)  # some writers (safetensors) create files 0600 whatever the umask
        files, sizes = B.describe_files(tmp)
        manifest = {
            "format": B.FORMAT, "name": final.name, **ident,
            # the display name ("MIND+HN": trained with harder negatives); not hashed: it follows from
            # the training record, and a bundle's identity stays what defines the served answers
            "label": model_label(model, extra),
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


def evaluate_bundle(bundle_dir: Path, split_dir: Path, topn: list[int]):
    """Per-user test metrics of a bundle on the current split, through the serving path.

    Recommended original ids are mapped onto the split's item indices (ids the split lacks count as misses), so a
    bundle trained on an older split is measured on exactly the current test users.

    Returns:
        a DataFrame: ``user_id`` (str) and one column per metric (``recall@50``, ``ndcg@50``, ...), one row per
        test user.
    """
    import pandas as pd

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
    return pd.DataFrame({"user_id": users.user_id.astype(str), **per_user})


# ---------------------------------------------------------------------------------------------------- run
def run(cfg: ExportConfig, gates: GatesConfig, paths: ExportPaths, params: dict[str, Any], *,
        registry: Registry, out_dir: Path, publish: bool = False) -> dict[str, Any]:
    """Bundle the candidate, gate it against prod and the baseline, write the verdict (and A/B spec).

    Args:
        registry: where the current production model is resolved (components.registry).
        out_dir: receives ``verdict.json`` (CI), ``verdict.md`` (humans, the KFP UI) and ``ab.json``.
        publish: registry location (KFP): publish the approved bundle and assign it prod now. In the project
            repository promotion is ``python -m components.registry promote`` after the run is committed.
    Returns:
        the verdict dict (also in ``verdict.json``).
    Raises:
        ParamsError: the candidate or the baseline is not among this run's ``train.models``.
    """
    from components.serving import ABSpec

    models = run_models(params)
    seed = read_seed(params)
    if cfg.candidate not in models:
        raise ParamsError(f"export.candidate: {cfg.candidate!r} is not trained in this run (train.models = "
                          f"{models}); the gate and export use only this run's models")
    gates.require_models(models)
    baseline_model = gates.baseline.model if gates.baseline is not None else None
    version = data_version(paths.split_dir, paths.dvc_lock)
    exclude_history = bool((params.get("evaluate") or {}).get("exclude_history", True))
    cand_metrics = read_json(paths.eval_dir / cfg.candidate / "metrics.json")
    cand_bundle = build_bundle(cfg.candidate, paths, params, cand_metrics, {}, version,
                               exclude_history=exclude_history)
    topn = sorted({int(k.split("@")[1]) for k in cand_metrics if k.startswith("test.recall@") and "_ci" not in k}
                  or {50})
    prod_version = registry.prod()
    prod_dir = registry.bundle_path(prod_version) if prod_version is not None else None
    if prod_version is not None and prod_version.bundle == cand_bundle.name:
        verdict = {"promote": False, "reasons": [f"the candidate {cand_bundle.name} is already {registry.stage} "
                                                 f"({registry.artifact}@{prod_version.version}): nothing to promote"],
                   "rules": []}
        md = f"# Gate verdict\n\n**Not promoted**: {verdict['reasons'][0]}.\n"
    else:
        # both models measured now, on the current test users, through the same serving code
        def measured(name: str, bundle_dir: Path) -> Evidence:
            return Evidence(name, evaluate_bundle(bundle_dir, paths.split_dir, topn),
                            source=f"{bundle_dir} on the test users of {paths.split_dir}")

        candidate = measured(cand_bundle.name, cand_bundle)
        prod = measured(prod_version.bundle, prod_dir) if prod_version is not None else None
        baseline = None
        if baseline_model is not None:
            b = paths.eval_dir / baseline_model
            baseline = load_evidence(baseline_model, b / "per_user.parquet", b / "metrics.json")
        v = decide(gates, candidate, prod, baseline, seed=seed)
        verdict, md = v.to_dict(), v.to_markdown()
    cand_manifest = read_json(cand_bundle / "manifest.json")
    verdict["export"] = {
        "candidate_model": cfg.candidate, "candidate_bundle": cand_bundle.name,
        "content_hash": cand_manifest.get("content_hash"),
        "prod_version": prod_version.version if prod_version else None,
        "prod_bundle": prod_version.bundle if prod_version else None,
        "baseline_model": baseline_model, "data_version": version, "models": models,
        # the project's own registry as "." (the verdict is committed: no machine's checkout path in it)
        "registry": _display_path(registry.repo), "stage": registry.stage,
    }
    treatment = {"bundle": cand_bundle.name, "model": cfg.candidate, "content_hash": cand_manifest.get("content_hash")}
    ab: dict[str, Any] = {"active": False, "reason": "no A/B test: the candidate was not approved"
                          if prod_version is not None else "no A/B test: there is no production model yet"}
    if verdict["promote"] and prod_version is not None:
        prod_manifest = read_json(prod_dir / "manifest.json")
        spec = ABSpec(salt=cfg.ab.salt, num_buckets=cfg.ab.num_buckets, treatment_share=cfg.ab.treatment_share,
                      control={"bundle": prod_version.bundle, "model": prod_manifest.get("model"),
                               "content_hash": prod_manifest.get("content_hash")},
                      treatment=treatment)
        ab = {"active": True, **spec.to_dict(), "data_version": version}
    promoted = None
    if publish and verdict["promote"]:
        promoted = registry.assign(registry.publish(cand_bundle))
        verdict["registered"] = {"version": promoted.version, "bundle": promoted.bundle, "stage": registry.stage}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "ab.json", ab)
    with atomic_path(out_dir / "verdict.md") as tmp:
        tmp.write_text(md)
    write_json(out_dir / "verdict.json", verdict)
    return verdict


# ---------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> None:
    import sys

    parser = argparse.ArgumentParser(prog="python -m components.export",
                                     description="Bundle the candidate, gate it against the registry's prod model "
                                                 "and the baseline (paired per-user test), write the verdict and "
                                                 "the A/B spec. Exit 0 whatever the verdict (it is in verdict.json; "
                                                 "--fail-if-blocked makes a blocked candidate exit 1).")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--models-dir", type=Path, default=Path("artifacts/models"))
    parser.add_argument("--eval-dir", type=Path, default=Path("artifacts/eval"))
    parser.add_argument("--index-dir", type=Path, default=Path("artifacts/index"))
    parser.add_argument("--split", type=Path, default=Path("data/split"))
    parser.add_argument("--bundles", type=Path, default=Path("artifacts/bundles"))
    parser.add_argument("--out", type=Path, default=Path("artifacts/export"))
    parser.add_argument("--registry", default=None,
                        help="a registry location (folder): resolve prod there and publish an approved bundle to it; "
                             "default: this project's git repository (promote after commit)")
    parser.add_argument("--fail-if-blocked", action="store_true", help="exit 1 when the gate blocks the candidate")
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
            if args.registry:
                registry = Registry.location(args.registry)
            else:
                registry = Registry.project(".", bundles_dir=args.bundles)
            verdict = run(cfg, gates, paths, params, registry=registry, out_dir=args.out,
                          publish=bool(args.registry))
        except RegistryError as exc:
            raise DataError(str(exc)) from None
        cand = verdict["export"]["candidate_bundle"]
        prod = verdict["export"]["prod_bundle"] or "(none)"
        if verdict["promote"]:
            where = (f"registered {verdict['registered']['version']} and assigned prod" if "registered" in verdict
                     else "commit the run, then `python -m components.registry promote`")
            print(f"export: {cand} APPROVED over prod {prod}: {where}")
        else:
            print(f"export: {cand} NOT approved (prod stays {prod}):", file=sys.stderr)
        for reason in verdict.get("reasons") or []:
            print(f"  {reason}", file=sys.stderr if not verdict["promote"] else sys.stdout)
        print(f"export: verdict -> {args.out / 'verdict.md'}, {args.out / 'verdict.json'}")
        if args.fail_if_blocked and not verdict["promote"]:
            raise SystemExit(1)

    cli_main(body)


if __name__ == "__main__":
    main()
