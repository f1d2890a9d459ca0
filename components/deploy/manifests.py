"""The cluster's KServe objects for one run, built with kserve's own models.

Building the InferenceServices from ``kserve.V1beta1InferenceService`` (not from YAML strings)
means a misspelt field is a Python error here, not a rejected apply on the cluster. The same module
checks any parsed manifest against those models (:func:`model_problems`), which the manifest tests
use on every kustomize overlay.

The recommender runs as KServe's two components, as issue 6 asks: ``spec.transformer`` (Feast
lookup, validation, ranking: ``python -m serving --role transformer``) in front of
``spec.predictor`` (bare ONNX scoring: ``--role predictor``), talking V2 over HTTP; the generator
is a predictor alone. Every container carries ``RECSYNTH_VARIANT`` (``canary`` for the rollout
and rollback renders, ``stable`` for promote and the base), which every answer and metric names.

Three variants of each InferenceService are rendered for the A/B rollout:

- the rollout itself: ``canaryTrafficPercent`` sends that share of traffic to this run's revision,
  the last rolled-out revision keeps the rest;
- ``promote/``: no canary field, so this run's revision takes all traffic;
- ``rollback/``: ``canaryTrafficPercent: 0``, so all traffic is pinned to the previous revision.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import kserve.models as kserve_models
import kubernetes.client.models as k8s_models
import yaml
from kserve import (
    V1alpha1ServingRuntime,
    V1alpha1ServingRuntimeSpec,
    V1alpha1SupportedModelFormat,
    V1beta1InferenceService,
    V1beta1InferenceServiceSpec,
    V1beta1ModelFormat,
    V1beta1ModelSpec,
    V1beta1PredictorSpec,
    V1beta1TransformerSpec,
)
from kubernetes import client

from components.common.errors import ConfigError
from components.deploy.config import DeployConfig

Model = Literal["recommender", "generator"]
MODELS: tuple[Model, ...] = ("recommender", "generator")
Variant = Literal["rollout", "promote", "rollback"]

KSERVE_API = "serving.kserve.io/v1beta1"
RUNTIME_API = "serving.kserve.io/v1alpha1"
RUNTIME_NAME = "recsynth-onnx"
MODEL_FORMAT = "recsynth-onnx"
SERVING_PORT = 8080
# Where the cluster's feature_store.yaml (ConfigMap recsynth-feast-config) is mounted.
FEATURE_REPO_MOUNT = "/etc/recsynth/feature-repo"
FEATURE_REGISTRY_MOUNT = "/var/lib/recsynth/feature-store"
MODELS_PVC = "recsynth-models"
# Same-namespace short name of the Redis Service, so every overlay's namespace works unchanged.
REDIS_ADDRESS = "recsynth-redis:6379"
# Where the transformer finds the export's catalogue.json (KServe's storageUris download).
TRANSFORMER_MODEL_MOUNT = "/mnt/models"
# KServe appends --predictor_host=<isvc>-predictor.<namespace> to a transformer's arguments; this
# same-namespace default (the Knative Service KServe creates) is what it means without them.
PREDICTOR_HOST_DEFAULT = "recsynth-recommender-predictor"
VARIANT_ENV = "RECSYNTH_VARIANT"
STABLE, CANARY = "stable", "canary"
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

_LABELS = {
    "app.kubernetes.io/part-of": "recsynth",
    "app.kubernetes.io/managed-by": "recsynth-deploy",
}

# Container hardening every recsynth pod gets. Set on the container (not the pod) because Knative
# accepts these container fields without feature flags.
CONTAINER_SECURITY = k8s_models.V1SecurityContext(
    run_as_non_root=True,
    run_as_user=10001,
    run_as_group=10001,
    read_only_root_filesystem=True,
    allow_privilege_escalation=False,
    capabilities=k8s_models.V1Capabilities(drop=["ALL"]),
    seccomp_profile=k8s_models.V1SeccompProfile(type="RuntimeDefault"),
)

# Requests sized for one ONNX session plus feast's client; the generator's logits need more room.
_RESOURCES: dict[Model, dict[str, dict[str, str]]] = {
    "recommender": {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": "2Gi"},
    },
    "generator": {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": "3Gi"},
    },
}
# The recommender's predictor holds only the ONNX session; feast and its client live in the
# transformer, which needs no GPU.
_PREDICTOR_ONLY_RESOURCES = {
    "requests": {"cpu": "250m", "memory": "512Mi"},
    "limits": {"cpu": "2", "memory": "1Gi"},
}
_TRANSFORMER_RESOURCES = {
    "requests": {"cpu": "500m", "memory": "1Gi"},
    "limits": {"cpu": "2", "memory": "2Gi"},
}


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is safe as a path segment of the storage URI."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id):
        raise ConfigError(
            f"run_id={run_id!r} is not allowed: use 1-63 characters from letters, digits, "
            "'.', '_' and '-', starting with a letter or digit"
        )
    return run_id


def storage_uri(cfg: DeployConfig, run_id: str, model: Model) -> str:
    """Where the cluster finds this run's exported ``model``: ``<prefix>/<run_id>/<model>``."""
    return f"{cfg.storage_uri_prefix.rstrip('/')}/{check_run_id(run_id)}/{model}"


def isvc_name(model: Model) -> str:
    return f"recsynth-{model}"


def _probe(path: str, *, initial_delay_s: int, period_s: int) -> k8s_models.V1Probe:
    return k8s_models.V1Probe(
        http_get=k8s_models.V1HTTPGetAction(path=path, port=SERVING_PORT),
        initial_delay_seconds=initial_delay_s,
        period_seconds=period_s,
        timeout_seconds=5,
        failure_threshold=6,
    )


def _feast_mounts() -> tuple[list[Any], list[Any], list[Any]]:
    """(env, volume mounts, volumes) that give a container the cluster's Feast repo."""
    env = [
        # feature_store.yaml (ConfigMap recsynth-feast-config) expands this when feast loads it.
        k8s_models.V1EnvVar(name="RECSYNTH_REDIS_CONNECTION_STRING", value=REDIS_ADDRESS)
    ]
    mounts = [
        k8s_models.V1VolumeMount(
            name="feast-config", mount_path=FEATURE_REPO_MOUNT, read_only=True
        ),
        k8s_models.V1VolumeMount(
            name="feature-registry",
            mount_path=FEATURE_REGISTRY_MOUNT,
            sub_path="feature-store",
            read_only=True,
        ),
    ]
    volumes = [
        k8s_models.V1Volume(
            name="feast-config",
            config_map=k8s_models.V1ConfigMapVolumeSource(name="recsynth-feast-config"),
        ),
        k8s_models.V1Volume(
            name="feature-registry",
            persistent_volume_claim=k8s_models.V1PersistentVolumeClaimVolumeSource(
                claim_name=MODELS_PVC, read_only=True
            ),
        ),
    ]
    return env, mounts, volumes


def _tmp_volume() -> tuple[Any, Any]:
    return (
        k8s_models.V1VolumeMount(name="tmp", mount_path="/tmp"),
        k8s_models.V1Volume(name="tmp", empty_dir=k8s_models.V1EmptyDirVolumeSource()),
    )


def transformer_spec(
    cfg: DeployConfig, *, run_id: str, canary_traffic_percent: int | None, variant: str
) -> V1beta1TransformerSpec:
    """The recommender's transformer: Feast lookup, validation and ranking, no ONNX session.

    It reads ``catalogue.json`` and ``metadata.json`` of the same export as its predictor (KServe
    downloads the storage URI to ``/mnt/models``) and checks every predictor answer's width and
    model version against them.
    """
    feast_env, feast_mounts, feast_volumes = _feast_mounts()
    tmp_mount, tmp_volume = _tmp_volume()
    container = k8s_models.V1Container(
        name="kserve-container",
        image=cfg.serving_image,
        command=["python", "-m", "serving"],
        # KServe appends --model_name, --predictor_host and --http_port; the CLI takes them.
        args=[
            "--model",
            "recommender",
            "--role",
            "transformer",
            "--model-dir",
            TRANSFORMER_MODEL_MOUNT,
            "--feature-repo",
            FEATURE_REPO_MOUNT,
            "--predictor-host",
            PREDICTOR_HOST_DEFAULT,
            "--host",
            "0.0.0.0",
            "--port",
            str(SERVING_PORT),
        ],  # fmt: skip
        env=[
            # The pod network is the boundary inside a cluster; the CLI refuses 0.0.0.0 without it.
            k8s_models.V1EnvVar(name="RECSYNTH_ALLOW_ALL_INTERFACES", value="1"),
            k8s_models.V1EnvVar(name="HOME", value="/tmp"),
            k8s_models.V1EnvVar(name="RECSYNTH_RUN_ID", value=run_id),
            k8s_models.V1EnvVar(name=VARIANT_ENV, value=variant),
            *feast_env,
        ],
        ports=[k8s_models.V1ContainerPort(container_port=SERVING_PORT, protocol="TCP")],
        resources=k8s_models.V1ResourceRequirements(
            **{kind: dict(v) for kind, v in _TRANSFORMER_RESOURCES.items()}
        ),
        security_context=CONTAINER_SECURITY,
        readiness_probe=_probe("/v2/models/recommender/ready", initial_delay_s=5, period_s=10),
        liveness_probe=_probe("/v2/health/live", initial_delay_s=30, period_s=20),
        volume_mounts=[tmp_mount, *feast_mounts],
    )
    return V1beta1TransformerSpec(
        canary_traffic_percent=canary_traffic_percent,
        min_replicas=1,
        max_replicas=3,
        service_account_name="recsynth-serving",
        automount_service_account_token=False,
        storage_uris=[
            kserve_models.V1beta1StorageUri(
                uri=storage_uri(cfg, run_id, "recommender"), mount_path=TRANSFORMER_MODEL_MOUNT
            )
        ],
        volumes=[tmp_volume, *feast_volumes],
        containers=[container],
    )


def variant_label(canary_traffic_percent: int | None) -> str:
    """``canary`` while a share of traffic is split off (or pinned back), else ``stable``."""
    return STABLE if canary_traffic_percent is None else CANARY


def inference_service(
    cfg: DeployConfig, model: Model, *, run_id: str, canary_traffic_percent: int | None
) -> V1beta1InferenceService:
    """The InferenceService that serves ``model`` of run ``run_id`` with the recsynth runtime.

    The recommender gets a transformer (Feast, ranking) and a bare ONNX predictor; the
    generator a predictor alone.

    Args:
        cfg: the deploy step's settings (namespace, storage prefix, GPUs, image).
        model: "recommender" or "generator"; also the model's name on the wire.
        run_id: the pipeline run whose export the predictor loads.
        canary_traffic_percent: share of traffic for this revision; None for all of it, 0 to pin
            all traffic to the previous revision.
    """
    if model not in MODELS:
        raise ConfigError(f"model={model!r} is not one of {list(MODELS)}")
    variant = variant_label(canary_traffic_percent)
    # The runtime supplies `python -m serving --model-dir /mnt/models --host 0.0.0.0 --port 8080`;
    # KServe appends these args to the runtime's.
    args = ["--model", model]
    if model == "recommender":
        args += ["--role", "predictor"]
    tmp_mount, tmp_volume = _tmp_volume()

    resources = {
        kind: dict(values)
        for kind, values in (
            _PREDICTOR_ONLY_RESOURCES if model == "recommender" else _RESOURCES[model]
        ).items()
    }
    if cfg.gpus_per_predictor:
        for kind in ("requests", "limits"):
            resources[kind]["nvidia.com/gpu"] = str(cfg.gpus_per_predictor)
    env = [
        # The server refuses to start on CPU when the pod was promised a GPU.
        k8s_models.V1EnvVar(
            name="RECSYNTH_REQUIRE_GPU", value="1" if cfg.gpus_per_predictor else "0"
        ),
        k8s_models.V1EnvVar(name="HOME", value="/tmp"),
        k8s_models.V1EnvVar(name="RECSYNTH_RUN_ID", value=run_id),
        k8s_models.V1EnvVar(name=VARIANT_ENV, value=variant),
    ]
    tolerations = None
    if cfg.gpus_per_predictor:
        tolerations = [
            k8s_models.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
        ]

    model_spec = V1beta1ModelSpec(
        name="kserve-container",
        model_format=V1beta1ModelFormat(name=MODEL_FORMAT, version="1"),
        runtime=RUNTIME_NAME,
        protocol_version="v2",
        storage_uri=storage_uri(cfg, run_id, model),
        image=cfg.serving_image,
        args=args,
        env=env,
        resources=k8s_models.V1ResourceRequirements(**resources),
        security_context=CONTAINER_SECURITY,
        readiness_probe=_probe(f"/v2/models/{model}/ready", initial_delay_s=5, period_s=10),
        liveness_probe=_probe("/v2/health/live", initial_delay_s=30, period_s=20),
        volume_mounts=[tmp_mount],
    )
    predictor = V1beta1PredictorSpec(
        canary_traffic_percent=canary_traffic_percent,
        min_replicas=1,
        max_replicas=3,
        service_account_name="recsynth-serving",
        automount_service_account_token=False,
        tolerations=tolerations,
        volumes=[tmp_volume],
        model=model_spec,
    )
    transformer = None
    if model == "recommender":
        transformer = transformer_spec(
            cfg,
            run_id=run_id,
            canary_traffic_percent=canary_traffic_percent,
            variant=variant,
        )
    metadata = k8s_models.V1ObjectMeta(
        name=isvc_name(model),
        namespace=cfg.namespace,
        labels={
            **_LABELS,
            "app.kubernetes.io/name": model,
            "app.kubernetes.io/component": "predictor",
        },
        annotations={
            # Canary traffic splitting needs KServe's Knative mode (not Standard).
            "serving.kserve.io/deploymentMode": "Knative",
            "recsynth.io/run-id": run_id,
        },
    )
    return V1beta1InferenceService(
        api_version=KSERVE_API,
        kind="InferenceService",
        metadata=metadata,
        spec=V1beta1InferenceServiceSpec(predictor=predictor, transformer=transformer),
    )


def serving_runtime(cfg: DeployConfig) -> V1alpha1ServingRuntime:
    """The ServingRuntime that runs ``python -m serving`` from the recsynth serving image."""
    container = k8s_models.V1Container(
        name="kserve-container",
        image=cfg.serving_image,
        command=["python", "-m", "serving"],
        # Inside a pod the server must listen on the pod's address, or neither the kubelet's
        # probes nor the Service reach it; only loopback is allowed for local runs.
        args=["--model-dir", "/mnt/models", "--host", "0.0.0.0", "--port", str(SERVING_PORT)],
        # serving refuses a wildcard host unless told it runs inside a container.
        env=[k8s_models.V1EnvVar(name="RECSYNTH_ALLOW_ALL_INTERFACES", value="1")],
        ports=[k8s_models.V1ContainerPort(container_port=SERVING_PORT, protocol="TCP")],
        resources=k8s_models.V1ResourceRequirements(
            requests={"cpu": "500m", "memory": "1Gi"}, limits={"cpu": "2", "memory": "2Gi"}
        ),
        security_context=CONTAINER_SECURITY,
    )
    return V1alpha1ServingRuntime(
        api_version=RUNTIME_API,
        kind="ServingRuntime",
        metadata=k8s_models.V1ObjectMeta(
            name=RUNTIME_NAME,
            namespace=cfg.namespace,
            labels={
                **_LABELS,
                "app.kubernetes.io/name": "serving",
                "app.kubernetes.io/component": "runtime",
            },
        ),
        spec=V1alpha1ServingRuntimeSpec(
            supported_model_formats=[
                V1alpha1SupportedModelFormat(name=MODEL_FORMAT, version="1", auto_select=True)
            ],
            protocol_versions=["v2"],
            multi_model=False,
            containers=[container],
        ),
    )


def to_dict(obj: Any) -> dict[str, Any]:
    """The Kubernetes JSON form of a kserve/kubernetes model object (None fields dropped)."""
    return client.ApiClient().sanitize_for_serialization(obj)


def to_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=False)


def variant_percent(cfg: DeployConfig, variant: Variant) -> int | None:
    """canaryTrafficPercent of each rollout variant."""
    if variant == "rollout":
        return cfg.canary_traffic_percent
    if variant == "promote":
        return None
    return 0


def render_all(cfg: DeployConfig, *, run_id: str, out_dir: Path) -> dict[str, list[str]]:
    """Write the runtime and every InferenceService variant; return file paths per variant.

    Layout under ``out_dir``: ``serving-servingruntime.yaml``, ``<model>-inferenceservice.yaml``
    (rollout), ``promote/<model>-inferenceservice.yaml`` and ``rollback/...``.
    """
    check_run_id(run_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    runtime_file = out_dir / "serving-servingruntime.yaml"
    runtime_file.write_text(to_yaml(serving_runtime(cfg)), encoding="utf-8")
    files: dict[str, list[str]] = {"runtime": [runtime_file.name]}
    for variant in ("rollout", "promote", "rollback"):
        sub = out_dir if variant == "rollout" else out_dir / variant
        sub.mkdir(parents=True, exist_ok=True)
        names = []
        for model in MODELS:
            isvc = inference_service(
                cfg, model, run_id=run_id, canary_traffic_percent=variant_percent(cfg, variant)
            )
            path = sub / f"{model}-inferenceservice.yaml"
            path.write_text(to_yaml(isvc), encoding="utf-8")
            names.append(str(path.relative_to(out_dir)))
        files[variant] = names
    return files


def rollout_markdown(cfg: DeployConfig, *, run_id: str, files: dict[str, list[str]]) -> str:
    """The short how-to that says which kubectl command applies which rendered file."""
    ns = cfg.namespace
    canary = cfg.canary_traffic_percent
    first = (
        f"sends {canary} % of each model's traffic to run `{run_id}`; the previous revision keeps "
        f"{100 - canary} %"
        if canary is not None
        else f"rolls run `{run_id}` out to 100 % at once (no canary configured)"
    )
    lines = [
        f"# Rollout of run `{run_id}`",
        "",
        f"Namespace `{ns}`. The base layer (`kubectl apply -k manifests/overlays/production`) must",
        "be in place: namespace, models PVC, Redis, feast ConfigMap, service accounts and RBAC.",
        f"This run's exports must lie on the PVC `{MODELS_PVC}` under `{run_id}/recommender/` and",
        f"`{run_id}/generator/` (storage URIs `{storage_uri(cfg, run_id, 'recommender')}`,",
        f"`{storage_uri(cfg, run_id, 'generator')}`).",
        "",
        "Run the commands from this deployment directory. On a first rollout there is no previous",
        "revision, so the canary step already serves all traffic.",
        "",
        "| step | command | effect |",
        "|---|---|---|",
        f"| 0. runtime | `kubectl apply -n {ns} -f manifests/{files['runtime'][0]}` | "
        "the recsynth ONNX ServingRuntime |",
        f"| 1. canary | `kubectl apply -n {ns} -f manifests/recommender-inferenceservice.yaml "
        f"-f manifests/generator-inferenceservice.yaml` | {first} |",
        f"| 2a. promote | `kubectl apply -n {ns} -f manifests/promote/` | "
        f"run `{run_id}` takes 100 % of the traffic |",
        f"| 2b. rollback | `kubectl apply -n {ns} -f manifests/rollback/` | "
        "canaryTrafficPercent 0: all traffic back on the previous revision |",
        "",
        f"Watch the split with `kubectl get isvc -n {ns}` (columns PREV and LATEST). Canary",
        "splitting needs KServe's Knative deployment mode, which the manifests request.",
        "",
        "The recommender runs as a transformer (Feast lookup, ranking) in front of a bare ONNX",
        "predictor; both split traffic alike. Every answer and the `recsynth_requests_total`",
        "metric carry the serving revision's `RECSYNTH_VARIANT`: `canary` for steps 1 and 2b,",
        "`stable` after 2a (promote changes that label, so KServe starts one more revision of the",
        "same model and sends it all traffic).",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# validation of parsed manifests against the kserve / kubernetes models

_LIST = re.compile(r"^list\[(.+)\]$")
_DICT = re.compile(r"^dict\(([^,]+),\s*(.+)\)$")
_KINDS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): V1beta1InferenceService,
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): V1alpha1ServingRuntime,
    (
        "serving.kserve.io/v1alpha1",
        "ClusterServingRuntime",
    ): kserve_models.V1alpha1ClusterServingRuntime,
    ("apps/v1", "Deployment"): k8s_models.V1Deployment,
    ("apps/v1", "StatefulSet"): k8s_models.V1StatefulSet,
    ("v1", "Service"): k8s_models.V1Service,
    ("v1", "ConfigMap"): k8s_models.V1ConfigMap,
    ("v1", "PersistentVolumeClaim"): k8s_models.V1PersistentVolumeClaim,
    ("v1", "ServiceAccount"): k8s_models.V1ServiceAccount,
    ("v1", "Namespace"): k8s_models.V1Namespace,
    ("rbac.authorization.k8s.io/v1", "Role"): k8s_models.V1Role,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): k8s_models.V1RoleBinding,
    ("networking.k8s.io/v1", "NetworkPolicy"): k8s_models.V1NetworkPolicy,
}


def model_class(resource: dict[str, Any]) -> type | None:
    """The kserve or kubernetes model class of a parsed manifest (None if unknown)."""
    return _KINDS.get((resource.get("apiVersion"), resource.get("kind")))


def model_problems(data: Any, klass: type | str, where: str = "") -> list[str]:
    """Every field of ``data`` that the model ``klass`` does not know or types differently.

    Walks the model's ``openapi_types`` / ``attribute_map``, so an unknown or misspelt key, a list
    where an object belongs or a string where an integer belongs is reported with its path.
    Types the installed client does not ship (a few Knative and newer Kubernetes ones) are
    accepted as they are.
    """
    if isinstance(klass, str):
        return _type_problems(data, klass, where)
    if not isinstance(data, dict):
        return [
            f"{where or '.'}: expected a mapping for {klass.__name__}, got {type(data).__name__}"
        ]
    by_json = {json_key: attr for attr, json_key in klass.attribute_map.items()}
    problems = []
    for key, value in data.items():
        attr = by_json.get(key)
        if attr is None:
            problems.append(f"{where}.{key}: unknown field of {klass.__name__}")
            continue
        problems += _type_problems(value, klass.openapi_types[attr], f"{where}.{key}")
    return problems


def _type_problems(value: Any, type_name: str, where: str) -> list[str]:
    if value is None:
        return []
    if match := _LIST.match(type_name):
        if not isinstance(value, list):
            return [f"{where}: expected a list ({type_name})"]
        return [
            p for i, v in enumerate(value) for p in _type_problems(v, match[1], f"{where}[{i}]")
        ]
    if match := _DICT.match(type_name):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping ({type_name})"]
        return [p for k, v in value.items() for p in _type_problems(v, match[2], f"{where}.{k}")]
    simple = {
        "str": (str,),
        "int": (int,),
        "bool": (bool,),
        "float": (int, float),
        "datetime": (str,),
        "date": (str,),
        "ResourceQuantity": (str, int, float),
    }
    if type_name in simple:
        ok = isinstance(value, simple[type_name]) and not (
            type_name in ("int", "float") and isinstance(value, bool)
        )
        return [] if ok else [f"{where}: expected {type_name}, got {value!r}"]
    if type_name == "object":
        return []
    klass = getattr(kserve_models, type_name, None) or getattr(k8s_models, type_name, None)
    if klass is None:
        return []
    return model_problems(value, klass, where)
