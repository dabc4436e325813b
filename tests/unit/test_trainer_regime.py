"""The trainer service's regime logic, without a broker: a drop in served accuracy found while
an old-world run is in progress cancels that run (not counted as a failure) and starts one for
the new world, trained and judged on the examples from after the change."""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from driftline.schemas.contracts import MODEL_NAMES
from driftline.services.core.changepoint import Drop
from driftline.services.runtime.artifacts import FsspecArtifactStore
from driftline.services.simulator.fleet import SensorConditions, labelled_dataset
from driftline.trainer.dataset import Example
from driftline.trainer.fit import fit
from driftline.trainer.metrics import TrainerMetrics
from driftline.trainer.modelstate import on_drop
from driftline.trainer.publish import MemoryRegistryWriter
from driftline.trainer.runs import OUTCOME_CANCELLED, OUTCOME_PROMOTED, TrainingRun
from driftline.trainer.service import TrainerService
from driftline.trainer.settings import TrainerSettings

SENSOR = MODEL_NAMES["sensor"]
DRIFTED = SensorConditions(leakage_gain=2.5, discharge_gain=0.4, humidity_mean=80.0)


def first_fit_waits_for_cancel(calls: list[str]) -> Any:
    """A fit that, the first time, keeps reporting epochs until the run is cancelled."""

    def fit_fn(*args: Any, **kwargs: Any) -> Any:
        on_epoch = args[7] if len(args) > 7 else kwargs.get("on_epoch")
        if not calls:
            calls.append("blocking")
            from driftline.trainer.fit import EpochReport

            deadline = time.monotonic() + 20
            epoch = 0
            while time.monotonic() < deadline:  # epoch_done raises once the run is cancelled
                epoch += 1
                on_epoch(EpochReport(epoch, 1.0, 0.5, 0.01))
                time.sleep(0.02)
            raise AssertionError("the old-world run was never cancelled")
        calls.append("fit")
        return fit(*args, **kwargs)

    return fit_fn


def add(service: TrainerService, x: Any, y: Any, *, start: int, right: bool) -> None:
    state = service.states["sensor"]
    for i, (row, label) in enumerate(zip(x, y.tolist(), strict=True)):
        state.buffer.add(
            Example(
                (start + i) * 1000,
                0,
                start + i,
                label,
                row,
                served_version=1,
                served_correct=right,
            )
        )
        state.added_since_detect += 1
        state.new_labels += 1


def wait_idle(service: TrainerService) -> None:
    deadline = time.monotonic() + 120
    while service.states["sensor"].running and time.monotonic() < deadline:
        service._collect()
        time.sleep(0.05)
    service._collect()


def test_a_change_point_cancels_the_old_world_run_and_trains_for_the_new_one() -> None:
    settings = TrainerSettings(
        artifact_root=f"memory://driftline-test-{uuid.uuid4().hex[:8]}",
        epochs=2,
        device="cpu",
        min_new_labels=500,
        min_labels=200,
        min_post_change_labels=200,
        min_holdout=50,
        max_age_s=None,
        gate_margin=0.0,
        gate_min_score=0.0,
    )
    calls: list[str] = []
    runner = TrainingRun(
        settings,
        MemoryRegistryWriter(),
        FsspecArtifactStore(settings.artifact_root),
        fit_fn=first_fit_waits_for_cancel(calls),
    )
    metrics = TrainerMetrics(CollectorRegistry())
    service = TrainerService(settings, metrics, runner=runner)
    service.caught_up.set()
    state = service.states["sensor"]

    x_old, y_old = labelled_dataset(600, seed=3)
    add(service, x_old, y_old, start=0, right=True)
    service._maybe_train()  # 600 new labels: an ordinary run starts on the old world
    assert state.running

    x_new, y_new = labelled_dataset(300, seed=4, world=DRIFTED)
    add(service, x_new, y_new, start=600, right=False)
    state.last_detect = 0.0
    service._maybe_train()  # finds the drop and asks the run in progress to stop
    assert state.regime_start_ms is not None
    assert abs(state.regime_start_ms - 600_000) <= 15_000
    wait_idle(service)
    cancelled = service.outcomes[0]
    assert cancelled.outcome == OUTCOME_CANCELLED
    assert state.last_failure_ms is None, "a superseded run is not a failure"

    service._maybe_train()  # the new world has 300 examples: its run starts now
    wait_idle(service)
    outcome = service.outcomes[-1]
    assert outcome.trigger == "change_point", outcome.summary()
    assert outcome.outcome == OUTCOME_PROMOTED, outcome.summary()
    assert outcome.version is not None
    lineage = outcome.version.lineage
    assert lineage.change_point_ms == state.regime_start_ms
    assert lineage.holdout_start_ms is not None
    assert lineage.holdout_start_ms >= state.regime_start_ms
    assert not state.adapting
    assert state.post_change_at_last_run == 300
    assert np.isfinite(outcome.version.metrics["holdout_macro_f1"])
    reference = outcome.version.reference
    assert reference is not None
    assert reference.count == 300 - 60, "the drift reference is the new world, each example once"


def test_a_later_estimate_on_the_same_version_refines_the_change_a_newer_version_starts_anew() -> (
    None
):
    settings = TrainerSettings(artifact_root="memory://driftline-test-refine", device="cpu")
    service = TrainerService(
        settings,
        TrainerMetrics(CollectorRegistry()),
        runner=TrainingRun(settings, MemoryRegistryWriter(), FsspecArtifactStore("memory://x")),
    )
    state = service.states["sensor"]
    on_drop(state, 1, Drop(600_000, 0.95, 0.6, 500, 50, 40.0), service.metrics)
    assert (state.regime_start_ms, state.regime_id, state.adapting) == (600_000, 1, True)
    state.post_change_at_last_run = 250  # a run of this regime ended (rejected)
    # The same version's outcomes, seen with more labels: the change is a little later.
    on_drop(state, 1, Drop(607_000, 0.94, 0.25, 507, 300, 200.0), service.metrics)
    assert (state.regime_start_ms, state.regime_id) == (607_000, 1)
    assert state.post_change_at_last_run == 250, "a refinement is not a new regime"
    assert not state.superseded
    # A version trained for the new world later falls too: a new change, a new regime.
    on_drop(state, 3, Drop(900_000, 0.97, 0.3, 800, 60, 90.0), service.metrics)
    assert (state.regime_start_ms, state.regime_id, state.adapting) == (900_000, 2, True)
    assert state.post_change_at_last_run == 0
