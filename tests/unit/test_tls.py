"""HTTPS: a server signed by a private CA is refused at once without DCR_CA_BUNDLE, trusted with it."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from bootstrap import flow
from bootstrap.errors import ConfigError
from harness.tls import write_ca_and_server_cert
from tests.fakeserver import FakeServer, settings_for


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (PEM files)."""
    paths = directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    write_ca_and_server_cert(
        *paths, hosts=["127.0.0.1"], common_name="127.0.0.1", ca_name="test CA", valid_for=dt.timedelta(hours=1)
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
