"""Validate APC-shaped requests against botocore's own payment-cryptography-data model.

The daemon refuses what APC would refuse, with APC's field paths, before anything is routed, so
a malformed payment request never reaches (or counts against) a node of either kind.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from hsmlb.apc.validation import Compiler, OperationValidator, input_validator, load_service
from hsmlb.errors import InvalidArgument, field_text, proto_name

SERVICE = "payment-cryptography-data"


@cache
def _validators() -> dict[str, OperationValidator]:
    model = load_service(SERVICE)
    compiler = Compiler()
    return {name: input_validator(compiler, model.operation_model(name)) for name in model.operation_names}


def validate_apc(operation: str, params: dict[str, Any]) -> None:
    errors = _validators()[operation].errors(params)
    if errors:  # the one convention (errors.field_text): proto path, APC path, rule; never the value
        rules = [(e.path, e.message.removeprefix("Member ")) for e in errors]
        raise InvalidArgument("; ".join(field_text(path, rule) for path, rule in rules),
                              [(proto_name(path), rule) for path, rule in rules])
