"""The HTTP service, for real: uvicorn on a free localhost port, real bundles, real HTTP (httpx).

Its lists equal components.evaluate's for every valid/test user (JSON endpoint, Open Inference Protocol,
concurrent requests that the batcher groups); bad requests get a 4xx naming the field and never break the
service; it is ready only after loading; the A/B arms follow ABSpec and the exposure log holds exactly the
served requests; a model promoted while requests flow is picked up with no request failing.
"""
from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pandas as pd
import pytest

from components import evaluate as E
from components.export import ExportPaths, build_bundle
from components.io import write_json
from components.serve import BackgroundServer, Resolution, Service, bind, create_app, fixed_bundle, pointer_file
from components.serving import ABSpec, Recommender
from test_evaluate import ROOT, _cfg, make_split, save_random_model
from test_serving import _users


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Two random-init MIND bundles on one split (A evaluated at λ = 0 and 0.3), as export writes them."""
    root = tmp_path_factory.mktemp("serve_http")
    split = make_split(root / "split", num_items=61, num_categories=6, num_users=80, min_len=3, max_len=12)
    out = {"root": root, "split": split}
    for name, seed in (("a", 0), ("b", 1)):
        save_random_model(split, root / "models" / name, arch="mind", max_len=8, num_interests=3, seed=seed)
    for which, lam in (("a", 0.0), ("a_div", 0.3)):
        E.run(_cfg(topn=[5, 20], faiss_check=False, lambda_sweep=[], diversity_lambda=lam), split,
              root / "models" / "a", root / "eval" / which, max_len=8, seed=0)
    paths = ExportPaths(models_dir=root / "models", eval_dir=root / "eval", index_dir=root / "index",
                        split_dir=split, bundles_dir=root / "bundles")
    for name in ("a", "b"):
        out[name] = build_bundle(name, paths, {}, {}, {"passed": True}, "test-version")
    out["users"] = _users(split)
    return out


def _expected(bundles, which):
    per_user = pd.read_parquet(bundles["root"] / "eval" / which / "per_user.parquet").set_index("user_id")
    return {uid: list(per_user.loc[uid, "recommended"]) for uid, _, _ in bundles["users"]}


def _served(service):
    return BackgroundServer(create_app(service), bind("127.0.0.1", 0))


def _wait_ready(client, timeout=60.0):
    deadline = time.monotonic() + timeout
    while client.get("/v2/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "service never became ready"
        time.sleep(0.02)


def _metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
    return total


@pytest.mark.parametrize("batch_mode,split_min,score_threads", [("loop", 0, 2), ("batch", 0, 2), ("batch", 2, 2),
                                                                ("batch", 0, 1)])
def test_lists_equal_evaluate_over_http(bundles, batch_mode, split_min, score_threads):
    users = bundles["users"]
    want, want_div = _expected(bundles, "a"), _expected(bundles, "a_div")
    with _served(Service(fixed_bundle(bundles["a"]), batch_mode=batch_mode, poll_s=0, split_min=split_min,
                         max_wait_ms=5.0, score_threads=score_threads)) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            _wait_ready(client)
            assert gc.get_freeze_count() > 0  # loaded objects are out of the cyclic collector's way
            for uid, hist, prof in users:  # one at a time: the JSON endpoint, λ = 0 and 0.3
                r = client.post("/recommend", json={"history": hist, "profile": prof, "n": 20})
                assert r.status_code == 200, r.text
                assert r.json()["items"] == want[uid] and r.json()["bundle"] == bundles["a"].name
                r = client.post("/recommend", json={"history": hist, "profile": prof, "n": 20,
                                                    "diversity_lambda": 0.3})
                assert r.json()["items"] == want_div[uid], uid
            # Open Inference Protocol: all users in one tensor, "" padding, profile as profile.<field>
            width = max(len(h) for _, h, _ in users)
            body = {"id": "req-1", "parameters": {"n": 20}, "inputs": [
                {"name": "history", "datatype": "BYTES", "shape": [len(users), width],
                 "data": [h + [""] * (width - len(h)) for _, h, _ in users]},
                {"name": "profile.gender", "datatype": "BYTES", "shape": [len(users)],
                 "data": [p.get("gender") or "" for _, _, p in users]}]}
            r = client.post("/v2/models/mir/infer", json=body)
            assert r.status_code == 200, r.text
            outs = {o["name"]: o for o in r.json()["outputs"]}
            assert r.json()["id"] == "req-1" and outs["item_id"]["shape"] == [len(users), 20]
            ids = outs["item_id"]["data"]
            assert [ids[20 * k: 20 * (k + 1)] for k in range(len(users))] == [want[u] for u, _, _ in users]
            assert client.get("/v2/models/mir").json()["versions"] == [bundles["a"].name]
            assert client.get("/v2/models/other").status_code == 404

        async def burst():  # concurrent requests: the batcher groups them; every list is still evaluate's
            async with httpx.AsyncClient(base_url=url, timeout=30) as ac:
                rs = await asyncio.gather(*(ac.post("/recommend", json={"history": h, "profile": p, "n": 20})
                                            for _, h, p in users * 3))
            return [r.json()["items"] for r in rs]

        assert asyncio.run(burst()) == [want[u] for u, _, _ in users * 3]
        text = httpx.get(url + "/metrics").text
        assert _metric(text, "mir_requests_total", endpoint="recommend", status="200") == 5 * len(users)
        assert _metric(text, "mir_batch_size_count") < 5 * len(users) + len(users)  # some batches > 1
        assert _metric(text, "mir_batch_size_sum") == 6 * len(users)  # every user went through the batcher
        assert _metric(text, "mir_queue_wait_seconds_count") == 6 * len(users)
        assert _metric(text, "mir_worker_cpu_seconds_total") > 0


BAD = [  # (body, status, words the message must contain)
    ({"profile": None}, 422, ["history", "Field required"]),
    ({"history": "m7"}, 422, ["history"]),
    ({"history": ["m7", None]}, 422, ["history.1"]),
    ({"history": ["m7", 1.5]}, 422, ["history.1"]),
    ({"history": ["m7"], "n": 0}, 422, ["n", "greater than or equal to 1"]),
    ({"history": ["m7"], "n": "5"}, 422, ["n"]),
    ({"history": ["m7"], "diversity_lambda": -1}, 422, ["diversity_lambda"]),
    ({"history": ["m7"], "profile": {"age": "18"}}, 400, ["profile: unknown field(s) ['age']"]),
    ({"history": ["m7"], "profile": ["F"]}, 422, ["profile"]),
    ({"history": ["m7"], "colour": "red"}, 422, ["colour", "Extra inputs"]),
]


def test_bad_requests_get_4xx_naming_the_field_and_the_service_keeps_serving(bundles):
    uid, hist, prof = bundles["users"][0]
    want = _expected(bundles, "a")[uid]
    with _served(Service(fixed_bundle(bundles["a"]), batch_mode="batch", poll_s=0)) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            _wait_ready(client)
            for body, status, words in BAD:
                r = client.post("/recommend", json=body)
                assert r.status_code == status, (body, r.text)
                assert all(w in r.json()["error"] for w in words), (body, r.json())
            for raw in (b"{not json", b"[1, 2]", b"\xff\xfe", b""):
                r = client.post("/recommend", content=raw, headers={"content-type": "application/json"})
                assert 400 <= r.status_code < 500 and r.json()["error"], raw
                r = client.post("/v2/models/mir/infer", content=raw)
                assert r.status_code == 400 and r.json()["error"].startswith(("body", "inputs")), raw
            infer_bad = [
                ({"inputs": []}, "inputs"),
                ({"inputs": [{"name": "history", "datatype": "INT64", "shape": [1], "data": [7]}]}, "inputs.history"),
                ({"inputs": [{"name": "history", "datatype": "BYTES", "shape": [2], "data": ["m7"]}]},
                 "inputs.history: data must hold"),
                ({"inputs": [{"name": "history", "datatype": "BYTES", "shape": [1], "data": ["m7"]}],
                  "parameters": {"n": -3}}, "parameters.n"),
                ({"inputs": [{"name": "history", "datatype": "BYTES", "shape": [1], "data": ["m7"]},
                             {"name": "colour", "datatype": "BYTES", "shape": [1], "data": ["red"]}]}, "inputs.colour"),
                ({"inputs": [{"name": "history", "datatype": "BYTES", "shape": [1], "data": ["m7"]},
                             {"name": "profile.age", "datatype": "BYTES", "shape": [1], "data": ["18"]}]},
                 "profile: unknown field"),
            ]
            for body, words in infer_bad:
                r = client.post("/v2/models/mir/infer", json=body)
                assert r.status_code == 400 and words in r.json()["error"], (body, r.text)
            ok = client.post("/recommend", json={"history": hist, "profile": prof, "n": 20})
            assert ok.status_code == 200 and ok.json()["items"] == want
            big = client.post("/recommend", json={"history": hist, "profile": prof, "n": 20, "user_id": 2 ** 70})
            assert big.status_code == 200 and big.json()["user_id"] == 2 ** 70  # beyond orjson's 64-bit ints

        async def mixed():  # bad and good requests in the same batches: only the bad ones fail
            async with httpx.AsyncClient(base_url=url, timeout=30) as ac:
                bodies = [{"history": hist, "profile": prof, "n": 20},
                          {"history": hist, "profile": {"age": "1"}, "n": 20}] * 20
                return await asyncio.gather(*(ac.post("/recommend", json=b) for b in bodies))

        rs = asyncio.run(mixed())
        assert [r.status_code for r in rs] == [200, 400] * 20
        assert all(r.json()["items"] == want for r in rs[::2])
        text = httpx.get(url + "/metrics").text
        assert _metric(text, "mir_requests_total", endpoint="recommend", status="400") == 21
        assert _metric(text, "mir_requests_total", endpoint="recommend", status="422") >= len(BAD) - 1
        # unknown items and fallbacks are counted per arm
        httpx.post(url + "/recommend", json={"history": ["nope", "nada"], "n": 5})
        text = httpx.get(url + "/metrics").text
        assert _metric(text, "mir_unknown_items_total", arm="production") == 2
        assert _metric(text, "mir_fallbacks_total", arm="production") == 1


def test_ready_only_after_loading(bundles):
    gate = threading.Event()

    def slow_resolver():
        gate.wait(30)
        return Resolution({"production": bundles["a"]})

    with _served(Service(slow_resolver, poll_s=0)) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/v2/health/live").status_code == 200
            assert client.get("/v2/health/ready").status_code == 503
            assert client.get("/v2/models/mir/ready").status_code == 503
            r = client.post("/recommend", json={"history": ["m7"], "n": 3})
            assert r.status_code == 503 and "not ready" in r.json()["error"]
            gate.set()
            _wait_ready(client)
            assert client.post("/recommend", json={"history": ["m7"], "n": 3}).status_code == 200
            assert "mir_ready 1.0" in client.get("/metrics").text


def test_ab_test_served_through_the_cli_with_an_exact_exposure_log(bundles, tmp_path):
    spec = ABSpec(salt="serve-test", num_buckets=100, treatment_share=0.5,
                  control={"bundle": bundles["a"].name}, treatment={"bundle": bundles["b"].name})
    (tmp_path / "ab.json").write_text(json.dumps(spec.to_dict()))
    log = tmp_path / "exposures.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "components.serve", "--ab", str(tmp_path / "ab.json"),
                             "--bundles-dir", str(bundles["a"].parent), "--port", "0", "--exposure-log", str(log)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split("listening on ")[1].split()[0]
        recs = {arm: Recommender.load(bundles[k]) for arm, k in (("control", "a"), ("treatment", "b"))}
        served = []
        with httpx.Client(base_url=url, timeout=30) as client:
            _wait_ready(client)
            hist = bundles["users"][0][1]
            for i in range(120):
                uid = f"user{i % 60}"  # each user twice: the arm is stable
                r = client.post("/recommend", json={"history": hist, "n": 10, "user_id": uid})
                assert r.status_code == 200, r.text
                arm = spec.assign(uid)
                assert r.json()["arm"] == arm and r.json()["bundle"] == getattr(spec, arm)["bundle"]
                assert r.json()["items"] == [x for x, _ in recs[arm].recommend(hist, None, 10)]
                served.append((uid, arm, r.json()["bundle"], r.json()["items"]))
            r = client.post("/recommend", json={"history": hist, "n": 10})  # no user id: no arm
            assert r.status_code == 400 and "user_id" in r.json()["error"]
            assert client.post("/recommend", json={"history": 5, "user_id": "x"}).status_code == 422
            one = [{"name": "history", "datatype": "BYTES", "shape": [2, 1], "data": [hist[0], hist[0]]},
                   {"name": "user_id", "datatype": "BYTES", "shape": [2], "data": ["user3", "user4"]}]
            # the second user's profile is malformed: the whole response is a 400 and nobody is logged
            r = client.post("/v2/models/mir/infer", json={"inputs": one + [
                {"name": "profile.age", "datatype": "BYTES", "shape": [2], "data": ["", "18"]}]})
            assert r.status_code == 400 and "profile" in r.json()["error"]
            r = client.post("/v2/models/mir/infer", json={"inputs": one, "parameters": {"n": 10}})
            assert r.status_code == 200
            outs = {o["name"]: o["data"] for o in r.json()["outputs"]}
            for k, uid in enumerate(("user3", "user4")):
                assert outs["arm"][k] == spec.assign(uid)
                served.append((uid, outs["arm"][k], outs["bundle"][k], outs["item_id"][10 * k: 10 * (k + 1)]))
            assert {a for _, a, _, _ in served} == {"control", "treatment"}
            text = client.get("/metrics").text
            for arm in ("control", "treatment"):
                n_arm = sum(a == arm for _, a, _, _ in served[:120])
                assert _metric(text, "mir_request_latency_seconds_count", endpoint="recommend", arm=arm) == n_arm
                assert _metric(text, "mir_requests_total", endpoint="recommend", arm=arm, status="200") == n_arm
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(r["user"], r["arm"], r["bundle"], r["items"]) for r in rows] == served
    assert all(r["time"].endswith("+00:00") for r in rows)


def test_cli_rejects_a_missing_bundle_with_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "components.serve", "--bundle", str(tmp_path / "nope"), "--port", "0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and str(tmp_path / "nope") in r.stderr and "manifest.json" in r.stderr


def test_promoting_a_new_model_while_requests_flow_drops_none(bundles, tmp_path):
    ptr = tmp_path / "bundles"
    ptr.mkdir()
    for k in ("a", "b"):
        os.symlink(bundles[k], ptr / bundles[k].name)
    write_json(ptr / "prod.json", {"bundle": bundles["a"].name})
    hist = bundles["users"][1][1]
    want = {bundles[k].name: [x for x, _ in Recommender.load(bundles[k]).recommend(hist, None, 10)] for k in "ab"}
    assert want[bundles["a"].name] != want[bundles["b"].name]
    with _served(Service(pointer_file(ptr / "prod.json"), poll_s=0.05)) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            _wait_ready(client)

        async def flow():
            seen: list[tuple[int, str, list]] = []
            stop = asyncio.Event()

            async def user(ac):
                while not stop.is_set():
                    r = await ac.post("/recommend", json={"history": hist, "n": 10})
                    seen.append((r.status_code, r.json().get("bundle"), r.json().get("items")))

            async with httpx.AsyncClient(base_url=url, timeout=30) as ac:
                tasks = [asyncio.create_task(user(ac)) for _ in range(4)]
                await asyncio.sleep(0.3)
                write_json(ptr / "prod.json", {"bundle": bundles["b"].name})  # atomic replace: the promotion
                deadline = time.monotonic() + 30
                while sum(b == bundles["b"].name for _, b, _ in seen) < 40 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                stop.set()
                await asyncio.gather(*tasks)
            return seen

        seen = asyncio.run(flow())
        assert all(s == 200 for s, _, _ in seen), [s for s, _, _ in seen if s != 200][:5]
        names = [b for _, b, _ in seen]
        assert names[0] == bundles["a"].name and names[-1] == bundles["b"].name
        assert all(items == want[b] for _, b, items in seen)
        # the admin endpoint reloads at once (no waiting for the poll)
        write_json(ptr / "prod.json", {"bundle": bundles["a"].name})
        r = httpx.post(url + "/v2/repository/models/mir/load", timeout=30)
        assert r.status_code == 200 and r.json()["arms"] == {"production": bundles["a"].name}
        assert httpx.post(url + "/recommend", json={"history": hist, "n": 10}).json()["bundle"] == bundles["a"].name
        assert _metric(httpx.get(url + "/metrics").text, "mir_reloads_total", outcome="loaded") >= 3


def test_kserve_manifest_runs_this_cli_with_probes_on_its_port():
    import yaml

    from components.serve import build_parser

    (isvc,) = list(yaml.safe_load_all((ROOT / "infra" / "k8s" / "inferenceservice.yaml").read_text()))
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    (c,) = isvc["spec"]["predictor"]["containers"]
    assert c["command"] == ["python", "-m", "components.serve"]
    args = build_parser().parse_args(c["args"])  # every flag exists and parses (argparse exits otherwise)
    assert args.host == "0.0.0.0" and c["ports"][0]["containerPort"] == args.port
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": args.port}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": args.port}
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(c["resources"]["limits"])
    claims = {v["persistentVolumeClaim"]["claimName"] for v in isvc["spec"]["predictor"]["volumes"]
              if "persistentVolumeClaim" in v}  # the other is the emptyDir at /tmp (readOnlyRootFilesystem)
    storage = list(yaml.safe_load_all((ROOT / "infra" / "k8s" / "storage.yaml").read_text()))
    assert claims <= {d["metadata"]["name"] for d in storage if d and d["kind"] == "PersistentVolumeClaim"}


def test_registry_resolver_serves_the_prod_version(bundles, tmp_path):
    """The registry wiring (components.registry, GTO on a standalone location): prod before and after a
    promotion; no prod yet is a clear error."""
    from components.io import DataError
    from components.registry import Registry
    from components.serve import registry_prod

    reg = Registry.location(tmp_path / "registry")
    resolve = registry_prod(tmp_path / "registry")
    with pytest.raises(DataError, match="no prod version"):
        resolve()
    reg.assign(reg.publish(bundles["a"]))
    assert resolve().bundles == {"production": tmp_path / "registry" / "bundles" / bundles["a"].name}
    reg.assign(reg.publish(bundles["b"]))
    assert resolve().bundles == {"production": tmp_path / "registry" / "bundles" / bundles["b"].name}
