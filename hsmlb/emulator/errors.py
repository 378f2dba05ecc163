"""Errors as AWS sends them, so botocore parses them into its modelled exceptions.

Why: clients branch on `e.response["Error"]["Code"]` and the modelled members (fieldList, Reason,
ResourceId); a near miss in status, header or body shape turns into a generic ClientError or a
retry storm. Status codes come from each service's model where it states one.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from botocore.model import ServiceModel

# Errors that are not in the service models but that AWS's front door answers with.
FRONT_DOOR_STATUS = {
    "MissingAuthenticationTokenException": 403,
    "UnrecognizedClientException": 403,
    "InvalidSignatureException": 403,
    "IncompleteSignatureException": 403,
    "SerializationException": 400,
    "UnknownOperationException": 404,
}


@dataclass
class ApiError(Exception):
    """An AWS error answer: code, message and any modelled members (e.g. fieldList, Reason)."""

    code: str
    message: str
    members: dict[str, Any] = field(default_factory=dict)
    status: int | None = None  # None: take it from the service model

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ErrorStatus:
    """code -> HTTP status for one service, read from its error shapes."""

    def __init__(self, service: ServiceModel) -> None:
        self.message_member: dict[str, str] = {}
        import botocore.session

        # `fault` (server-side error) is not exposed on botocore's Shape; read the raw model for it.
        raw = botocore.session.get_session().get_component("data_loader").load_service_model(
            service.service_name, "service-2", service.api_version)["shapes"]
        self.status: dict[str, int] = dict(FRONT_DOOR_STATUS)
        for shape in service.error_shapes:
            error = shape.metadata.get("error", {})
            fault = bool(raw.get(shape.name, {}).get("fault"))
            self.status[shape.name] = int(error.get("httpStatusCode", 500 if fault else 400))
            # The data plane's ValidationException spells it "message"; the rest "Message".
            self.message_member[shape.name] = "message" if "message" in shape.members else "Message"

    def of(self, error: ApiError) -> int:
        return error.status or self.status.get(error.code, 400)


def request_id() -> str:
    return str(uuid.uuid4())


def error_response(error: ApiError, statuses: ErrorStatus, content_type: str, json_protocol: bool,
                   namespace: str, rid: str) -> web.Response:
    """Body and headers both name the code: rest-json reads the header, awsJson the `__type`."""
    body: dict[str, Any] = {statuses.message_member.get(error.code, "message"): error.message}
    body.update(error.members)
    if json_protocol:
        body["__type"] = f"{namespace}#{error.code}"
    headers = {"x-amzn-RequestId": rid, "x-amzn-ErrorType": error.code}
    return web.Response(status=statuses.of(error), body=json.dumps(body, separators=(",", ":")).encode(),
                        headers=headers, content_type=content_type)
