"""The KFP components: one thin wrapper per pipeline step around the same ``components.<step>.run`` DVC calls.

Each body is two lines: import :mod:`pipelines.steps` (at run time, inside the body, because KFP ships only the
function's source; the project is installed in the image) and hand it the artifact paths. All logic - loading
params strictly, calling ``run``, laying files out, flattening metrics - lives in :mod:`pipelines.steps`, where
it is unit-tested; none of it is in a decorated body.

The functions here are left undecorated: :func:`make_components` applies ``dsl.component`` with the image chosen
at compile time (``--image`` / ``$MIR_IMAGE``). ``install_kfp_package=False``: the image already contains the
pinned kfp (it installs ``requirements.lock``), so no step runs ``pip install`` at start-up - which also keeps
``kfp.local`` runs offline. This module must not use ``from __future__ import annotations``: KFP reads the
annotations (``Input[Dataset]``, ``Output[Metrics]``, ...) as objects to type each input and output.

Artifacts are typed for the KFP UI: ``Dataset`` for the canonical tables and the split, ``Model`` for trained
models and the promoted bundle, ``Metrics`` (values logged, so the UI tabulates and compares them) per step,
``HTML`` for the Great Expectations Data Docs page, ``Markdown`` for the evaluation report and the gate verdict.
Directory artifacts of no special kind (the full evaluation output, a faiss index, the verdict's JSON files)
are ``Artifact``.
"""
from types import SimpleNamespace
from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output


def check_params(seed: int, ingest: str, validate: str, split: str, models: str, train: str, evaluate: str,
                 index: str, export: str, gates: str, registry_uri: str, input_uri: str) -> List[str]:
    """Load every section strictly (fail before any work on a params typo); one JSON spec per model to train."""
    from pipelines import steps
    return steps.check_params(seed=seed, ingest=ingest, validate=validate, split=split, models=models,
                              train=train, evaluate=evaluate, index=index, export=export, gates=gates,
                              registry_uri=registry_uri, input_uri=input_uri)


def ingest(ingest: str, seed: int, input_uri: str, data: Output[Dataset], metrics: Output[Metrics]):
    """components.ingest.run: the canonical tables from the configured source (read from input_uri if set)."""
    from pipelines import steps
    steps.log_metrics(metrics, steps.ingest(ingest, data.path, seed=seed, input_uri=input_uri))


def validate(validate: str, data: Input[Dataset], result: Output[Artifact], data_docs: Output[HTML],
             metrics: Output[Metrics]):
    """components.validate.run: Great Expectations suite; fails the run (nothing downstream) when it fails."""
    from pipelines import steps
    steps.log_metrics(metrics, steps.validate(validate, data.path, result.path, data_docs.path))


def split(split: str, seed: int, data: Input[Dataset], split_data: Output[Dataset], metrics: Output[Metrics]):
    """components.split.run: k-core filter, index maps, users split train/valid/test."""
    from pipelines import steps
    steps.log_metrics(metrics, steps.split(split, data.path, split_data.path, seed=seed))


def train(train: str, spec: str, seed: int, split_data: Input[Dataset], model: Output[Model],
          metrics: Output[Metrics]):
    """components.train.run for one model variant (one task per variant, in parallel)."""
    from pipelines import steps
    steps.log_metrics(metrics, steps.train(train, spec, split_data.path, model.path, seed=seed,
                                           metadata=model.metadata))


def evaluate(evaluate: str, train: str, seed: int, split_data: Input[Dataset], model: Input[Model],
             evaluation: Output[Artifact], metrics: Output[Metrics]):
    """components.evaluate.run for one trained model: metrics.json, per-user values, plots."""
    from pipelines import steps
    steps.log_metrics(metrics, steps.evaluate(evaluate, train, split_data.path, model.path, model.metadata,
                                              evaluation.path, seed=seed, metadata=evaluation.metadata))


def build_index(index: str, split_data: Input[Dataset], model: Input[Model], faiss_index: Output[Artifact],
                metrics: Output[Metrics]):
    """components.build_index.run: the faiss index over one model's item embeddings."""
    from pipelines import steps
    steps.log_metrics(metrics, steps.build_index(index, model.path, model.metadata, split_data.path,
                                                 faiss_index.path, metadata=faiss_index.metadata))


def report(evaluations: Input[List[Artifact]], report: Output[Markdown]):
    """components.evaluate.report: every trained model side by side."""
    from pipelines import steps
    steps.report([(e.path, e.metadata) for e in evaluations], report.path)


def gate_export(export: str, gates: str, models: str, train: str, evaluate: str, index: str, seed: int,
                registry_uri: str, split_data: Input[Dataset], trained: Input[List[Model]],
                evaluations: Input[List[Artifact]], indexes: Input[List[Artifact]], result: Output[Artifact],
                verdict: Output[Markdown], bundle: Output[Model], metrics: Output[Metrics]) -> bool:
    """components.export.run against the registry at registry_uri: gate vs prod, publish + assign if approved."""
    from pipelines import steps
    return steps.gate_export(export=export, gates=gates, models=models, train=train, evaluate=evaluate,
                             index=index, seed=seed, registry_uri=registry_uri, split_dir=split_data.path,
                             trained=[(m.path, m.metadata) for m in trained],
                             evaluations=[(e.path, e.metadata) for e in evaluations],
                             indexes=[(i.path, i.metadata) for i in indexes], result_dir=result.path,
                             verdict_path=verdict.path, bundle_dir=bundle.path, metrics=metrics,
                             bundle_metadata=bundle.metadata)


_STEPS = (check_params, ingest, validate, split, train, evaluate, build_index, report, gate_export)


def make_components(image: str) -> SimpleNamespace:
    """Every step as a KFP component running in ``image`` (explicit ``base_image``, no pip install)."""
    return SimpleNamespace(**{
        fn.__name__: dsl.component(fn, base_image=image, install_kfp_package=False) for fn in _STEPS})
