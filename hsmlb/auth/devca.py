"""A private dev CA: a server certificate and client certificates for `hsmlb dev up --tls` and tests.

Dev and test material only (EC P-256, short-lived); production certificates come from the operator's
own PKI (SPIFFE/SPIRE, a corporate CA) and are mounted as files.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN = "hsmlb.dev"
DEV_CALLERS = ("app", "operator")


def spiffe_id(name: str, trust_domain: str = TRUST_DOMAIN) -> str:
    return f"spiffe://{trust_domain}/{name}"


@dataclass
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str = "hsmlb dev CA", days: int = 365) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                             crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    def issue(self, common_name: str, uris: tuple[str, ...] = (), dns: tuple[str, ...] = (),
              ips: tuple[str, ...] = (), server: bool = False, days: float = 90,
              not_before: dt.datetime | None = None) -> tuple[bytes, bytes]:
        """(certificate PEM, private key PEM) for a server or a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        names += [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(start)
                   .not_valid_after(start + dt.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def write_pair(directory: Path, name: str, pair: tuple[bytes, bytes]) -> tuple[Path, Path]:
    """`name`.crt and `name`.key in `directory`; the key readable by its owner only."""
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    key_path.touch(mode=0o600, exist_ok=True)
    key_path.chmod(0o600)
    key_path.write_bytes(pair[1])
    cert_path.write_bytes(pair[0])
    return cert_path, key_path


def dev_pki(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost/127.0.0.1/::1, and client certificates for the dev
    callers (spiffe://hsmlb.dev/app, spiffe://hsmlb.dev/operator). Kept when they already exist."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"ca": directory / "ca.crt", "server_cert": directory / "server.crt",
             "server_key": directory / "server.key"}
    for caller in DEV_CALLERS:
        paths[f"{caller}_cert"], paths[f"{caller}_key"] = directory / f"{caller}.crt", directory / f"{caller}.key"
    if all(p.exists() for p in paths.values()):
        return paths
    ca = Authority.create()
    paths["ca"].write_bytes(ca.pem)
    write_pair(directory, "server", ca.issue("localhost", dns=("localhost",), ips=("127.0.0.1", "::1"), server=True))
    for caller in DEV_CALLERS:
        write_pair(directory, caller, ca.issue(caller, uris=(spiffe_id(caller),)))
    return paths
