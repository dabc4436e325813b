"""`driftline alerts`: the alerting consumer."""

from __future__ import annotations

import argparse
from typing import Any

from driftline.services.commands.args import (
    add_kafka_flags,
    add_log_flags,
    fraction,
    http_url,
    non_negative_float,
    non_negative_int,
    port,
    positive_int,
    settings_from,
)
from driftline.services.commands.preflight import check_kafka

FLAGS = [
    "k",
    "n",
    "cooldown_s",
    "min_confidence",
    "webhook_url",
    "webhook_timeout_s",
    "webhook_retries",
    "alertmanager_url",
    "alertmanager_resend_s",
    "group_id",
    "max_batch",
    "max_wait_ms",
    "replay_lookback",
    "metrics_port",
]


def _positive_seconds(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be a number of seconds > 0 (got 0)")
    return value


def run(args: argparse.Namespace) -> int:
    from driftline.services.alerts import service
    from driftline.services.alerts.settings import AlertsSettings
    from driftline.services.runtime import logs
    from driftline.services.runtime.shutdown import StopFlag

    settings = settings_from(AlertsSettings, args, FLAGS)
    logs.configure(settings.log_level, settings.log_format, settings.service_name)
    check_kafka(settings.kafka)
    service.run(settings, StopFlag().install())
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "alerts",
        help="raise alerts for assets that keep being scored faulty",
        description="Read inference.results and raise an Alert on `alerts` when k of an "
        "asset's last n windows are predicted faulty, at most once per cooldown (an escalation "
        "to a higher severity passes it); optionally POST each alert to a webhook and/or to a "
        "Prometheus Alertmanager (resolved there once the asset is healthy again). Offsets are "
        "committed after the alerts are acknowledged and the webhook answered or gave up "
        "(at-least-once; alert ids are deterministic, so duplicates can be dropped).",
    )
    p.add_argument("--k", type=positive_int, help="faulty windows among the last n that raise (3)")
    p.add_argument("--n", type=positive_int, help="windows per asset the rule looks at (5)")
    p.add_argument(
        "--cooldown-s", type=non_negative_float, help="event-time seconds between alerts (300)"
    )
    p.add_argument(
        "--min-confidence", type=fraction, help="weaker fault predictions count as healthy (0.5)"
    )
    p.add_argument(
        "--webhook-url",
        type=http_url,
        help="POST each alert here as JSON (prefer DRIFTLINE_WEBHOOK_URL: it may hold a token)",
    )
    p.add_argument("--webhook-timeout-s", type=float, help="per attempt (5)")
    p.add_argument(
        "--webhook-retries", type=non_negative_int, help="retries after the first attempt (3)"
    )
    p.add_argument(
        "--alertmanager-url",
        type=http_url,
        help="Prometheus Alertmanager base URL, e.g. http://alertmanager:9093: each alert is "
        "POSTed to /api/v2/alerts (labels alertname, asset, severity, modality, model_version) "
        "and resolved when its asset's last n windows are healthy again (prefer "
        "DRIFTLINE_ALERTMANAGER_URL when it holds credentials); may be set with --webhook-url",
    )
    p.add_argument(
        "--alertmanager-resend-s",
        type=_positive_seconds,
        help="re-send the active alerts this often, so Alertmanager keeps them firing (60)",
    )
    p.add_argument("--group-id", help="consumer group (driftline-alerts)")
    p.add_argument("--max-batch", type=positive_int, help="largest batch (500)")
    p.add_argument(
        "--max-wait-ms",
        type=non_negative_int,
        help="longest wait from a batch's first record (100)",
    )
    p.add_argument(
        "--replay-lookback",
        type=non_negative_int,
        help="records per partition re-read on assignment to rebuild state (5000)",
    )
    p.add_argument("--metrics-port", type=port, help="serve /metrics, /healthz, /readyz here")
    add_log_flags(p)
    add_kafka_flags(p)
    p.set_defaults(func=run)
