"""The one Kubeflow Pipelines (v2) definition of the product: the same steps ``dvc repro`` runs, as a KFP DAG.

::

    check_params -> ingest -> validate -> split -> ParallelFor(model in train.models):
                    (input_uri)                        train -> evaluate
                                                             -> build_index
                    report(all evaluations)      gate_export(candidate vs the registry's prod) -> registry_uri

- ``check_params`` loads every section with the steps' own strict dataclasses before any work starts, and turns
  ``train.models`` into one spec per model, which the ``ParallelFor`` fans out over (one train task per model,
  in parallel; ``kfp.parallelism`` bounds it).
- ``ingest`` reads ``input_uri`` when it is non-empty (a folder path the pod sees: on a cluster a PVC mounted
  with ``kfp.volumes``), else ``ingest.path``.
- ``split`` runs only after ``validate`` succeeded: a failed expectation fails the run and nothing downstream runs.
- ``gate_export`` is the TFX resolver + evaluator + pusher in one task: it resolves the current production model
  from the registry location ``registry_uri`` (a git repository with GTO tags and ``bundles/``, created by the
  first run; :mod:`components.registry`), never from this run's models, and calls ``components.export.run``
  with ``publish=True``: the candidate is compared with prod (and with ``gates.baseline.model`` trained in this
  run) by paired per-user tests and, if approved, its bundle is published to the location and assigned
  ``prod``. The verdict is a Markdown artifact and Metrics; the promoted bundle a Model artifact (left empty
  when blocked). The run succeeds whatever the verdict, like TFX's Pusher skipped by an unblessed model.
  Nothing depends on a previous run's local files: the registry location is the only state shared by runs.

Parameters mirror ``params.yaml`` (see :mod:`pipelines.settings`): ``seed`` and one JSON string per section, with
the values at compile time as defaults, plus ``registry_uri`` (required: a folder path, on a cluster a PVC mount
such as ``/mnt/registry``) and ``input_uri`` (default ``""``: read ``ingest.path``). Compile-time settings: the
image, the ``kfp`` section (resources, retries, parallelism, the PVCs mounted into ingest and gate_export) and
the train task's accelerators from ``train.accelerator``/``devices``.

Retries go to steps that are pure functions of their inputs and write only their own outputs (ingest, split,
train, evaluate, build_index): a retry after a lost node or an OOM-killed pod is safe. ``validate`` is not
retried (its failures are verdicts, not accidents), nor ``gate_export``, which writes to the shared registry
(one attempt; a rerun of the whole pipeline is cheap with caching). Caching is on for every task but
``gate_export`` (the KFP default, set explicitly here): its answer depends on the registry's current prod, which
is not among its inputs, so a cached verdict could be stale. Caching can be switched off per run
(``pipelines.submit --no-cache``; ``pipelines.run_local`` caches only with ``--cache``).

No ``from __future__ import annotations`` here: KFP reads the pipeline function's annotations as types.
"""
from typing import Any, Mapping, Optional

from kfp import dsl

from components.config import ParamsError
from pipelines.components import make_components
from pipelines.settings import (GPU_ACCELERATORS, VOLUME_STEPS, KfpConfig, kfp_config, pipeline_arguments,
                                resolve_image)

PIPELINE_NAME = "multi-interest-retrieval"
DESCRIPTION = ("Multi-interest candidate retrieval (MIND, ComiRec, UMI): ingest, validate (Great Expectations), "
               "split, train per model (Lightning), evaluate, faiss index, gate against the registry's prod model "
               "and publish the approved bundle to it.")

#: Steps that are safe to retry (pure functions of their inputs, writing only their own outputs).
RETRIED = ("ingest", "split", "train", "evaluate", "build_index")


def train_accelerators(train: Mapping[str, Any]) -> int:
    """How many accelerators the train pod requests: ``train.devices`` when ``train.accelerator`` is a GPU, else 0.

    Raises ParamsError for settings one KFP pod cannot honour: several nodes (use the PyTorchJob template in
    ``infra/k8s``), or a GPU with a non-integer ``devices`` (Kubernetes needs a count).
    """
    num_nodes = train.get("num_nodes", 1)
    if num_nodes != 1:
        raise ParamsError(
            f"train.num_nodes: {num_nodes!r}: a KFP task runs in one pod; train on several nodes with the PyTorchJob "
            "template in infra/k8s (docs/RUNNING.md), or set num_nodes: 1 to compile the pipeline")
    if str(train.get("accelerator", "cpu")).lower() not in GPU_ACCELERATORS:
        return 0
    devices = train.get("devices", 1)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ParamsError(f"train.devices: {devices!r}: the train pod requests a number of GPUs; set an integer >= 1")
    return devices


#: Steps never cached: their result depends on state outside their inputs (the registry's current prod).
UNCACHED = ("gate_export",)


def _configure(task: dsl.PipelineTask, step: str, cfg: KfpConfig) -> dsl.PipelineTask:
    res = cfg.resources_for(step)
    task.set_cpu_request(res.cpu_request).set_cpu_limit(res.cpu_limit)
    task.set_memory_request(res.memory_request).set_memory_limit(res.memory_limit)
    task.set_caching_options(step not in UNCACHED)
    if step in RETRIED and cfg.retries:
        task.set_retry(num_retries=cfg.retries, backoff_duration="30s", backoff_factor=2.0)
    if step in VOLUME_STEPS and cfg.volumes:
        task.platform_config["kubernetes"] = cfg.kubernetes_config()
    return task


def build_pipeline(params: Mapping[str, Any], *, image: Optional[str] = None):
    """The ``@dsl.pipeline`` for ``params`` (a loaded params.yaml): defaults and compile-time settings from it."""
    cfg = kfp_config(params)
    defaults = pipeline_arguments(params)
    gpus = train_accelerators(params["train"])
    c = make_components(resolve_image(image))

    @dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)
    def multi_interest_retrieval(
        registry_uri: str,
        seed: int = defaults["seed"],
        ingest: str = defaults["ingest"],
        validate: str = defaults["validate"],
        split: str = defaults["split"],
        models: str = defaults["models"],
        train: str = defaults["train"],
        evaluate: str = defaults["evaluate"],
        index: str = defaults["index"],
        export: str = defaults["export"],
        gates: str = defaults["gates"],
        input_uri: str = "",
    ):
        plan = _configure(c.check_params(seed=seed, ingest=ingest, validate=validate, split=split, models=models,
                                         train=train, evaluate=evaluate, index=index, export=export, gates=gates,
                                         registry_uri=registry_uri, input_uri=input_uri),
                          "check_params", cfg)
        ingested = _configure(c.ingest(ingest=ingest, seed=seed, input_uri=input_uri), "ingest", cfg).after(plan)
        validated = _configure(c.validate(validate=validate, data=ingested.outputs["data"]), "validate", cfg)
        splitted = _configure(c.split(split=split, seed=seed, data=ingested.outputs["data"]), "split", cfg)
        splitted.after(validated)
        split_data = splitted.outputs["split_data"]

        with dsl.ParallelFor(plan.output, parallelism=cfg.parallelism) as spec:
            trained = _configure(c.train(train=train, spec=spec, seed=seed, split_data=split_data), "train", cfg)
            if gpus:
                trained.set_accelerator_type(cfg.accelerator_type).set_accelerator_limit(gpus)
            evaluated = _configure(c.evaluate(evaluate=evaluate, train=train, seed=seed, split_data=split_data,
                                              model=trained.outputs["model"]), "evaluate", cfg)
            indexed = _configure(c.build_index(index=index, split_data=split_data, model=trained.outputs["model"]),
                                 "build_index", cfg)

        _configure(c.report(evaluations=dsl.Collected(evaluated.outputs["evaluation"])), "report", cfg)
        _configure(c.gate_export(export=export, gates=gates, models=models, train=train, evaluate=evaluate,
                                 index=index, seed=seed, registry_uri=registry_uri, split_data=split_data,
                                 trained=dsl.Collected(trained.outputs["model"]),
                                 evaluations=dsl.Collected(evaluated.outputs["evaluation"]),
                                 indexes=dsl.Collected(indexed.outputs["faiss_index"])), "gate_export", cfg)

    return multi_interest_retrieval
