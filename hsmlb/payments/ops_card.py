"""Card-level operations: CVV/CVV2 generation and verification, ARQC verification with ARPC.

APC behaviour followed here (AWS Payment Cryptography user guide):
- CardExpiryDate is used exactly as given ("card expiration format must match that used in
  initial value generation").
- TransactionData is MACed as sent: callers pad it for their scheme ("most schemes use ISO 9797
  method 2 padding ... the alternative, method 1, uses 00"); data that is not block-aligned gets
  ISO 9797-1 padding method 1, which leaves pre-padded data unchanged.
- The ARPC is computed with the key the ARQC was verified with: the session key for EmvCommon
  and Mastercard (EMV Book 2 8.2), the ICC master key for Visa (CVN10) and Amex, which have none.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from hsmlb.payments import _request as rq
from hsmlb.payments import cvv, emv
from hsmlb.payments.types import KeyResolver, VerificationFailed

_CVV_MEMBERS = ("CardVerificationValue1", "CardVerificationValue2")
_SESSION_MEMBERS = ("EmvCommon", "Mastercard", "Visa", "Amex")


def _cvv(params: Mapping[str, Any], resolve: KeyResolver, attrs_name: str, length: int) -> str:
    key = rq.key(resolve, params, "KeyIdentifier", ("TR31_C0_CARD_VERIFICATION_KEY",), ("TDES_2KEY",))
    pan = rq.digits(params, "PrimaryAccountNumber", "PrimaryAccountNumber", 12, 19)
    member, attrs, path = rq.union(params, attrs_name, attrs_name, _CVV_MEMBERS)
    expiry = rq.digits(attrs, "CardExpiryDate", f"{path}.CardExpiryDate", 4, 4)
    if member == "CardVerificationValue1":
        service_code = rq.digits(attrs, "ServiceCode", f"{path}.ServiceCode", 3, 3)
    else:
        service_code = cvv.CVV2_SERVICE_CODE
    assert pan is not None and expiry is not None and service_code is not None
    return cvv.cvv(key.material, pan, expiry, service_code, length)


def generate_card_validation_data(params: Mapping[str, Any], resolve: KeyResolver) -> dict[str, Any]:
    length = rq.integer(params, "ValidationDataLength", "ValidationDataLength", 3, 5, 3)
    assert length is not None
    return {"ValidationData": _cvv(params, resolve, "GenerationAttributes", length)}


def verify_card_validation_data(params: Mapping[str, Any], resolve: KeyResolver) -> dict[str, Any]:
    given = rq.digits(params, "ValidationData", "ValidationData", 3, 5)
    assert given is not None
    expected = _cvv(params, resolve, "VerificationAttributes", len(given))
    if not hmac.compare_digest(expected, given):
        raise VerificationFailed("INVALID_VALIDATION_DATA", "Card validation data verification failed")
    return {}


def _ac_key(params: Mapping[str, Any], imk: bytes) -> bytes:
    """The key the ARQC is computed under, from MajorKeyDerivationMode and the session attributes."""
    mode = rq.string(params, "MajorKeyDerivationMode", "MajorKeyDerivationMode",
                     choices=("EMV_OPTION_A", "EMV_OPTION_B"))
    member, attrs, path = rq.union(params, "SessionKeyDerivationAttributes", "SessionKeyDerivationAttributes",
                                   _SESSION_MEMBERS)
    pan = rq.digits(attrs, "PrimaryAccountNumber", f"{path}.PrimaryAccountNumber", 12, 19)
    psn = rq.digits(attrs, "PanSequenceNumber", f"{path}.PanSequenceNumber", 2, 2)
    assert mode is not None and pan is not None and psn is not None
    icc_mk = emv.icc_master_key(imk, pan, psn, mode[-1])
    if member in ("Visa", "Amex"):
        return icc_mk
    atc = rq.hexbytes(attrs, "ApplicationTransactionCounter", f"{path}.ApplicationTransactionCounter", lengths=(2,))
    assert atc is not None
    if member == "EmvCommon":
        return emv.session_key_emv_common(icc_mk, atc)
    un = rq.hexbytes(attrs, "UnpredictableNumber", f"{path}.UnpredictableNumber", lengths=(4,))
    assert un is not None
    return emv.session_key_mastercard(icc_mk, atc, un)


def _arpc(params: Mapping[str, Any], key: bytes, arqc: bytes) -> dict[str, Any]:
    member, attrs, path = rq.union(params, "AuthResponseAttributes", "AuthResponseAttributes",
                                   ("ArpcMethod1", "ArpcMethod2"))
    if member == "ArpcMethod1":
        arc = rq.hexbytes(attrs, "AuthResponseCode", f"{path}.AuthResponseCode", lengths=(2,))
        assert arc is not None
        return {"AuthResponseValue": emv.arpc_method_1(key, arqc, arc).hex().upper()}
    csu = rq.hexbytes(attrs, "CardStatusUpdate", f"{path}.CardStatusUpdate", lengths=(4,))
    pad = rq.hexbytes(attrs, "ProprietaryAuthenticationData", f"{path}.ProprietaryAuthenticationData",
                      lo=1, hi=8, required=False)
    assert csu is not None
    return {"AuthResponseValue": emv.arpc_method_2(key, arqc, csu, pad or b"").hex().upper()}


def verify_auth_request_cryptogram(params: Mapping[str, Any], resolve: KeyResolver) -> dict[str, Any]:
    imk = rq.key(resolve, params, "KeyIdentifier", ("TR31_E0_EMV_MKEY_APP_CRYPTOGRAMS",), ("TDES_2KEY",))
    data = rq.hexbytes(params, "TransactionData", "TransactionData", lo=1, hi=512)
    arqc = rq.hexbytes(params, "AuthRequestCryptogram", "AuthRequestCryptogram", lengths=(8,))
    assert data is not None and arqc is not None
    key = _ac_key(params, imk.material)
    if not hmac.compare_digest(emv.application_cryptogram(key, data, padding=1), arqc):
        raise VerificationFailed("INVALID_AUTH_REQUEST_CRYPTOGRAM", "ARQC verification failed")
    if params.get("AuthResponseAttributes") is None:
        return {}
    return _arpc(params, key, arqc)
