"""The three calls of Keycloak's admin API that a secret regeneration makes, on the fake server, able to lie."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakeserver import FakeServer

REALM = "demo"


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
