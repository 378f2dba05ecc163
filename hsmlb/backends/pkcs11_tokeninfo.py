"""C_GetTokenInfo, whole: python-pkcs11's Token leaves out the session counts and free memory.

Runs in the token worker, the one process (and thread) that drives the library; the library is
already initialised there by python-pkcs11, so one direct ctypes call reads the current counts.
Nothing sensitive: model, firmware, flags, counts, memory.
"""

from __future__ import annotations

import ctypes
from typing import Any

CK_ULONG = ctypes.c_ulong
UNAVAILABLE = (1 << (8 * ctypes.sizeof(CK_ULONG))) - 1  # CK_UNAVAILABLE_INFORMATION


class _Version(ctypes.Structure):
    _fields_ = (("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte))


class _TokenInfo(ctypes.Structure):
    _fields_ = (("label", ctypes.c_char * 32), ("manufacturerID", ctypes.c_char * 32), ("model", ctypes.c_char * 16),
                ("serialNumber", ctypes.c_char * 16), ("flags", CK_ULONG), ("ulMaxSessionCount", CK_ULONG),
                ("ulSessionCount", CK_ULONG), ("ulMaxRwSessionCount", CK_ULONG), ("ulRwSessionCount", CK_ULONG),
                ("ulMaxPinLen", CK_ULONG), ("ulMinPinLen", CK_ULONG), ("ulTotalPublicMemory", CK_ULONG),
                ("ulFreePublicMemory", CK_ULONG), ("ulTotalPrivateMemory", CK_ULONG),
                ("ulFreePrivateMemory", CK_ULONG), ("hardwareVersion", _Version), ("firmwareVersion", _Version),
                ("utcTime", ctypes.c_char * 16))


def _count(value: int) -> int | None:
    if value == UNAVAILABLE:
        return None
    return value


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").rstrip(" \x00")


def token_info(module: str, token: Any) -> dict[str, Any]:
    """The token's C_GetTokenInfo as plain values; falls back to python-pkcs11's fields alone."""
    flags = getattr(token, "flags", 0)
    serial = token.serial
    fw, hw = token.firmware_version, token.hardware_version
    info: dict[str, Any] = {
        "label": token.label, "model": token.model, "manufacturer": token.manufacturer_id,
        "serial": serial.decode("ascii", "replace").strip() if isinstance(serial, bytes) else str(serial),
        "firmware": f"{fw[0]}.{fw[1]}", "hardware": f"{hw[0]}.{hw[1]}",
        "flags": [f.name for f in type(flags) if f.value and f in flags] if flags else [],
    }
    try:
        fn = ctypes.CDLL(module).C_GetTokenInfo
    except (OSError, AttributeError):
        return info
    fn.argtypes = (CK_ULONG, ctypes.POINTER(_TokenInfo))
    fn.restype = CK_ULONG
    raw = _TokenInfo()
    if fn(token.slot.slot_id, ctypes.byref(raw)) != 0:
        return info
    info.update({
        "sessions": _count(raw.ulSessionCount), "max_sessions": _count(raw.ulMaxSessionCount),
        "rw_sessions": _count(raw.ulRwSessionCount), "max_rw_sessions": _count(raw.ulMaxRwSessionCount),
        "free_public_memory": _count(raw.ulFreePublicMemory),
        "total_public_memory": _count(raw.ulTotalPublicMemory),
        "free_private_memory": _count(raw.ulFreePrivateMemory),
        "total_private_memory": _count(raw.ulTotalPrivateMemory),
        "firmware": f"{raw.firmwareVersion.major}.{raw.firmwareVersion.minor}",
        "hardware": f"{raw.hardwareVersion.major}.{raw.hardwareVersion.minor}",
    })
    return info
