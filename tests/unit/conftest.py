from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aioresponses.core as aioresponses_core
import pytest
from aiohttp import ClientResponse
from aioresponses import aioresponses

from bootstrap import lifecycle, wait
from bootstrap.settings import Settings
from tests.fakeserver import FakeServer, serving

ISSUER = "https://as.example.test/realms/demo"
REG = f"{ISSUER}/clients-registrations/openid-connect"
TOKEN = f"{ISSUER}/protocol/openid-connect/token"
RFC8414 = "https://as.example.test/.well-known/oauth-authorization-server/realms/demo"


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    with wait.no_backoff():
        yield


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    """The loopback RFC 8414/7591/7592 server of tests/fakeserver.py, ready to misbehave."""
    async with serving(FakeServer()) as fake:
        yield fake


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Unit tests never read the developer's environment or .env."""
    import os

    for name in list(os.environ):
        if name.startswith(("DCR_", "KEYCLOAK_", "USE_DCR")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


class _NoUpload:
    output_size = 0


class _CompatResponse(ClientResponse):
    """aiohttp 3.14 (a security release) added a required ``stream_writer``; aioresponses 0.7.9 does not
    pass it yet (pnuckowski/aioresponses#289). Supply a stand-in for the already-sent request."""

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _NoUpload())
        super().__init__(method, url, **kwargs)


@pytest.fixture
def http(monkeypatch: pytest.MonkeyPatch) -> Iterator[aioresponses]:
    monkeypatch.setattr(aioresponses_core, "ClientResponse", _CompatResponse)
    with aioresponses() as mocked:
        yield mocked


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "dcr_issuer": ISSUER,
        "dcr_client_file": tmp_path / ".dcr_client.json",
        "dcr_initial_access_token": "iat-secret-value",
        "dcr_wait_timeout": 5,
        "dcr_log_format": "json",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def metadata(**overrides: object) -> dict[str, object]:
    doc: dict[str, object] = {"issuer": ISSUER, "token_endpoint": TOKEN, "registration_endpoint": REG}
    doc.update(overrides)
    return doc


def client_info(**overrides: object) -> dict[str, object]:
    info: dict[str, object] = {
        "client_id": "cid-1",
        "client_secret": "client-secret-value",
        "registration_access_token": "rat-secret-value",
        "registration_client_uri": f"{REG}/cid-1",
        "client_secret_expires_at": 0,
        "grant_types": ["client_credentials"],
        "token_endpoint_auth_method": "client_secret_basic",
    }
    info.update(overrides)
    return info


class Clock:
    """The time the tool and the fake server see, moved only by the test (or the watch loop's fake sleeps)."""

    def __init__(self) -> None:
        self.at = 1_800_000_000.0

    def __call__(self) -> float:
        return self.at


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch, server: FakeServer) -> Clock:
    moving = Clock()
    monkeypatch.setattr(lifecycle, "now", lambda: int(moving()))
    monkeypatch.setattr(lifecycle, "_clamped", set())  # each test is warned about a clamp afresh
    server.now = moving
    return moving
