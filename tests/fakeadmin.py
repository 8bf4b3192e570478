"""Loopback stand-ins for Keycloak's admin API (admin login, initial access tokens, client secrets) that can lie.

``FakeAdmin`` is the admin API alone; ``AdminFake`` adds the three calls of a secret regeneration to the fake
RFC 7591/7592 server (``tests.fakeserver.FakeServer``).

Like ``fakeserver``, it records instead of asserting; what it answers is scripted: ``admin_token`` and
``minted`` are the values it hands out (control characters and shell code included, for a lying
server), ``mint_error`` turns the mint into an error whose body the test writes.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bootstrap.keycloak import AdminAccess
from tests.fakeserver import FakeServer, app_in_thread

REALM = "demo"
PASSWORD = "admin-password-value"
ADMIN_TOKEN = "admin-access-token-value"


@dataclass
class FakeAdmin:
    base: str = ""
    admin_token: Any = ADMIN_TOKEN
    minted: Any = "eyJhbGciOiJIUzI1NiJ9.eyJ0eXAiOiJJbml0aWFsQWNjZXNzVG9rZW4ifQ.c2lnbmF0dXJl"
    secret: Any = "regenerated-secret-value"
    mint_error: tuple[int, dict[str, Any]] | None = None
    authorizations: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.post("/realms/master/protocol/openid-connect/token", self.login),
                web.post("/admin/realms/{realm}/clients-initial-access", self.mint),
                web.get("/admin/realms/{realm}/clients", self.clients),
                web.post("/admin/realms/{realm}/clients/{uuid}/client-secret", self.regenerate),
            ]
        )
        return app

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("password") != PASSWORD:
            return web.json_response({"error": "invalid_grant"}, status=401)
        return web.json_response({"access_token": self.admin_token, "token_type": "Bearer"})

    async def mint(self, request: web.Request) -> web.Response:
        self.authorizations.append(request.headers.get("Authorization", ""))
        if self.mint_error is not None:
            status, body = self.mint_error
            return web.json_response(body, status=status)
        return web.json_response({"id": "iat-1", "token": self.minted, "count": 1, "expiration": 600})

    async def clients(self, _: web.Request) -> web.Response:
        return web.json_response([{"id": "uuid-1", "clientId": "cid-1", "name": "app"}])

    async def regenerate(self, _: web.Request) -> web.Response:
        return web.json_response({"type": "secret", "value": self.secret})

    @property
    def access(self) -> AdminAccess:
        return AdminAccess(self.base, REALM, "admin", PASSWORD)

    def env(self) -> dict[str, str]:
        """The environment of a CLI run whose Keycloak is this fake."""
        return admin_env(self.base)


def admin_env(base: str) -> dict[str, str]:
    """The environment of a CLI run against a fake Keycloak at ``base``, with the fakes' admin credentials."""
    return {
        "KEYCLOAK_URL": base,
        "KEYCLOAK_REALM": REALM,
        "KEYCLOAK_ADMIN_USERNAME": "admin",
        "KEYCLOAK_ADMIN_PASSWORD": PASSWORD,
        "DCR_WAIT_TIMEOUT": "5",
        "DCR_LOG_FORMAT": "json",
    }


@contextmanager
def admin_in_thread(fake: FakeAdmin) -> Iterator[FakeAdmin]:
    """The fake on a loop of its own, for a test whose main thread runs the CLI (``asyncio.run``)."""
    with app_in_thread(fake.app()) as fake.base:
        yield fake


@dataclass
class AdminFake(FakeServer):
    """The fake RFC 7591/7592 server plus admin login, client lookup and secret regeneration.

    ``any_client``: every clientId is found (the clients live on another server, a real Keycloak).
    """

    regenerated: str | None = None  # the secret the admin API answers with; None: a fresh, well-formed one
    admin_refuses: bool = False
    any_client: bool = False

    def app(self) -> web.Application:
        app = super().app()
        app.add_routes(
            [
                web.post("/realms/master/protocol/openid-connect/token", self.admin_login),
                web.get(f"/admin/realms/{REALM}/clients", self.admin_clients),
                web.post(f"/admin/realms/{REALM}/clients/{{uuid}}/client-secret", self.admin_regenerate),
            ]
        )
        return app

    async def admin_login(self, _: web.Request) -> web.Response:
        if self.admin_refuses:
            return web.json_response({"error": "invalid_grant"}, status=401)
        return web.json_response({"access_token": "admin-token", "token_type": "Bearer"})

    async def admin_clients(self, request: web.Request) -> web.Response:
        wanted = request.query.get("clientId", "")
        known = self.any_client or wanted in self.clients
        found: list[dict[str, Any]] = [{"id": f"uuid-{wanted}", "clientId": wanted, "name": ""}] if known else []
        return web.json_response(found)

    async def admin_regenerate(self, request: web.Request) -> web.Response:
        cid = request.match_info["uuid"].removeprefix("uuid-")
        value = self.regenerated if self.regenerated is not None else secrets.token_urlsafe(16)
        if cid in self.clients:
            self.clients[cid]["client_secret"] = value
        return web.json_response({"type": "secret", "value": value})
