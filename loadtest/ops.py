"""The operation table: one entry per load-test operation, its request pool, priming and reply check.

Why a table: profiles name operations and weights; the Locust users and the own stream client
take the same pre-built requests from here, so adding an operation (e.g. a payment RPC once it is
in the proto) is one entry. Operations whose RPC is not in `hsmlb.v1.hsmlb_pb2` at import time are
reported as unavailable and, when optional, left out of a mix instead of failing it.

An entry's name is "<class>:<Rpc>/<variant>"; the class tag ("sym", "asym") is what the verdict
aggregates p99 over. No function here logs a request: they carry PANs and PIN blocks.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from loadtest import paycrypto
from loadtest import payloads as pl

Message = Any  # a generated protobuf message
Caller = Callable[[str, Message], Message]  # (rpc, request) -> reply, raising grpc.RpcError
POOL_SIZE = 32


class Unavailable(Exception):
    """An operation cannot run against this API or key set; the message says why."""


@dataclass(frozen=True, slots=True)
class DevKey:
    alias: str
    algorithm: str
    usage: str
    material: bytes | None


@cache
def dev_keys(path: str = "") -> tuple[DevKey, ...]:
    """The dev keys file's entries: payment requests are built under these (public test material)."""
    if not path:
        from hsmlb.dev.cluster import default_keys_file

        path = str(default_keys_file())
    data = yaml.safe_load(Path(path).read_text()) or []
    return tuple(DevKey(e["alias"], e["algorithm"], e["usage"], bytes.fromhex(e["material_hex"])
                        if isinstance(e.get("material_hex"), str) else None) for e in data)


def key_by_usage(usage: str, algorithm: str = "", skip: int = 0) -> DevKey:
    """The dev key for a payment op: first (or `skip`-th, else last) with that usage and algorithm prefix."""
    found = [k for k in dev_keys() if k.usage == usage and k.algorithm.startswith(algorithm) and k.material]
    if not found:
        raise Unavailable(f"no dev key with usage {usage} {algorithm}".rstrip())
    return found[min(skip, len(found) - 1)]


def make(cls: type, **fields: Any) -> Message:
    """Build a message naming fields in APC style without caring about underscores or case
    (iso_format0 = iso_format_0 = IsoFormat0), so builders survive the proto's snake_case choices."""
    msg = cls()
    _fill(msg, fields)
    return msg


def _norm(name: str) -> str:
    return name.replace("_", "").lower()


def _fill(msg: Message, fields: Mapping[str, Any]) -> None:
    by_norm = {_norm(f.name): f for f in msg.DESCRIPTOR.fields}
    for key, value in fields.items():
        field = by_norm.get(_norm(key))
        if field is None:
            raise Unavailable(f"{msg.DESCRIPTOR.name} has no field {key}")
        if isinstance(value, Mapping):
            sub = getattr(msg, field.name)
            sub.SetInParent()
            _fill(sub, value)
        elif field.enum_type is not None and isinstance(value, str):
            setattr(msg, field.name, field.enum_type.values_by_name[value].number)
        else:
            setattr(msg, field.name, value)


def snake(rpc: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", rpc).lower()


@dataclass(frozen=True)
class OpSpec:
    name: str  # "<class>:<Rpc>/<variant>"
    rpc: str  # Operations method name
    build: Callable[[random.Random], Message]  # one fresh request; may raise Unavailable
    prime: Callable[[Caller, Message], Message] | None = None  # fills in a server-made value
    optional: bool = False  # left out of a mix, with a notice, when unavailable

    @property
    def klass(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def stream_field(self) -> str:
        return snake(self.rpc)


# ------------------------------------------------------------------------------ builders
def _sym(mode: int, iv: str = "") -> Message:
    return pb.EncryptionDecryptionAttributes(symmetric=pb.SymmetricEncryptionAttributes(mode=mode,
                                                                                         initialization_vector=iv))


def _encrypt(alias: str, mode: int, block: int, high: int) -> Callable[[random.Random], Message]:
    def build(rng: random.Random) -> Message:
        iv = rng.randbytes(block).hex().upper() if mode == pb.CBC else ""
        return pb.EncryptDataRequest(key_identifier=alias, plain_text=pl.data_blocks(rng, block, 16, high).hex(),
                                     encryption_attributes=_sym(mode, iv))
    return build


def _decrypt(alias: str, mode: int, block: int, high: int) -> Callable[[random.Random], Message]:
    encrypt = _encrypt(alias, mode, block, high)

    def build(rng: random.Random) -> Message:  # cipher_text holds the plain text until primed
        e = encrypt(rng)
        return pb.DecryptDataRequest(key_identifier=alias, cipher_text=e.plain_text,
                                     decryption_attributes=e.encryption_attributes)
    return build


def _prime_decrypt(call: Caller, req: Message) -> Message:
    reply = call("EncryptData", pb.EncryptDataRequest(key_identifier=req.key_identifier, plain_text=req.cipher_text,
                                                      encryption_attributes=req.decryption_attributes))
    req.cipher_text = reply.cipher_text
    return req


def _mac(alias: str, algorithm: int, verify: bool = False) -> Callable[[random.Random], Message]:
    def build(rng: random.Random) -> Message:
        data = pl.iso8583_message(rng, pl.mac_message_sizes(rng, 1)[0]).hex()
        attrs = pb.MacAttributes(algorithm=algorithm)
        if verify:
            return pb.VerifyMacRequest(key_identifier=alias, message_data=data, verification_attributes=attrs)
        return pb.GenerateMacRequest(key_identifier=alias, message_data=data, generation_attributes=attrs)
    return build


def _prime_verify_mac(call: Caller, req: Message) -> Message:
    reply = call("GenerateMac", pb.GenerateMacRequest(key_identifier=req.key_identifier, message_data=req.message_data,
                                                      generation_attributes=req.verification_attributes))
    req.mac = reply.mac
    return req


def _sign(alias: str, algorithm: int, verify: bool = False) -> Callable[[random.Random], Message]:
    def build(rng: random.Random) -> Message:
        message = rng.randbytes(rng.randint(32, 512)).hex()  # a document or token digest input
        if verify:
            return pb.VerifyRequest(key_identifier=alias, message=message, signing_algorithm=algorithm)
        return pb.SignRequest(key_identifier=alias, message=message, signing_algorithm=algorithm)
    return build


def _prime_verify(call: Caller, req: Message) -> Message:
    reply = call("Sign", pb.SignRequest(key_identifier=req.key_identifier, message=req.message,
                                        signing_algorithm=req.signing_algorithm))
    req.signature = reply.signature
    return req


def _request_class(rpc: str) -> type:
    cls = getattr(pb, f"{rpc}Request", None)
    if cls is None:
        raise Unavailable(f"{rpc} is not in hsmlb.v1 yet")
    return cls


def _card(rng: random.Random) -> tuple[str, str, str]:
    return pl.pan(rng, rng.choice((16, 16, 19))), pl.expiry(rng), pl.service_code(rng)


def _cvv_generate(rng: random.Random) -> Message:
    key = key_by_usage("TR31_C0_CARD_VERIFICATION_KEY")
    pan, exp, svc = _card(rng)
    return make(_request_class("GenerateCardValidationData"), key_identifier=key.alias, primary_account_number=pan,
                generation_attributes={"card_verification_value1": {"card_expiry_date": exp, "service_code": svc}},
                validation_data_length=3)


def _cvv_verify(rng: random.Random) -> Message:
    key = key_by_usage("TR31_C0_CARD_VERIFICATION_KEY", "TDES")
    pan, exp, svc = _card(rng)
    assert key.material is not None
    return make(_request_class("VerifyCardValidationData"), key_identifier=key.alias, primary_account_number=pan,
                verification_attributes={"card_verification_value1": {"card_expiry_date": exp, "service_code": svc}},
                validation_data=paycrypto.cvv(key.material, pan, exp, svc))


def _translate_pin(rng: random.Random) -> Message:
    incoming = key_by_usage("TR31_P0_PIN_ENCRYPTION_KEY", "TDES")  # ISO-0 is a 64-bit block: a TDES zone PIN key
    outgoing = key_by_usage("TR31_P0_PIN_ENCRYPTION_KEY", "TDES", skip=1)
    assert incoming.material is not None
    pan = pl.pan(rng, rng.choice((16, 19)))
    block = paycrypto.encrypt_pin_block(incoming.material, pl.iso0_pin_block(pl.pin(rng), pan))
    iso0 = {"iso_format0": {"primary_account_number": pan}}
    return make(_request_class("TranslatePinData"), incoming_key_identifier=incoming.alias,
                outgoing_key_identifier=outgoing.alias, incoming_translation_attributes=iso0,
                outgoing_translation_attributes=iso0, encrypted_pin_block=block)


def _verify_arqc(rng: random.Random) -> Message:
    key = key_by_usage("TR31_E0_EMV_MKEY_APP_CRYPTOGRAMS", "TDES")
    assert key.material is not None
    a = pl.arqc_input(rng)
    data = paycrypto.pad_method_2(bytes.fromhex(a.transaction_data)).hex().upper()  # sent padded, as APC expects
    cryptogram = paycrypto.arqc(key.material, a.pan, a.pan_sequence_number, a.atc, data)
    return make(_request_class("VerifyAuthRequestCryptogram"), key_identifier=key.alias,
                transaction_data=data, auth_request_cryptogram=cryptogram,
                major_key_derivation_mode="EMV_OPTION_A",
                session_key_derivation_attributes={"emv_common": {
                    "primary_account_number": a.pan, "pan_sequence_number": a.pan_sequence_number,
                    "application_transaction_counter": a.atc}})


# --------------------------------------------------------------------------------- table
OPS: dict[str, OpSpec] = {spec.name: spec for spec in (
    OpSpec("sym:EncryptData/AES256-CBC", "EncryptData", _encrypt("alias/dek-aes256", pb.CBC, 16, 128)),
    OpSpec("sym:DecryptData/AES256-CBC", "DecryptData", _decrypt("alias/dek-aes256", pb.CBC, 16, 128), _prime_decrypt),
    OpSpec("sym:EncryptData/AES128-ECB", "EncryptData", _encrypt("alias/zek-aes128", pb.ECB, 16, 64)),
    OpSpec("sym:EncryptData/TDES2-CBC", "EncryptData", _encrypt("alias/dek-tdes2", pb.CBC, 8, 64)),
    OpSpec("sym:DecryptData/TDES2-ECB", "DecryptData", _decrypt("alias/dek-tdes2", pb.ECB, 8, 64), _prime_decrypt),
    OpSpec("sym:GenerateMac/CMAC-AES128", "GenerateMac", _mac("alias/cmac-aes128", pb.CMAC)),
    OpSpec("sym:VerifyMac/CMAC-AES128", "VerifyMac", _mac("alias/cmac-aes128", pb.CMAC, True), _prime_verify_mac),
    OpSpec("sym:GenerateMac/HMAC-SHA256", "GenerateMac", _mac("alias/hmac-1", pb.HMAC_SHA256)),
    OpSpec("sym:VerifyMac/HMAC-SHA256", "VerifyMac", _mac("alias/hmac-1", pb.HMAC_SHA256, True), _prime_verify_mac),
    OpSpec("asym:Sign/RSA2048", "Sign", _sign("alias/sign-rsa", pb.RSASSA_PKCS1_V1_5_SHA_256)),
    OpSpec("asym:Verify/RSA2048", "Verify", _sign("alias/sign-rsa", pb.RSASSA_PKCS1_V1_5_SHA_256, True), _prime_verify),
    OpSpec("asym:Sign/ECDSA-P256", "Sign", _sign("alias/sign-ec", pb.ECDSA_SHA_256)),
    OpSpec("asym:Verify/ECDSA-P256", "Verify", _sign("alias/sign-ec", pb.ECDSA_SHA_256, True), _prime_verify),
    # Payment operations: in the mixes only once their RPCs exist in hsmlb.v1 and the dev keys hold their key.
    OpSpec("sym:GenerateCardValidationData/CVV", "GenerateCardValidationData", _cvv_generate, optional=True),
    OpSpec("sym:VerifyCardValidationData/CVV", "VerifyCardValidationData", _cvv_verify, optional=True),
    OpSpec("sym:TranslatePinData/ISO0", "TranslatePinData", _translate_pin, optional=True),
    OpSpec("sym:VerifyAuthRequestCryptogram/EMV-A", "VerifyAuthRequestCryptogram", _verify_arqc, optional=True),
)}


def unavailable_reason(spec: OpSpec, stream: bool = False) -> str | None:
    """Why `spec` cannot run now (RPC or stream field missing, key missing), or None."""
    if getattr(pb, f"{spec.rpc}Request", None) is None or not hasattr(pb_grpc.OperationsServicer, spec.rpc):
        return f"{spec.rpc} is not in hsmlb.v1 yet"
    if stream and spec.stream_field not in pb.StreamRequest.DESCRIPTOR.fields_by_name:
        return f"StreamRequest has no {spec.stream_field} yet"
    try:
        spec.build(random.Random(0))
    except (Unavailable, ValueError, TypeError, KeyError) as exc:
        return str(exc) or type(exc).__name__
    return None


def parse_exclude(text: str | None) -> tuple[str, ...]:
    """`--exclude CardValidation,TranslatePin` -> substrings of op names to leave out."""
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def resolve_mix(mix: Mapping[str, float], stream: bool = False,
                exclude: tuple[str, ...] = ()) -> tuple[dict[str, float], list[str]]:
    """The runnable part of a mix and notices about operations left out.

    A required operation that cannot run is an error: the profile would measure something else.
    Operations whose name contains an `exclude` substring are left out on request.
    """
    runnable: dict[str, float] = {}
    notices: list[str] = []
    for name, weight in mix.items():
        spec = OPS[name]
        if any(part in name for part in exclude):
            notices.append(f"{name}: left out (--exclude)")
            continue
        reason = unavailable_reason(spec, stream)
        if reason is None:
            runnable[name] = weight
        elif spec.optional:
            notices.append(f"{name}: left out ({reason})")
        else:
            raise Unavailable(f"{name}: {reason}")
    if not runnable:
        raise Unavailable("nothing left to run in this mix")
    return runnable, notices


def verifies(spec: OpSpec) -> bool:
    """Whether the reply carries `verified`, which must be true: a false one is a failed request."""
    return "verified" in getattr(pb, f"{spec.rpc}Response").DESCRIPTOR.fields_by_name


def build_pools(names: list[str], seed: int = 1, size: int = POOL_SIZE) -> dict[str, list[Message]]:
    rng = random.Random(seed)
    return {name: [OPS[name].build(rng) for _ in range(size)] for name in names}


def prime_pools(pools: dict[str, list[Message]], call: Caller) -> None:
    """Fill server-made values (cipher texts, MACs, signatures) in place, before load starts."""
    for name, pool in pools.items():
        prime = OPS[name].prime
        if prime is not None:
            pool[:] = [prime(call, req) for req in pool]


def sdk_messages(name: str, pool: list[Message]) -> list[Message]:
    """A pool as the SDK's own messages (hsmlb_client keeps its stubs apart from the daemon's), converted once."""
    import hsmlb_client

    cls = getattr(hsmlb_client.pb, f"{OPS[name].rpc}Request")
    return [cls.FromString(message.SerializeToString()) for message in pool]


def schedule(mix: Mapping[str, float], length: int = 1024, seed: int = 7) -> list[str]:
    """Op names in exact proportion to the weights, shuffled: cycling it costs one index per request."""
    total = sum(mix.values())
    if total <= 0:
        raise ValueError("mix: weights must sum to more than 0")
    counts = {name: int(length * w / total) for name, w in mix.items()}
    by_remainder = sorted(mix, key=lambda n: length * mix[n] / total - counts[n], reverse=True)
    for name in by_remainder[: length - sum(counts.values())]:
        counts[name] += 1
    order = [name for name, n in counts.items() for _ in range(n)]
    random.Random(seed).shuffle(order)
    return order
