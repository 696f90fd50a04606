"""Submit the compiled pipeline to a Kubeflow Pipelines endpoint:
``python -m pipelines.submit --host URL --experiment NAME --registry /mnt/registry [--input PATH]
[--param KEY=VALUE ...]``.

Submits ``pipelines/pipeline.yaml`` (compile it first with your image: ``python -m pipelines.compile --image ...``)
with ``kfp.Client``. The run's parameters are the package's defaults (params.yaml at compile time) with the
``--param`` overrides applied key by key (``--param train.max_epochs=10``, ``--param seed=7``,
``--param 'models.mind.num_interests=8'``); the result is checked with the steps' own strict loaders *before*
anything is sent, so a typo fails here, naming the key. Keys that decide pod resources
(``train.accelerator/devices/num_nodes``) are fixed at compile time and refused here.

``--registry`` is the run's ``registry_uri`` (required): the registry location the run resolves prod from and
publishes an approved bundle to, a folder the gate_export pod sees (a PVC mounted with ``kfp.volumes``, e.g.
``/mnt/registry``). ``--input`` is ``input_uri``: the input ingest reads instead of ``ingest.path``.

Caching is on (KFP's default, set on every task); ``--no-cache`` turns it off for this run. Authentication: for a
multi-user Kubeflow, pass ``--namespace`` and put a bearer token in ``$KFP_TOKEN`` (never on the command line);
an in-cluster client picks up its service-account token by itself.

The host is checked first with a plain HTTP request (timeout ``--timeout``): an unreachable or wrong host fails
with one clear line and exit status 1, instead of a client stack trace or a hang. Bad params: exit status 2.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import yaml

from components.config import ParamsError
from pipelines.settings import PARAMETERS, apply_overrides, arguments_to_params, pipeline_arguments

DEFAULT_PACKAGE = Path(__file__).resolve().parent / "pipeline.yaml"
HEALTHZ = "/apis/v2beta1/healthz"
TOKEN_ENV = "KFP_TOKEN"


class SubmitError(RuntimeError):
    """The endpoint cannot be reached or refused the run; the message says which and what to check."""


def package_defaults(package: str | Path) -> dict[str, Any]:
    """The pipeline parameters' defaults recorded in a compiled package (``root.inputDefinitions``)."""
    path = Path(package)
    try:
        spec = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: compiled pipeline not found (run `python -m pipelines.compile`)") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from None
    try:
        declared = spec["root"]["inputDefinitions"]["parameters"]
    except (KeyError, TypeError):
        raise ParamsError(f"{path}: not a compiled KFP pipeline (no root.inputDefinitions.parameters)") from None
    missing = [name for name in PARAMETERS if name not in declared]
    if missing:
        raise ParamsError(f"{path}: pipeline lacks parameter(s) {missing}; recompile with `python -m pipelines.compile`")
    defaults = {}
    for name in PARAMETERS:
        value = declared[name].get("defaultValue")
        if name == "seed" and isinstance(value, float) and value.is_integer():
            value = int(value)  # protobuf numbers are doubles
        defaults[name] = value
    return defaults


def run_arguments(package: str | Path, overrides: list[str], *, registry_uri: str | None = None,
                  input_uri: str = "") -> dict[str, Any]:
    """Arguments for the run: the package defaults with ``overrides`` applied, validated, as pipeline parameters.

    Only parameters that differ from the defaults are returned (the run page then shows what was changed), plus
    ``registry_uri`` (no default: every run names it) and ``input_uri`` when given.
    """
    from pipelines.steps import check_params

    defaults = package_defaults(package)
    params = apply_overrides(arguments_to_params(defaults), overrides)
    arguments = pipeline_arguments(params)
    check_params(**arguments, registry_uri=registry_uri, input_uri=input_uri)
    base = pipeline_arguments(arguments_to_params(defaults))
    out = {name: value for name, value in arguments.items() if value != base[name]}
    if registry_uri is not None:
        out["registry_uri"] = registry_uri
    if input_uri:
        out["input_uri"] = input_uri
    return out


def check_reachable(host: str, timeout: float) -> None:
    """Raise SubmitError unless something answers HTTP at ``host`` (any status: auth is the client's business)."""
    if not host.startswith(("http://", "https://")):
        raise SubmitError(f"--host {host!r}: expected an http:// or https:// URL, e.g. http://localhost:8080")
    url = host.rstrip("/") + HEALTHZ
    try:
        with urllib.request.urlopen(url, timeout=timeout):  # noqa: S310 (scheme checked above)
            pass
    except urllib.error.HTTPError:
        return  # an HTTP answer, even 401/403/404: the host is up
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SubmitError(
            f"cannot reach Kubeflow Pipelines at {host} ({reason}). Check the URL, and that the endpoint is "
            "exposed, e.g. `kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80` and --host "
            "http://localhost:8080") from None


def submit(host: str, experiment: str, *, registry_uri: str, input_uri: str = "",
           package: str | Path = DEFAULT_PACKAGE, overrides: list[str] = (), run_name: str | None = None,
           namespace: str | None = None, pipeline_root: str | None = None, enable_caching: bool | None = None,
           service_account: str | None = None, timeout: float = 10.0):
    """Validate the arguments, check the host, and create the run; returns kfp's ``RunPipelineResult``."""
    arguments = run_arguments(package, list(overrides), registry_uri=registry_uri, input_uri=input_uri)
    check_reachable(host, timeout)
    import kfp

    try:
        with warnings.catch_warnings():  # "This client only works with KFP v2.0.0-beta.2 and later": known
            warnings.filterwarnings("ignore", message="This client only works", category=FutureWarning)
            client = kfp.Client(host=host, namespace=namespace or "kubeflow",
                                existing_token=os.environ.get(TOKEN_ENV))
        return client.create_run_from_pipeline_package(
            str(package), arguments=arguments, run_name=run_name, experiment_name=experiment,
            namespace=namespace, pipeline_root=pipeline_root, enable_caching=enable_caching,
            service_account=service_account)
    except Exception as exc:  # noqa: BLE001 - kfp_server_api / urllib3 errors: one line, not a trace
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SubmitError(f"Kubeflow Pipelines at {host} did not accept the run: {type(exc).__name__}: {first}") from None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipelines.submit", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default=os.environ.get("KF_PIPELINES_ENDPOINT"),
                    help="KFP API endpoint, e.g. http://localhost:8080 (default: $KF_PIPELINES_ENDPOINT)")
    ap.add_argument("--experiment", required=True, help="experiment name (created if missing)")
    ap.add_argument("--param", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params key (YAML value), e.g. --param train.max_epochs=10; repeatable")
    ap.add_argument("--registry", required=True, metavar="PATH",
                    help="registry_uri: the registry location (a folder the pods see, e.g. the PVC mount /mnt/registry)")
    ap.add_argument("--input", default="", metavar="PATH", help="input_uri: what ingest reads instead of ingest.path")
    ap.add_argument("--package", default=str(DEFAULT_PACKAGE), help="compiled pipeline (pipelines/pipeline.yaml)")
    ap.add_argument("--run-name", default=None, help="run name (default: package name and time)")
    ap.add_argument("--namespace", default=None, help="Kubeflow profile namespace (multi-user installs)")
    ap.add_argument("--pipeline-root", default=None,
                    help="artifact root for this run, e.g. s3://bucket/prefix (default: the namespace's kfp-launcher)")
    ap.add_argument("--service-account", default=None, help="Kubernetes service account of the run's pods")
    ap.add_argument("--no-cache", action="store_true", help="run every task, ignoring cached results")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the host to answer")
    args = ap.parse_args(argv)
    if not args.host:
        ap.error("--host is required (or set $KF_PIPELINES_ENDPOINT)")
    try:
        result = submit(args.host, args.experiment, registry_uri=args.registry, input_uri=args.input,
                        package=args.package, overrides=args.overrides,
                        run_name=args.run_name, namespace=args.namespace, pipeline_root=args.pipeline_root,
                        enable_caching=False if args.no_cache else None, service_account=args.service_account,
                        timeout=args.timeout)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except SubmitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"submitted run {result.run_id} to {args.host} (experiment {args.experiment!r})")


if __name__ == "__main__":
    main()
