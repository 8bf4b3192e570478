"""HTTPS: a server signed by a private CA is refused at once without DCR_CA_BUNDLE, trusted with it."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bootstrap import flow
from bootstrap.errors import ConfigError
from tests.fakeserver import FakeServer, settings_for


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (PEM files)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("test CA"))
        .issuer_name(_name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[FakeServer, Path]]:
    ca, cert, key = make_ca_and_server_cert(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    fake = FakeServer()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    fake.base = f"https://127.0.0.1:{runner.addresses[0][1]}"
    yield fake, ca
    await runner.cleanup()


async def test_untrusted_certificate_fails_at_once_naming_the_ca_setting(
    tls_server: tuple[FakeServer, Path], tmp_path: Path
) -> None:
    """No CA bundle: a ConfigError naming DCR_CA_BUNDLE, without waiting out the deadline."""
    server, _ = tls_server
    with pytest.raises(ConfigError, match="DCR_CA_BUNDLE"):
        await flow.run(settings_for(server, tmp_path, dcr_wait_timeout=60))


async def test_ca_bundle_makes_the_server_trusted(tls_server: tuple[FakeServer, Path], tmp_path: Path) -> None:
    """With DCR_CA_BUNDLE the same server registers the client."""
    server, ca = tls_server
    outcome = await flow.run(settings_for(server, tmp_path, dcr_ca_bundle=ca))
    assert outcome.action == "registered"
