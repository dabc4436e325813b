"""`driftline doctor`: check a running deployment from the outside and say what is wrong."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from driftline.services.commands.args import (
    add_kafka_flags,
    http_url,
    positive_int,
    redis_url,
    settings_from,
)
from driftline.services.commands.preflight import FIRST_CONTACT_TIMEOUT_S

if TYPE_CHECKING:
    from driftline.services.commands.deployment_checks import Finding

DESCRIPTION = """\
Check a deployment from the outside, one line per check: OK, WARN or FAIL, the reason, and
what to do about it.

  kafka     the brokers answer within --timeout-s: how many, which controller
  topic     every driftline topic and dead-letter topic exists, every partition has a leader
            and its replicas, and its cleanup policy, retention and message size are those
            of the topic table (input topics: long enough for DRIFTLINE_JOIN_RETENTION_S)
  registry  models.registry reads; champion: each modality has one, and its artifact
            fetches and verifies (sha256, and the signature when a public key is given) the
            way a consumer checks it before serving it
  redis     the feature store answers PING
  service   each --service's /readyz says ready
"""

EXAMPLES = """\
examples:
  driftline doctor
  driftline doctor --topic-prefix staging. --service http://inference:9108 --service http://features:9110
  driftline doctor --json | jq '.findings[] | select(.status != "OK")'

exit status: 0 when nothing FAILs (WARNs included, unless --strict), 1 otherwise.
Settings come from the same environment the services read: DRIFTLINE_KAFKA__*,
DRIFTLINE_REDIS_URL, DRIFTLINE_PUBLIC_KEY, DRIFTLINE_ARTIFACT_ROOT, DRIFTLINE_JOIN_RETENTION_S.
"""


def _findings(args: argparse.Namespace) -> list[Finding]:
    from pydantic import SecretStr

    from driftline.schemas.messages import MODALITIES
    from driftline.services.commands import deployment_checks as checks
    from driftline.services.commands import kafka_checks
    from driftline.services.features.settings import FeaturesSettings
    from driftline.services.inference.settings import InferenceSettings
    from driftline.services.runtime.kafka import admin
    from driftline.trainer.settings import TrainerSettings

    features = settings_from(FeaturesSettings, args)
    if args.redis_url is not None:
        features = features.model_copy(update={"redis_url": SecretStr(args.redis_url)})
    kafka = features.kafka
    public_key = args.public_key or InferenceSettings().public_key
    artifact_root = args.artifact_root or TrainerSettings().artifact_root
    timeout_s = args.timeout_s

    client = admin(kafka)
    brokers, meta = kafka_checks.check_brokers(client, kafka, timeout_s)
    findings = [brokers]
    if meta is not None:
        findings += kafka_checks.check_topics(
            client, meta, kafka, timeout_s, label_retention_ms=features.join_retention_s * 1000
        )
        modalities = args.modality or list(MODALITIES)
        findings += checks.check_registry(kafka, modalities, artifact_root, public_key, timeout_s)
    findings.append(checks.check_redis(features.redis_url.get_secret_value()))
    findings += [checks.check_service(url) for url in args.service]
    return findings


def run(args: argparse.Namespace) -> int:
    from driftline.services.commands.deployment_checks import FAIL, OK, WARN

    findings = _findings(args)
    counts = {s: sum(f.status == s for f in findings) for s in (OK, WARN, FAIL)}
    failed = counts[FAIL] > 0 or (args.strict and counts[WARN] > 0)
    if args.json:
        report = {
            "ok": not failed,
            "counts": counts,
            "findings": [
                {
                    "check": f.check,
                    "subject": f.subject,
                    "status": f.status,
                    "detail": f.detail,
                    "action": f.action,
                }
                for f in findings
            ],
        }
        print(json.dumps(report, indent=2))
    else:
        for f in findings:
            print(f.line())
        verdict = "something is wrong" if failed else "all is well"
        print(
            f"doctor: {verdict}: {counts[FAIL]} FAIL, {counts[WARN]} WARN, {counts[OK]} OK "
            f"of {len(findings)} checks"
        )
    return 1 if failed else 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "doctor",
        help="check a deployment: brokers, topics, champions, Redis, services' /readyz",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--service",
        action="append",
        default=[],
        type=http_url,
        metavar="URL",
        help="a service's metrics URL (http://host:9108) or its /readyz; repeatable",
    )
    p.add_argument(
        "--modality",
        action="append",
        choices=["sensor", "image"],
        help="only these modalities need a champion (repeatable; default both)",
    )
    p.add_argument(
        "--redis-url", type=redis_url, help="the feature store (default DRIFTLINE_REDIS_URL)"
    )
    p.add_argument(
        "--public-key",
        help="ed25519 public key (PEM text or a path) the consumers verify champions with "
        "(default DRIFTLINE_PUBLIC_KEY; unset: signatures are not checked)",
    )
    p.add_argument(
        "--artifact-root", help="where the trainer stores artifacts (DRIFTLINE_ARTIFACT_ROOT)"
    )
    p.add_argument(
        "--timeout-s",
        type=positive_int,
        default=int(FIRST_CONTACT_TIMEOUT_S),
        help="longest wait, in seconds, for the brokers and for each read of them "
        f"(default {FIRST_CONTACT_TIMEOUT_S:g})",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 on a WARN too")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    add_kafka_flags(p)
    p.set_defaults(func=run)
