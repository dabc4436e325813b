"""Avro schema resolution rules: can data written with one schema be read with another?

BACKWARD compatibility (the Kafka ecosystem's default) means a consumer on the new schema can
read everything written with the previous one: new schema as reader, old schema as writer.
"""

from __future__ import annotations

from typing import Any

_PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "double": {"double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _collect_named(node: Any, names: dict[str, Any], namespace: str = "") -> None:
    if isinstance(node, list):
        for branch in node:
            _collect_named(branch, names, namespace)
    elif isinstance(node, dict):
        kind = node.get("type")
        ns = node.get("namespace", namespace)
        if kind in ("record", "enum", "fixed"):
            names[node["name"]] = node
            names[f"{ns}.{node['name']}" if ns else node["name"]] = node
        if kind == "record":
            for f in node.get("fields", []):
                _collect_named(f["type"], names, ns)
        elif kind == "array":
            _collect_named(node["items"], names, ns)
        elif kind == "map":
            _collect_named(node["values"], names, ns)
        elif isinstance(kind, (dict, list)):
            _collect_named(kind, names, ns)


class _Resolver:
    def __init__(self, reader: Any, writer: Any) -> None:
        self.reader_names: dict[str, Any] = {}
        self.writer_names: dict[str, Any] = {}
        _collect_named(reader, self.reader_names)
        _collect_named(writer, self.writer_names)
        self.problems: list[str] = []
        self._seen: set[tuple[int, int]] = set()

    @staticmethod
    def _deref(node: Any, names: dict[str, Any]) -> Any:
        """Follow names and {"type": ...} wrappers down to a primitive, complex type or union."""
        while True:
            if isinstance(node, str):
                if node in _PRIMITIVES:
                    return node
                return names.get(node, names.get(node.rsplit(".", 1)[-1], node))
            if isinstance(node, dict):
                inner = node.get("type")
                if inner in _PRIMITIVES:
                    return inner
                if inner in ("array", "map", "record", "enum", "fixed"):
                    return node
                node = inner
                continue
            return node

    @staticmethod
    def _kind(node: Any) -> str:
        if isinstance(node, list):
            return "union"
        if isinstance(node, str):
            return node
        return str(node.get("type"))

    def readable(self, reader: Any, writer: Any, path: str) -> bool:
        r = self._deref(reader, self.reader_names)
        w = self._deref(writer, self.writer_names)
        rk, wk = self._kind(r), self._kind(w)
        if wk == "union":
            ok = True
            for i, branch in enumerate(w):
                ok &= self.readable(r, branch, f"{path}|{i}")
            return ok
        if rk == "union":
            if any(self._quiet(branch, w) for branch in r):
                return True
            self.problems.append(f"{path}: writer type {wk} matches no branch of the reader union")
            return False
        if wk in _PROMOTIONS or wk in ("null", "boolean"):
            if rk == wk or rk in _PROMOTIONS.get(wk, set()):
                return True
            self.problems.append(f"{path}: {wk} cannot be read as {rk}")
            return False
        if rk != wk:
            self.problems.append(f"{path}: {wk} cannot be read as {rk}")
            return False
        if wk == "array":
            return self.readable(r["items"], w["items"], f"{path}[]")
        if wk == "map":
            return self.readable(r["values"], w["values"], f"{path}{{}}")
        if wk == "enum":
            missing = set(w["symbols"]) - set(r["symbols"])
            if missing and "default" not in r:
                self.problems.append(f"{path}: enum symbols {sorted(missing)} unknown to reader")
                return False
            return True
        if wk == "fixed":
            if r.get("size") != w.get("size"):
                self.problems.append(f"{path}: fixed size {w.get('size')} != {r.get('size')}")
                return False
            return True
        if wk == "record":
            key = (id(r), id(w))
            if key in self._seen:
                return True
            self._seen.add(key)
            by_name = {f["name"]: f for f in w.get("fields", [])}
            ok = True
            for field in r.get("fields", []):
                names = [field["name"], *field.get("aliases", [])]
                match = next((by_name[n] for n in names if n in by_name), None)
                if match is None:
                    if "default" not in field:
                        self.problems.append(f"{path}.{field['name']}: new field without a default")
                        ok = False
                    continue
                ok &= self.readable(field["type"], match["type"], f"{path}.{field['name']}")
            return ok
        return True

    def _quiet(self, reader: Any, writer: Any) -> bool:
        saved = list(self.problems)
        ok = self.readable(reader, writer, "")
        self.problems = saved
        return ok


def backward_problems(new: dict[str, Any], old: dict[str, Any]) -> list[str]:
    """Why data written with `old` cannot be read with `new`; empty when it can."""
    resolver = _Resolver(new, old)
    resolver.readable(new, old, new.get("name", "record"))
    return resolver.problems
