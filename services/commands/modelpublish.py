"""`driftline models publish PATH`: serve an ONNX classifier trained elsewhere.

Every check a consumer makes before it serves a graph (services/inference/model.py: the ONNX
checker, no external data, the modality's input contract, one output per class, a canary batch
through ONNX Runtime) runs here first, so a file that no consumer would serve is refused with
one line and nothing is written. A file that passes is copied into the artifact store and its
record written the way the trainer writes one (services/runtime/publishing.py): the next free
version under the model's publish lease, signed when a key is given, its I/O signature read
from the graph. As a candidate (the default) it waits for `driftline models promote`; with
--champion every consumer of the model swaps to it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, SecretStr

from driftline.services.runtime.settings import DriftlineSettings, default_artifact_root

if TYPE_CHECKING:
    from driftline.schemas.messages import ModelVersion, TensorSpec

# A model name is a registry key (`<name>` and `<name>/v<N>`) and an artifact folder.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
LINEAGE_SOURCE = "publish"
MAX_MESSAGE = 300


class PublishSettings(DriftlineSettings):
    """What `models publish` reads from the environment: the trainer's own variables."""

    artifact_root: str = Field(default_factory=default_artifact_root)
    signing_key: SecretStr | None = None


class Refused(Exception):
    """Why a file is not published: one line for the user."""


def one_line(text: str) -> str:
    """A checker's multi-line message as one bounded line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_MESSAGE else flat[: MAX_MESSAGE - 3] + "..."


def parse_classes(text: str | None) -> list[str]:
    from driftline.schemas.contracts import INSULATOR_CLASSES

    if text is None:
        return list(INSULATOR_CLASSES)
    classes = [c.strip() for c in text.split(",")]
    if len(classes) < 2 or any(not c for c in classes):
        raise Refused(f"--classes {text!r}: give two or more names, comma-separated, none empty")
    if len(set(classes)) != len(classes):
        raise Refused(f"--classes {text!r}: a class is named twice")
    return classes


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise Refused(f"no such file: {path}") from None
    except OSError as exc:
        raise Refused(f"cannot read {path}: {exc.strerror or exc}") from None


def _keys(settings: PublishSettings) -> None:
    """Read the signing key now: a bad key is refused before any check or write."""
    from driftline.services.runtime.publishing import signing_keys
    from driftline.services.runtime.signing import SignatureError

    try:
        signing_keys(settings.signing_key)
    except FileNotFoundError as exc:
        raise Refused(f"signing key: no such file {exc.filename}") from None
    except (SignatureError, ValueError, TypeError, OSError) as exc:
        raise Refused(
            f"signing key: not an ed25519 private key in PEM ({one_line(str(exc))})"
        ) from None


def check(
    data: bytes, modality: str, classes: list[str]
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The consumer's checks of the graph; Refused with the reason."""
    from driftline.services.inference.model import ModelRejected, check_servable

    try:
        return check_servable(data, modality, len(classes))
    except ModelRejected as exc:
        raise Refused(f"{exc.reason}: {one_line(str(exc))}") from None


def publish(args: argparse.Namespace) -> int:
    try:
        mv = _publish(args)
    except Refused as exc:
        print(f"driftline models publish: refused, nothing published: {exc}", file=sys.stderr)
        return 1
    what = (
        "champion: every consumer of it swaps to it"
        if args.champion
        else f"candidate: `driftline models promote {mv.name}/v{mv.version}` makes it champion"
    )
    print(f"published {mv.name} v{mv.version} as {what}")
    print(f"  artifact   {mv.artifact_uri}")
    print(f"  sha256     {mv.sha256}")
    print(
        f"  signature  {'ed25519, key ' + str(mv.signing_key_id) if mv.signature else 'unsigned'}"
    )
    return 0


def _publish(args: argparse.Namespace) -> ModelVersion:
    from driftline.schemas.contracts import MODEL_NAMES
    from driftline.schemas.messages import STATUS_CHALLENGER, STATUS_CHAMPION, Lineage
    from driftline.services.commands.args import settings_from
    from driftline.services.commands.preflight import check_kafka
    from driftline.services.runtime import publishing
    from driftline.services.runtime.artifacts import ArtifactError, FsspecArtifactStore
    from driftline.services.runtime.registry import read_snapshot

    if args.version is None:
        raise Refused("give the PATH of an .onnx file: `driftline models publish model.onnx`")
    if args.extra is not None:
        raise Refused(f"give one PATH, not {args.version!r} and {args.extra!r}")
    if args.modality is None:
        raise Refused("give --modality sensor or --modality image (the contract it is fed)")
    path = Path(args.version).expanduser()
    name = args.name or MODEL_NAMES[args.modality]
    if not NAME_RE.match(name):
        raise Refused(f"--name {name!r}: letters, digits, '.', '_' and '-' only (no '/')")
    classes = parse_classes(args.classes)
    settings = settings_from(PublishSettings, args, ["artifact_root", "signing_key"])
    _keys(settings)
    data = _read(path)
    inputs, outputs = check(data, args.modality, classes)

    check_kafka(settings.kafka)
    topic = settings.kafka.topics.models_registry
    existing = read_snapshot(settings.kafka, topic).versions.get(name, {})
    other = next((mv for mv in existing.values() if mv.modality != args.modality), None)
    if other is not None:
        raise Refused(
            f"{name} is a {other.modality} model (v{other.version}); give --name for a new one"
        )
    store = FsspecArtifactStore(settings.artifact_root)
    status = STATUS_CHAMPION if args.champion else STATUS_CHALLENGER

    def build(version: int) -> ModelVersion:
        return publishing.build_record(
            store=store,
            name=name,
            version=version,
            modality=args.modality,
            onnx_bytes=data,
            inputs=inputs,
            outputs=outputs,
            classes=classes,
            metrics={},
            lineage=Lineage(source=f"{LINEAGE_SOURCE} {path.name}"),
            status=status,
            signing_key=settings.signing_key,
        )

    writer = publishing.KafkaRegistryWriter(settings.kafka)
    try:
        return publishing.publish_next(writer, name, build)
    except (ArtifactError, OSError) as exc:
        raise Refused(f"artifact store {settings.artifact_root}: {one_line(str(exc))}") from None
    except publishing.RegistryConflict as exc:
        raise Refused(one_line(str(exc))) from None
    finally:
        writer.close()
