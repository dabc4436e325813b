"""A training run end to end: champion, challenger, gate, publish; its outcome is data.

Every failure (a CUDA out-of-memory error, an export that disagrees with torch, an artifact
store that cannot be written, a registry that cannot be reached) ends the run with an outcome
saying why and nothing published: the record is produced last, after the artifacts were
written and read back, so the registry stays on its last good version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from driftline.schemas.contracts import INSULATOR_CLASSES, MODEL_NAMES
from driftline.schemas.messages import (
    MODALITY_IMAGE,
    STATUS_CHAMPION,
    STATUS_REJECTED,
    Lineage,
    ModelVersion,
)
from driftline.services.core.gate import ChampionGate
from driftline.services.runtime.artifacts import ArtifactStore
from driftline.services.runtime.publishing import publish_next
from driftline.trainer.champion import ChampionModel, ChampionUnavailable, load_champion
from driftline.trainer.dataset import LabelledSet
from driftline.trainer.fit import EpochReport, FitConfig, fit
from driftline.trainer.publish import RegistryWriter, build_version
from driftline.trainer.retrain import Challenger, FitFn, RetrainConfig, train_challenger
from driftline.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

# A publish that lost the lease to another publisher of the model is built again this often.
OUTCOME_PROMOTED = "promoted"
OUTCOME_REJECTED = "rejected"
OUTCOME_FAILED = "failed"
OUTCOME_OOM = "oom"
OUTCOME_CANCELLED = "cancelled"
OUTCOME_SKIPPED = "skipped"  # asked for, but too few labelled examples to train on
OUTCOMES = (
    OUTCOME_PROMOTED,
    OUTCOME_REJECTED,
    OUTCOME_FAILED,
    OUTCOME_OOM,
    OUTCOME_CANCELLED,
    OUTCOME_SKIPPED,
)


class RunCancelled(Exception):
    """The service is stopping; the run ends before it publishes anything."""


@dataclass(frozen=True)
class RunOutcome:
    model_name: str
    modality: str
    trigger: str
    outcome: str
    seconds: float
    version: ModelVersion | None = None
    challenger: Challenger | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome in (OUTCOME_PROMOTED, OUTCOME_REJECTED, OUTCOME_SKIPPED)

    def summary(self) -> str:
        if self.version is None:
            return f"{self.model_name}: training ({self.trigger}) {self.outcome}: {self.error}"
        m = self.version.metrics
        champ = m.get("champion_holdout_macro_f1")
        versus = f" vs champion {champ:.3f}" if champ is not None else ""
        return (
            f"published {self.model_name} v{self.version.version} ({self.version.status}) "
            f"on {self.trigger}: "
            f"holdout macro-F1 {m['holdout_macro_f1']:.3f}{versus}, "
            f"{int(m['train_examples'])} examples, {self.seconds:.1f}s"
        )


def retrain_config(settings: TrainerSettings, modality: str) -> RetrainConfig:
    return RetrainConfig(
        fit=FitConfig(
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            learning_rate=(
                settings.image_learning_rate
                if modality == MODALITY_IMAGE
                else settings.learning_rate
            ),
            seed=settings.seed,
            device=settings.device,
        ),
        gate=ChampionGate(
            margin=settings.gate_margin,
            metric=settings.gate_metric,
            min_score=settings.gate_min_score,
        ),
        holdout_fraction=settings.holdout_fraction,
        min_holdout=settings.min_holdout,
        image_width=settings.image_width,
        pre_change_share=settings.pre_change_share,
        min_adapt_examples=settings.min_adapt_examples,
        adapt_norm=settings.adapt_norm,
        adapt_fit=(
            FitConfig(
                epochs=settings.image_adapt_epochs,
                batch_size=settings.image_adapt_batch_size,
                learning_rate=settings.image_adapt_learning_rate,
                seed=settings.seed,
                device=settings.device,
            )
            if modality == MODALITY_IMAGE
            else None
        ),
    )


class TrainingRun:
    """Runs trainings for one deployment: its settings, registry and artifact store."""

    def __init__(
        self,
        settings: TrainerSettings,
        registry: RegistryWriter,
        store: ArtifactStore,
        fit_fn: FitFn = fit,
    ) -> None:
        self.settings = settings
        if settings.torch_threads is not None:
            torch.set_num_threads(settings.torch_threads)  # process-wide, so set once here
        self.registry = registry
        self.store = store
        self.fit_fn = fit_fn

    def _champion(self, name: str) -> tuple[ChampionModel | None, str | None]:
        """The champion, or why there is a champion that cannot be used (None: there is none)."""
        mv = self.registry.champion(name)
        if mv is None:
            return None, None
        try:
            return load_champion(mv, self.store, self.settings.public_key), None
        except ChampionUnavailable as exc:
            # The challenger trains from scratch but is not promoted on its own score alone.
            log.warning("champion v%d unusable, training from scratch: %s", mv.version, exc)
            return None, f"v{mv.version}: {exc}"

    def run(
        self,
        modality: str,
        data: LabelledSet,
        *,
        source: str,
        trigger: str,
        on_epoch: Callable[[EpochReport], None] | None = None,
        record_offsets: bool = True,
        cancelled: Callable[[], bool] | None = None,
        change_point_ms: int | None = None,
    ) -> RunOutcome:
        """Train on `data`, gate, and publish the challenger as champion or as rejected.

        With record_offsets, the lineage names the partitions and offset ranges of `source`
        the examples came from (simulated data has none). With change_point_ms, training and
        gate favour the examples from after it (trainer.retrain.train_challenger).
        """
        name = MODEL_NAMES[modality]
        started = time.monotonic()

        def failed(outcome: str, error: str) -> RunOutcome:
            return RunOutcome(
                name, modality, trigger, outcome, time.monotonic() - started, error=error
            )

        def epoch_done(rep: EpochReport) -> None:
            if on_epoch is not None:
                on_epoch(rep)
            if cancelled is not None and cancelled():
                raise RunCancelled(f"stopped after epoch {rep.epoch}")

        try:
            champion, champion_problem = self._champion(name)
            challenger = train_challenger(
                modality,
                data,
                champion,
                retrain_config(self.settings, modality),
                epoch_done,
                fit_fn=self.fit_fn,
                change_point_ms=change_point_ms,
                champion_problem=champion_problem,
            )
            if cancelled is not None and cancelled():
                raise RunCancelled("stopped before publishing")
            ranges = data.ranges() if record_offsets else []
            mv = self._publish(
                name,
                challenger,
                Lineage(
                    source=source,
                    ranges=ranges,
                    parent_version=challenger.champion_version,
                    seed=self.settings.seed,
                    train_start_ms=challenger.train_span_ms[0],
                    train_end_ms=challenger.train_span_ms[1],
                    holdout_start_ms=challenger.holdout_span_ms[0],
                    holdout_end_ms=challenger.holdout_span_ms[1],
                    change_point_ms=challenger.change_point_ms,
                ),
            )
        except RunCancelled as exc:
            log.warning("%s: training cancelled, nothing published: %s", name, exc)
            return failed(OUTCOME_CANCELLED, str(exc))
        except torch.cuda.OutOfMemoryError as exc:
            log.error("%s: CUDA out of memory; run failed, nothing published: %s", name, exc)
            return failed(OUTCOME_OOM, f"CUDA out of memory: {exc}")
        except Exception as exc:
            log.exception("%s: training run failed, nothing published", name)
            return failed(OUTCOME_FAILED, f"{type(exc).__name__}: {exc}")
        outcome = OUTCOME_PROMOTED if mv.status == STATUS_CHAMPION else OUTCOME_REJECTED
        result = RunOutcome(
            name, modality, trigger, outcome, time.monotonic() - started, mv, challenger
        )
        log.info(
            "%s; gate: %s",
            result.summary(),
            challenger.decision.reason,
            extra={
                "model": name,
                "model_version": mv.version,
                "outcome": outcome,
                "trigger": trigger,
                "train_examples": int(mv.metrics["train_examples"]),
                "seconds": round(result.seconds, 1),
            },
        )
        return result

    def _publish(self, name: str, challenger: Challenger, lineage: Lineage) -> ModelVersion:
        status = STATUS_CHAMPION if challenger.decision.promote else STATUS_REJECTED

        def build(version: int) -> ModelVersion:
            return build_version(
                store=self.store,
                name=name,
                version=version,
                modality=challenger.modality,
                exported=challenger.exported,
                model=challenger.model,
                classes=list(INSULATOR_CLASSES),
                metrics=challenger.metrics,
                lineage=lineage,
                status=status,
                signing_key=self.settings.signing_key,
                reference=challenger.reference,
            )

        # The next free version, again after each conflict with another publisher.
        return publish_next(self.registry, name, build)
