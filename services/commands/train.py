"""`driftline train`: the retraining service, a training right now, or the bootstrap models."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from driftline.services.commands.args import (
    add_kafka_flags,
    add_log_flags,
    port,
    positive_int,
    settings_from,
)
from driftline.services.commands.preflight import check_kafka

if TYPE_CHECKING:
    from driftline.trainer.runs import RunOutcome

SETTING_FLAGS = [
    "epochs",
    "seed",
    "artifact_root",
    "device",
    "metrics_port",
    "min_new_labels",
    "min_labels",
    "max_age_s",
    "gate_margin",
    "gate_metric",
    "holdout_fraction",
]
FAILED_OUTCOMES = ("failed", "oom", "cancelled")


def _bootstrap(args: argparse.Namespace) -> int:
    from driftline.schemas.contracts import MODEL_NAMES
    from driftline.schemas.messages import MODALITIES
    from driftline.services.bootstrap import bootstrap_model
    from driftline.services.runtime import registry
    from driftline.trainer.settings import TrainerSettings

    settings = settings_from(TrainerSettings, args, SETTING_FLAGS)
    check_kafka(settings.kafka)
    modalities = [args.modality] if args.modality else list(MODALITIES)
    snapshot = registry.read_snapshot(settings.kafka, settings.kafka.topics.models_registry)
    code = 0
    for modality in modalities:
        current = snapshot.champions.get(MODEL_NAMES[modality])
        if args.if_missing and current is not None:
            print(f"{current.name} v{current.version} already serves; nothing to bootstrap")
            continue
        count = args.windows if modality == "sensor" else args.images
        outcome = bootstrap_model(settings, modality, count)
        print(
            outcome.summary()
            + (f", artifact {outcome.version.artifact_uri}" if outcome.version else "")
        )
        if outcome.version is None or outcome.outcome in FAILED_OUTCOMES:
            code = 1
    return code


def run(args: argparse.Namespace) -> int:
    if args.bootstrap:
        return _bootstrap(args)
    from driftline.services.runtime import logs
    from driftline.services.runtime.shutdown import StopFlag
    from driftline.trainer import service
    from driftline.trainer.settings import TrainerSettings

    settings = settings_from(TrainerSettings, args, SETTING_FLAGS)
    logs.configure(settings.log_level, settings.log_format, settings.service_name)
    check_kafka(settings.kafka)
    outcomes = service.run(
        settings, StopFlag().install(), now=args.now, modality=args.modality, once=args.now
    )
    if args.now:
        return _report_now(outcomes, settings.kafka.topics.training_windows)
    for outcome in outcomes:
        _say(outcome.summary(), outcome.ok)
    return 1 if any(o.outcome in FAILED_OUTCOMES for o in outcomes) else 0


def _say(text: str, ok: bool) -> None:
    """An outcome: on stdout when it went well, else on stderr (a JSON record with JSON logs)."""
    from driftline.services.runtime import logs

    if ok:
        print(text)
    elif logs.json_configured():
        logging.getLogger("driftline.cli").error(text, extra={"command": "train"})
    else:
        print(text, file=sys.stderr)


def _report_now(outcomes: Sequence[RunOutcome], topic: str) -> int:
    """`train --now`: what was trained; a model skipped for want of labels is not a success."""
    from driftline.services.runtime.logs import report_failure
    from driftline.trainer.runs import OUTCOME_SKIPPED

    skipped = [o for o in outcomes if o.outcome == OUTCOME_SKIPPED]
    for outcome in outcomes:
        if outcome.outcome != OUTCOME_SKIPPED:
            _say(outcome.summary(), outcome.ok)
    for outcome in skipped:
        report_failure(
            "train",
            f"{outcome.model_name} not trained: {outcome.error} "
            f"({outcome.modality} labelled windows on {topic})",
        )
    trained = [o for o in outcomes if o.outcome != OUTCOME_SKIPPED]
    if not trained:
        report_failure(
            "train",
            "nothing was trained. Labelled windows come from the features app "
            "joining feedback.labels to the events they label: run `driftline features` and "
            "`driftline infer`, then `driftline simulate fleet --label-fraction 0.3` (or your "
            "inspections); `driftline train --bootstrap` trains first models on simulated data.",
        )
        return 1
    return 1 if any(o.outcome in FAILED_OUTCOMES for o in outcomes) else 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="retrain on labelled windows, gate, export, sign and publish model versions",
        description="Without flags: the trainer service. It reads training.windows into a "
        "bounded, time-ordered training set per modality and retrains a model when enough new "
        "labels arrived, a drift signal came, or the model is too old; a challenger is promoted "
        "only if it beats the champion on the most recent labelled data. --now trains at once "
        "on what training.windows holds and exits; --bootstrap trains the first versions on "
        "simulated data.",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--now", action="store_true", help="train now on the labelled data, then exit"
    )
    mode.add_argument(
        "--bootstrap", action="store_true", help="train the first models on simulated data"
    )
    p.add_argument(
        "--if-missing", action="store_true", help="bootstrap only models with no champion yet"
    )
    p.add_argument("--modality", choices=["sensor", "image"], help="only this model (default all)")
    p.add_argument("--windows", type=positive_int, help="simulated sensor windows (default 8000)")
    p.add_argument("--images", type=positive_int, help="simulated photos (default 8000)")
    p.add_argument("--epochs", type=positive_int, help="training epochs (default 8)")
    p.add_argument("--seed", type=int, help="random seed (default 7)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="torch device (auto)")
    p.add_argument(
        "--artifact-root", help="fsspec URI for artifacts (default .driftline/artifacts)"
    )
    p.add_argument(
        "--min-new-labels", type=positive_int, help="retrain after this many new labels (500)"
    )
    p.add_argument("--min-labels", type=int, help="never train on fewer examples (200)")
    p.add_argument("--max-age-s", type=float, help="retrain a model older than this (86400)")
    p.add_argument("--gate-margin", type=float, help="challenger must win by this much (0.01)")
    p.add_argument("--gate-metric", choices=["macro_f1", "accuracy"], help="gate metric")
    p.add_argument("--holdout-fraction", type=float, help="most recent share held out (0.2)")
    p.add_argument("--metrics-port", type=port, help="serve /metrics, /healthz, /readyz here")
    add_log_flags(p)
    add_kafka_flags(p)
    p.set_defaults(func=run)
