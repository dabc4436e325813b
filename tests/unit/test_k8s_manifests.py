"""deploy/k8s stays deployable: structure, probes, security, GPU, KEDA, and real CLI commands."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from driftline.schemas.topics import CAMERA_IMAGES, SENSOR_WINDOWS, TOPIC_TABLE
from driftline.services.alerts.settings import AlertsSettings
from driftline.services.cli import build_parser
from driftline.services.features.settings import FeaturesSettings
from driftline.services.inference.settings import InferenceSettings
from driftline.services.runtime.settings import DriftlineSettings
from driftline.trainer.settings import TrainerSettings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
DEPLOYMENTS = {
    "inference-sensor": ("infer", "driftline:services"),
    "inference-image": ("infer", "driftline:services"),
    "features": ("features", "driftline:services"),
    "alerts": ("alerts", "driftline:services"),
    "trainer": ("train", "driftline:trainer"),
}
SETTINGS: dict[str, type[BaseSettings]] = {
    "infer": InferenceSettings,
    "features": FeaturesSettings,
    "alerts": AlertsSettings,
    "train": TrainerSettings,
    "topics": DriftlineSettings,
}
INPUT_TOPIC = {"sensor": SENSOR_WINDOWS, "image": CAMERA_IMAGES}


def _load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return data


@pytest.fixture(scope="module")
def resources(kustomization: dict[str, Any]) -> list[dict[str, Any]]:
    return [doc for name in kustomization["resources"] for doc in _load(name)]


def _by_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _flag(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def test_every_manifest_is_listed_and_no_secret_value_is_applied(
    kustomization: dict[str, Any], resources: list[dict[str, Any]]
) -> None:
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk - listed == {"secrets.example.yaml"}, "only the secret template stays out"
    assert listed <= on_disk
    assert kustomization["namespace"] == "driftline"
    assert not _by_kind(resources, "Secret"), "Secrets are created out of band, never applied"
    for secret in _load("secrets.example.yaml"):
        for key, value in secret["stringData"].items():
            if "PASSWORD" in key or key in ("password", "ca"):
                assert value == "", f"{secret['metadata']['name']}.{key} holds a value"
    (config,) = _by_kind(resources, "ConfigMap").values()
    for key in config["data"]:
        assert not any(word in key for word in ("PASSWORD", "SECRET", "TOKEN", "KEY")), key


def test_each_service_has_a_deployment_with_a_real_command(
    resources: list[dict[str, Any]],
) -> None:
    deployments = _by_kind(resources, "Deployment")
    assert set(deployments) == set(DEPLOYMENTS)
    parser = build_parser()
    jobs = _by_kind(resources, "Job")
    pods = [(n, d["spec"]["template"]["spec"]) for n, d in deployments.items()]
    pods += [(n, j["spec"]["template"]["spec"]) for n, j in jobs.items()]
    for name, pod in pods:
        for container in _containers(pod):
            args = [str(a) for a in container["args"]]
            parser.parse_args(args)  # exits (fails the test) on an unknown flag
            if name in DEPLOYMENTS and container not in pod.get("initContainers", []):
                command, image = DEPLOYMENTS[name]
                assert args[0] == command, name
                assert container["image"] == image, name
            settings = SETTINGS[args[0]]
            for env in container.get("env", []):
                field = env["name"].removeprefix("DRIFTLINE_").split("__")[0].lower()
                assert field in settings.model_fields, f"{name}: {env['name']} sets nothing"
    for modality in ("sensor", "image"):
        args = deployments[f"inference-{modality}"]["spec"]["template"]["spec"]["containers"][0][
            "args"
        ]
        assert _flag(args, "--modality") == modality


def test_shared_settings_name_real_fields(
    resources: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    (config,) = _by_kind(resources, "ConfigMap").values()
    for key, value in config["data"].items():
        field = key.removeprefix("DRIFTLINE_").split("__")[0].lower()
        assert any(field in cls.model_fields for cls in SETTINGS.values()), key
        monkeypatch.setenv(key, value)
    settings = DriftlineSettings()
    assert settings.kafka.bootstrap_servers == config["data"]["DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS"]
    assert settings.kafka.client["security.protocol"] == "SASL_SSL"
    assert settings.kafka.client["sasl.mechanism"] == "SCRAM-SHA-512"


def test_probes_metrics_and_prometheus_annotations_agree(resources: list[dict[str, Any]]) -> None:
    for name, deployment in _by_kind(resources, "Deployment").items():
        template = deployment["spec"]["template"]
        container = template["spec"]["containers"][0]
        port = int(_flag(container["args"], "--metrics-port") or 0)
        assert port, f"{name} serves no metrics"
        (declared,) = container["ports"]
        assert declared == {"name": "metrics", "containerPort": port}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
        labels = template["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == name
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items()
        if name.startswith("inference-"):
            assert labels["driftline.io/modality"] == name.split("-", 1)[1]
    services = _by_kind(resources, "Service")
    for name in DEPLOYMENTS:
        service = services[f"{name}-metrics"]
        assert service["spec"]["selector"] == {"app.kubernetes.io/name": name}
        assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_every_container_is_locked_down_and_sized(resources: list[dict[str, Any]]) -> None:
    workloads = [*_by_kind(resources, "Deployment").values(), *_by_kind(resources, "Job").values()]
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["serviceAccountName"] == "driftline"
        for container in _containers(pod):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"] == {"drop": ["ALL"]}, name
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), (name, bound)
            # A read-only root needs a writable /tmp.
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), name
    (account,) = _by_kind(resources, "ServiceAccount").values()
    assert account["automountServiceAccountToken"] is False


def test_the_trainer_runs_alone_on_a_gpu_node(resources: list[dict[str, Any]]) -> None:
    trainer = _by_kind(resources, "Deployment")["trainer"]
    assert trainer["spec"]["replicas"] == 1
    assert trainer["spec"]["strategy"] == {"type": "Recreate"}, "never two trainers at once"
    pod = trainer["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    for container in _containers(pod):
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert container["image"] == "driftline:trainer"
    (init,) = pod["initContainers"]
    assert init["args"] == ["train", "--bootstrap", "--if-missing"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert not mounts["artifacts"].get("readOnly"), "the trainer writes artifacts"
    for name in ("inference-sensor", "inference-image"):
        inference = _by_kind(resources, "Deployment")[name]["spec"]["template"]["spec"]
        mounts = {m["name"]: m for m in inference["containers"][0]["volumeMounts"]}
        assert mounts["artifacts"]["readOnly"] is True
        assert "nvidia.com/gpu" not in inference["containers"][0]["resources"]["limits"]


def test_keda_scales_inference_on_lag_up_to_the_partition_count(
    resources: list[dict[str, Any]],
) -> None:
    partitions = {spec.base: spec.partitions for spec in TOPIC_TABLE}
    scaled = _by_kind(resources, "ScaledObject")
    assert set(scaled) == {"inference-sensor", "inference-image"}
    auths = _by_kind(resources, "TriggerAuthentication")
    for modality in ("sensor", "image"):
        spec = scaled[f"inference-{modality}"]["spec"]
        assert spec["scaleTargetRef"]["name"] == f"inference-{modality}"
        topic = INPUT_TOPIC[modality]
        assert spec["maxReplicaCount"] == partitions[topic]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["topic"] == topic
        assert meta["consumerGroup"] == InferenceSettings(modality=modality).effective_group_id
        assert int(meta["lagThreshold"]) > 0
        assert meta["allowIdleConsumers"] == "false"
        assert trigger["authenticationRef"]["name"] in auths


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl")
def test_kustomize_builds_the_manifests() -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    built = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert all(
        d["metadata"].get("namespace") == "driftline" for d in built if d["kind"] != "Namespace"
    )
    kinds = {d["kind"] for d in built}
    assert {"Deployment", "ScaledObject", "Service", "ConfigMap", "Job"} <= kinds
