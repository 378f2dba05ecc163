"""Realistic card-payment payloads: PANs, expiry dates, service codes, ISO-0 PIN blocks, EMV ARQC
inputs, ISO 8583-like MAC messages.

Pure and seedable (every generator takes a `random.Random`), so pools are reproducible and the
unit tests can check them. Nothing here logs a value: PANs and PIN blocks are test data, but the
load test treats them like the real thing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# BIN-like prefixes (issuer identification numbers of well-known test ranges) and PAN lengths.
BINS_16 = ("411111", "453201", "492181", "520082", "545454", "222300", "601100", "356600")
BINS_19 = ("622126", "627780", "606282", "491761")
SERVICE_CODES = ("101", "120", "201", "221", "226", "501", "520", "601")
# ISO 8583 message type indicators a MAC'ing host sees most often.
MTIS = (b"0100", b"0110", b"0200", b"0210", b"0400", b"0420", b"0800")


def luhn_check_digit(partial: str) -> str:
    """The digit that makes `partial + digit` pass the Luhn (mod 10) check."""
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:  # doubled: these are every second digit counting from the (future) check digit
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def luhn_valid(pan: str) -> bool:
    return pan.isdigit() and len(pan) >= 2 and luhn_check_digit(pan[:-1]) == pan[-1]


def pan(rng: random.Random, length: int = 16) -> str:
    """A Luhn-valid PAN of 16 or 19 digits under a BIN-like prefix."""
    if length not in (16, 19):
        raise ValueError("length: must be 16 or 19")
    prefix = rng.choice(BINS_16 if length == 16 else BINS_19)
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return body + luhn_check_digit(body)


def expiry(rng: random.Random) -> str:
    """Card expiry as YYMM, one to five years out (the form CVV and track data use)."""
    return f"{rng.randint(26, 31):02d}{rng.randint(1, 12):02d}"


def service_code(rng: random.Random) -> str:
    return rng.choice(SERVICE_CODES)


def pin(rng: random.Random) -> str:
    return "".join(rng.choice("0123456789") for _ in range(rng.choice((4, 4, 4, 5, 6))))


def iso0_pin_block(pin_digits: str, pan_digits: str) -> str:
    """ISO 9564-1 format 0 clear PIN block (16 hex digits).

    PIN field: 0, PIN length, PIN, F padding; PAN field: 0000 and the 12 rightmost PAN digits
    excluding the check digit; the block is their XOR.
    """
    if not (4 <= len(pin_digits) <= 12 and pin_digits.isdigit()):
        raise ValueError("pin: 4 to 12 digits")
    if not (pan_digits.isdigit() and len(pan_digits) >= 13):
        raise ValueError("pan: at least 13 digits")
    pin_field = f"0{len(pin_digits):X}{pin_digits}".ljust(16, "F")
    pan_field = "0000" + pan_digits[-13:-1]
    return f"{int(pin_field, 16) ^ int(pan_field, 16):016X}"


@dataclass(frozen=True, slots=True)
class ArqcInput:
    """What an issuer host receives to verify an ARQC (EMV Book 2, CDOL1 data)."""

    pan: str
    pan_sequence_number: str  # 2 digits
    atc: str  # application transaction counter, 4 hex
    unpredictable_number: str  # 8 hex
    transaction_data: str  # hex, the CDOL1 values the card MACed


def arqc_input(rng: random.Random) -> ArqcInput:
    """CDOL1-shaped transaction data: amount, other amount, country, TVR, currency, date, type,
    UN, AIP, ATC and a Visa-style CVR: 37 bytes, as most issuers see them."""
    card = pan(rng, rng.choice((16, 16, 16, 19)))
    atc = f"{rng.randint(1, 0xFFFE):04X}"
    un = f"{rng.getrandbits(32):08X}"
    amount = f"{rng.randint(100, 2_500_00):012d}"
    fields = [
        amount, "000000000000",                            # 9F02 amount authorised, 9F03 amount other (BCD)
        rng.choice(("0840", "0826", "0250", "0276")),      # 9F1A terminal country code
        rng.choice(("0000000000", "0000008000", "8000048000")),  # 95 TVR
        rng.choice(("0840", "0826", "0978")),              # 5F2A transaction currency code
        f"{rng.randint(24, 26):02d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",  # 9A date YYMMDD
        rng.choice(("00", "01", "09")),                    # 9C transaction type
        un,                                                # 9F37 unpredictable number
        rng.choice(("1800", "3900", "5C00")),              # 82 AIP
        atc,                                               # 9F36 ATC
        "03A4A000",                                        # 9F10 CVR
    ]
    return ArqcInput(card, f"{rng.randint(0, 3):02d}", atc, un, "".join(fields))


def iso8583_message(rng: random.Random, size: int) -> bytes:
    """An ISO 8583-like message of `size` bytes: MTI, primary bitmap, then field bytes."""
    if size < 12:
        raise ValueError("size: at least 12 bytes (MTI and bitmap)")
    bitmap = (rng.getrandbits(64) | (1 << 62)).to_bytes(8, "big")  # field 2 (PAN) present, as usual
    return rng.choice(MTIS) + bitmap + rng.randbytes(size - 12)


def mac_message_sizes(rng: random.Random, count: int) -> list[int]:
    """Sizes as seen by a MAC'ing host: mostly 64-256 bytes, a tail up to 512."""
    return [rng.randint(64, 256) if rng.random() < 0.8 else rng.randint(257, 512) for _ in range(count)]


def data_blocks(rng: random.Random, block: int, low: int = 16, high: int = 256) -> bytes:
    """Plain text for ECB/CBC: a whole number of cipher blocks, between low and high bytes."""
    return rng.randbytes(rng.randint(max(1, low // block), high // block) * block)
