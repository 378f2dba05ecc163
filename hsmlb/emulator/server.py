"""The emulator's HTTP front: one catch-all aiohttp handler serving both APC planes.

Why one handler: APC's data plane (rest-json, routed by path) and control plane (awsJson, routed by
X-Amz-Target) share an endpoint here, and a single precompiled dispatch keeps per-request work
small. Order per request: route, SigV4, injected faults, model validation, engine, output check.
Nothing here logs request bodies, PANs, PIN blocks or key material.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from hsmlb.apc.validation import Compiler, summary
from hsmlb.emulator.control import HANDLERS as CONTROL_HANDLERS
from hsmlb.emulator.errors import ApiError, error_response, request_id
from hsmlb.emulator.faults import FaultConfig, Faults
from hsmlb.emulator.keys import KeyStore
from hsmlb.emulator.routes import ControlPlane, DataPlane, Operation, Plane, unsupported
from hsmlb.emulator.sigv4 import IncomingRequest, SigV4Verifier
from hsmlb.payments import engine, types

log = logging.getLogger("hsmlb.emulator")
MAX_BODY = 256 * 1024  # far above the largest APC member; bounds memory per request
ADMIN_PREFIX = "/_emulator/"


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


@dataclass
class EmulatorConfig:
    keys_file: str
    region: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    faults: FaultConfig
    fault_injection: bool = False


class Emulator:
    """Everything a request needs, built once at start."""

    def __init__(self, config: EmulatorConfig) -> None:
        compiler = Compiler()
        self.data = DataPlane(compiler)
        self.control = ControlPlane(compiler)
        self.keys = KeyStore(config.keys_file, config.region)
        self.verifier = SigV4Verifier(config.access_key_id, config.secret_access_key, config.region)
        self.faults = Faults(config.faults)
        self.fault_injection = config.fault_injection
        self.in_flight = 0  # APC requests being handled, for the shutdown drain
        self._idle = asyncio.Event()
        self._idle.set()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        if self.fault_injection:
            app.router.add_route("POST", ADMIN_PREFIX + "faults", self.set_faults)
            app.router.add_route("GET", ADMIN_PREFIX + "faults", self.get_faults)
            app.router.add_route("GET", ADMIN_PREFIX + "stats", self.get_stats)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    # -- test hooks (only routed with --fault-injection) --

    async def set_faults(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("body must be a JSON object")
            self.faults.config = self.faults.config.update(changes)
        except (ValueError, json.JSONDecodeError) as exc:
            return web.json_response({"message": str(exc)}, status=400)
        log.info("faults now %s", self.faults.config)
        return await self.get_faults(request)

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults.stats()["faults"])

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults.stats())

    # -- APC --

    async def drained(self) -> None:
        """Return once no APC request is in flight (the caller bounds the wait)."""
        await self._idle.wait()

    async def handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self._idle.clear()
        try:
            return await self._handle(request)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()

    async def _handle(self, request: web.Request) -> web.Response:
        rid = request_id()
        raw_path = request.raw_path
        path = raw_path.split("?", 1)[0]
        if path.startswith(ADMIN_PREFIX):
            return web.json_response({"message": "Not Found"}, status=404, headers={"x-amzn-RequestId": rid})
        target = request.headers.get("X-Amz-Target")
        plane: Plane = self.control if target is not None else self.data
        op: Operation | None
        labels: dict[str, str] = {}
        if target is not None:
            op = self.control.route(request.method, path, target)
        else:
            found = self.data.route(request.method, path)
            op, labels = found if found is not None else (None, {})
        name = op.name if op is not None else "(unknown)"
        try:
            body = await request.read()
            self.verifier.verify(IncomingRequest(request.method, "http://emulator" + raw_path, request.headers, body))
            if op is None:
                raise ApiError("UnknownOperationException", "The requested operation is not recognized.")
            await self.faults.apply()
            params = self._params(op, body, labels, request)
            result = self._execute(plane, op, params)
            if plane is self.data:
                result = self.faults.corrupt(name, result)
            self.faults.record(name, "ok")
            return web.Response(status=op.status, body=json.dumps(result, separators=(",", ":")).encode(),
                                content_type=plane.content_type, headers={"x-amzn-RequestId": rid})
        except web.HTTPRequestEntityTooLarge:
            error = ApiError("SerializationException", "The request body is too large.", status=413)
        except ConnectionError:  # the client went away mid-body: its fault, not an emulator bug
            error = ApiError("RequestAbortedException", "The request was aborted before a reply was sent.",
                             status=400)
        except ApiError as exc:
            error = exc
        except Exception as exc:  # an emulator bug: answer like AWS would, log the type only (no data)
            log.error("%s failed: %s", name, type(exc).__name__)
            error = ApiError("InternalServerException", "The request processing has failed.")
        self.faults.record(name, error.code)
        return error_response(error, plane.errors, plane.content_type, plane.json_protocol, plane.namespace, rid)

    def _params(self, op: Operation, body: bytes, labels: dict[str, str], request: web.Request) -> dict[str, Any]:
        """Decode and validate the input: body JSON plus URI labels, headers and query members."""
        try:
            # UTF-8 only (json.loads(bytes) would guess UTF-16/32 too) and no NaN/Infinity: neither is JSON
            params = json.loads(body.decode(), parse_constant=_not_json) if body.strip() else {}
        except (ValueError, RecursionError):
            raise ApiError("SerializationException", "The request body is not valid JSON.") from None
        if not isinstance(params, dict):
            raise ApiError("SerializationException", "The request body must be a JSON object.")
        misplaced = sorted(name for name in params if name in op.located)
        if misplaced:
            fields = [{"path": name, "message": "Member must not be sent in the body"} for name in misplaced]
            raise ApiError("ValidationException", f"{len(fields)} validation error(s) detected.",
                           {"fieldList": fields})
        params.update(labels)
        for header, member in op.header_members.items():
            if header in request.headers:
                params[member] = request.headers[header]
        for key, member in op.query_members.items():
            if key in request.query:
                params[member] = request.query[key]
        errors = op.validator.errors(params)
        if errors:
            raise ApiError("ValidationException", summary(errors), {"fieldList": [e.as_dict() for e in errors]})
        if not op.supported:
            raise unsupported(op)
        return params

    def _execute(self, plane: Plane, op: Operation, params: dict[str, Any]) -> dict[str, Any]:
        if plane is self.control:
            result = CONTROL_HANDLERS[op.name](self.keys, params)
        else:
            result = self._payment(op.name, params)
        if op.output is not None:
            errors = op.output.errors(result)
            if errors:
                # An engine or emulator bug: say where, never what (outputs hold PINs and MACs).
                log.error("%s produced an off-model response at %s", op.name, ", ".join(e.path for e in errors))
                raise ApiError("InternalServerException", "The emulator produced an off-model response.")
        return result

    def _payment(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        try:
            result = dict(engine.execute(name, params, self.keys.resolve))
            key = self.keys.find(types.result_key_identifier(name, params))
        except types.PaymentValidationError as exc:
            raise ApiError("ValidationException", exc.message, {"fieldList": list(exc.field_list)}) from None
        except types.KeyNotFoundError as exc:
            resource = str(exc.args[0]) if exc.args else ""
            raise ApiError("ResourceNotFoundException", "Key or alias not found.", {"ResourceId": resource}) from None
        except types.VerificationFailed as exc:
            raise ApiError("VerificationFailedException", exc.message,
                           {"Reason": exc.reason, "Message": exc.message}) from None
        except types.PaymentError as exc:
            raise ApiError("ValidationException", str(exc)) from None
        except Exception as exc:  # an engine bug must not kill the connection or leak data
            log.error("%s failed in the engine: %s", name, type(exc).__name__)
            raise ApiError("InternalServerException", "The request processing has failed.") from None
        return {"KeyArn": key.arn, "KeyCheckValue": key.kcv, **result}
