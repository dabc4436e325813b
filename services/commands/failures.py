"""How a failed command explains itself: one line per problem, in the user's terms, no traceback.

Settings errors name the flag that was given (`--count`) or, when the value came from the
environment, its variable (`DRIFTLINE_COUNT`); an unreachable broker gets the hint of what
to start or point at.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError

ENV_PREFIX = "DRIFTLINE_"
KAFKA_HINT = (
    "  is Kafka running and reachable? `driftline stack up` starts a local one; "
    "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS points elsewhere"
)
BOUNDS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Every option's dest and its long flag, across all subcommands (the first one wins)."""
    names: dict[str, str] = {}
    for action in _actions(parser):
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs:
            names.setdefault(action.dest, longs[0])
    return names


def _actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)


def settings_error_lines(
    exc: ValidationError, args: argparse.Namespace, flags: dict[str, str]
) -> list[str]:
    """One line per invalid setting: where its value came from, what is wrong, what it was."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = [str(part) for part in err["loc"]]
        problem = _problem(err)
        shown = _shown(loc, err.get("input")) if "input" in err and loc else None
        got = f" (got {shown})" if shown is not None else ""
        if not loc:
            lines.append(problem)
            continue
        field = loc[0]
        if len(loc) == 1 and field in flags and getattr(args, field, None) is not None:
            where = flags[field]
        else:
            where = ENV_PREFIX + "__".join(part.upper() for part in loc)
        lines.append(f"{where} {problem}{got}")
    return lines


def _problem(err: Any) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind in BOUNDS and BOUNDS[kind][1] in ctx:
        sign, key = BOUNDS[kind]
        bound = ctx[key]
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)  # ">= 0", not ">= 0.0", for a float setting
        return f"must be {sign} {bound}"
    msg = str(err.get("msg", "is invalid"))
    msg = msg.removeprefix("Value error, ")
    if msg.startswith("Input should"):
        return "should" + msg.removeprefix("Input should")
    return msg[:1].lower() + msg[1:] if msg[:2] != msg[:2].upper() else msg


def _shown(loc: list[str], value: object) -> str | None:
    """The offending value, except where the setting may hold a secret."""
    name = loc[-1].lower()
    if any(word in name for word in ("password", "secret", "token", "url", "key")):
        return None
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."
