"""The champion as the trainer needs it: its verified ONNX graph (to score it on the holdout)
and its weights (to warm-start the challenger from).

The trainer checks a champion exactly as consumers do (sha256 of the artifact, and the ed25519
signature when a public key is configured), so a tampered champion is never scored or learned
from; the weights are only used when they reproduce the verified graph's outputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from driftline.schemas.contracts import INSULATOR_CLASSES
from driftline.schemas.messages import ModelVersion
from driftline.services.runtime.artifacts import ArtifactError, ArtifactStore, fetch_trusted

log = logging.getLogger(__name__)


class ChampionUnavailable(RuntimeError):
    """The champion cannot be scored or learned from; the reason says why."""


@dataclass(frozen=True)
class ChampionModel:
    version: ModelVersion
    onnx_bytes: bytes
    weights: dict[str, torch.Tensor] | None


def load_champion(
    mv: ModelVersion, store: ArtifactStore, public_key: str | None = None
) -> ChampionModel:
    """Fetch and verify the champion's graph, and its weights when they are readable."""
    try:
        data = fetch_trusted(store, mv, public_key)
    except ArtifactError as exc:
        raise ChampionUnavailable(f"{mv.name} v{mv.version}: {exc}") from exc
    if list(mv.classes) != list(INSULATOR_CLASSES):
        raise ChampionUnavailable(
            f"{mv.name} v{mv.version} predicts {mv.classes}, not {list(INSULATOR_CLASSES)}"
        )
    weights: dict[str, torch.Tensor] | None = None
    if mv.weights_uri:
        try:
            weights = load_safetensors(store.get(mv.weights_uri))
        except (ArtifactError, SafetensorError, OSError) as exc:
            log.warning("%s v%d weights unreadable, cold start: %s", mv.name, mv.version, exc)
    return ChampionModel(mv, data, weights)
