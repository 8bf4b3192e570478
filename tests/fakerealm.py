"""A loopback stand-in for what 'doctor' reads of a Keycloak realm: its discovery document, the admin login,
/admin/serverinfo, the realm's client registration policies (components), its clients and default scopes.

Scripted by its fields (``version``, ``policies``, ``clients``, ``issuer``); it records nothing and changes
nothing, as doctor never writes.
"""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakeadmin import PASSWORD as PASSWORD
from tests.fakeadmin import REALM as REALM
from tests.fakeadmin import admin_env


def policy(provider: str, sub_type: str, name: str | None = None, **config: list[str]) -> dict[str, Any]:
    """A client registration policy component as the admin API lists it."""
    return {"name": name or provider, "providerId": provider, "subType": sub_type, "config": config}


# A new realm's policies, as Keycloak 26.7 creates them (trusted hosts: none; max clients 200).
DEFAULT_POLICIES = [
    policy(
        "trusted-hosts",
        "anonymous",
        "Trusted Hosts",
        **{"host-sending-registration-request-must-match": ["true"], "client-uris-must-match": ["true"]},
    ),
    policy("consent-required", "anonymous", "Consent Required"),
    policy("scope", "anonymous", "Full Scope Disabled"),
    policy("max-clients", "anonymous", "Max Clients Limit", **{"max-clients": ["200"]}),
    policy("allowed-client-templates", "anonymous", "Allowed Client Scopes", **{"allow-default-scopes": ["true"]}),
    policy("allowed-client-templates", "authenticated", "Allowed Client Scopes", **{"allow-default-scopes": ["true"]}),
    policy("allowed-protocol-mappers", "authenticated", "Allowed Protocol Mapper Types"),
]


def jwt(claims: dict[str, Any]) -> str:
    """An unsigned-looking compact JWS with these claims (doctor decodes, never verifies)."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS512', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


@dataclass
class FakeRealm:
    base: str = ""
    version: str = "26.7.3"
    policies: list[dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(DEFAULT_POLICIES))
    clients: int = 6
    issuer: str | None = None  # None: the right one
    refuse_admin: bool = False
    initial_tokens: list[dict[str, Any]] = field(default_factory=list)  # /clients-initial-access
    default_role_names: list[str] = field(default_factory=lambda: ["offline_access", "uma_authorization"])

    @property
    def issuer_url(self) -> str:
        return f"{self.base}/realms/{REALM}"

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.get(f"/realms/{REALM}/.well-known/openid-configuration", self.metadata),
                web.post("/realms/master/protocol/openid-connect/token", self.login),
                web.get("/admin/serverinfo", self.serverinfo),
                web.get(f"/admin/realms/{REALM}", self.realm),
                web.get(f"/admin/realms/{REALM}/roles/default-roles-{REALM}/composites", self.default_roles),
                web.get(f"/admin/realms/{REALM}/components", self.components),
                web.get(f"/admin/realms/{REALM}/clients", self.client_list),
                web.get(f"/admin/realms/{REALM}/clients-initial-access", self.initial_access),
                web.get(f"/admin/realms/{REALM}/default-default-client-scopes", self.default_scopes),
                web.get(f"/admin/realms/{REALM}/default-optional-client-scopes", self.optional_scopes),
            ]
        )
        return app

    async def metadata(self, _: web.Request) -> web.Response:
        issuer = self.issuer or self.issuer_url
        return web.json_response(
            {
                "issuer": issuer,
                "registration_endpoint": f"{self.issuer_url}/clients-registrations/openid-connect",
                "token_endpoint": f"{self.issuer_url}/protocol/openid-connect/token",
            }
        )

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        if self.refuse_admin or form.get("password") != PASSWORD:
            return web.json_response({"error": "invalid_grant"}, status=401)
        return web.json_response({"access_token": "admin-token", "token_type": "Bearer"})

    async def serverinfo(self, _: web.Request) -> web.Response:
        return web.json_response({"systemInfo": {"version": self.version}})

    async def realm(self, _: web.Request) -> web.Response:
        return web.json_response({"realm": REALM, "defaultRole": {"name": f"default-roles-{REALM}"}})

    async def default_roles(self, _: web.Request) -> web.Response:
        return web.json_response([{"name": name} for name in self.default_role_names])

    async def components(self, _: web.Request) -> web.Response:
        return web.json_response(self.policies)

    async def client_list(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("max", "100"))
        return web.json_response([{"id": f"u{i}", "clientId": f"c{i}"} for i in range(min(self.clients, limit))])

    async def initial_access(self, _: web.Request) -> web.Response:
        return web.json_response(self.initial_tokens)

    async def default_scopes(self, _: web.Request) -> web.Response:
        return web.json_response([{"id": "1", "name": "profile"}, {"id": "2", "name": "email"}])

    async def optional_scopes(self, _: web.Request) -> web.Response:
        return web.json_response([{"id": "3", "name": "offline_access"}])

    def env(self) -> dict[str, str]:
        return admin_env(self.base)
