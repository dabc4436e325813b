"""Publish a model version: write and verify the artifacts, then the registry record.

The order is what keeps the registry safe: the ONNX file and the weights are written and read
back first; only then is the ModelVersion record produced and acknowledged. A crash before the
record leaves orphaned files and the registry on its last good version.
"""

from __future__ import annotations

import time

from safetensors.torch import save as save_safetensors
from torch import nn

from schemas.messages import Lineage, ModelVersion
from services.runtime import registry
from services.runtime.artifacts import FsspecArtifactStore, sha256_hex
from services.runtime.kafka import producer
from services.runtime.settings import KafkaSettings
from trainer.export import ExportedModel


def weights_bytes(model: nn.Module) -> bytes:
    """The model's state as safetensors (never pickle)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data: bytes = save_safetensors(state)
    return data


def publish_version(
    *,
    kafka: KafkaSettings,
    artifact_root: str,
    name: str,
    version: int,
    modality: str,
    exported: ExportedModel,
    model: nn.Module,
    classes: list[str],
    metrics: dict[str, float],
    lineage: Lineage,
    status: str,
) -> ModelVersion:
    """Store the artifacts under <root>/<name>/v<version>/ and publish the record."""
    store = FsspecArtifactStore(artifact_root)
    onnx_uri = store.put(f"{name}/v{version}/model.onnx", exported.onnx_bytes)
    weights_uri = store.put(f"{name}/v{version}/weights.safetensors", weights_bytes(model))
    mv = ModelVersion(
        name=name,
        version=version,
        modality=modality,
        artifact_uri=onnx_uri,
        sha256=sha256_hex(exported.onnx_bytes),
        weights_uri=weights_uri,
        inputs=exported.inputs,
        outputs=exported.outputs,
        classes=classes,
        metrics=metrics,
        lineage=lineage,
        status=status,
        created_time_ms=int(time.time() * 1000),
    )
    prod = producer(kafka)
    registry.publish(prod, kafka.topics.models_registry, mv)
    return mv
