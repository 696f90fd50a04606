"""The Kubernetes manifests in infra/k8s, checked offline as far as this machine allows.

No cluster and no kubectl here, so: every file parses; every built-in kind is validated against the Kubernetes
API schema shipped in the ``kubernetes`` Python client (unknown fields, wrong value kinds, missing required
fields); the PyTorchJob's pod templates likewise; and the cross-references hold (kustomization files exist,
PVC claim names, ConfigMaps, service accounts, the Secret name, images, namespace). The training job's shape
is checked against the Lightning settings it feeds (num_nodes = replicas, devices = nprocPerNode = GPUs).
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
SECRET = "mir-object-store"
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

BUILTIN = {  # (apiVersion, kind) -> kubernetes client model
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("batch/v1", "Job"): "V1Job",
}


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def resources() -> list[dict]:
    docs = []
    for name in kustomization()["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d is not None]
    return docs


def by_kind(kind: str) -> list[dict]:
    return [d for d in resources() if d["kind"] == kind]


def pod_specs() -> list[tuple[str, dict]]:
    """(where, pod spec) for every pod template: the Job's and each PyTorchJob replica's."""
    out = [(f"Job/{j['metadata']['name']}", j["spec"]["template"]["spec"]) for j in by_kind("Job")]
    for job in by_kind("PyTorchJob"):
        for role, replica in job["spec"]["pytorchReplicaSpecs"].items():
            out.append((f"PyTorchJob/{job['metadata']['name']}/{role}", replica["template"]["spec"]))
    return out


# ------------------------------------------------------------------------------------------ schema checks
def schema_errors(value, type_name: str, path: str = "") -> list[str]:
    """Differences between ``value`` and the Kubernetes client's model ``type_name`` (recursive)."""
    import kubernetes.client as k8s

    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        return [e for i, v in enumerate(value) for e in schema_errors(v, type_name[5:-1], f"{path}[{i}]")]
    if type_name.startswith("dict("):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping, got {type(value).__name__}"]
        inner = type_name[5:-1].split(", ", 1)[1]
        return [e for k, v in value.items() for e in schema_errors(v, inner, f"{path}.{k}")]
    if type_name == "str":  # quantities and int-or-string values are written as numbers in YAML too
        return [] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else [
            f"{path}: expected a string, got {value!r}"]
    if type_name == "int":
        return [] if isinstance(value, int) and not isinstance(value, bool) else [f"{path}: expected int, got {value!r}"]
    if type_name == "bool":
        return [] if isinstance(value, bool) else [f"{path}: expected true/false, got {value!r}"]
    if type_name in ("object", "datetime", "float"):
        return []
    model = getattr(k8s, type_name)
    if not isinstance(value, dict):
        return [f"{path}: expected a {type_name} mapping, got {type(value).__name__}"]
    known = {json_name: attr for attr, json_name in model.attribute_map.items()}
    errors = [f"{path}.{key}: unknown field of {type_name}" for key in value if key not in known]
    for key, sub in value.items():
        if key in known:
            errors += schema_errors(sub, model.openapi_types[known[key]], f"{path}.{key}")
    return errors


def deserialize(doc: dict, type_name: str):
    """Build the client model (raises ValueError for a missing required field or a bad enum value)."""
    from kubernetes.client import ApiClient

    return ApiClient()._ApiClient__deserialize(doc, type_name)


def test_every_manifest_parses_and_has_kind_and_name():
    files = sorted(K8S.glob("*.yaml"))
    assert {f.name for f in files} >= set(kustomization()["resources"]) | {"kustomization.yaml"}
    for f in files:
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
        assert docs, f"{f.name} is empty"
    for doc in resources():
        assert doc.get("apiVersion") and doc.get("kind"), doc
        name = doc["metadata"]["name"]
        assert DNS1123.match(name) and len(name) <= 63, f"{doc['kind']} name {name!r} is not a DNS-1123 label"


def test_kinds_are_the_expected_set():
    kinds = sorted((d["apiVersion"], d["kind"]) for d in resources())
    assert kinds == sorted([
        ("v1", "Namespace"), ("v1", "ServiceAccount"), ("v1", "PersistentVolumeClaim"),
        ("v1", "PersistentVolumeClaim"), ("v1", "ConfigMap"), ("batch/v1", "Job"), ("kubeflow.org/v1", "PyTorchJob"),
    ])


def test_builtin_kinds_match_the_kubernetes_schema():
    for doc in resources():
        model = BUILTIN.get((doc["apiVersion"], doc["kind"]))
        if model is None:
            continue
        errors = schema_errors(doc, model, doc["kind"])
        assert not errors, errors
        deserialize(doc, model)


def test_schema_check_catches_a_typo_and_a_missing_required_field():
    job = by_kind("Job")[0]
    bad = yaml.safe_load(yaml.safe_dump(job))
    bad["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []  # typo of volumeMounts
    assert any("volumeMount: unknown field" in e for e in schema_errors(bad, "V1Job", "Job"))
    del bad["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ValueError, match="name"):
        deserialize(bad, "V1Job")


def test_pytorchjob_pod_templates_match_the_pod_schema():
    for where, spec in pod_specs():
        errors = schema_errors({"spec": spec}, "V1PodTemplateSpec", where)
        assert not errors, errors
        deserialize({"spec": spec}, "V1PodTemplateSpec")


# ---------------------------------------------------------------------------------------- cross-references
def test_kustomization_files_exist_and_namespace_is_consistent():
    kust = kustomization()
    for name in kust["resources"]:
        assert (K8S / name).is_file(), name
    for gen in kust.get("configMapGenerator", []):
        for f in gen["files"]:
            assert (K8S / f.split("=")[-1]).is_file(), f
    ns = kust["namespace"]
    assert [d["metadata"]["name"] for d in by_kind("Namespace")] == [ns]
    for doc in resources():
        assert doc["metadata"].get("namespace", ns) == ns, f"{doc['kind']}/{doc['metadata']['name']}"
    # generated ConfigMaps keep their names: the PyTorchJob (a custom resource) refers to them literally
    assert kust["generatorOptions"]["disableNameSuffixHash"] is True


def test_claims_configmaps_service_accounts_and_mounts_resolve():
    pvcs = {d["metadata"]["name"] for d in by_kind("PersistentVolumeClaim")}
    configmaps = ({d["metadata"]["name"] for d in by_kind("ConfigMap")}
                  | {g["name"] for g in kustomization().get("configMapGenerator", [])})
    accounts = {d["metadata"]["name"] for d in by_kind("ServiceAccount")}
    used_claims = set()
    for where, spec in pod_specs():
        assert spec["serviceAccountName"] in accounts, where
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in pvcs, (where, v)
                used_claims.add(v["persistentVolumeClaim"]["claimName"])
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps, (where, v)
        for c in spec["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, (where, m)
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                assert ref is None or ref["name"] == SECRET, (where, env)
            for src in c.get("envFrom", []):
                assert src.get("secretRef", {}).get("name", SECRET) == SECRET, (where, src)
    assert "mir-workspace" in used_claims


def test_no_secret_is_committed_and_the_launcher_references_the_secret():
    for f in K8S.glob("*.yaml"):
        for doc in yaml.safe_load_all(f.read_text()):
            assert not (doc and doc.get("kind") == "Secret"), f"{f.name} commits a Secret"
    text = "\n".join(f.read_text() for f in K8S.glob("*.yaml")).lower()
    for word in ("aws_secret_access_key:", "password:", "token:"):
        assert not re.search(rf"^\s*{word}\s*\S", text, re.M), f"a literal credential ({word}) in infra/k8s"
    launcher = next(d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "kfp-launcher")
    root = launcher["data"]["defaultPipelineRoot"]
    providers = yaml.safe_load(launcher["data"]["providers"])
    scheme = root.split("://", 1)[0]
    creds = providers[scheme]["default"]["credentials"]
    assert creds["fromEnv"] is False
    assert creds["secretRef"]["secretName"] == SECRET
    assert creds["secretRef"]["accessKeyKey"] and creds["secretRef"]["secretKeyKey"]
    docs = (REPO / "docs" / "RUNNING.md").read_text()
    assert f"kubectl -n mir create secret generic {SECRET}" in docs  # how to create what is referenced


def test_every_image_is_managed_by_kustomize_and_runs_as_the_image_user():
    names = {i["name"] for i in kustomization()["images"]}
    uid = dockerfile_uid()
    for where, spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] == uid, where
        for c in spec["containers"]:
            assert c["image"].rsplit(":", 1)[0] in names, (where, c["image"])


def all_pod_specs() -> list[tuple[str, dict]]:
    """Every pod template in infra/k8s: :func:`pod_specs` plus the InferenceService's predictor (a pod spec with
    KServe's fields; applied on its own, so not in kustomization.yaml)."""
    (isvc,) = [d for d in yaml.safe_load_all((K8S / "inferenceservice.yaml").read_text()) if d]
    return [*pod_specs(), (f"InferenceService/{isvc['metadata']['name']}", isvc["spec"]["predictor"])]


def security_problems(where: str, spec: dict, uid: int) -> list[str]:
    """What keeps a pod spec from the cluster defaults the image is tested under (tests/infra/test_image.py):
    non-root uid with group 0, no privilege escalation, no capabilities, read-only root with an emptyDir /tmp."""
    problems = []
    pod = spec.get("securityContext") or {}
    for key, want in (("runAsNonRoot", True), ("runAsUser", uid), ("runAsGroup", 0), ("fsGroup", 0)):
        if pod.get(key) != want:
            problems.append(f"{where}: securityContext.{key} is {pod.get(key)!r}, want {want!r}")
    if (pod.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: securityContext.seccompProfile.type is not RuntimeDefault")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        name = f"{where}/{c['name']}"
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem must be true")
        if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
            problems.append(f"{name}: capabilities.drop must be [ALL]")
        if sc.get("capabilities", {}).get("add") or sc.get("privileged") or sc.get("runAsUser") == 0:
            problems.append(f"{name}: adds privileges back")
        tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        if len(tmp) != 1 or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
            problems.append(f"{name}: /tmp must be an emptyDir volume (the root filesystem is read-only)")
    return problems


def test_every_pod_runs_under_the_restricted_security_defaults():
    uid = dockerfile_uid()
    specs = all_pod_specs()
    assert len(specs) == 4  # the data Job, the PyTorchJob's Master and Worker, the InferenceService
    problems = [p for where, spec in specs for p in security_problems(where, spec, uid)]
    assert not problems, "\n".join(problems)


def test_security_check_catches_each_missing_setting():
    uid = dockerfile_uid()
    where, spec = pod_specs()[0]
    assert security_problems(where, spec, uid) == []
    breakages = {
        "runAsNonRoot": lambda s: s["securityContext"].pop("runAsNonRoot"),
        "seccompProfile": lambda s: s["securityContext"].pop("seccompProfile"),
        "allowPrivilegeEscalation": lambda s: s["containers"][0]["securityContext"].update(
            allowPrivilegeEscalation=True),
        "readOnlyRootFilesystem": lambda s: s["containers"][0]["securityContext"].pop("readOnlyRootFilesystem"),
        "capabilities.drop": lambda s: s["containers"][0]["securityContext"]["capabilities"].update(drop=["NET_RAW"]),
        "/tmp": lambda s: s["volumes"].__setitem__(
            [v["name"] for v in s["volumes"]].index("tmp"), {"name": "tmp", "hostPath": {"path": "/tmp"}}),
    }
    for word, breakage in breakages.items():
        bad = yaml.safe_load(yaml.safe_dump(spec))
        breakage(bad)
        found = security_problems(where, bad, uid)
        assert any(word in p for p in found), (word, found)


def test_the_inferenceservice_pod_fields_match_the_pod_schema():
    """KServe's predictor is a pod spec plus its own fields: the pod part must be valid Kubernetes."""
    (where, predictor), = all_pod_specs()[-1:]
    kserve_only = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency", "timeout",
                   "canaryTrafficPercent", "logger", "batcher", "model", "annotations", "labels"}
    pod = {k: v for k, v in predictor.items() if k not in kserve_only}
    errors = schema_errors({"spec": pod}, "V1PodTemplateSpec", where)
    assert not errors, errors
    deserialize({"spec": pod}, "V1PodTemplateSpec")


def dockerfile_uid() -> int:
    users = re.findall(r"^USER\s+(\S+)", (REPO / "infra" / "Dockerfile").read_text(), re.M)
    return int(users[-1])


# ------------------------------------------------------------------------------------ the training job
def overrides() -> dict:
    return yaml.safe_load((K8S / "train-overrides.yaml").read_text())["train"]


def test_pytorchjob_shape_matches_the_lightning_settings():
    (job,) = by_kind("PyTorchJob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) <= {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
    ov = overrides()
    assert sum(r["replicas"] for r in replicas.values()) == ov["num_nodes"]
    assert job["spec"]["nprocPerNode"] == str(ov["devices"])
    assert ov["strategy"].startswith("ddp")
    specs = [r["template"]["spec"] for r in replicas.values()]
    assert all(s == specs[0] for s in specs), "Master and Worker pods must be identical but for the rank"
    (container,) = specs[0]["containers"]
    assert container["name"] == "pytorch"  # the operator finds the training container by this name
    gpus = container["resources"]["limits"].get("nvidia.com/gpu", 0)
    assert gpus == (ov["devices"] if ov["accelerator"] in ("gpu", "cuda") else 0)


def test_pytorchjob_merges_the_overrides_it_mounts_and_trains_on_the_prepared_split():
    (job,) = by_kind("PyTorchJob")
    spec = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    (container,) = spec["containers"]
    script = " ".join(container["args"]).replace("\\\n", " ")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    cm_volume = next(n for n, v in volumes.items() if v.get("configMap", {}).get("name") == "mir-train-overrides")
    gen = next(g for g in kustomization()["configMapGenerator"] if g["name"] == "mir-train-overrides")
    key = gen["files"][0].split("=")[0]
    words = shlex.split(script)
    assert words[words.index("--overrides") + 1] == f"{mounts[cm_volume]}/{key}"
    assert "pipelines.settings" in words and "torchrun" in words
    assert words[words.index("--module") + 1] == "components.train"
    split_dir = words[words.index("--split") + 1]
    workspace = next(n for n, v in volumes.items() if "persistentVolumeClaim" in v)
    assert split_dir.startswith(mounts[workspace] + "/")
    # the data-preparation Job writes exactly that folder, on the same claim
    (prep,) = by_kind("Job")
    pspec = prep["spec"]["template"]["spec"]
    pwords = shlex.split(" ".join(pspec["containers"][0]["args"]))
    split_cmd = pwords.index("components.split")
    pmounts = {m["name"]: m["mountPath"] for m in pspec["containers"][0]["volumeMounts"]}
    pclaims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pspec["volumes"]
               if "persistentVolumeClaim" in v}
    (pvol,) = pclaims
    out = pwords[pwords.index("--out", split_cmd) + 1]
    assert pclaims[pvol] == volumes[workspace]["persistentVolumeClaim"]["claimName"]
    assert out.replace(pmounts[pvol], "", 1) == split_dir.replace(mounts[workspace], "", 1)


def test_overrides_merge_into_params_and_load_as_the_train_config(tmp_path):
    from pipelines.settings import merged_params_file

    out = tmp_path / "params.yaml"
    params = merged_params_file(str(REPO / "params.yaml"), str(out), overrides_file=str(K8S / "train-overrides.yaml"))
    for key, value in overrides().items():
        assert params["train"][key] == value
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["train"]["max_epochs"] == base["train"]["max_epochs"]  # the rest is the project's
    assert yaml.safe_load(out.read_text()) == params
