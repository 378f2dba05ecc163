"""Payment operations on a PKCS#11 node: token primitives where they suffice, else the engine.

Runs only inside a token worker process. A symmetric ReEncryptData is two token calls, so its keys
stay in the token. Everything else (CVV, PIN translation, DUKPT, EMV session keys, ISO 9797 MACs)
needs single-DES halves, derived keys or clear PIN blocks that SoftHSM2's mechanisms cannot give
through python-pkcs11; those run in the payment engine on key material read from the token, which
the node offers only with `allow_host_side_derivation` (test clusters: not PCI PIN compliant).

PKCS#11 has no attribute for a key's TR-31 usage, so hsmlb records it, with the APC algorithm, in
CKA_ID as `hsmlb:<usage>:<algorithm>` (see dev/cluster.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11 import exceptions as p11

from hsmlb.backends.pkcs11_ops import CIPHERS, CallerFault, KeyLookup, _mechanism, key_record
from hsmlb.ops import DATA_KEY, VERIFICATION_FAILED
from hsmlb.payments.types import KeyMaterial, KeyNotFoundError, PaymentValidationError, VerificationFailed


def _material(handle: Any, identifier: str) -> KeyMaterial:
    usage, algorithm = key_record(handle)
    if not usage:
        raise CallerFault(f"key {identifier} has no recorded TR-31 usage; payment operations need one")
    try:
        value = bytes(handle[Attribute.VALUE])
    except (p11.AttributeSensitive, p11.AttributeTypeInvalid):
        raise CallerFault(f"key {identifier} is sensitive on this node; host-side payment operations need "
                          "an extractable key (test clusters only)") from None
    if algorithm == "TDES_2KEY" and len(value) == 24:
        value = value[:16]  # stored as K1K2K1
    return KeyMaterial(identifier=identifier, algorithm=algorithm, usage=usage, material=value)


class MaterialCache:
    """Key material per label, read once per worker: token keys do not change under a label."""

    def __init__(self, limit: int = 256) -> None:
        self._cache: dict[str, KeyMaterial] = {}
        self._limit = limit

    def resolver(self, keys: KeyLookup) -> Callable[[str], KeyMaterial]:
        def resolve(label: str) -> KeyMaterial:
            found = self._cache.get(label)
            if found is None:
                try:
                    handle = keys(label, ObjectClass.SECRET_KEY)
                except LookupError:
                    raise KeyNotFoundError(label) from None
                found = _material(handle, label)
                if len(self._cache) >= self._limit:
                    self._cache.clear()
                self._cache[label] = found
            return found

        return resolve


_materials = MaterialCache()


def _token_reencrypt(keys: KeyLookup, params: dict[str, Any]) -> dict[str, Any]:
    """Symmetric ReEncryptData with both keys in the token: the data never meets a clear key."""
    def cipher(label: str, attrs: dict[str, Any], member: str) -> tuple[Any, Any, bytes | None]:
        key = keys(label, ObjectClass.SECRET_KEY)
        usage = key_record(key)[0]
        if usage and usage != DATA_KEY:  # key separation, as the engine and APC enforce it
            raise CallerFault(f"{member}: key usage {usage} is not valid here; expected {DATA_KEY}")
        mode = attrs.get("Mode", "ECB")
        block = 16 if key.key_type == KeyType.AES else 8
        iv = bytes.fromhex(attrs.get("InitializationVector", "00" * block)) if mode == "CBC" else None  # APC: zero IV
        return key, _mechanism(CIPHERS, key, mode), iv

    key_in, mech_in, iv_in = cipher(params["IncomingKeyIdentifier"],
                                    params["IncomingEncryptionAttributes"]["Symmetric"], "IncomingKeyIdentifier")
    key_out, mech_out, iv_out = cipher(params["OutgoingKeyIdentifier"],
                                       params["OutgoingEncryptionAttributes"]["Symmetric"], "OutgoingKeyIdentifier")
    clear = key_in.decrypt(bytes.fromhex(params["CipherText"]), mechanism=mech_in, mechanism_param=iv_in)
    out = key_out.encrypt(clear, mechanism=mech_out, mechanism_param=iv_out)
    return {"CipherText": bytes(out).hex().upper()}


def _symmetric_both(params: dict[str, Any]) -> bool:
    return all("Symmetric" in params.get(side, {}) for side in
               ("IncomingEncryptionAttributes", "OutgoingEncryptionAttributes"))


def op_payment(keys: KeyLookup, label: str, args: tuple) -> dict[str, Any]:
    operation, params = args
    if operation == "ReEncryptData" and _symmetric_both(params):
        return _token_reencrypt(keys, params)
    from hsmlb.payments import engine  # imported on first use: native-only workers never load it

    try:
        return engine.execute(operation, params, _materials.resolver(keys))
    except VerificationFailed as failed:
        return {VERIFICATION_FAILED: failed.reason}
    except PaymentValidationError as invalid:
        paths = [f["path"] for f in invalid.field_list]
        named = bool(paths) and invalid.message.startswith(f"{paths[0]}: ")  # "Path: rule": the daemon reads it
        raise CallerFault(invalid.message + ("" if named or not paths else f" (fields: {', '.join(paths)})")) from None
    except KeyNotFoundError as missing:
        raise LookupError(f"key {missing} is not on this token") from None


PAYMENT_OPS: dict[str, Callable[[KeyLookup, str, tuple], Any]] = {"payment": op_payment}
