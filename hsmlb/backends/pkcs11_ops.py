"""Token-side operations and the one table that translates PKCS#11 return codes.

Runs only inside a token worker process (see pkcs11_worker.py); nothing here touches asyncio.
Key material never leaves the token: every operation is a PKCS#11 call on a key handle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pkcs11
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.util.ec import decode_ecdsa_signature, encode_ecdsa_signature

# --- return-code table: what each PKCS#11 failure means for us -------------------------------
# "session": the session is gone; reopen it and retry once.
# "login":   the login state decayed; log in again and retry once.
# "library": the device or library is broken; reinitialize the library and retry once.
# "invalid": the caller's request is wrong; never counts against the node.
RECOVERY: dict[type[Exception], str] = {
    p11.SessionHandleInvalid: "session",
    p11.SessionClosed: "session",
    p11.OperationActive: "session",
    p11.UserNotLoggedIn: "login",
    p11.DeviceError: "library",
    p11.DeviceRemoved: "library",
    p11.DeviceMemory: "library",
    p11.TokenNotPresent: "library",
    p11.TokenNotRecognised: "library",
    p11.GeneralError: "library",
    p11.FunctionFailed: "library",
    p11.SlotIDInvalid: "library",
    p11.KeyHandleInvalid: "library",
    p11.ObjectHandleInvalid: "library",
}

CALLER_FAULTS: dict[type[Exception], str] = {
    p11.DataInvalid: "the data is not valid for this key and mechanism",
    p11.DataLenRange: "the data length is not valid for this key and mechanism",
    p11.EncryptedDataInvalid: "the cipher text is not valid for this key and mechanism",
    p11.EncryptedDataLenRange: "the cipher text length is not valid for this key and mechanism",
    p11.KeyTypeInconsistent: "the key's type does not match the requested algorithm",
    p11.MechanismInvalid: "the token does not support this algorithm for this key",
    p11.MechanismParamInvalid: "the algorithm parameters (IV, lengths) are not valid",
    p11.KeySizeRange: "the key size is not valid for this algorithm",
    p11.ArgumentsBad: "the request's arguments are not valid",
}


class CallerFault(Exception):
    """The request is wrong for this key; reported as INVALID_ARGUMENT."""


def classify(exc: BaseException) -> tuple[str, str]:
    """(kind, safe message) for a PKCS#11 failure; messages name no data or key bytes."""
    for cls in type(exc).__mro__:
        if cls in CALLER_FAULTS:
            return "invalid", CALLER_FAULTS[cls]
        if cls in RECOVERY:
            return RECOVERY[cls], f"token error {cls.__name__}"
    if isinstance(exc, p11.PKCS11Error):
        return "library", f"token error {type(exc).__name__}"
    return "node", f"worker error {type(exc).__name__}"


# --- mechanisms ------------------------------------------------------------------------------
CIPHERS: dict[tuple[KeyType, str], Mechanism] = {
    (KeyType.AES, "ECB"): Mechanism.AES_ECB,
    (KeyType.AES, "CBC"): Mechanism.AES_CBC,
    (KeyType.DES3, "ECB"): Mechanism.DES3_ECB,
    (KeyType.DES3, "CBC"): Mechanism.DES3_CBC,
    (KeyType.DES2, "ECB"): Mechanism.DES3_ECB,
    (KeyType.DES2, "CBC"): Mechanism.DES3_CBC,
}

MACS: dict[tuple[KeyType, str], Mechanism] = {
    (KeyType.AES, "CMAC"): Mechanism.AES_CMAC,
    (KeyType.DES3, "CMAC"): Mechanism.DES3_CMAC,
    (KeyType.DES2, "CMAC"): Mechanism.DES3_CMAC,
}
HMACS: dict[str, Mechanism] = {
    "HMAC_SHA224": Mechanism.SHA224_HMAC,
    "HMAC_SHA256": Mechanism.SHA256_HMAC,
    "HMAC_SHA384": Mechanism.SHA384_HMAC,
    "HMAC_SHA512": Mechanism.SHA512_HMAC,
}
PSS_SHA256 = (Mechanism.SHA256, MGF.SHA256, 32)

# Operations whose cost is large enough (~0.5 ms RSA) that fast ops should overtake them.
SLOW_OPS = frozenset({"sign_rsa"})


def _mechanism(table: dict[tuple[KeyType, str], Mechanism], key: Any, name: str) -> Mechanism:
    mech = table.get((key.key_type, name))
    if mech is None:
        raise CallerFault(f"{name} is not supported for {key.key_type.name} keys")
    return mech


def op_encrypt(keys: KeyLookup, label: str, args: tuple) -> bytes:
    mode, iv, data = args
    key = keys(label, ObjectClass.SECRET_KEY)
    mech = _mechanism(CIPHERS, key, mode)
    return key.encrypt(data, mechanism=mech, mechanism_param=iv if mode == "CBC" else None)


def op_decrypt(keys: KeyLookup, label: str, args: tuple) -> bytes:
    mode, iv, data = args
    key = keys(label, ObjectClass.SECRET_KEY)
    mech = _mechanism(CIPHERS, key, mode)
    return key.decrypt(data, mechanism=mech, mechanism_param=iv if mode == "CBC" else None)


def op_mac(keys: KeyLookup, label: str, args: tuple) -> bytes:
    algorithm, data = args[0], args[1]
    key = keys(label, ObjectClass.SECRET_KEY)
    if algorithm in HMACS:
        if key.key_type not in (KeyType.GENERIC_SECRET, KeyType.SHA256_HMAC):
            raise CallerFault(f"{algorithm} needs an HMAC key, not {key.key_type.name}")
        return key.sign(data, mechanism=HMACS[algorithm])
    return key.sign(data, mechanism=_mechanism(MACS, key, algorithm))


def op_sign(keys: KeyLookup, label: str, args: tuple) -> bytes:
    algorithm, message = args
    key = keys(label, ObjectClass.PRIVATE_KEY)
    if algorithm == "ECDSA_SHA_256":
        _expect(key, KeyType.EC, algorithm)
        raw = key.sign(hashlib.sha256(message).digest(), mechanism=Mechanism.ECDSA)
        return encode_ecdsa_signature(raw)
    _expect(key, KeyType.RSA, algorithm)
    if algorithm == "RSASSA_PSS_SHA_256":
        return key.sign(message, mechanism=Mechanism.SHA256_RSA_PKCS_PSS, mechanism_param=PSS_SHA256)
    return key.sign(message, mechanism=Mechanism.SHA256_RSA_PKCS)


def op_verify(keys: KeyLookup, label: str, args: tuple) -> bool:
    algorithm, message, signature = args
    key = keys(label, ObjectClass.PUBLIC_KEY)
    if algorithm == "ECDSA_SHA_256":
        _expect(key, KeyType.EC, algorithm)
        try:
            raw = decode_ecdsa_signature(signature)
        except Exception:
            return False
        return key.verify(hashlib.sha256(message).digest(), raw, mechanism=Mechanism.ECDSA)
    _expect(key, KeyType.RSA, algorithm)
    if algorithm == "RSASSA_PSS_SHA_256":
        return key.verify(message, signature, mechanism=Mechanism.SHA256_RSA_PKCS_PSS,
                          mechanism_param=PSS_SHA256)
    return key.verify(message, signature, mechanism=Mechanism.SHA256_RSA_PKCS)


def _expect(key: Any, key_type: KeyType, algorithm: str) -> None:
    if key.key_type != key_type:
        raise CallerFault(f"{algorithm} needs a {key_type.name} key, not {key.key_type.name}")


KeyLookup = Callable[[str, ObjectClass], Any]
OPS: dict[str, Callable[[KeyLookup, str, tuple], Any]] = {
    "encrypt": op_encrypt,
    "decrypt": op_decrypt,
    "generate_mac": op_mac,
    "verify_mac": op_mac,
    "sign": op_sign,
    "sign_rsa": op_sign,  # same op; the name puts it in the worker's slow lane
    "verify": op_verify,
}


# --- inventory -------------------------------------------------------------------------------
def _attr(obj: Any, attribute: Attribute, default: Any = None) -> Any:
    try:
        return obj[attribute]
    except (p11.AttributeTypeInvalid, p11.AttributeSensitive, KeyError, NotImplementedError):
        return default


def key_objects(session: pkcs11.Session) -> set[tuple[str, ObjectClass]]:
    """(label, object class) of every labelled key object: which lookups must succeed when logged in."""
    return {(label, object_class)
            for object_class in (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)
            for obj in session.get_objects({Attribute.CLASS: object_class, Attribute.TOKEN: True})
            if (label := _attr(obj, Attribute.LABEL))}


ID_PREFIX = "hsmlb:"


def key_record(obj: Any) -> tuple[str, str]:
    """(TR-31 usage, APC algorithm) that hsmlb recorded in CKA_ID as `hsmlb:<usage>:<algorithm>`.

    PKCS#11 has no attribute for a key's TR-31 usage; ("", "") when none was recorded.
    """
    try:
        raw = bytes(_attr(obj, Attribute.ID, b"") or b"").decode("ascii")
    except UnicodeDecodeError:
        return "", ""
    if not raw.startswith(ID_PREFIX) or raw.count(":") != 2:
        return "", ""
    _, usage, algorithm = raw.split(":")
    return usage, algorithm


def discover(session: pkcs11.Session) -> list[dict[str, Any]]:
    """Every key object on the token: label, type, KCV and permitted usages."""
    found: dict[str, dict[str, Any]] = {}
    roles = ((ObjectClass.SECRET_KEY, ("encrypt", "decrypt", "sign", "verify")),
             (ObjectClass.PRIVATE_KEY, ("sign", "decrypt")),
             (ObjectClass.PUBLIC_KEY, ("verify", "encrypt")))
    for object_class, usages in roles:
        for obj in session.get_objects({Attribute.CLASS: object_class, Attribute.TOKEN: True}):  # not session copies
            label = _attr(obj, Attribute.LABEL)
            if not label:
                continue
            entry = found.setdefault(label, {"label": label, "usages": set(), "kcv": "", "bits": 0})
            key_type = _attr(obj, Attribute.KEY_TYPE)
            entry["key_type"] = "DES3" if key_type == KeyType.DES2 else key_type.name
            for usage in usages:
                if _attr(obj, getattr(Attribute, usage.upper()), False):
                    entry["usages"].add(usage)
            if object_class == ObjectClass.SECRET_KEY:
                kcv = _attr(obj, Attribute.CHECK_VALUE, b"") or b""
                entry["kcv"] = bytes(kcv).hex().upper()
                entry["bits"] = 8 * int(_attr(obj, Attribute.VALUE_LEN, 0) or 0)
                entry["key_usage"], entry["algorithm"] = key_record(obj)
            elif key_type == KeyType.RSA:
                entry["bits"] = int(_attr(obj, Attribute.MODULUS_BITS, 0) or entry["bits"])
            elif key_type == KeyType.EC:
                entry["bits"] = 256
    for entry in found.values():
        entry["usages"] = sorted(entry["usages"])
    return list(found.values())
