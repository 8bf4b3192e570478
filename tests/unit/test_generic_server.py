"""The protocol path against a small, strict RFC 8414/7591/7592 server that is not Keycloak.

The fake runs for real on a loopback port (aiohttp.web), with behaviour Keycloak does not have: the
issuer is the bare origin, the registration access token rotates on every read, and client ids are
not UUIDs. Nothing in the tool may depend on Keycloak's paths or habits to pass these.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bootstrap import flow
from bootstrap.errors import InvalidClientMetadata
from bootstrap.settings import Settings

IAT = "initial-token-value"


class FakeServer:
    def __init__(self) -> None:
        self.base = ""
        self.clients: dict[str, dict[str, Any]] = {}
        self.registered = 0
        self.tokens: dict[str, str] = {}  # registration access token -> client id
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/.well-known/oauth-authorization-server", self.metadata),
                web.post("/connect/register", self.register),
                web.get("/connect/register/{cid}", self.read),
                web.put("/connect/register/{cid}", self.update),
                web.delete("/connect/register/{cid}", self.delete),
                web.post("/connect/token", self.token),
            ]
        )

    async def metadata(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.base,
                "registration_endpoint": f"{self.base}/connect/register",
                "token_endpoint": f"{self.base}/connect/token",
            }
        )

    def _issue(self, cid: str) -> dict[str, Any]:
        rat = secrets.token_urlsafe(16)
        self.tokens = {t: c for t, c in self.tokens.items() if c != cid} | {rat: cid}
        return self.clients[cid] | {
            "registration_access_token": rat,
            "registration_client_uri": f"{self.base}/connect/register/{cid}",
        }

    async def register(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {IAT}":
            return web.json_response({"error": "invalid_token"}, status=401)
        body = await request.json()
        if body.get("token_endpoint_auth_method") not in ("client_secret_basic", "client_secret_post"):
            return web.json_response({"error": "invalid_client_metadata"}, status=400)
        self.registered += 1
        cid = f"client-{self.registered}"
        self.clients[cid] = body | {"client_id": cid, "client_secret": secrets.token_urlsafe(16)}
        return web.json_response(self._issue(cid), status=201)

    def _authorized(self, request: web.Request) -> str | None:
        cid = request.match_info["cid"]
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return cid if self.tokens.get(token) == cid and cid in self.clients else None

    async def read(self, request: web.Request) -> web.Response:
        cid = self._authorized(request)
        if cid is None:
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response(self._issue(cid))  # rotates on every read

    async def update(self, request: web.Request) -> web.Response:
        cid = self._authorized(request)
        if cid is None:
            return web.json_response({"error": "invalid_token"}, status=401)
        body = await request.json()
        assert "registration_access_token" not in body and "registration_client_uri" not in body
        assert body["client_secret"] == self.clients[cid]["client_secret"]
        self.clients[cid] = body
        return web.json_response(self._issue(cid))

    async def delete(self, request: web.Request) -> web.Response:
        cid = self._authorized(request)
        if cid is None:
            return web.json_response({"error": "invalid_token"}, status=401)
        del self.clients[cid]
        return web.Response(status=204)

    async def token(self, request: web.Request) -> web.Response:
        cid, _, secret = base64.b64decode(request.headers["Authorization"].split()[1]).decode().partition(":")
        if self.clients.get(cid, {}).get("client_secret") != secret:
            return web.json_response({"error": "invalid_client"}, status=401)
        return web.json_response({"access_token": "at", "token_type": "Bearer"})


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    fake = FakeServer()
    runner = web.AppRunner(fake.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.base = f"http://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()


def settings_for(server: FakeServer, tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "dcr_issuer": server.base,
        "dcr_initial_access_token": IAT,
        "dcr_client_file": tmp_path / "client.json",
        "dcr_wait_timeout": 10,
    }
    return Settings(**(values | overrides)).check()  # type: ignore[arg-type]


def saved(tmp_path: Path) -> dict[str, Any]:
    return dict(json.loads((tmp_path / "client.json").read_text()))


async def test_registers_then_reloads_saving_the_token_rotated_on_read(server: FakeServer, tmp_path: Path) -> None:
    """A server that rotates on read: the reload saves the new token, which keeps working next time."""
    settings = settings_for(server, tmp_path)
    assert (await flow.run(settings)).action == "registered"
    first = saved(tmp_path)["registration_access_token"]
    assert (await flow.run(settings)).action == "reloaded"
    assert saved(tmp_path)["registration_access_token"] != first
    assert (await flow.run(settings)).action == "reloaded"
    assert len(server.clients) == 1


async def test_changed_metadata_is_updated_in_place(server: FakeServer, tmp_path: Path) -> None:
    """New metadata goes out by PUT with the current secret; the client id stays."""
    await flow.run(settings_for(server, tmp_path))
    outcome = await flow.run(settings_for(server, tmp_path, dcr_client_name="renamed"))
    assert outcome.action == "updated"
    assert server.clients["client-1"]["client_name"] == "renamed"


async def test_vanished_client_is_registered_again(server: FakeServer, tmp_path: Path) -> None:
    """The server forgot the client: the next run registers a new one."""
    await flow.run(settings_for(server, tmp_path))
    server.clients.clear()
    outcome = await flow.run(settings_for(server, tmp_path))
    assert (outcome.action, outcome.registration.client_id) == ("registered", "client-2")


async def test_delete_removes_client_and_file(server: FakeServer, tmp_path: Path) -> None:
    """RFC 7592 DELETE, then the file is gone."""
    settings = settings_for(server, tmp_path)
    await flow.run(settings)
    assert await flow.delete(settings) is True
    assert server.clients == {} and not (tmp_path / "client.json").exists()


async def test_rejected_metadata_maps_to_its_error(server: FakeServer, tmp_path: Path) -> None:
    """invalid_client_metadata from a generic server is InvalidClientMetadata."""
    with pytest.raises(InvalidClientMetadata):
        await flow.run(settings_for(server, tmp_path, dcr_token_endpoint_auth_method="private_key_jwt"))


async def test_static_credentials_are_checked_at_the_discovered_token_endpoint(
    server: FakeServer, tmp_path: Path
) -> None:
    """Static mode against a generic server: token request, same file format."""
    await flow.run(settings_for(server, tmp_path))
    secret = server.clients["client-1"]["client_secret"]
    static = settings_for(server, tmp_path, use_dcr=False, keycloak_client_id="client-1", keycloak_client_secret=secret)
    assert (await flow.run(static)).action == "static"
    assert saved(tmp_path)["mode"] == "static"
