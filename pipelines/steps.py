"""What each KFP component does, as plain functions: params in as JSON strings, artifact paths in and out.

The decorated bodies in :mod:`pipelines.components` only call these, so every line of glue between KFP and
``components.<step>.run`` is importable and unit-tested here (tests/pipelines/test_steps.py), and the step cores
stay the exact functions DVC runs. Each function:

- loads its section strictly with the step's own dataclass (``components.config.from_dict``: a typo or a wrong
  type is a ``ParamsError`` naming ``section.key``),
- calls the step's ``run`` with the artifact paths (each directory artifact's path *is* the step's ``out_dir``),
- returns the numbers to log as KFP ``Metrics`` (see :func:`log_metrics`).

Models, evaluations and indexes produced inside the ``ParallelFor`` carry their variant name in the artifact
metadata (``variant``); the fan-in steps (report, gate_export) find the candidate and the baseline by it.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, MutableMapping, Sequence

from components.config import ParamsError, from_dict

VARIANT_KEY = "variant"

# (module, config class) of each params section that maps onto one dataclass
_SECTION_CLASSES = {
    "ingest": ("components.ingest", "IngestConfig"),
    "validate": ("components.validate", "ValidateConfig"),
    "split": ("components.split", "SplitConfig"),
    "train": ("components.train", "TrainConfig"),
    "evaluate": ("components.evaluate", "EvaluateConfig"),
    "index": ("components.build_index", "IndexConfig"),
    "export": ("components.export", "ExportConfig"),
    "gates": ("components.gates", "GatesConfig"),
}


def _decode(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise ParamsError(f"{name}: pipeline parameter is not valid JSON ({exc})") from None


def load_section(name: str, text: str):
    """The ``name`` section (a JSON string pipeline parameter) as its step's frozen config dataclass."""
    import importlib

    module, cls = _SECTION_CLASSES[name]
    return from_dict(getattr(importlib.import_module(module), cls), _decode(name, text), name)


def _seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ParamsError(f"seed: expected a non-negative integer, got {seed!r}")
    return seed


def _variant_model(name: str, entry: Any):
    from components.train import ModelConfig

    return ModelConfig.from_params({"models": {name: entry}}, name)


def _check_constructor(name: str, variant, cfg) -> None:
    """Build the variant on a dummy 3-item catalogue: an unknown or bad constructor argument fails here.

    The data-derived sizes (items, categories, profile fields) are unknown before split, so they are stubbed;
    everything from ``models.<name>`` is checked by the model's own constructor.
    """
    import models as M

    try:
        M.build_model(variant.arch, **variant.hparams, num_items=3, num_categories=2,
                      profile_cardinalities=[3, 3, 3], max_len=cfg.max_len)
    except ParamsError as exc:
        raise ParamsError(f"models.{name} (arch {variant.arch}): {exc}") from None


# ------------------------------------------------------------------------------------------- check_params
def check_params(*, seed: int, ingest: str, validate: str, split: str, models: str, train: str, evaluate: str,
                 index: str, export: str, gates: str, registry_uri: str | None = None,
                 input_uri: str = "") -> list[str]:
    """Load every section strictly; return one JSON spec ``{"variant", "model"}`` per model in ``train.models``.

    Runs before any work, so a typo in any section fails the run in seconds, naming the key. Also checks what
    only the pipeline needs: ``export.candidate`` and ``gates.baseline.model`` must be among the trained models
    (gate_export finds them among the ParallelFor's outputs), ``registry_uri`` (when given: the pipeline always
    gives it) must be a folder path, and ``input_uri`` a path the configured ``ingest.source`` reads.
    """
    _seed(seed)
    if registry_uri is not None:
        local_location(registry_uri, "registry_uri")
    sections = dict(ingest=ingest, validate=validate, split=split, train=train, evaluate=evaluate, index=index,
                    export=export, gates=gates)
    loaded = {name: load_section(name, text) for name, text in sections.items()}
    model_entries = _decode("models", models)
    if not isinstance(model_entries, dict):
        raise ParamsError(f"models: expected a mapping of variant -> settings, got {type(model_entries).__name__}")
    cfg = loaded["train"]
    if not cfg.models:
        raise ParamsError("train.models: the pipeline needs at least one model to train")
    specs = []
    for name in cfg.models:
        if name not in model_entries:
            raise ParamsError(f"train.models: {name!r} is not a key of models (known: {', '.join(model_entries)})")
        variant = _variant_model(name, model_entries[name])
        _check_constructor(name, variant, variant.train_config(cfg))  # also validates per-model overrides
        specs.append(json.dumps({VARIANT_KEY: name, "model": model_entries[name]}))
    exp = loaded["export"]
    if exp.candidate not in cfg.models:
        raise ParamsError(f"export.candidate: {exp.candidate!r} is not trained by this run "
                          f"(train.models: {cfg.models})")
    loaded["gates"].require_models(cfg.models)
    if input_uri:
        input_config(loaded["ingest"], input_uri)
    return specs


def input_config(cfg, input_uri: str):
    """``cfg`` (an IngestConfig) reading ``input_uri`` instead of ``ingest.path``; ``cfg`` when it is empty.

    ParamsError when the source reads no input file (``synthetic``) or the URI is an object-store URI.
    """
    import dataclasses

    if not input_uri:
        return cfg
    path = local_location(input_uri, "input_uri")
    if cfg.source == "synthetic":
        raise ParamsError(f"input_uri: {input_uri!r} given, but ingest.source is 'synthetic', which reads no "
                          "input; set ingest.source to the input's format (csv, parquet, movielens-100k, ...)")
    try:
        return dataclasses.replace(cfg, path=Path(path))
    except (TypeError, ValueError) as exc:
        raise ParamsError(f"input_uri: {exc}") from None


# ------------------------------------------------------------------------------------------------- steps
def ingest(section: str, out_dir: str, *, seed: int, input_uri: str = "") -> dict:
    """components.ingest.run into ``out_dir`` (the Dataset artifact).

    ``input_uri`` (the pipeline parameter), when non-empty, replaces ``ingest.path``: the run reads its input
    from there (a folder path: on a cluster a mounted PVC, e.g. ``/mnt/data/ratings.csv``), so nothing depends on
    files baked into the image or left by an earlier run.
    """
    from components import ingest as step

    cfg = input_config(load_section("ingest", section), input_uri)
    return step.run(cfg, Path(out_dir), seed=_seed(seed))


def validate(section: str, data_dir: str, out_dir: str, docs_html: str) -> dict:
    """components.validate.run into ``out_dir``; the Data Docs index page also goes to ``docs_html`` (HTML).

    A failed expectation raises ``ValidationFailed`` (after the report is written), which fails the task and
    so stops the run before ``split``: the log names each failed expectation with offending values.
    """
    from components import validate as step

    report = step.run(load_section("validate", section), Path(data_dir), Path(out_dir))
    page = Path(out_dir) / report["docs_index"]
    Path(docs_html).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(page, docs_html)
    return {"success": report["success"], **report.get("statistics", {})}


def split(section: str, data_dir: str, out_dir: str, *, seed: int) -> dict:
    """components.split.run from the canonical tables into ``out_dir`` (the split Dataset)."""
    from components import split as step

    return step.run(load_section("split", section), Path(data_dir), Path(out_dir), seed=_seed(seed))


def train(section: str, spec: str, split_dir: str, out_dir: str, *, seed: int,
          metadata: MutableMapping[str, Any]) -> dict:
    """components.train.run for the variant in ``spec`` (a ``check_params`` spec); tags ``metadata``."""
    from components import train as step

    cfg = load_section("train", section)
    parsed = _decode("spec", spec)
    name = parsed[VARIANT_KEY]
    summary = step.run(cfg, _variant_model(name, parsed["model"]), Path(split_dir), Path(out_dir),
                       seed=_seed(seed))
    metadata[VARIANT_KEY] = name
    return summary


def evaluate(section: str, train_section: str, split_dir: str, model_dir: str, model_metadata: Mapping[str, Any],
             out_dir: str, *, seed: int, metadata: MutableMapping[str, Any]) -> dict:
    """components.evaluate.run of one trained model, with the history length it was trained with."""
    from components import evaluate as step

    name = variant_of(model_dir, model_metadata)
    max_len = step.model_max_len({"train": _decode("train", train_section)}, name, Path(model_dir) / "model.pt")
    result = step.run(load_section("evaluate", section), Path(split_dir), Path(model_dir), Path(out_dir),
                      max_len=max_len, seed=_seed(seed))
    metadata[VARIANT_KEY] = name
    return result


def build_index(section: str, model_dir: str, model_metadata: Mapping[str, Any], split_dir: str, out_dir: str, *,
                metadata: MutableMapping[str, Any]) -> dict:
    """components.build_index.run for one trained model."""
    from components import build_index as step

    name = variant_of(model_dir, model_metadata)
    info = step.run(load_section("index", section), Path(model_dir), Path(split_dir), Path(out_dir))
    metadata[VARIANT_KEY] = name
    return info


def report(evaluations: Sequence[tuple[str, Mapping[str, Any]]], out_path: str) -> None:
    """components.evaluate.report over every evaluated variant (in the order the loop produced them)."""
    from components import evaluate as step

    step.report(by_variant(evaluations, "evaluation"), Path(out_path))


# ----------------------------------------------------------------------------------------- registry and gate
#: URI schemes a registry location or input could one day have; only folder paths work today (see
#: :func:`local_location`).
_REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "minio://", "http://", "https://", "oci://")
LAYOUT = {"models": "models", "evaluations": "eval", "indexes": "index"}  # fan-in -> folder (as artifacts/)


def local_location(uri: str, key: str) -> str:
    """``uri`` as a folder path (``file://`` stripped); ParamsError naming ``key`` for an object-store URI.

    On a cluster the path is a mounted volume (a PVC at e.g. ``/mnt/registry``: ``kfp.volumes``); reading and
    writing an object store directly is future work (docs/RUNNING.md).
    """
    if not isinstance(uri, str) or not uri.strip():
        raise ParamsError(f"{key}: expected a folder path (on a cluster a mounted PVC such as /mnt/registry), "
                          f"got {uri!r}")
    uri = uri.strip()
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if uri.lower().startswith(_REMOTE_SCHEMES):
        raise ParamsError(f"{key}: {uri!r}: object-store URIs are not supported yet; mount the bucket or a PVC "
                          "into the pods (params.yaml kfp.volumes) and pass the mounted folder path")
    return uri


def gate_export(*, export: str, gates: str, models: str, train: str, evaluate: str, index: str, seed: int,
                registry_uri: str, split_dir: str, trained: Sequence[tuple[str, Mapping[str, Any]]],
                evaluations: Sequence[tuple[str, Mapping[str, Any]]],
                indexes: Sequence[tuple[str, Mapping[str, Any]]], result_dir: str, verdict_path: str,
                bundle_dir: str, metrics=None, bundle_metadata: MutableMapping[str, Any] | None = None) -> bool:
    """The TFX resolver + evaluator + pusher of a run: :func:`components.export.run` against the registry.

    The production model is resolved from the registry location at ``registry_uri``
    (:meth:`components.registry.Registry.location`, created on first use), never from this run's models;
    ``components.export.run`` bundles this run's candidate, evaluates it and prod on the current test users
    through the serving path, decides (floors, paired test vs the run's baseline model, paired test vs prod) and,
    when approved, publishes the bundle to the location and assigns it ``prod`` (``publish=True``).

    The candidate's and the baseline's model, evaluation and index folders from the ParallelFor's fan-in are
    linked into a scratch folder as ``models/<variant>``, ``eval/<variant>``, ``index/<variant>`` (the layout
    ``components.export`` reads); the candidate's bundle is staged in that scratch folder too.

    Writes ``result_dir`` (verdict.json, verdict.md, ab.json), ``verdict_path`` (the Markdown verdict) and, when
    promoted, the published bundle's files into ``bundle_dir`` (the Model artifact; its metadata names the
    bundle, the registry version and location). A blocked candidate writes no bundle. The verdict never fails
    the task: a blocked candidate is a result, like TFX's Pusher skipped by an unblessed model.

    Returns:
        whether the candidate was promoted.
    """
    import tempfile

    from components import export as step
    from components.registry import Registry, RegistryError

    exp = load_section("export", export)
    rules = load_section("gates", gates)
    location = local_location(registry_uri, "registry_uri")
    params = {name: _decode(name, text) for name, text in
              (("models", models), ("train", train), ("evaluate", evaluate), ("index", index), ("export", export),
               ("gates", gates))}
    params["seed"] = _seed(seed)
    baseline = rules.baseline.model if rules.baseline is not None else None
    needed = sorted({exp.candidate, *([baseline] if baseline else [])})
    found = {kind: by_variant(arts, kind) for kind, arts in
             (("models", trained), ("evaluations", evaluations), ("indexes", indexes))}
    for kind, paths in found.items():
        for name in needed:
            if name not in paths:
                raise ParamsError(f"{_role(exp, rules, name)}: no {kind[:-1]} for {name!r} among this run's "
                                  f"({', '.join(sorted(paths)) or 'none'})")
    try:
        registry = Registry.location(location)
    except (RegistryError, OSError) as exc:
        raise ParamsError(f"registry_uri: cannot open the registry location {location!r}: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="gate-export-") as scratch:
        work = Path(scratch)
        for kind, folder in LAYOUT.items():
            (work / folder).mkdir()
            for name in needed:
                (work / folder / name).symlink_to(Path(found[kind][name]).resolve(), target_is_directory=True)
        paths = step.ExportPaths(models_dir=work / "models", eval_dir=work / "eval", index_dir=work / "index",
                                 split_dir=Path(split_dir), bundles_dir=work / "bundles")
        verdict = step.run(exp, rules, paths, params, registry=registry, out_dir=Path(result_dir), publish=True)
    promoted = bool(verdict["promote"])
    Path(verdict_path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(result_dir) / "verdict.md", verdict_path)
    prod = registry.prod()
    if promoted:
        shutil.copytree(registry.bundle_path(prod), bundle_dir, dirs_exist_ok=True)
    if bundle_metadata is not None:
        bundle_metadata.update({"promoted": promoted, "registry": str(location),
                                "candidate": candidate_bundle(verdict),
                                "prod_bundle": prod.bundle if prod else None,
                                "prod_version": prod.version if prod else None})
        if promoted:
            bundle_metadata[VARIANT_KEY] = exp.candidate
    if metrics is not None:
        log_metrics(metrics, verdict_figures(verdict))
    return promoted


def _role(exp, rules, name: str) -> str:
    return "export.candidate" if name == exp.candidate else "gates.baseline.model"


def candidate_bundle(verdict: Mapping[str, Any]) -> str | None:
    """The candidate's bundle name in a ``components.export`` verdict."""
    name = (verdict.get("export") or {}).get("candidate_bundle") or verdict.get("candidate")
    return name.get("bundle") if isinstance(name, Mapping) else name


def verdict_figures(verdict: Mapping[str, Any]) -> dict[str, float]:
    """The verdict's numbers for the KFP UI: ``promote`` (1/0), each model's means, and per rule its figures."""
    out: dict[str, float] = {"promote": float(bool(verdict.get("promote")))}
    roles = {name: role for name, role in ((verdict.get("baseline"), "baseline"), (verdict.get("prod"), "prod"),
                                           (candidate_bundle(verdict), "candidate")) if isinstance(name, str)}
    for name, figures in (verdict.get("figures") or {}).items():
        role = roles.get(name, name)
        for metric, value in figures.items():
            out[f"{role}.{metric}"] = value
    for rule in verdict.get("rules") or []:
        key = rule["kind"] if rule["kind"] != "floor" else f"floor {rule['metric']}"
        out[f"{key}.passed"] = float(rule["passed"])
        test = rule.get("test") or {}
        if test.get("difference") is not None:
            out[f"{key}.difference"] = test["difference"]
        if test.get("ci_low") is not None:
            out[f"{key}.ci_low"] = test["ci_low"]
        if test.get("p_value") is not None:
            out[f"{key}.p_value"] = test["p_value"]
    return flat_metrics(out)


# ------------------------------------------------------------------------------------------- fan-in helpers
def variant_of(path: str, metadata: Mapping[str, Any]) -> str:
    """The variant an artifact belongs to: its ``variant`` metadata, else a model folder's ``train.json``."""
    name = metadata.get(VARIANT_KEY) if metadata else None
    if not name:
        info = Path(path) / "train.json"
        if info.is_file():
            name = json.loads(info.read_text()).get(VARIANT_KEY)
    if not isinstance(name, str) or not name:
        raise ParamsError(f"{path}: artifact has no '{VARIANT_KEY}' metadata; cannot tell which model it is")
    return name


def by_variant(artifacts: Iterable[tuple[str, Mapping[str, Any]]], kind: str) -> dict[str, Path]:
    """``{variant: path}`` from ``(path, metadata)`` pairs of a fan-in; a variant seen twice is an error."""
    out: dict[str, Path] = {}
    for path, metadata in artifacts:
        name = variant_of(path, metadata)
        if name in out:
            raise ParamsError(f"{kind}: two artifacts for model {name!r} ({out[name]}, {path})")
        out[name] = Path(path)
    return out


# ------------------------------------------------------------------------------------------------ metrics
def flat_metrics(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a (nested) dict as ``{"a.b": float}``; strings, lists, None and non-finite dropped."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_metrics(value, f"{name}."))
        elif isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
            out[name] = float(value)
    return out


def log_metrics(metrics, values: Mapping[str, Any] | None) -> None:
    """Log every numeric leaf of ``values`` on a KFP ``Metrics`` artifact (shown and compared in the UI).

    KFP keeps logged values in the artifact's metadata and writes no file; the same values also go to the
    artifact's path as JSON, so the artifact exists in storage - ``kfp.local``'s cache treats an output whose
    file is missing as a miss, which would make every step with metrics re-run.
    """
    flat = flat_metrics(values or {})
    for name, value in flat.items():
        metrics.log_metric(name, value)
    path = Path(metrics.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(flat, indent=2, sort_keys=True) + "\n")
