"""What the Kubeflow pipeline takes from ``params.yaml``: its run-time parameters and its compile-time settings.

Run-time parameters mirror ``params.yaml`` one to one: ``seed`` (int) and one **JSON string** per section
(``ingest``, ``validate``, ``split``, ``models``, ``train``, ``evaluate``, ``index``, ``export``, ``gates``). The
compiled pipeline's defaults are these sections as they were at compile time, so the YAML and params cannot drift
(a test recompiles and diffs). JSON strings rather than KFP ``dict`` parameters because a ``dict`` default goes
through a protobuf ``Struct``: ``null`` is rejected at compile time and every integer comes back as a float, which
the strict params loader (rightly) refuses.

Compile-time settings live in the ``kfp`` section (:class:`KfpConfig`): Kubernetes resources, retries and the
accelerator resource name. Resource requests cannot change per run in KFP, so the keys of ``train`` that decide
them (``accelerator``, ``devices``, ``num_nodes``) are compile-time too: :func:`apply_overrides` refuses to
override them and says to recompile.

The image every component runs in is a compile-time setting as well: ``--image`` or ``$MIR_IMAGE``, else
:data:`DEFAULT_IMAGE`, a placeholder path to replace with your registry's.

``python -m pipelines.settings --params params.yaml --overrides FILE [--set KEY=VALUE] --out P`` writes a merged
params file: how the Kubernetes training job (infra/k8s) changes a few keys without a copy of params.yaml.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

from components.config import ParamsError, from_dict

#: params.yaml sections that become JSON-string pipeline parameters, in pipeline-signature order.
SECTIONS = ("ingest", "validate", "split", "models", "train", "evaluate", "index", "export", "gates")
#: Every pipeline parameter: the top-level seed plus the sections.
PARAMETERS = ("seed",) + SECTIONS

IMAGE_ENV = "MIR_IMAGE"
#: Placeholder; build and push infra/Dockerfile and compile with ``--image`` (docs/RUNNING.md).
DEFAULT_IMAGE = "registry.example.com/mir/multi-interest-retrieval:0.1.0"

#: ``train`` keys that decide the train pod's resources; they are fixed when the pipeline is compiled.
COMPILE_TIME_TRAIN_KEYS = ("accelerator", "devices", "num_nodes")
#: Lightning accelerator names for which the train task asks Kubernetes for accelerators.
GPU_ACCELERATORS = ("gpu", "cuda")

#: Component (step) names of the pipeline, as used in ``kfp.resources``.
STEP_NAMES = ("check_params", "ingest", "validate", "split", "train", "evaluate", "build_index", "report",
              "gate_export")
#: Steps that get ``kfp.volumes`` mounted: the ones reading ``input_uri`` or the registry at ``registry_uri``.
VOLUME_STEPS = ("ingest", "gate_export")


_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


@dataclass(frozen=True)
class Resources:
    cpu_request: str = "1"
    """Kubernetes CPU request of the step's pod (a quantity: "1", "500m")."""
    cpu_limit: str = "2"
    """Kubernetes CPU limit."""
    memory_request: str = "2G"
    """Kubernetes memory request (a quantity: "2G", "512Mi")."""
    memory_limit: str = "4G"
    """Kubernetes memory limit."""

    def __post_init__(self) -> None:
        for name in ("cpu_request", "cpu_limit", "memory_request", "memory_limit"):
            value = getattr(self, name)
            if not _QUANTITY.match(value):
                raise ValueError(f"{name}: {value!r} is not a Kubernetes quantity (e.g. '2', '500m', '4G')")


@dataclass(frozen=True)
class KfpConfig:
    accelerator_type: str = "nvidia.com/gpu"
    """Kubernetes extended resource the train task requests when ``train.accelerator`` is gpu/cuda."""
    retries: int = 2
    """Retries of the steps that are safe to re-run (ingest, split, train, evaluate, build_index)."""
    parallelism: int = 0
    """Models trained at the same time by the ParallelFor (0 = all at once)."""
    resources: dict[str, Resources] = field(default_factory=dict)
    """Requests/limits per step name; ``default`` applies to every step not listed."""
    volumes: dict[str, str] = field(default_factory=dict)
    """PersistentVolumeClaims mounted into ingest and gate_export, {claim name: mount path}: where the registry
    location (``registry_uri``, e.g. /mnt/registry) and a run's input (``input_uri``) live on a cluster."""

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.parallelism < 0:
            raise ValueError(f"parallelism must be >= 0 (0 = unlimited), got {self.parallelism}")
        if not self.accelerator_type:
            raise ValueError("accelerator_type must be a Kubernetes resource name such as nvidia.com/gpu")
        unknown = sorted(set(self.resources) - set(STEP_NAMES) - {"default"})
        if unknown:
            raise ValueError(f"resources: unknown step(s) {unknown} (known: default, {', '.join(STEP_NAMES)})")
        for claim, mount in self.volumes.items():
            if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", claim):
                raise ValueError(f"volumes: {claim!r} is not a PersistentVolumeClaim name (lower-case DNS name)")
            if not isinstance(mount, str) or not mount.startswith("/"):
                raise ValueError(f"volumes.{claim}: mount path must be absolute, got {mount!r}")
        mounts = list(self.volumes.values())
        if len(set(mounts)) != len(mounts):
            raise ValueError(f"volumes: two claims mounted at the same path ({mounts})")

    def kubernetes_config(self) -> dict[str, Any]:
        """The KFP Kubernetes platform config mounting :attr:`volumes` (what ``kfp-kubernetes``'s ``mount_pvc``
        writes: the claim as a constant ``pvcNameParameter``, plus the older ``constant`` field that KFP backends
        before 2.4 read); empty when there are no volumes."""
        if not self.volumes:
            return {}
        return {"pvcMount": [{"constant": claim, "pvcNameParameter": {"runtimeValue": {"constant": claim}},
                              "mountPath": mount} for claim, mount in self.volumes.items()]}

    def resources_for(self, step: str) -> Resources:
        """The resources of ``step``: its own entry, else ``default``, else :class:`Resources` defaults."""
        return self.resources.get(step) or self.resources.get("default") or Resources()


def kfp_config(params: Mapping[str, Any]) -> KfpConfig:
    """The ``kfp`` section (all keys optional; a missing section means the defaults)."""
    return from_dict(KfpConfig, params.get("kfp"), "kfp")


def resolve_image(image: str | None = None) -> str:
    """The component image: the explicit argument, else ``$MIR_IMAGE``, else :data:`DEFAULT_IMAGE`."""
    return image or os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE


def dump_section(value: Any) -> str:
    """A section as the JSON string the pipeline takes (key order kept, so the compiled YAML is stable)."""
    return json.dumps(value, separators=(", ", ": "))


def pipeline_arguments(params: Mapping[str, Any]) -> dict[str, Any]:
    """Map a params dict onto the pipeline's parameters: ``seed`` as int, each section as a JSON string."""
    missing = [name for name in PARAMETERS if name not in params]
    if missing:
        raise ParamsError(f"params: missing section(s) {missing} needed by the pipeline")
    seed = params["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ParamsError(f"seed: expected an integer, got {seed!r}")
    args: dict[str, Any] = {"seed": seed}
    for name in SECTIONS:
        if not isinstance(params[name], Mapping):
            raise ParamsError(f"{name}: expected a mapping, got {type(params[name]).__name__}")
        args[name] = dump_section(params[name])
    return args


def arguments_to_params(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`pipeline_arguments`: decode the JSON sections back into a params dict."""
    params: dict[str, Any] = {}
    for name, value in arguments.items():
        if name not in PARAMETERS:
            raise ParamsError(f"pipeline: unknown parameter {name!r} (known: {', '.join(PARAMETERS)})")
        if name == "seed":
            params[name] = value
            continue
        try:
            params[name] = json.loads(value) if isinstance(value, str) else value
        except json.JSONDecodeError as exc:
            raise ParamsError(f"{name}: pipeline parameter is not valid JSON ({exc})") from None
    return params


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.max_epochs=5"`` -> (["train", "max_epochs"], 5); the value is read as YAML (``[a, b]``, ``null``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ParamsError(f"override {text!r}: expected KEY=VALUE, e.g. train.max_epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ParamsError(f"override {text!r}: value is not valid YAML ({exc})") from None
    path = key.split(".")
    if any(not part for part in path):
        raise ParamsError(f"override {text!r}: empty part in key {key!r}")
    return path, value


def apply_overrides(params: Mapping[str, Any], overrides: list[str], *,
                    allow_compile_time: bool = False) -> dict[str, Any]:
    """A deep copy of ``params`` with dotted ``KEY=VALUE`` overrides applied.

    ``seed=7`` and ``train.max_epochs=2`` change one key; ``models.mind={...}`` or ``gates={...}`` replace a
    whole mapping. The top-level name must be a pipeline parameter; keys below it may be new (the pipeline's
    strict loader rejects unknown ones, naming the key). Overriding a compile-time ``train`` key is an error
    unless ``allow_compile_time`` (local runs, where no pod resources are involved).
    """
    out = json.loads(json.dumps(params))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        if path[0] == "kfp" and not allow_compile_time:
            raise ParamsError(f"override {text!r}: the kfp section is a compile-time setting; edit params.yaml and "
                              "run `python -m pipelines.compile`")
        if path[0] not in PARAMETERS + ("kfp",):
            raise ParamsError(f"override {text!r}: unknown parameter {path[0]!r} (known: {', '.join(PARAMETERS)})")
        if (not allow_compile_time and path[0] == "train" and
                (len(path) == 1 or path[1] in COMPILE_TIME_TRAIN_KEYS)):
            raise ParamsError(
                f"override {text!r}: train.{'/'.join(COMPILE_TIME_TRAIN_KEYS)} decide the train pod's resources "
                "and are fixed when the pipeline is compiled; edit params.yaml and run `python -m "
                "pipelines.compile` (or override other train keys one by one)")
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ParamsError(f"override {text!r}: {'.'.join(path[:i + 1])} is not a mapping")
            node = child
        node[path[-1]] = value
    return out


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in recursively (mappings merge key by key; any other value replaces)."""
    out = json.loads(json.dumps(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = json.loads(json.dumps(value))
    return out


def merged_params_file(params_path: str, out_path: str, *, overrides_file: str | None = None,
                       sets: list[str] = ()) -> dict[str, Any]:
    """Write ``params_path`` + an overrides file + ``KEY=VALUE`` sets to ``out_path``; check the train section.

    This is how a Kubernetes job changes settings without its own copy of params.yaml: the image holds the
    project's params.yaml, a ConfigMap holds only the keys the job changes (infra/k8s/train-overrides.yaml:
    ``train.num_nodes``/``devices``/...), and the container merges them before ``python -m components.train``.
    """
    from components.config import load_params
    from components.io import atomic_path

    params = load_params(params_path)
    if overrides_file:
        extra = load_params(overrides_file)
        params = merge(params, extra)
    params = apply_overrides(params, list(sets), allow_compile_time=True)
    from components.train import TrainConfig

    from_dict(TrainConfig, params.get("train"), "train")  # fail here, naming the key, not inside torchrun
    with atomic_path(out_path) as tmp:
        tmp.write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def main(argv: list[str] | None = None) -> None:
    import argparse

    from components.io import cli_main

    ap = argparse.ArgumentParser(
        prog="python -m pipelines.settings",
        description="Write a params file: a base params.yaml with an overrides file and KEY=VALUE sets merged in.")
    ap.add_argument("--params", default="params.yaml", help="base params file (default: params.yaml)")
    ap.add_argument("--overrides", default=None, help="YAML file whose keys replace the base's (merged deeply)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted override applied last, e.g. --set train.num_nodes=2 (repeatable)")
    ap.add_argument("--out", required=True, help="params file to write")
    args = ap.parse_args(argv)

    def body() -> None:
        params = merged_params_file(args.params, args.out, overrides_file=args.overrides, sets=args.sets)
        train = params.get("train", {})
        print(f"{args.out}: train.accelerator={train.get('accelerator')} devices={train.get('devices')} "
              f"num_nodes={train.get('num_nodes')} strategy={train.get('strategy')}")

    cli_main(body)


if __name__ == "__main__":
    main()
