"""pipelines.submit: arguments from the compiled package + overrides, and clear failures without a cluster.

No KFP endpoint exists here, so the tests cover what can be checked honestly: an unreachable host (a closed
localhost port) and a host that answers HTTP but is not KFP (a tiny local server) each give one clear line and
a non-zero exit through the real ``kfp.Client``; bad overrides fail before any network call.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from components.config import ParamsError
from pipelines import submit
from pipelines.settings import arguments_to_params

REPO = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: nothing listens there


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.submit", "--registry", "/mnt/registry", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_unreachable_host_fails_with_one_clear_line():
    host = f"http://127.0.0.1:{closed_port()}"
    proc = cli("--host", host, "--experiment", "ci", "--param", "train.max_epochs=1")
    assert proc.returncode == 1
    assert f"cannot reach Kubeflow Pipelines at {host}" in proc.stderr
    assert "port-forward" in proc.stderr and "Traceback" not in proc.stderr


def test_host_must_be_an_http_url():
    with pytest.raises(submit.SubmitError, match="http:// or https://"):
        submit.check_reachable("localhost:8080", timeout=1)


def test_bad_overrides_fail_before_any_network_call():
    host = f"http://127.0.0.1:{closed_port()}"
    typo = cli("--host", host, "--experiment", "ci", "--param", "train.max_epoch=1")
    assert typo.returncode == 2 and "max_epoch" in typo.stderr and "cannot reach" not in typo.stderr
    compile_time = cli("--host", host, "--experiment", "ci", "--param", "train.devices=4")
    assert compile_time.returncode == 2 and "pipelines.compile" in compile_time.stderr
    no_host = subprocess.run([sys.executable, "-m", "pipelines.submit", "--experiment", "ci",
                              "--registry", "/mnt/registry"], capture_output=True,
                             text=True, cwd=REPO, env={"PATH": "/usr/bin:/bin"})
    assert no_host.returncode == 2 and "--host is required" in no_host.stderr


def test_run_arguments_are_the_package_defaults_with_only_the_overrides_changed():
    params = arguments_to_params(submit.package_defaults(submit.DEFAULT_PACKAGE))
    assert submit.run_arguments(submit.DEFAULT_PACKAGE, []) == {}
    assert submit.run_arguments(submit.DEFAULT_PACKAGE, [], registry_uri="/mnt/registry",
                                input_uri="/mnt/data/ratings.csv") == {
        "registry_uri": "/mnt/registry", "input_uri": "/mnt/data/ratings.csv"}
    with pytest.raises(ParamsError, match="registry_uri: 's3://b/r': object-store URIs are not supported yet"):
        submit.run_arguments(submit.DEFAULT_PACKAGE, [], registry_uri="s3://b/r")
    args = submit.run_arguments(submit.DEFAULT_PACKAGE, ["train.max_epochs=3", "seed=7",
                                                         "models.mind.num_interests=8"])
    assert set(args) == {"train", "seed", "models"}
    assert args["seed"] == 7
    train = json.loads(args["train"])
    assert train == {**params["train"], "max_epochs": 3}
    assert json.loads(args["models"])["mind"]["num_interests"] == 8
    with pytest.raises(ParamsError, match="export.candidate"):
        submit.run_arguments(submit.DEFAULT_PACKAGE, ["export.candidate=umi", "train.models=[mind, youtube_dnn]"])


def test_package_errors_name_the_file(tmp_path):
    with pytest.raises(ParamsError, match="pipelines.compile"):
        submit.package_defaults(tmp_path / "missing.yaml")
    (tmp_path / "other.yaml").write_text("a: 1\n")
    with pytest.raises(ParamsError, match="not a compiled KFP pipeline"):
        submit.package_defaults(tmp_path / "other.yaml")


class _NotKfp(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server API)
        self.send_response(404)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args):  # keep test output clean
        pass


def test_a_host_that_is_not_kfp_is_reported_as_refusing_the_run():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotKfp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host = f"http://127.0.0.1:{server.server_address[1]}"
        submit.check_reachable(host, timeout=5)  # it answers HTTP, so it is reachable
        with pytest.raises(submit.SubmitError, match=f"Kubeflow Pipelines at {host} did not accept the run"):
            submit.submit(host, "ci", registry_uri="/mnt/registry", namespace="mir",
                          overrides=["train.max_epochs=1"])
    finally:
        server.shutdown()
        server.server_close()
