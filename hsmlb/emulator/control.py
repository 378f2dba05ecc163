"""The slice of APC's control plane a client needs to discover keys: GetKey, GetAlias, ListKeys,
ListAliases. Why: the daemon reads KCVs and ARNs at start to cross-check its backends; nothing
here creates or changes keys (the keys file is the inventory).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hsmlb.emulator.errors import ApiError
from hsmlb.emulator.keys import EmulatedKey, KeyStore
from hsmlb.payments.types import KeyNotFoundError

DEFAULT_PAGE = 100  # the model's MaxResults maximum
_MAX_TOKEN_DIGITS = 9  # offsets into a keys file; far below int()'s digit limit
ControlHandler = Callable[[KeyStore, dict[str, Any]], dict[str, Any]]


def _not_found(identifier: str) -> ApiError:
    return ApiError("ResourceNotFoundException", "Key or alias not found.", {"ResourceId": identifier})


def _find(store: KeyStore, identifier: str) -> EmulatedKey:
    try:
        return store.find(identifier)
    except KeyNotFoundError:
        raise _not_found(identifier) from None


def _page(items: list[Any], params: dict[str, Any], member: str) -> dict[str, Any]:
    """Offset pagination; NextToken is the decimal offset, opaque to clients."""
    token = params.get("NextToken")
    start = 0
    if token is not None:
        # isdigit() alone takes Arabic-Indic and superscript digits (int() refuses "²", and 5000 digits)
        if not (token.isascii() and token.isdigit()) or len(token) > _MAX_TOKEN_DIGITS or int(token) > len(items):
            raise ApiError("ValidationException", "The pagination token is invalid.")
        start = int(token)
    size = int(params.get("MaxResults") or DEFAULT_PAGE)
    page = items[start:start + size]
    out: dict[str, Any] = {member: page}
    if start + size < len(items):
        out["NextToken"] = str(start + size)
    return out


def get_key(store: KeyStore, params: dict[str, Any]) -> dict[str, Any]:
    return {"Key": _find(store, params["KeyIdentifier"]).description(store.created)}


def get_alias(store: KeyStore, params: dict[str, Any]) -> dict[str, Any]:
    name = params["AliasName"]
    key = next((k for k in store.keys if k.alias == name), None)
    if key is None:
        raise _not_found(name)
    return {"Alias": {"AliasName": key.alias, "KeyArn": key.arn}}


def list_keys(store: KeyStore, params: dict[str, Any]) -> dict[str, Any]:
    state = params.get("KeyState")
    keys = [] if state not in (None, "CREATE_COMPLETE") else [k.summary(store.created) for k in store.keys]
    return _page(keys, params, "Keys")


def list_aliases(store: KeyStore, params: dict[str, Any]) -> dict[str, Any]:
    arn = params.get("KeyArn")
    aliases = [{"AliasName": k.alias, "KeyArn": k.arn} for k in store.keys if arn in (None, k.arn)]
    return _page(aliases, params, "Aliases")


HANDLERS: dict[str, ControlHandler] = {
    "GetKey": get_key,
    "GetAlias": get_alias,
    "ListKeys": list_keys,
    "ListAliases": list_aliases,
}
