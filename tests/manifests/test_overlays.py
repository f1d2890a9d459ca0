"""Every kustomize overlay builds offline, and what it builds is hardened, pinned and consistent.

``kubectl kustomize`` runs locally (no cluster). Each built object is also checked field by field
against kserve's and the kubernetes client's models, so a misspelt key fails here, not on apply.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.deploy import manifests
from components.deploy.config import DeployConfig

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
OVERLAYS = sorted(p.name for p in (MANIFESTS / "overlays").iterdir() if p.is_dir())
NAMESPACES = {"dev": "recsynth-dev", "production": "recsynth"}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
PART_OF = "app.kubernetes.io/part-of"


def kubectl() -> str:
    path = shutil.which("kubectl") or (
        "/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists() else None
    )
    if path is None:
        pytest.skip("kubectl is not installed; the overlays cannot be built here")
    return path


@functools.cache
def build(target: str) -> tuple[dict[str, Any], ...]:
    """The objects ``kubectl kustomize manifests/<target>`` prints."""
    proc = subprocess.run(
        [kubectl(), "kustomize", str(MANIFESTS / target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"kustomize {target} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def of_kind(docs, kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def containers_of(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, container, pod-level spec) for every container a resource runs."""
    kind = doc["kind"]
    if kind in WORKLOADS:
        pod = doc["spec"]["template"]["spec"]
        return [(f"{kind}/{doc['metadata']['name']}", c, pod) for c in pod["containers"]]
    if kind == "InferenceService":
        pred = doc["spec"]["predictor"]
        found = [(f"{kind}/{doc['metadata']['name']}", pred["model"], pred)]
        transformer = doc["spec"].get("transformer")
        if transformer:
            found += [
                (f"{kind}/{doc['metadata']['name']}/transformer", c, transformer)
                for c in transformer["containers"]
            ]
        return found
    if kind == "ServingRuntime":
        return [
            (f"{kind}/{doc['metadata']['name']}", c, doc["spec"]) for c in doc["spec"]["containers"]
        ]
    return []


def test_at_least_dev_and_production_overlays_exist() -> None:
    assert {"dev", "production"} <= set(OVERLAYS)


@pytest.mark.parametrize("env", OVERLAYS)
def test_overlay_builds_the_expected_resources(env: str) -> None:
    kinds = sorted({d["kind"] for d in build(f"overlays/{env}")})
    assert kinds == sorted(
        [
            "ConfigMap",
            "InferenceService",
            "Namespace",
            "NetworkPolicy",
            "PersistentVolumeClaim",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ServingRuntime",
            "StatefulSet",
        ]
    )
    names = {d["metadata"]["name"] for d in of_kind(build(f"overlays/{env}"), "InferenceService")}
    assert names == {"recsynth-recommender", "recsynth-generator"}


@pytest.mark.parametrize("env", OVERLAYS)
def test_every_field_is_valid_for_the_kserve_and_kubernetes_models(env: str) -> None:
    for doc in build(f"overlays/{env}"):
        klass = manifests.model_class(doc)
        assert klass is not None, f"no model known for {doc['apiVersion']} {doc['kind']}"
        assert manifests.model_problems(doc, klass) == [], doc["metadata"]["name"]


@pytest.mark.parametrize("env", OVERLAYS)
def test_every_pod_is_hardened(env: str) -> None:
    checked = 0
    for doc in build(f"overlays/{env}"):
        for where, container, pod in containers_of(doc):
            sec = container.get("securityContext", {})
            pod_sec = pod.get("securityContext", {})
            assert sec.get("runAsNonRoot", pod_sec.get("runAsNonRoot")) is True, where
            seccomp = sec.get("seccompProfile") or pod_sec.get("seccompProfile") or {}
            assert seccomp.get("type") == "RuntimeDefault", where
            assert sec.get("readOnlyRootFilesystem") is True, where
            assert sec.get("allowPrivilegeEscalation") is False, where
            assert sec.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sec.get("capabilities", {}).get("add"), where
            assert sec.get("privileged") in (None, False), where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{where} {kind}"
            if doc["kind"] != "ServingRuntime":  # the InferenceServices carry the probes
                assert container.get("readinessProbe"), where
                assert container.get("livenessProbe"), where
            checked += 1
    assert checked == 5  # redis, the runtime, two predictors, the recommender's transformer


def _images(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k == "image" and isinstance(v, str)]
        return found + [i for v in node.values() for i in _images(v)]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


def image_is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("redis:7.4.1-alpine", True),
        ("ghcr.io/a/b@sha256:" + "0" * 64, True),
        ("redis", False),
        ("redis:latest", False),
        ("localhost:5000/redis", False),
    ],
)
def test_image_pin_rule(image: str, pinned: bool) -> None:
    assert image_is_pinned(image) is pinned


@pytest.mark.parametrize("env", OVERLAYS)
def test_images_are_pinned_by_tag(env: str) -> None:
    images = _images(list(build(f"overlays/{env}")))
    assert len(images) == 5
    assert [i for i in images if not image_is_pinned(i)] == []


def test_production_predictors_get_one_gpu_and_the_canary() -> None:
    isvcs = of_kind(build("overlays/production"), "InferenceService")
    assert len(isvcs) == 2
    for isvc in isvcs:
        pred = isvc["spec"]["predictor"]
        res = pred["model"]["resources"]
        assert res["limits"]["nvidia.com/gpu"] == "1"
        assert res["requests"]["nvidia.com/gpu"] == "1"
        assert {e["name"]: e["value"] for e in pred["model"]["env"]}["RECSYNTH_REQUIRE_GPU"] == "1"
        assert pred["canaryTrafficPercent"] == 10
        assert pred["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert pred["minReplicas"] == 2
        assert {e["name"]: e["value"] for e in pred["model"]["env"]}["RECSYNTH_VARIANT"] == "canary"


def test_production_recommender_transformer_splits_like_its_predictor_on_cpu() -> None:
    (isvc,) = [
        d
        for d in of_kind(build("overlays/production"), "InferenceService")
        if d["metadata"]["name"] == "recsynth-recommender"
    ]
    transformer = isvc["spec"]["transformer"]
    (container,) = transformer["containers"]
    assert transformer["canaryTrafficPercent"] == 10
    assert transformer["minReplicas"] == 2
    assert {e["name"]: e["value"] for e in container["env"]}["RECSYNTH_VARIANT"] == "canary"
    assert "nvidia.com/gpu" not in yaml.safe_dump(transformer)
    assert container["args"][:4] == ["--model", "recommender", "--role", "transformer"]
    assert isvc["spec"]["predictor"]["model"]["args"] == ["--model", "recommender", "--role",
                                                          "predictor"]  # fmt: skip
    # the transformer reads the same export as its predictor
    (uri,) = transformer["storageUris"]
    assert uri["uri"] == isvc["spec"]["predictor"]["model"]["storageUri"]


def test_dev_asks_for_no_gpu_and_no_canary() -> None:
    docs = build("overlays/dev")
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(docs)
    for isvc in of_kind(docs, "InferenceService"):
        pred = isvc["spec"]["predictor"]
        assert "canaryTrafficPercent" not in pred
        assert {e["name"]: e["value"] for e in pred["model"]["env"]}["RECSYNTH_REQUIRE_GPU"] == "0"
        assert {e["name"]: e["value"] for e in pred["model"]["env"]}["RECSYNTH_VARIANT"] == "stable"
        assert pred["minReplicas"] == 0
        transformer = isvc["spec"].get("transformer")
        if transformer:
            assert "canaryTrafficPercent" not in transformer
            assert transformer["minReplicas"] == 0


@pytest.mark.parametrize("env", OVERLAYS)
def test_labels_and_namespaces(env: str) -> None:
    namespace = NAMESPACES[env]
    for doc in build(f"overlays/{env}"):
        meta = doc["metadata"]
        labels = meta.get("labels", {})
        assert labels.get(PART_OF) == "recsynth", meta["name"]
        assert labels.get("app.kubernetes.io/managed-by") == "kustomize", meta["name"]
        assert labels.get("app.kubernetes.io/instance") == f"recsynth-{env}", meta["name"]
        assert labels.get("app.kubernetes.io/name"), meta["name"]
        assert labels.get("app.kubernetes.io/version") == "0.1.0", meta["name"]
        if doc["kind"] == "Namespace":
            assert meta["name"] == namespace
        else:
            assert meta["namespace"] == namespace, meta["name"]
        if doc["kind"] in WORKLOADS:
            assert doc["spec"]["template"]["metadata"]["labels"][PART_OF] == "recsynth"
    for binding in of_kind(build(f"overlays/{env}"), "RoleBinding"):
        assert [s["namespace"] for s in binding["subjects"]] == [namespace]


@pytest.mark.parametrize("env", OVERLAYS)
def test_references_resolve_within_the_overlay(env: str) -> None:
    docs = build(f"overlays/{env}")
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in docs if d["kind"] in WORKLOADS]
    for svc in of_kind(docs, "Service"):
        selector = svc["spec"]["selector"].items()
        assert any(selector <= pod.items() for pod in pods), svc["metadata"]["name"]
    for isvc in of_kind(docs, "InferenceService"):
        pred = isvc["spec"]["predictor"]
        assert ("ServiceAccount", pred["serviceAccountName"]) in names
        assert ("ServingRuntime", pred["model"]["runtime"]) in names
        for volume in pred.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
            if "persistentVolumeClaim" in volume:
                assert (
                    "PersistentVolumeClaim",
                    volume["persistentVolumeClaim"]["claimName"],
                ) in names
        mounts = {m["name"] for m in pred["model"].get("volumeMounts", [])}
        assert mounts == {v["name"] for v in pred.get("volumes", [])}
        transformer = isvc["spec"].get("transformer")
        if transformer:
            assert ("ServiceAccount", transformer["serviceAccountName"]) in names
            for volume in transformer.get("volumes", []):
                if "configMap" in volume:
                    assert ("ConfigMap", volume["configMap"]["name"]) in names
                if "persistentVolumeClaim" in volume:
                    claim_name = volume["persistentVolumeClaim"]["claimName"]
                    assert ("PersistentVolumeClaim", claim_name) in names
            used = {m["name"] for c in transformer["containers"] for m in c["volumeMounts"]}
            assert used == {v["name"] for v in transformer["volumes"]}
        claim = pred["model"]["storageUri"].removeprefix("pvc://").split("/")[0]
        assert ("PersistentVolumeClaim", claim) in names
    runtime = of_kind(docs, "ServingRuntime")[0]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert all(
        i["spec"]["predictor"]["model"]["modelFormat"]["name"] in formats
        for i in of_kind(docs, "InferenceService")
    )


def test_deploy_role_may_patch_inferenceservices_and_nothing_broader() -> None:
    docs = build("overlays/production")
    (role,) = of_kind(docs, "Role")
    (binding,) = of_kind(docs, "RoleBinding")
    isvc_rules = [r for r in role["rules"] if "inferenceservices" in r["resources"]]
    assert isvc_rules and {"get", "patch", "update"} <= set(isvc_rules[0]["verbs"])
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in role["rules"])
    assert all("delete" not in r["verbs"] for r in role["rules"])
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == "recsynth-pipeline"
    assert ("ServiceAccount", "recsynth-pipeline") in {
        (d["kind"], d["metadata"]["name"]) for d in docs
    }


def test_feast_config_uses_redis_and_the_mounted_registry() -> None:
    (cm,) = [
        c
        for c in of_kind(build("overlays/production"), "ConfigMap")
        if "feast" in c["metadata"]["name"]
    ]
    store = yaml.safe_load(cm["data"]["feature_store.yaml"])
    assert store["online_store"]["type"] == "redis"
    assert store["registry"]["path"].startswith(manifests.FEATURE_REGISTRY_MOUNT + "/")
    local = ROOT / "feature_repo" / "feature_store.cluster.yaml"
    if local.is_file():  # the same project and key serialisation as the feature repo's own
        ref = yaml.safe_load(local.read_text())
        assert store["project"] == ref["project"]
        assert store["entity_key_serialization_version"] == ref["entity_key_serialization_version"]


def test_base_predictors_are_what_the_deploy_step_renders() -> None:
    """The checked-in base and deploy.manifests must not drift apart."""
    cfg = DeployConfig(gpus_per_predictor=0, canary_traffic_percent=None)
    docs = build("base")
    for model in manifests.MODELS:
        (isvc,) = [
            d
            for d in of_kind(docs, "InferenceService")
            if d["metadata"]["name"] == manifests.isvc_name(model)
        ]
        rendered = manifests.to_dict(
            manifests.inference_service(cfg, model, run_id="stable", canary_traffic_percent=None)
        )
        assert isvc["spec"] == rendered["spec"], model
        assert isvc["metadata"]["annotations"] == rendered["metadata"]["annotations"]
    (runtime,) = of_kind(docs, "ServingRuntime")
    assert runtime["spec"] == manifests.to_dict(manifests.serving_runtime(cfg))["spec"]


def test_base_holds_one_resource_per_file_named_component_kind() -> None:
    listed = yaml.safe_load((MANIFESTS / "base" / "kustomization.yaml").read_text())["resources"]
    files = sorted(p.name for p in (MANIFESTS / "base").glob("*.yaml"))
    assert sorted(listed) == [
        f for f in files if f not in ("kustomization.yaml", "kustomizeconfig.yaml")
    ]
    for name in listed:
        docs = [d for d in yaml.safe_load_all((MANIFESTS / "base" / name).read_text()) if d]
        assert len(docs) == 1, name
        assert name.endswith(f"-{docs[0]['kind'].lower()}.yaml"), name
