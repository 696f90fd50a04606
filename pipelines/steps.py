"""What each KFP component does, as plain functions: params in as JSON strings, artifact paths in and out.

The decorated bodies in :mod:`pipelines.components` only call these, so every line of glue between KFP and
``components.<step>.run`` is importable and unit-tested here (tests/pipelines/test_steps.py), and the step cores
stay the exact functions DVC runs. Each function:

- loads its section strictly with the step's own dataclass (``components.config.from_dict``: a typo or a wrong
  type is a ``ParamsError`` naming ``section.key``),
- calls the step's ``run`` with the artifact paths (each directory artifact's path *is* the step's ``out_dir``),
- returns the numbers to log as KFP ``Metrics`` (see :func:`log_metrics`).

Models, evaluations and indexes produced inside the ``ParallelFor`` carry their variant name in the artifact
metadata (``variant``); the fan-in steps (report, gate) find the candidate and the baseline by it.
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
                 index: str, export: str, gates: str) -> list[str]:
    """Load every section strictly; return one JSON spec ``{"variant", "model"}`` per model in ``train.models``.

    Runs before any work, so a typo in any section fails the run in seconds, naming the key. Also checks what
    only the pipeline needs: the export candidate and baseline must be among the trained models (the gate
    finds them among the ParallelFor's outputs).
    """
    _seed(seed)
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
    for role in ("candidate", "baseline"):
        name = getattr(exp, role)
        if name not in cfg.models:
            raise ParamsError(f"export.{role}: {name!r} is not trained by this run (train.models: {cfg.models})")
    return specs


# ------------------------------------------------------------------------------------------------- steps
def ingest(section: str, out_dir: str, *, seed: int) -> dict:
    """components.ingest.run into ``out_dir`` (the Dataset artifact)."""
    from components import ingest as step

    return step.run(load_section("ingest", section), Path(out_dir), seed=_seed(seed))


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


# ------------------------------------------------------------------------------------------ gate and export
ROLES = ("candidate", "baseline")
LAYOUT = {"models": "models", "evaluations": "eval", "indexes": "index"}  # fan-in -> folder (as artifacts/)


def gate(export: str, gates: str, models: Sequence[tuple[str, Mapping[str, Any]]],
         evaluations: Sequence[tuple[str, Mapping[str, Any]]], indexes: Sequence[tuple[str, Mapping[str, Any]]],
         out_dir: str, verdict_path: str, metrics=None) -> bool:
    """The quality gate of the run, with ``components.gates.check`` (the rule ``components.export`` applies).

    In a KFP run the bundle store starts empty, so - exactly as ``components.export.run`` does on a first run -
    the baseline is the champion the candidate is compared with. Lays the candidate's and the baseline's model,
    evaluation and index out in ``out_dir`` as ``models/<variant>``, ``eval/<variant>``, ``index/<variant>``
    (the folders ``components.export`` reads), writes the verdict (Markdown) and returns whether it passed.
    """
    from components import gates as rules_mod
    from components.io import atomic_dir

    exp = load_section("export", export)
    rules = load_section("gates", gates)
    found = {kind: by_variant(arts, kind) for kind, arts in
             (("models", models), ("evaluations", evaluations), ("indexes", indexes))}
    names = {role: getattr(exp, role) for role in ROLES}
    for kind, paths in found.items():
        for role, name in names.items():
            if name not in paths:
                raise ParamsError(f"export.{role}: no {kind[:-1]} for {name!r} among this run's "
                                  f"({', '.join(sorted(paths)) or 'none'})")
    with atomic_dir(out_dir) as tmp:
        for kind, folder in LAYOUT.items():
            for name in sorted(set(names.values())):
                shutil.copytree(found[kind][name], tmp / folder / name)
    evals = Path(out_dir) / LAYOUT["evaluations"]
    candidate = json.loads((evals / names["candidate"] / "metrics.json").read_text())
    champion = json.loads((evals / names["baseline"] / "metrics.json").read_text())
    result = rules_mod.check(rules, candidate, champion, candidate_name=names["candidate"],
                             champion_name=names["baseline"])
    write_verdict(result, verdict_path)
    if metrics is not None:
        log_metrics(metrics, gate_figures(result))
    return bool(result.passed)


def gate_figures(result) -> dict[str, float]:
    """The gate's numbers for the KFP UI: passed (1/0), and per rule the candidate's value and the threshold."""
    out: dict[str, float] = {"passed": float(result.passed)}
    for r in result.rules:
        out[f"{r.rule}.candidate"] = r.candidate
        out[f"{r.rule}.threshold"] = r.threshold
        out[f"{r.rule}.passed"] = float(r.passed)
    return out


def write_verdict(result, path: str) -> None:
    """The gate's decision as Markdown (shown in the KFP UI): every rule with both figures side by side."""
    head = "PASSED: the candidate is exported" if result.passed else "BLOCKED: no bundle is promoted"
    lines = [f"# Quality gate {head}", "", f"candidate **{result.candidate}** vs champion **{result.champion}** "
             "(in a pipeline run the baseline trained alongside is the champion)", "",
             "| rule | candidate | reference | must reach | result |", "|---|---:|---:|---:|---|"]
    for r in result.rules:
        lines.append(f"| {r.rule} | {r.candidate:.4f} | {r.reference:.4f} | {r.threshold:.4f} | "
                     f"{'pass' if r.passed else '**FAIL**'} |")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")


def export(export: str, gates: str, models: str, evaluate: str, index: str, split_dir: str, candidate_dir: str,
           out_dir: str, *, metadata: MutableMapping[str, Any]) -> dict:
    """components.export.run on the gate's layout; the bundle store is ``out_dir`` (the Model artifact).

    Runs only under the passed gate; ``components.export.run`` applies the same gate again (it raises
    ``GateFailed`` on a disagreement, which would fail the task rather than promote). ``out_dir`` ends up
    holding the baseline's bundle (initial champion), the candidate's bundle, the ``champion`` pointer (the
    candidate), ``ab.json`` and ``gate.json``.
    """
    from components import export as step

    exp = load_section("export", export)
    layout = Path(candidate_dir)
    paths = step.ExportPaths(models_dir=layout / LAYOUT["models"], eval_dir=layout / LAYOUT["evaluations"],
                             index_dir=layout / LAYOUT["indexes"], split_dir=Path(split_dir),
                             bundles_dir=Path(out_dir))
    params = {name: _decode(name, text) for name, text in
              (("models", models), ("evaluate", evaluate), ("index", index), ("export", export), ("gates", gates))}
    out = step.run(exp, load_section("gates", gates), paths, params)
    metadata[VARIANT_KEY] = exp.candidate
    metadata["champion"] = out["champion"]
    return out


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
