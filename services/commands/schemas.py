"""`driftline schemas json`: the JSON Schemas of the producer records, for JSON producers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from driftline.schemas import json_schema

EXAMPLES = """\
examples:
  driftline schemas json                          # every producer record's schema, on stdout
  driftline schemas json --record SensorWindow    # one of them
  driftline schemas json --out docs/schemas       # write <Record>.schema.json files

The records and their topics: SensorWindow -> sensor.windows, CameraImage -> camera.images,
Label -> feedback.labels. Send JSON records with the header content-type: application/json.
docs/producers.md has the rest (keys, headers, dead letters, examples in Python and Node.js).
"""


def run(args: argparse.Namespace) -> int:
    names = [args.record] if args.record else list(json_schema.PRODUCER_RECORDS)
    if args.out is None:
        for name in names:
            sys.stdout.write(json_schema.render(name))
        return 0
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"driftline schemas: --out {out} is a file, not a folder", file=sys.stderr)
        return 2
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in names:
            path = out / json_schema.file_name(name)
            path.write_text(json_schema.render(name), encoding="utf-8")
            print(f"wrote    {path}")
    except OSError as exc:
        print(f"driftline schemas: cannot write to {out}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "schemas",
        help="JSON Schemas of the records producers send",
        description="Print or write a JSON Schema (draft 2020-12) for each record that upstream "
        "producers send, derived from its Avro contract in schemas/avro plus the rules the "
        "consumers apply to JSON records. Producers that send JSON can validate against them "
        "before sending; a record they refuse would be dead-lettered.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("format", choices=["json"], help="the schema language (json: JSON Schema)")
    p.add_argument(
        "--record",
        choices=list(json_schema.PRODUCER_RECORDS),
        help="only this record (default: every producer record)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="write <Record>.schema.json files into DIR instead of printing them",
    )
    p.set_defaults(func=run)
