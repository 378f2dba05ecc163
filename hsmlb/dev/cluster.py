"""`hsmlb dev up`: SoftHSM2 tokens holding the same test keys, plus a daemon config.

Idempotent: tokens that exist are kept; keys whose label exists with the expected KCV (secret keys)
or public key (key pairs) are kept, others are (re)created, and keys this tool made earlier that the
keys file no longer gives a node are removed from it. Everything lives under one state directory
with its own SOFTHSM2_CONF.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hsmlb.config import ConfigError
from hsmlb.keys import USAGE_ATTRIBUTES, KeyEntry, load_keys, token_material
from hsmlb.limits import StartupError
from hsmlb.payments import kcv as key_check_value

PRIMARY_NODES = ("node-a", "node-b", "node-c")
PARTIAL_NODE = "node-d"  # holds only the keys that name it: proves routing respects inventory
# Test cluster only: these tokens serve payment ops from key material read into the worker's memory,
# which is not PCI PIN compliant; node-d stays a strict token (native ops only), as production would.
HOST_SIDE_NODES = PRIMARY_NODES
# Package data (pyproject.toml), so wheels ship it.
DEFAULT_KEYS = Path(__file__).resolve().with_name("dev-keys.yaml")
MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
SO_PIN_FILE, USER_PIN_FILE = "so.pin", "user.pin"
PROVISION_TIMEOUT_S = 120.0
INIT_TOKEN_TIMEOUT_S = 60.0
LOW_SPACE_BYTES = 1 << 20  # a failed provisioning with less free than this is a full disk


@contextlib.contextmanager
def one_line_errors(state_dir: Path) -> Iterator[None]:
    """What an operator can fix (a full disk, an unwritable state dir, a failing tool) as one line,
    never a traceback: a traceback of a failed command would show its arguments."""
    try:
        yield
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        reason = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or type(exc).__name__)
        raise StartupError(f"dev up: cannot write the state dir {state_dir}{where}: {reason}") from None
    except subprocess.SubprocessError as exc:
        raise StartupError(f"dev up: softhsm2-util failed ({type(exc).__name__}); is {state_dir} writable and "
                           "not full?") from None


def find_module() -> Path:
    for candidate in (os.environ.get("HSMLB_PKCS11_MODULE"), *MODULE_CANDIDATES):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    raise ConfigError("SoftHSM2 is not installed (apt-get install -y softhsm2), or set HSMLB_PKCS11_MODULE")


def default_keys_file() -> Path:
    return DEFAULT_KEYS


def _secret_file(path: Path, digits: int) -> str:
    if not path.exists():
        path.write_text("".join(secrets.choice("0123456789") for _ in range(digits)) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def dev_up(state_dir: Path, keys_file: Path, listen: str = "127.0.0.1:50051", pool_size: int = 4,
           fault_injection: bool = False, regions: list[dict[str, object]] | None = None,
           shadow: bool = False) -> Path:
    """Tokens and keys, then the daemon config: the tokens, then `regions` (region node dicts, see
    dev/regions.py) after them. With regions, the route is tokens primary, regions failover
    (`dev_routes`); `shadow` also shadows every token answer to the regions."""
    state_dir = state_dir.resolve()
    (state_dir / "tokens").mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    conf = state_dir / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {state_dir / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    module = find_module()
    entries = load_keys(keys_file)
    so_pin = _secret_file(state_dir / SO_PIN_FILE, 8)
    user_pin = _secret_file(state_dir / USER_PIN_FILE, 8)
    nodes = (*PRIMARY_NODES, PARTIAL_NODE)
    _init_tokens(nodes, so_pin, user_pin, state_dir)
    asymmetric = {e.alias: _asymmetric_material(state_dir, e) for e in entries if e.asymmetric}
    try:
        _in_child(_provision, module, nodes, entries, asymmetric, user_pin)
    except StartupError as exc:  # SoftHSM2 reports a full disk as some other failure: say what it was
        if shutil.disk_usage(state_dir).free < LOW_SPACE_BYTES:
            raise StartupError(f"dev up: no space left on device for the tokens in {state_dir}") from None
        raise exc from None
    config = {
        "listen": listen,
        "fault_injection": fault_injection,
        "nodes": [{"name": n, "kind": "pkcs11", "module": str(module), "token_label": n,
                   "pin_file": str(state_dir / USER_PIN_FILE), "pool_size": pool_size,
                   "session_key_copies": True,  # SoftHSM2: half the CPU per op (README, Performance)
                   "allow_host_side_derivation": n in HOST_SIDE_NODES,
                   "env": {"SOFTHSM2_CONF": str(conf)}} for n in nodes] + list(regions or []),
    }
    if regions:
        config["routes"] = dev_routes(shadow)
    path = state_dir / "hsmlb.yaml"
    path.write_text("# written by `hsmlb dev up`; PINs live in pin_file, never here\n" + yaml.safe_dump(config))
    return path


def dev_routes(shadow: bool = False) -> list[dict[str, object]]:
    """The dev cluster's default: tokens (pool hsm) primary, regions (pool apc) failover, so local
    tokens serve what they can and the regions take over only when no token can."""
    route: dict[str, object] = {"op": "*", "primary": "hsm", "failover": ["apc"]}
    if shadow:
        route.update(candidate="apc", shadow_percent=100.0)
    return [route]


def _in_child(function: Any, *args: Any) -> None:
    """Run a PKCS#11 provisioning step in a fresh process.

    python-pkcs11 initialises a library once per process with the SOFTHSM2_CONF it saw first, so
    a second state directory in the same process would talk to the first one's tokens. The child
    sends back what failed (an exception class, never a traceback: its frames hold the PIN).
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=_quietly, args=(writer, function, *args), name="hsmlb-provision")
    process.start()
    writer.close()
    process.join(PROVISION_TIMEOUT_S)
    if process.is_alive():
        process.kill()
        process.join(5)
        raise StartupError(f"dev up: provisioning the dev tokens took longer than {PROVISION_TIMEOUT_S:.0f}s")
    reason = f"exit code {process.exitcode}"
    with contextlib.suppress(EOFError, OSError):  # nothing sent: it succeeded, or died without a word
        if reader.poll():
            reason = reader.recv()
    reader.close()
    if process.exitcode != 0:
        raise StartupError(f"dev up: provisioning the dev tokens failed: {reason} (is the state dir full?)")


def _quietly(report: Any, function: Any, *args: Any) -> None:
    """The provisioning child's entry: a failure goes back to the parent as one short reason."""
    try:
        function(*args)
    except Exception as exc:
        report.send("no space left on device" if getattr(exc, "errno", None) == errno.ENOSPC else type(exc).__name__)
        report.close()
        sys.exit(1)


def _init_tokens(nodes: tuple[str, ...], so_pin: str, user_pin: str, state_dir: Path) -> None:
    util = shutil.which("softhsm2-util")
    if util is None:
        raise StartupError("dev up: softhsm2-util not found: apt-get install -y softhsm2")
    existing = subprocess.run([util, "--show-slots"], capture_output=True, text=True, check=True,
                              timeout=INIT_TOKEN_TIMEOUT_S).stdout
    labels = {line.split(":", 1)[1].strip() for line in existing.splitlines() if line.strip().startswith("Label:")}
    for node in nodes:
        if node in labels:  # softhsm2-util pads labels to 32 characters
            continue
        _init_token(util, node, so_pin, user_pin, state_dir)


def _init_token(util: str, label: str, so_pin: str, user_pin: str, state_dir: Path) -> None:
    """`softhsm2-util --init-token` with the PINs typed on a pseudo-terminal, never on its command line
    (any user can read a command line in /proc); it reads PINs only from a terminal."""
    import pty

    master, slave = pty.openpty()
    try:
        process = subprocess.Popen([util, "--init-token", "--free", "--label", label], stdin=slave,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        os.close(slave)
    try:
        os.write(master, f"{so_pin}\n{so_pin}\n{user_pin}\n{user_pin}\n".encode())
        output, _ = process.communicate(timeout=INIT_TOKEN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
        raise StartupError(f"dev up: softhsm2-util did not initialise token {label} within "
                           f"{INIT_TOKEN_TIMEOUT_S:.0f}s") from None
    finally:
        os.close(master)
    if process.returncode != 0:
        last = [line for line in output.decode(errors="replace").splitlines() if line.startswith("ERROR")]
        raise StartupError(f"dev up: softhsm2-util could not initialise token {label} in {state_dir}: "
                           f"{last[-1] if last else f'exit code {process.returncode}'}")


def _holders(entry: KeyEntry) -> tuple[str, ...]:
    return tuple(entry.nodes) if entry.nodes else PRIMARY_NODES


def _asymmetric_material(state_dir: Path, entry: KeyEntry) -> bytes:
    """PKCS#8 DER: from the keys file, else generated once and kept in the state dir (0600).

    A kept file that does not parse (a partial write) or no longer fits the entry's algorithm (the
    keys file changed) is generated anew: the tokens then get the new pair (see `_matches`).
    """
    if entry.material_hex:
        return bytes.fromhex(entry.material_hex)
    path = state_dir / "generated" / (entry.alias.replace("/", "_") + ".der")
    kept = path.read_bytes() if path.exists() else None
    if kept is not None and _fits(kept, entry.algorithm):
        return kept
    path.parent.mkdir(mode=0o700, exist_ok=True)
    key = rsa.generate_private_key(65537, 2048) if entry.algorithm == "RSA_2048" \
        else ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    partial = path.with_suffix(".tmp")  # written whole, then renamed: a crash never leaves half a key
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(der)
    partial.replace(path)
    return der


def _fits(der: bytes, algorithm: str) -> bool:
    """Whether `der` is a private key of `algorithm` (RSA_2048 or ECC_NIST_P256)."""
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError):
        return False
    if algorithm == "RSA_2048":
        return isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    return isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)


def _provision(module: Path, nodes: tuple[str, ...], entries: list[KeyEntry],
               asymmetric: dict[str, bytes], user_pin: str) -> None:
    import pkcs11

    lib = pkcs11.lib(str(module))
    for node in nodes:
        token = lib.get_token(token_label=node)
        with token.open(user_pin=user_pin, rw=True) as session:
            held = [entry for entry in entries if node in _holders(entry)]
            _remove_stale(session, {entry.alias for entry in held})
            for entry in held:
                _ensure_key(session, entry, asymmetric.get(entry.alias), node in HOST_SIDE_NODES)


def _remove_stale(session: Any, wanted: set[str]) -> None:
    """Destroy keys an earlier `dev up` made (by their CKA_ID) that the keys file no longer gives this
    node: a removed alias or a changed `nodes` list must not leave a node serving the old key."""
    from pkcs11 import Attribute

    for obj in list(session.get_objects()):
        label = obj[Attribute.LABEL]
        ident = bytes(obj[Attribute.ID] or b"")
        ours = ident.startswith(b"hsmlb:") or ident == label.encode()
        if ours and label not in wanted:
            obj.destroy()


def _ensure_key(session: Any, entry: KeyEntry, der: bytes | None, host_side: bool) -> None:
    from pkcs11 import Attribute

    existing = list(session.get_objects({Attribute.LABEL: entry.alias}))
    if existing and _matches(existing, entry, der, host_side):
        return
    for obj in existing:
        obj.destroy()
    usages = USAGE_ATTRIBUTES[entry.usage]
    if der is None:
        session.create_object(_secret_template(entry, usages, host_side))
        return
    private, public = _asymmetric_templates(entry, der, usages)
    session.create_object(private)
    session.create_object(public)



def _secret_template(entry: KeyEntry, usages: frozenset[str], host_side: bool) -> dict[Any, Any]:
    """Host-side nodes (test clusters) get extractable, non-sensitive keys so their worker can read them."""
    from pkcs11 import Attribute, KeyType, ObjectClass

    material = token_material(entry)  # HMAC keys zero-padded to SoftHSM2's floor: the same MACs
    if entry.algorithm.startswith("AES"):
        key_type = KeyType.AES
    elif entry.algorithm.startswith("TDES"):
        key_type = KeyType.DES3
        if len(material) == 16:  # K1K2 -> K1K2K1
            material += material[:8]
    else:
        key_type = KeyType.GENERIC_SECRET
    return {
        Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: key_type, Attribute.VALUE: material,
        Attribute.LABEL: entry.alias, Attribute.TOKEN: True, Attribute.PRIVATE: True,
        Attribute.SENSITIVE: not host_side, Attribute.EXTRACTABLE: host_side,
        Attribute.ID: f"hsmlb:{entry.usage}:{entry.algorithm}".encode(),
        Attribute.ENCRYPT: "encrypt" in usages, Attribute.DECRYPT: "decrypt" in usages,
        Attribute.SIGN: "sign" in usages, Attribute.VERIFY: "verify" in usages,
        Attribute.WRAP: False, Attribute.UNWRAP: False, Attribute.DERIVE: False,
    }


def _asymmetric_templates(entry: KeyEntry, der: bytes, usages: frozenset[str]) -> tuple[dict, dict]:
    from pkcs11 import Attribute
    from pkcs11.util.ec import decode_ec_private_key, decode_ec_public_key
    from pkcs11.util.rsa import decode_rsa_private_key, decode_rsa_public_key

    key = serialization.load_der_private_key(der, password=None)
    if isinstance(key, rsa.RSAPrivateKey):
        private = decode_rsa_private_key(key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))
        public = decode_rsa_public_key(key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.PKCS1))
    else:
        private = decode_ec_private_key(key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))
        public = decode_ec_public_key(key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    common = {Attribute.LABEL: entry.alias, Attribute.TOKEN: True, Attribute.ID: entry.alias.encode()}
    private.update(common)
    private.update({Attribute.PRIVATE: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                    Attribute.SIGN: "sign" in usages, Attribute.DECRYPT: False})
    public.update(common)
    public.update({Attribute.VERIFY: "verify" in usages, Attribute.ENCRYPT: False})
    return private, public


def _matches(existing: list[Any], entry: KeyEntry, der: bytes | None, host_side: bool) -> bool:
    from pkcs11 import Attribute, ObjectClass

    if der is not None:
        return _same_pair(existing, entry, der)
    if len(existing) != 1 or existing[0][Attribute.CLASS] != ObjectClass.SECRET_KEY:
        return False
    probe = _secret_template(entry, USAGE_ATTRIBUTES[entry.usage], host_side)
    # SoftHSM2's CKA_CHECK_VALUE is the engine's KCV (E_K(zero block) for AES/DES3, SHA-1 for generic secrets)
    kcv = bytes(existing[0][Attribute.CHECK_VALUE]).hex().upper()
    return kcv == key_check_value(entry.algorithm, probe[Attribute.VALUE]) and all(
        bool(existing[0][a]) == probe[a] for a in (Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.SIGN,
                                                    Attribute.SENSITIVE)) and \
        bytes(existing[0][Attribute.ID] or b"") == probe[Attribute.ID]


def _same_pair(existing: list[Any], entry: KeyEntry, der: bytes) -> bool:
    """Whether the token's objects are exactly the pair `der` makes: one private and one public key
    with the same public values and usage flags (a changed keys file or state dir gets a new pair)."""
    from pkcs11 import Attribute, ObjectClass
    from pkcs11.exceptions import PKCS11Error

    by_class = {obj[Attribute.CLASS]: obj for obj in existing}
    if len(existing) != 2 or set(by_class) != {ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY}:
        return False
    private_t, public_t = _asymmetric_templates(entry, der, USAGE_ATTRIBUTES[entry.usage])
    public, private = by_class[ObjectClass.PUBLIC_KEY], by_class[ObjectClass.PRIVATE_KEY]
    values = (Attribute.MODULUS, Attribute.PUBLIC_EXPONENT) if Attribute.MODULUS in public_t \
        else (Attribute.EC_PARAMS, Attribute.EC_POINT)
    try:
        same_public = all(bytes(public[a]) == bytes(public_t[a]) for a in values)
    except PKCS11Error:  # the attribute is not there: another key type, so not the same pair
        return False
    return same_public and private[Attribute.KEY_TYPE] == private_t[Attribute.KEY_TYPE] and \
        bool(private[Attribute.SIGN]) == private_t[Attribute.SIGN] and \
        bool(public[Attribute.VERIFY]) == public_t[Attribute.VERIFY]
