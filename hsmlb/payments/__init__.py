"""Payment cryptography (CVV, PIN blocks, DUKPT, EMV, ISO 9797 MACs) as pure functions.

`engine.execute(operation, params, resolve)` is the single entry point; see types.py for the contract.
"""

from hsmlb.payments.engine import SUPPORTED_OPERATIONS, execute, kcv
from hsmlb.payments.types import (
    KeyMaterial,
    KeyNotFoundError,
    KeyResolver,
    PaymentError,
    PaymentValidationError,
    VerificationFailed,
    result_key_identifier,
)

__all__ = [
    "SUPPORTED_OPERATIONS",
    "KeyMaterial",
    "KeyNotFoundError",
    "KeyResolver",
    "PaymentError",
    "PaymentValidationError",
    "VerificationFailed",
    "execute",
    "kcv",
    "result_key_identifier",
]
