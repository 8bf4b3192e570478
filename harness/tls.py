"""Throwaway certificates for the harnesses and the tests: a private CA and a server certificate it signs.

Used by the kube-apiserver harness (its serving certificate and service-account keys) and by the TLS unit
tests (an HTTPS fake server). Every file is PEM; private keys are unencrypted PKCS#8.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Backdated a little, so that a clock a few minutes behind still accepts the certificates.
_BACKDATE = datetime.timedelta(minutes=5)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    """An IP address entry for an IP literal, a DNS name entry otherwise."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def pem_private_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_ca_and_server_cert(
    ca: Path,
    cert: Path,
    key: Path,
    *,
    hosts: Sequence[str],
    common_name: str,
    ca_name: str = "dcr-bootstrap test CA",
    valid_for: datetime.timedelta = datetime.timedelta(days=2),
) -> None:
    """Write a new CA's certificate to ``ca``, and a server certificate for ``hosts`` it signs to ``cert``/``key``.

    The server certificate names ``hosts`` (DNS names or IP literals, in that order) as its subject
    alternative names and is for server authentication only; both are EC P-256 and valid for ``valid_for``.
    """
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())

    def builder(subject: str, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(_name(ca_name))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + valid_for)
        )

    ca_cert = (
        builder(ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_cert = (
        builder(common_name, server_key.public_key())
        .add_extension(x509.SubjectAlternativeName([_san(host) for host in hosts]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(pem_private_key(server_key))


def write_rsa_key_pair(private: Path, public: Path, key_size: int = 2048) -> None:
    """A new RSA key: the private key to ``private`` (PKCS#8), its public key to ``public`` (SubjectPublicKeyInfo)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    private.write_bytes(pem_private_key(key))
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def write_ca(cert: Path, key: Path, name: str, valid_for: datetime.timedelta = datetime.timedelta(days=2)) -> None:
    """A new self-signed CA (EC P-256) that may sign certificates: its certificate and its private key."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(pem_private_key(ca_key))


def write_client_cert(
    ca_cert: Path,
    ca_key: Path,
    cert: Path,
    key: Path,
    *,
    user: str,
    groups: Sequence[str] = (),
    valid_for: datetime.timedelta = datetime.timedelta(days=1),
) -> None:
    """A client certificate signed by the CA in ``ca_cert``/``ca_key``: CN ``user``, one O per group (as
    Kubernetes reads them)."""
    issuer = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    assert isinstance(signer, ec.EllipticCurvePrivateKey)
    now = datetime.datetime.now(datetime.UTC)
    client_key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in groups]
        + [x509.NameAttribute(NameOID.COMMON_NAME, user)]
    )
    client = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(client_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + valid_for)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(signer, hashes.SHA256())
    )
    cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(pem_private_key(client_key))
