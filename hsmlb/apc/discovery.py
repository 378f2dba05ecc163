"""Start-up work for an APC region, done once per (re)connect in a worker thread: credentials,
endpoints and the key inventory through an ordinary boto3 control-plane client.

Why boto3 here and not on the hot path: discovery is a handful of calls at start, where the
default credential chain, endpoint resolution and pagination of the real SDK are worth their
milliseconds; every data-plane request afterwards goes through hsmlb/apc/wire.py.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.session
from botocore.config import Config as BotoConfig
from botocore.credentials import Credentials, ReadOnlyCredentials
from botocore.exceptions import BotoCoreError, ClientError

from hsmlb.apc.wire import AUTH_FAILURES, CONTROL_SERVICE, DATA_SERVICE, scrub
from hsmlb.config import ApcRegionConfig
from hsmlb.errors import NodeFault
from hsmlb.ops import KeyInfo

log = logging.getLogger("hsmlb.apc.discovery")

MAX_ALIAS_PAGES = 50  # x 100 aliases per page: far above any region's key count
NO_RETRIES = {"total_max_attempts": 1}  # the daemon retries on another node, never here

# KeyModesOfUse -> the usages the router checks (hsmlb.ops.OP_TRAITS): MAC generation is "sign".
_MODE_USAGES: dict[str, tuple[str, ...]] = {
    "Encrypt": ("encrypt",), "Decrypt": ("decrypt",), "Wrap": ("wrap",), "Unwrap": ("unwrap",),
    "Generate": ("sign",), "Sign": ("sign",), "Verify": ("verify",), "DeriveKey": ("derive",),
}
_ALL_USAGES = tuple(sorted({u for usages in _MODE_USAGES.values() for u in usages}))
_KEY_TYPES = (("TDES_", "DES3"), ("AES_", "AES"), ("HMAC_", "GENERIC_SECRET"), ("RSA_", "RSA"), ("ECC_", "EC"))
_BITS = {"TDES_2KEY": 128, "TDES_3KEY": 192}


@dataclass(slots=True)
class Discovery:
    """What a (re)connect learned: signing credentials, endpoints, keys (alias -> KeyInfo)."""

    credentials: Credentials  # possibly refreshable; read it off the event loop
    frozen: ReadOnlyCredentials
    data_url: str
    control_url: str
    keys: dict[str, KeyInfo]  # KeyInfo.algorithm carries the KeyAlgorithm (HMAC_SHA256, AES_128, ...)


def key_type(algorithm: str) -> str:
    for prefix, name in _KEY_TYPES:
        if algorithm.startswith(prefix):
            return name
    return algorithm


def key_bits(algorithm: str) -> int:
    if algorithm in _BITS:
        return _BITS[algorithm]
    digits = re.findall(r"\d+", algorithm)
    return int(digits[-1]) if digits else 0


def usages(modes: dict[str, Any]) -> frozenset[str]:
    if modes.get("NoRestrictions"):
        return frozenset(_ALL_USAGES)
    return frozenset(u for mode, allowed in modes.items() if allowed for u in _MODE_USAGES.get(mode, ()))


def key_info(alias: str, key: dict[str, Any]) -> KeyInfo:
    """The control plane's `Key` as the router's KeyInfo; label is the ARN the data plane is sent."""
    attributes = key.get("KeyAttributes", {})
    algorithm = attributes.get("KeyAlgorithm", "")
    return KeyInfo(alias=alias, label=key["KeyArn"], key_type=key_type(algorithm),
                   kcv=str(key.get("KeyCheckValue", "")).upper(), usages=usages(attributes.get("KeyModesOfUse", {})),
                   bits=key_bits(algorithm), key_usage=attributes.get("KeyUsage", ""), algorithm=algorithm)


def boto_session(config: ApcRegionConfig) -> boto3.Session:
    """The default credential chain, narrowed by the node's profile and credentials file."""
    core = botocore.session.Session()
    if config.credentials_file is not None:
        core.set_config_variable("credentials_file", str(config.credentials_file))
    if config.profile is not None:
        core.set_config_variable("profile", config.profile)
    return boto3.Session(botocore_session=core, region_name=config.region)


def resolve_credentials(config: ApcRegionConfig) -> tuple[Credentials, ReadOnlyCredentials] | None:
    """Blocking: the credential chain resolved afresh (a rotated credentials file is read again)."""
    credentials = boto_session(config).get_credentials()
    return None if credentials is None else (credentials, credentials.get_frozen_credentials())


def client_config(config: ApcRegionConfig) -> BotoConfig:
    return BotoConfig(region_name=config.region, retries=NO_RETRIES, connect_timeout=config.connect_timeout_s,
                      read_timeout=config.request_timeout_s)


def _aliases(client: Any) -> list[tuple[str, str]]:
    """(alias, key ARN) for every alias that points at a key, ListAliases page by page (bounded)."""
    found: list[tuple[str, str]] = []
    token: str | None = None
    for _ in range(MAX_ALIAS_PAGES):
        page = client.list_aliases(MaxResults=100, **({"NextToken": token} if token else {}))
        found.extend((a["AliasName"], a["KeyArn"]) for a in page.get("Aliases", []) if a.get("KeyArn"))
        token = page.get("NextToken")
        if not token:
            return found
    log.warning("ListAliases: stopped after %d pages", MAX_ALIAS_PAGES)
    return found


def discover(config: ApcRegionConfig) -> Discovery:
    """Blocking: run in a thread. Raises NodeFault naming the AWS error code, never request data."""
    where = f"node {config.name} ({config.region})"
    try:
        session = boto_session(config)
        credentials = session.get_credentials()
        if credentials is None:
            raise NodeFault(f"{where}: no AWS credentials found (profile, credentials file, environment, role)")
        frozen = credentials.get_frozen_credentials()
        settings = client_config(config)
        control = session.client(CONTROL_SERVICE, endpoint_url=config.control_endpoint_url or config.endpoint_url,
                                 config=settings)
        data_url = config.endpoint_url or session.client(DATA_SERVICE, config=settings).meta.endpoint_url
        wanted = list(config.keys.items()) if config.keys else _aliases(control)
        keys: dict[str, KeyInfo] = {}
        for alias, arn in wanted:
            try:
                key = control.get_key(KeyIdentifier=arn)["Key"]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                    raise
                log.warning("%s: %s is listed but GetKey does not find it; skipped", where, alias)
                continue
            if key.get("KeyState") != "CREATE_COMPLETE" or not key.get("Enabled", False):
                log.warning("%s: %s is %s%s; skipped", where, alias, key.get("KeyState"),
                            "" if key.get("Enabled", False) else " and disabled")
                continue
            keys[alias] = key_info(alias, key)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in AUTH_FAILURES or (status in (401, 403) and code != "AccessDeniedException"):
            raise NodeFault(f"{where}: region rejected our credentials ({error.get('Code')})") from None
        raise NodeFault(f"{where}: discovery failed: {error.get('Code', 'error')} "
                        f"({scrub(str(error.get('Message', '')))})") from None
    except BotoCoreError as exc:
        raise NodeFault(f"{where}: discovery failed: {type(exc).__name__}") from None
    return Discovery(credentials, frozen, data_url.rstrip("/"), str(control.meta.endpoint_url).rstrip("/"),
                     keys)
