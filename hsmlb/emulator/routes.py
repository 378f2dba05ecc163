"""Operation tables for both APC planes, built once from botocore's models.

Why: routes, methods, status codes, label names and validators must be exactly what botocore
sends and expects; reading them from the model (not writing them down) keeps the emulator honest,
and precompiling them keeps per-request work to a dict lookup or a short regex scan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from botocore.model import OperationModel, ServiceModel

from hsmlb.apc.validation import Compiler, OperationValidator, input_validator, load_service, output_validator
from hsmlb.emulator.errors import ApiError, ErrorStatus

DATA_SERVICE = "payment-cryptography-data"
CONTROL_SERVICE = "payment-cryptography"
DATA_OPERATIONS = frozenset({
    "EncryptData", "DecryptData", "ReEncryptData", "GenerateMac", "VerifyMac", "GenerateCardValidationData",
    "VerifyCardValidationData", "TranslatePinData", "VerifyAuthRequestCryptogram",
})
CONTROL_OPERATIONS = frozenset({"GetKey", "GetAlias", "ListKeys", "ListAliases"})
_LABEL = re.compile(r"\{([A-Za-z0-9_]+)(\+?)\}")


@dataclass(slots=True)
class Operation:
    name: str
    supported: bool
    status: int
    validator: OperationValidator
    output: OperationValidator | None
    uri_members: dict[str, str] = field(default_factory=dict)  # label -> member name
    header_members: dict[str, str] = field(default_factory=dict)  # header -> member name
    query_members: dict[str, str] = field(default_factory=dict)  # query key -> member name
    located: frozenset[str] = frozenset()  # members that travel outside the JSON body


def _operation(compiler: Compiler, model: OperationModel, supported: frozenset[str]) -> Operation:
    op = Operation(model.name, model.name in supported, int(model.http.get("responseCode", 200)),
                   input_validator(compiler, model), output_validator(compiler, model))
    shape = model.input_shape
    for name, member in (shape.members.items() if shape is not None else ()):
        location = member.serialization.get("location")
        wire = member.serialization.get("name", name)
        if location == "uri":
            op.uri_members[wire] = name
        elif location == "header":
            op.header_members[wire] = name
        elif location == "querystring":
            op.query_members[wire] = name
    op.located = frozenset((*op.uri_members.values(), *op.header_members.values(), *op.query_members.values()))
    return op


def _uri_regex(uri: str) -> re.Pattern[str]:
    """`/keys/{KeyIdentifier}/encrypt` -> a regex over the raw (still percent-encoded) path."""
    parts: list[str] = []
    position = 0
    for match in _LABEL.finditer(uri):
        parts.append(re.escape(uri[position:match.start()]))
        parts.append(f"(?P<{match[1]}>.+)" if match[2] else f"(?P<{match[1]}>[^/]+)")
        position = match.end()
    parts.append(re.escape(uri[position:]))
    return re.compile("".join(parts))


@dataclass(slots=True)
class Plane:
    """One service: its operations, error statuses and wire details."""

    service: ServiceModel
    operations: dict[str, Operation]
    errors: ErrorStatus
    content_type: str
    json_protocol: bool
    namespace: str


class DataPlane(Plane):
    """rest-json: the operation is chosen by method and path."""

    def __init__(self, compiler: Compiler) -> None:
        service = load_service(DATA_SERVICE)
        operations = {n: _operation(compiler, service.operation_model(n), DATA_OPERATIONS)
                      for n in service.operation_names}
        super().__init__(service, operations, ErrorStatus(service), "application/json", False, "")
        self._static: dict[tuple[str, str], Operation] = {}
        self._templated: list[tuple[str, re.Pattern[str], Operation]] = []
        for name in service.operation_names:
            http = service.operation_model(name).http
            method, uri = http["method"], http["requestUri"].split("?", 1)[0]
            if "{" not in uri:
                self._static[(method, uri)] = operations[name]
                continue
            self._templated.append((method, _uri_regex(uri), operations[name]))

    def route(self, method: str, raw_path: str) -> tuple[Operation, dict[str, str]] | None:
        op = self._static.get((method, raw_path))
        if op is not None:
            return op, {}
        for want, pattern, candidate in self._templated:
            match = pattern.fullmatch(raw_path) if want == method else None
            if match is not None:
                labels = {candidate.uri_members.get(k, k): unquote(v) for k, v in match.groupdict().items()}
                return candidate, labels
        return None


class ControlPlane(Plane):
    """awsJson1_0: POST / with X-Amz-Target `<targetPrefix>.<Operation>`."""

    def __init__(self, compiler: Compiler) -> None:
        service = load_service(CONTROL_SERVICE)
        operations = {n: _operation(compiler, service.operation_model(n), CONTROL_OPERATIONS)
                      for n in service.operation_names}
        version = service.metadata.get("jsonVersion", "1.0")
        namespace = service.metadata.get("targetPrefix", "")
        super().__init__(service, operations, ErrorStatus(service), f"application/x-amz-json-{version}", True,
                         namespace)
        self._targets = {f"{namespace}.{name}": op for name, op in operations.items()}

    def route(self, method: str, raw_path: str, target: str) -> Operation | None:
        if method != "POST" or raw_path != "/":
            return None
        return self._targets.get(target)


def unsupported(op: Operation) -> ApiError:
    return ApiError("ValidationException", f"{op.name} is not supported by the apc-emulator.")
