"""Request validation compiled from botocore's own service models (shared by the daemon and the emulator).

Why: real APC rejects malformed input server-side (patterns, lengths, enums, unions), while boto3
checks only types, required members and minimums. To be a faithful stand-in the emulator must do
the same checks, and the model is the one source that stays right as AWS evolves the API. Shapes
are compiled once at start into small checker objects, so a request costs no model lookups.
Messages name the member path and the constraint, never the offending value (it may be a PAN).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from botocore.model import ListShape, MapShape, OperationModel, ServiceModel, Shape, StructureShape

MAX_ERRORS = 10  # AWS reports a handful; more only echoes the same mistake
MAX_DEPTH = 32  # deeper than any APC shape; bounds recursion on hostile input


@dataclass(frozen=True, slots=True)
class FieldError:
    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class _Errors(list[FieldError]):
    """Error sink that stops collecting (and stops walks early) once full."""

    @property
    def full(self) -> bool:
        return len(self) >= MAX_ERRORS

    def add(self, path: str, message: str) -> None:
        if not self.full:
            self.append(FieldError(path or "(root)", message))


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class Node:
    """A compiled shape: `check(value, path, errors, depth)` appends FieldErrors."""

    type_name = "value"

    def check(self, value: Any, path: str, errors: _Errors, depth: int) -> None:
        raise NotImplementedError


class StringNode(Node):
    type_name = "string"

    def __init__(self, shape: Shape) -> None:
        meta = shape.metadata
        self.min: int | None = meta.get("min")
        self.max: int | None = meta.get("max")
        self.enum: frozenset[str] | None = frozenset(shape.enum) if shape.enum else None
        self.enum_text = ", ".join(shape.enum) if shape.enum else ""
        self.pattern_text: str | None = meta.get("pattern")
        # AWS anchors model patterns: the whole value must match (fullmatch), not a substring.
        self.pattern = re.compile(self.pattern_text) if self.pattern_text else None

    def check(self, value: Any, path: str, errors: _Errors, depth: int) -> None:
        if not isinstance(value, str):
            errors.add(path, "Member must be a string")
            return
        size = len(value)
        if self.min is not None and size < self.min:
            errors.add(path, f"Member must have length greater than or equal to {self.min}")
        elif self.max is not None and size > self.max:
            errors.add(path, f"Member must have length less than or equal to {self.max}")
        elif self.enum is not None and value not in self.enum:
            errors.add(path, f"Member must satisfy enum value set: [{self.enum_text}]")
        elif self.pattern is not None and self.pattern.fullmatch(value) is None:
            errors.add(path, f"Member must satisfy regular expression pattern: {self.pattern_text}")


class NumberNode(Node):
    def __init__(self, shape: Shape) -> None:
        self.integral = shape.type_name in ("integer", "long")
        self.type_name = shape.type_name
        self.min = shape.metadata.get("min")
        self.max = shape.metadata.get("max")

    def check(self, value: Any, path: str, errors: _Errors, depth: int) -> None:
        allowed: tuple[type, ...] = (int,) if self.integral else (int, float)
        if isinstance(value, bool) or not isinstance(value, allowed):
            errors.add(path, f"Member must be of type {self.type_name}")
        elif self.min is not None and value < self.min:
            errors.add(path, f"Member must have value greater than or equal to {self.min}")
        elif self.max is not None and value > self.max:
            errors.add(path, f"Member must have value less than or equal to {self.max}")


class BooleanNode(Node):
    type_name = "boolean"

    def check(self, value: Any, path: str, errors: _Errors, depth: int) -> None:
        if not isinstance(value, bool):
            errors.add(path, "Member must be a boolean")


class TimestampNode(Node):
    type_name = "timestamp"

    def check(self, value: Any, path: str, errors: _Errors, depth: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            errors.add(path, "Member must be a timestamp")


class BlobNode(Node):
    type_name = "blob"

    def __init__(self, shape: Shape) -> None:
        self.min = shape.metadata.get("min")
        self.max = shape.metadata.get("max")

    def check(self, value: Any, path: str, errors: _Errors, depth: int) -> None:
        try:
            size = len(base64.b64decode(value, validate=True)) if isinstance(value, str) else -1
        except (binascii.Error, ValueError):
            size = -1
        if size < 0:
            errors.add(path, "Member must be base64-encoded binary")
        elif self.min is not None and size < self.min:
            errors.add(path, f"Member must have length greater than or equal to {self.min}")
        elif self.max is not None and size > self.max:
            errors.add(path, f"Member must have length less than or equal to {self.max}")


class ListNode(Node):
    type_name = "list"

    def __init__(self, shape: ListShape) -> None:
        self.min = shape.metadata.get("min")
        self.max = shape.metadata.get("max")
        self.member: Node = Node()

    def check(self, value: Any, path: str, errors: _Errors, depth: int) -> None:
        if not isinstance(value, list):
            errors.add(path, "Member must be a list")
            return
        if self.min is not None and len(value) < self.min:
            errors.add(path, f"Member must have length greater than or equal to {self.min}")
        if self.max is not None and len(value) > self.max:
            errors.add(path, f"Member must have length less than or equal to {self.max}")
            return  # do not walk an oversized list
        for index, item in enumerate(value):
            if errors.full:
                return
            _check_child(self.member, item, f"{path}[{index}]", errors, depth)


class MapNode(Node):
    type_name = "map"

    def __init__(self, shape: MapShape) -> None:
        self.min = shape.metadata.get("min")
        self.max = shape.metadata.get("max")
        self.key: Node = Node()
        self.value: Node = Node()

    def check(self, value: Any, path: str, errors: _Errors, depth: int) -> None:
        if not isinstance(value, dict):
            errors.add(path, "Member must be a map")
            return
        if self.max is not None and len(value) > self.max:
            errors.add(path, f"Member must have length less than or equal to {self.max}")
            return
        if self.min is not None and len(value) < self.min:
            errors.add(path, f"Member must have length greater than or equal to {self.min}")
        for key, item in value.items():
            if errors.full:
                return
            # Map keys can be data too: report the map, not the key.
            self.key.check(key, f"{path}(key)", errors, depth + 1)
            _check_child(self.value, item, f"{path}(value)", errors, depth)


class StructureNode(Node):
    type_name = "structure"

    def __init__(self, shape: StructureShape) -> None:
        self.name = shape.name
        self.union = bool(shape.is_tagged_union)
        self.required: tuple[str, ...] = tuple(shape.required_members)
        self.members: dict[str, Node] = {}
        self.member_names = ", ".join(shape.members)

    def check(self, value: Any, path: str, errors: _Errors, depth: int) -> None:
        if not isinstance(value, dict):
            errors.add(path, "Member must be a structure")
            return
        present = [name for name, item in value.items() if item is not None]
        for name in present:
            if name not in self.members:
                # The unknown name is the client's own member name, not payment data.
                errors.add(_join(path, name) if _safe_name(name) else path, "Unknown member")
        for name in self.required:
            if value.get(name) is None:
                errors.add(_join(path, name), "Member must not be null")
        if self.union and len(present) != 1:
            errors.add(path, f"Exactly one member must be set, one of: {self.member_names}")
        for name in present:
            if errors.full:
                return
            node = self.members.get(name)
            if node is not None:
                _check_child(node, value[name], _join(path, name), errors, depth)


_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


def _safe_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def _check_child(node: Node, value: Any, path: str, errors: _Errors, depth: int) -> None:
    if depth >= MAX_DEPTH:
        errors.add(path, "Member is nested too deeply")
        return
    node.check(value, path, errors, depth + 1)


class Compiler:
    """Compiles shapes once; shares nodes by shape name so recursive models terminate."""

    def __init__(self) -> None:
        self._nodes: dict[tuple[str, str], Node] = {}

    def compile(self, shape: Shape, service: str = "") -> Node:
        key = (service, shape.name)
        cached = self._nodes.get(key)
        if cached is not None:
            return cached
        kind = shape.type_name
        node: Node
        if kind == "structure":
            assert isinstance(shape, StructureShape)
            node = StructureNode(shape)
            self._nodes[key] = node
            node.members = {name: self.compile(member, service) for name, member in shape.members.items()}
            return node
        if kind == "list":
            assert isinstance(shape, ListShape)
            node = ListNode(shape)
            self._nodes[key] = node
            node.member = self.compile(shape.member, service)
            return node
        if kind == "map":
            assert isinstance(shape, MapShape)
            node = MapNode(shape)
            self._nodes[key] = node
            node.key, node.value = self.compile(shape.key, service), self.compile(shape.value, service)
            return node
        if kind == "string":
            node = StringNode(shape)
        elif kind in ("integer", "long", "float", "double"):
            node = NumberNode(shape)
        elif kind == "boolean":
            node = BooleanNode()
        elif kind == "timestamp":
            node = TimestampNode()
        elif kind == "blob":
            node = BlobNode(shape)
        else:
            raise ValueError(f"unsupported shape type {kind} ({shape.name})")
        self._nodes[key] = node
        return node


class OperationValidator:
    """Validates one operation's input (or output) dict against its compiled shape."""

    def __init__(self, root: Node) -> None:
        self.root = root

    def errors(self, params: Mapping[str, Any]) -> list[FieldError]:
        found = _Errors()
        self.root.check(params, "", found, 0)
        return list(found)


def summary(errors: list[FieldError]) -> str:
    """AWS-style top-level message: count plus each path and constraint (no values)."""
    count = len(errors)
    noun = "error" if count == 1 else "errors"
    detail = "; ".join(f"Value at '{e.path}' failed to satisfy constraint: {e.message}" for e in errors)
    return f"{count} validation {noun} detected: {detail}"


def input_validator(compiler: Compiler, operation: OperationModel) -> OperationValidator:
    shape = operation.input_shape
    if shape is None:
        return OperationValidator(StructureNode(StructureShape("Empty", {"type": "structure", "members": {}})))
    return OperationValidator(compiler.compile(shape, operation.service_model.service_name))


def output_validator(compiler: Compiler, operation: OperationModel) -> OperationValidator | None:
    shape = operation.output_shape
    return None if shape is None else OperationValidator(compiler.compile(shape, operation.service_model.service_name))


@cache
def load_service(name: str) -> ServiceModel:
    """botocore's bundled model, loaded once per process (tens of milliseconds each)."""
    import botocore.session

    return botocore.session.get_session().get_service_model(name)
