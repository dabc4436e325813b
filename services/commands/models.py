"""`driftline models`: list and show the registry's versions; publish, promote, roll back.

Publish (modelpublish.py) brings an ONNX file trained elsewhere in, checked as consumers check it.

Promote and rollback re-publish existing records with another `status` (and retire the current
champion the same way). They never re-sign: a version's signature covers its name, version,
modality, classes, sha256 and I/O signature but not its status (`signing.signed_payload`), so a
re-published record keeps a valid signature without the trainer's private key.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from driftline.services.commands.args import add_kafka_flags, settings_from
from driftline.services.commands.preflight import check_kafka

if TYPE_CHECKING:
    from driftline.schemas.messages import ModelVersion
    from driftline.services.runtime.registry import RegistrySnapshot


def _list(snapshot: RegistrySnapshot) -> int:
    if not snapshot.versions:
        print("no model versions yet; run `driftline train --bootstrap`")
        return 0
    print(
        f"{'model':18} {'version':>7}  {'status':10} {'serving':7} {'macro-F1':>8} "
        f"{'champion':>8} {'signed':6} source"
    )
    for name, versions in sorted(snapshot.versions.items()):
        champion = snapshot.champions.get(name)
        for v, mv in sorted(versions.items()):
            serving = "yes" if champion is not None and champion.version == v else ""
            f1 = mv.metrics.get("holdout_macro_f1")
            vs = mv.metrics.get("champion_holdout_macro_f1")
            f1_text = f"{f1:8.3f}" if f1 is not None else f"{'-':>8}"
            vs_text = f"{vs:8.3f}" if vs is not None else f"{'-':>8}"
            signed = "yes" if mv.signature else ""
            print(
                f"{name:18} {v:7d}  {mv.status:10} {serving:7} {f1_text} {vs_text} "
                f"{signed:6} {mv.lineage.source}"
            )
    return 0


def _show(mv: ModelVersion, serving: bool) -> int:
    print(f"{mv.name} v{mv.version}  status {mv.status}{'  (serving)' if serving else ''}")
    print(f"  modality   {mv.modality}")
    print(f"  artifact   {mv.artifact_uri}")
    print(f"  sha256     {mv.sha256}")
    print(f"  weights    {mv.weights_uri or '-'}")
    sig = f"ed25519, key {mv.signing_key_id}" if mv.signature else "unsigned"
    print(f"  signature  {sig}")
    for spec in mv.inputs:
        print(f"  input      {spec.name} {spec.dtype} {spec.shape}")
    for spec in mv.outputs:
        print(f"  output     {spec.name} {spec.dtype} {spec.shape}")
    print(f"  classes    {', '.join(mv.classes)}")
    lin = mv.lineage
    ranges = ", ".join(f"p{r.partition}[{r.start_offset},{r.end_offset})" for r in lin.ranges)
    parent = f"  parent v{lin.parent_version}" if lin.parent_version is not None else ""
    print(f"  lineage    {lin.source} {ranges or '(no offsets)'}{parent}  seed {lin.seed}")
    for key, value in sorted(mv.metrics.items()):
        print(f"  metric     {key:28} {value:.4f}")
    if mv.reference is not None:
        names = ", ".join(f.name for f in mv.reference.features[:4])
        more = len(mv.reference.features) - 4
        extra = f" (+{more} more)" if more > 0 else ""
        print(f"  reference  {mv.reference.count} examples; {names}{extra}")
    return 0


def _find(snapshot: RegistrySnapshot, spec: str, default_model: str) -> ModelVersion | None:
    """VERSION as "3" (of --model) or "insulator-image/v3"."""
    name, _, number = spec.rpartition("/")
    name = name or default_model
    try:
        version = int(number.lstrip("v"))
    except ValueError:
        return None
    return snapshot.versions.get(name, {}).get(version)


def run(args: argparse.Namespace) -> int:
    from driftline.schemas.contracts import MODEL_NAMES
    from driftline.schemas.messages import STATUS_REJECTED
    from driftline.services.runtime import registry
    from driftline.services.runtime.settings import DriftlineSettings

    if args.action == "publish":
        from driftline.services.commands.modelpublish import publish

        return publish(args)
    if args.extra is not None:
        print(
            f"driftline models {args.action}: give one VERSION: "
            f"`{args.extra} --model {args.version}` or `{args.version}/v{args.extra}`",
            file=sys.stderr,
        )
        return 2
    settings = settings_from(DriftlineSettings, args)
    topic = settings.kafka.topics.models_registry
    check_kafka(settings.kafka)
    snapshot = registry.read_snapshot(settings.kafka, topic)
    model = MODEL_NAMES.get(args.model, args.model)
    if args.action == "list":
        return _list(snapshot)
    if args.action == "rollback":
        current = snapshot.champions.get(model)
        target = registry.rollback_target(snapshot, model)
        if current is None or target is None:
            print(f"driftline models: {model} has no earlier served version", file=sys.stderr)
            return 1
        registry.promote(settings.kafka, topic, target, current)
        print(f"rolled back {model}: v{current.version} retired, v{target.version} serves")
        return 0
    if args.version is None:
        print(f"driftline models {args.action}: give a VERSION", file=sys.stderr)
        return 2
    mv = _find(snapshot, args.version, model)
    if mv is None:
        print(f"driftline models: no version {args.version!r} of {model}", file=sys.stderr)
        return 1
    champion = snapshot.champions.get(mv.name)
    if args.action == "show":
        return _show(mv, champion is not None and champion.version == mv.version)
    if champion is not None and champion.version == mv.version:
        print(f"{mv.name} v{mv.version} already serves")
        return 0
    if mv.status == STATUS_REJECTED:
        print(f"note: the gate rejected {mv.name} v{mv.version}; promoting it by hand")
    registry.promote(settings.kafka, topic, mv, champion)
    was = f" (v{champion.version} retired)" if champion is not None else ""
    print(f"promoted {mv.name} v{mv.version}{was}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "models",
        help="list, show, publish, promote or roll back model versions",
        description="Read and write models.registry. promote makes a version the champion "
        "every consumer follows; rollback promotes the champion before the current one and "
        "retires the current one. publish brings in an ONNX classifier trained elsewhere: it "
        "is checked as a consumer checks it (ONNX checker, no external data, the modality's "
        "input contract, one output column per class, a canary batch), copied into the "
        "artifact store (DRIFTLINE_ARTIFACT_ROOT), signed with --sign-key (or "
        "DRIFTLINE_SIGNING_KEY) and published as the next version: a candidate for promote, "
        "or with --champion served at once. Consumers verify the artifact (sha256, "
        "signature) before they swap.",
        epilog="examples:\n"
        "  driftline models list\n"
        "  driftline models publish net.onnx --modality sensor            # a candidate\n"
        "  driftline models promote insulator-sensor/v4\n"
        "  driftline models publish cam.onnx --modality image --champion --sign-key key.pem\n"
        "contracts (float32, dynamic batch axis, one output of class probabilities):\n"
        "  sensor  input [batch, 4, 64]: 64 samples each of leakage_current_ma,\n"
        "          partial_discharge_pc, temperature_c, relative_humidity_pct\n"
        "  image   input [batch, 3, H, W]: RGB in 0..1, H and W fixed, 32 to 1024;\n"
        "          photos are resized to them (docs/models.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=["list", "show", "publish", "promote", "rollback"])
    p.add_argument(
        "version",
        nargs="?",
        metavar="VERSION|PATH",
        help='for show/promote: "3" or "insulator-image/v3"; for publish: the .onnx file',
    )
    # `models show insulator-sensor 3` is a natural slip: caught to say how to write it.
    p.add_argument("extra", nargs="?", help=argparse.SUPPRESS)
    p.add_argument(
        "--model",
        default="sensor",
        help="model name or modality (default sensor = insulator-sensor)",
    )
    pub = p.add_argument_group("publish")
    pub.add_argument(
        "--modality", choices=["sensor", "image"], help="the input contract the model is fed"
    )
    pub.add_argument(
        "--name",
        help="registry name (default insulator-sensor or insulator-image, the names consumers "
        "serve unless DRIFTLINE_MODEL_NAME says otherwise)",
    )
    pub.add_argument(
        "--classes",
        help="class names in output-column order, comma-separated "
        "(default healthy,contaminated,cracked,flashover_damaged)",
    )
    pub.add_argument(
        "--sign-key",
        dest="signing_key",
        metavar="KEY",
        help="ed25519 private key (a PEM file) to sign the record with (default "
        "DRIFTLINE_SIGNING_KEY); needed where consumers are given a public key",
    )
    pub.add_argument(
        "--champion",
        action="store_true",
        help="serve it at once (default: publish a candidate for `models promote`)",
    )
    pub.add_argument(
        "--artifact-root",
        help="fsspec URI the file is copied under (default DRIFTLINE_ARTIFACT_ROOT, else "
        "file://.driftline/artifacts)",
    )
    add_kafka_flags(p)
    p.set_defaults(func=run)
