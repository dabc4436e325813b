"""One training run: split in time, warm-start, fit, export, score both models, gate.

The result is a Challenger: the exported graph, its weights, every score and the gate's
verdict. Nothing is written anywhere here; publishing is a separate step, so a failure at any
point of a run (including a CUDA out-of-memory error) leaves the registry untouched.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from driftline.schemas.contracts import (
    IMAGE_INPUT_NAME,
    INSULATOR_CLASSES,
    SENSOR_CHANNELS,
    SENSOR_INPUT_NAME,
)
from driftline.schemas.messages import MODALITY_IMAGE, MODALITY_SENSOR, ReferenceProfile
from driftline.services.core.gate import (
    ChampionGate,
    GateDecision,
    post_change_split,
    time_ordered_split,
)
from driftline.services.core.metrics import accuracy, macro_f1
from driftline.trainer.champion import ChampionModel
from driftline.trainer.dataset import LabelledSet
from driftline.trainer.export import ExportedModel, export_classifier, onnx_probabilities
from driftline.trainer.fit import (
    EpochReport,
    FitConfig,
    FitReport,
    adapt_normalisation,
    fit,
    pick_device,
    predict,
)
from driftline.trainer.inputs import model_input
from driftline.trainer.models import ImageCNN, SensorCNN, WithProbabilities, image_width_of
from driftline.trainer.reference import reference_profile
from driftline.trainer.tracing import GUARD

log = logging.getLogger(__name__)

N_CLASSES = len(INSULATOR_CLASSES)
EXPORT_EXAMPLES = 64
# A warm start must reproduce the champion's served outputs this closely, or it is not used.
WARM_START_TOLERANCE = 1e-4
INPUT_NAMES = {MODALITY_SENSOR: SENSOR_INPUT_NAME, MODALITY_IMAGE: IMAGE_INPUT_NAME}

FitFn = Callable[..., FitReport]


class TooFewExamples(ValueError):
    """The training set cannot be split into a training part and a holdout."""


@dataclass(frozen=True)
class RetrainConfig:
    fit: FitConfig
    gate: ChampionGate
    holdout_fraction: float = 0.2
    min_holdout: int = 50
    min_train: int = 20
    image_width: int = 16
    # After a change point: the share of pre-change examples kept, and how many (post-change
    # examples repeated) a training set has at least, so a young regime gets enough steps.
    pre_change_share: float = 0.2
    min_adapt_examples: int = 1500
    # After a change point, a warm-started network first takes its batch-norm statistics from
    # the post-change inputs (adapt_normalisation), then fine-tunes with them frozen, with
    # `adapt_fit` when given (a gentler, shorter fit than a cold one), else with `fit`.
    adapt_norm: bool = True
    adapt_fit: FitConfig | None = None


@dataclass(frozen=True)
class Challenger:
    modality: str
    model: nn.Module
    exported: ExportedModel
    report: FitReport
    decision: GateDecision
    metrics: dict[str, float]
    reference: ReferenceProfile
    warm_started: bool
    champion_version: int | None
    train_span_ms: tuple[int, int] = (0, 0)
    holdout_span_ms: tuple[int, int] = (0, 0)
    change_point_ms: int | None = None


def new_model(modality: str, image_width: int = 16) -> SensorCNN | ImageCNN:
    if modality == MODALITY_SENSOR:
        return SensorCNN(len(SENSOR_CHANNELS), N_CLASSES)
    if modality == MODALITY_IMAGE:
        return ImageCNN(N_CLASSES, image_width)
    raise ValueError(f"no model for modality {modality!r}")


def _warm_start(
    modality: str,
    champion: ChampionModel | None,
    check_x: npt.NDArray[np.float32],
    image_width: int,
) -> SensorCNN | ImageCNN | None:
    """The champion's network with its weights, if they reproduce its verified ONNX outputs."""
    if champion is None or champion.weights is None:
        return None
    weights = champion.weights
    try:
        width = image_width_of(weights) if modality == MODALITY_IMAGE else image_width
        model = new_model(modality, width)
        model.load_state_dict(weights, strict=True)
    except (RuntimeError, KeyError) as exc:
        log.warning("champion weights do not fit the %s network, cold start: %s", modality, exc)
        return None
    with torch.no_grad(), GUARD.step():
        mine = WithProbabilities(model).eval()(torch.from_numpy(check_x)).numpy()
    served = onnx_probabilities(champion.onnx_bytes, check_x)
    diff = float(np.abs(mine - served).max()) if mine.size else 0.0
    if not diff <= WARM_START_TOLERANCE:
        log.warning(
            "champion v%d weights differ from its graph by %.2e, cold start",
            champion.version.version,
            diff,
        )
        return None
    return model


def _score(
    gate: ChampionGate, y: npt.NDArray[np.int64], probs: npt.NDArray[np.float32]
) -> tuple[float, float, float]:
    """(gate metric, accuracy, macro-F1) of probabilities against labels."""
    pred = probs.argmax(axis=1).astype(np.int64)
    return gate.score(y, pred, N_CLASSES), accuracy(y, pred), macro_f1(y, pred, N_CLASSES)


def train_challenger(
    modality: str,
    data: LabelledSet,
    champion: ChampionModel | None,
    config: RetrainConfig,
    on_epoch: Callable[[EpochReport], None] | None = None,
    fit_fn: FitFn = fit,
    change_point_ms: int | None = None,
    champion_problem: str | None = None,
) -> Challenger:
    """Train a challenger on all but the most recent examples and gate it on those.

    With `change_point_ms`, the world is taken to have changed then: the holdout is drawn from
    after it and the training set is dominated by post-change examples (post_change_split).
    `champion_problem` says why a champion that exists could not be loaded; such a champion,
    like one that cannot be scored here, keeps the gate from promoting (ChampionGate.decide).
    """
    started = time.monotonic()
    if change_point_ms is None:
        train_idx, hold_idx = time_ordered_split(
            data.event_time_ms, config.holdout_fraction, config.min_holdout
        )
    else:
        train_idx, hold_idx = post_change_split(
            data.event_time_ms,
            change_point_ms,
            holdout_fraction=config.holdout_fraction,
            min_holdout=config.min_holdout,
            pre_change_share=config.pre_change_share,
            min_examples=config.min_adapt_examples,
            seed=config.fit.seed,
        )
    if len(train_idx) < config.min_train or len(hold_idx) == 0:
        raise TooFewExamples(
            f"{len(data)} examples leave {len(train_idx)} to train on and {len(hold_idx)} to "
            f"hold out; need at least {config.min_train} and 1"
        )
    x_train = model_input(modality, data.x[train_idx])
    y_train = data.y[train_idx]
    x_hold = model_input(modality, data.x[hold_idx])
    y_hold = data.y[hold_idx]

    torch.manual_seed(config.fit.seed)
    model = _warm_start(modality, champion, x_hold[:EXPORT_EXAMPLES], config.image_width)
    warm = model is not None
    if model is None:
        model = new_model(modality, config.image_width)
        model.fit_normalisation(torch.from_numpy(x_train))
    fit_config = config.fit
    adapted = 0
    if warm and change_point_ms is not None:
        if config.adapt_norm:
            rows = _post_change_rows(data, train_idx, change_point_ms)
            balanced = _class_balanced(rows, y_train[rows])
            adapted = adapt_normalisation(model, x_train[balanced], config.fit.device)
        if adapted:
            fit_config = replace(config.adapt_fit or config.fit, freeze_norm=True)
            # With the statistics adapted, a young regime needs no repeats to get enough steps:
            # each post-change example once, each fine-tuning epoch, so the first run after a
            # change point costs seconds and later ones grow with the new world's examples.
            # And no pre-change examples: seen through the new world's statistics, an old-world
            # photo is not what it was, and fitting it teaches the network that distortion
            # (measured: see docs/trainer.md, "after a change point").
            train_idx, _ = post_change_split(
                data.event_time_ms,
                change_point_ms,
                holdout_fraction=config.holdout_fraction,
                min_holdout=config.min_holdout,
                pre_change_share=0.0,
                min_examples=0,
                seed=config.fit.seed,
            )
            x_train = model_input(modality, data.x[train_idx])
            y_train = data.y[train_idx]
    adapted_only = copy.deepcopy(model.state_dict()) if adapted else None
    report = fit_fn(model, x_train, y_train, x_hold, y_hold, N_CLASSES, fit_config, on_epoch)
    kept_adapted = False
    if adapted_only is not None:
        # A few fine-tuning steps on a few hundred examples can undo part of what adapting the
        # statistics gained: the challenger is whichever of the two scores better on the
        # holdout (adapted only, or adapted and fine-tuned), and its metrics say which.
        tuned = _torch_score(config.gate, model, x_hold, y_hold, config.fit.device)
        fine_tuned = copy.deepcopy(model.state_dict())
        model.load_state_dict(adapted_only)
        plain = _torch_score(config.gate, model, x_hold, y_hold, config.fit.device)
        if plain > tuned:
            kept_adapted = True
            log.info(
                "%s: keeping the adapted statistics without the fine-tune (%s %.3f vs %.3f)",
                modality,
                config.gate.metric,
                plain,
                tuned,
            )
        else:
            model.load_state_dict(fine_tuned)

    export_started = time.monotonic()
    exported = export_classifier(model, x_hold[:EXPORT_EXAMPLES], INPUT_NAMES[modality])
    export_seconds = time.monotonic() - export_started
    # Both models are scored the way consumers run them: the exported graphs in ONNX Runtime.
    probs = onnx_probabilities(exported.onnx_bytes, x_hold)
    score, acc, f1 = _score(config.gate, y_hold, probs)
    metrics = {
        "holdout_accuracy": acc,
        "holdout_macro_f1": f1,
        "holdout_examples": float(len(hold_idx)),
        "train_examples": float(len(train_idx)),
        "train_seconds": report.seconds,
        "export_seconds": export_seconds,
        "parity_max_abs_diff": exported.parity_max_abs_diff,
        "warm_start": 1.0 if warm else 0.0,
        "epochs": float(len(report.epochs)),
        "final_loss": report.epochs[-1].loss if report.epochs else 0.0,
        "train_distinct_examples": float(len(np.unique(train_idx))),
        "norm_layers_adapted": float(adapted),
        "fine_tune_discarded": 1.0 if kept_adapted else 0.0,
    }
    if change_point_ms is not None:
        after = data.event_time_ms[train_idx] >= change_point_ms
        metrics["train_post_change_share"] = float(after.mean()) if len(after) else 0.0
        metrics["post_change_examples"] = float((data.event_time_ms >= change_point_ms).sum())
    champion_score: float | None = None
    if champion is not None:
        try:
            champion_probs = onnx_probabilities(champion.onnx_bytes, x_hold)
        except Exception as exc:  # ONNX Runtime raises its own types; the champion is unusable
            log.warning("champion v%d cannot be scored: %s", champion.version.version, exc)
            champion_problem = f"v{champion.version.version} cannot be scored: {exc}"
        else:
            champion_score, c_acc, c_f1 = _score(config.gate, y_hold, champion_probs)
            metrics["champion_holdout_accuracy"] = c_acc
            metrics["champion_holdout_macro_f1"] = c_f1
            metrics["champion_version"] = float(champion.version.version)
    decision = config.gate.decide(score, champion_score, champion_problem=champion_problem)
    metrics["gate_champion_unusable"] = 1.0 if champion_problem is not None else 0.0
    metrics["gate_margin"] = decision.margin
    metrics["gate_promoted"] = 1.0 if decision.promote else 0.0
    metrics["run_seconds"] = time.monotonic() - started
    return Challenger(
        modality=modality,
        model=model,
        exported=exported,
        report=report,
        decision=decision,
        metrics=metrics,
        reference=reference_profile(
            modality, _reference_inputs(x_train, data, train_idx, change_point_ms), probs
        ),
        warm_started=warm,
        champion_version=champion.version.version if champion is not None else None,
        train_span_ms=_span(data.event_time_ms[train_idx]),
        holdout_span_ms=_span(data.event_time_ms[hold_idx]),
        change_point_ms=change_point_ms,
    )


def _torch_score(
    gate: ChampionGate,
    model: nn.Module,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    device: str,
) -> float:
    """The gate's metric of the network as it is now, on (x, y), in eval mode."""
    logits = predict(model, x, pick_device(device))
    return gate.score(y, logits.argmax(axis=1).astype(np.int64), N_CLASSES)


def _reference_inputs(
    x_train: npt.NDArray[np.float32],
    data: LabelledSet,
    train_idx: npt.NDArray[np.int64],
    change_point_ms: int | None,
) -> npt.NDArray[np.float32]:
    """What the drift reference describes: the world this version is for.

    After a change point that is the post-change examples, each once: the repeats and the old
    examples kept in the training set would make the new world look drifted from its own
    reference, and the features app would keep signalling drift for a model that fits it.
    """
    if change_point_ms is None:
        return x_train
    post = _post_change_rows(data, train_idx, change_point_ms)
    return x_train[post] if len(post) else x_train


def _post_change_rows(
    data: LabelledSet, train_idx: npt.NDArray[np.int64], change_point_ms: int
) -> npt.NDArray[np.intp]:
    """Rows of the training set that are post-change examples, each example once."""
    _, first = np.unique(train_idx, return_index=True)
    first = np.sort(first)
    post: npt.NDArray[np.intp] = first[data.event_time_ms[train_idx[first]] >= change_point_ms]
    return post


def _class_balanced(rows: npt.NDArray[np.intp], y: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
    """`rows` with each class present repeated up to the count of the most frequent one.

    Batch-norm statistics taken from a fleet that is mostly healthy describe mostly healthy
    discs; the network learnt its weights under the statistics of a class-balanced set (the
    bootstrap), and under skewed ones it misjudges the rarer faults. Taking the new world's
    statistics over a class-balanced view of its examples keeps them what the weights expect.
    """
    if len(rows) == 0:
        return rows
    counts = np.bincount(y)
    most = int(counts.max())
    parts = [np.resize(rows[y == c], most) for c in np.flatnonzero(counts)]
    return np.concatenate(parts).astype(np.intp)


def _span(times: npt.NDArray[np.int64]) -> tuple[int, int]:
    return (int(times.min()), int(times.max())) if len(times) else (0, 0)
