"""Everything Keycloak-specific, in one place: issuer layout, error hints, and the admin API.

The protocol modules never look at Keycloak's paths or messages. The CLI asks ``hint_for`` whether
an error has a Keycloak remedy when it writes the last line; ``initial-token`` runs the admin calls,
and the command layer hands the flow ``admin_for(settings)``: ``admin.Admin`` for Keycloak, with which
it removes what a run killed during its POST left behind (RFC 7591 offers no way to look a client up:
only the server's own admin API can) and regenerates secrets. Every credential
the admin API hands out (the admin token, a minted initial access token, a regenerated secret) is
masked the moment it is parsed and held to the rules of any server credential (``_credential``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Set
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote

from . import _secrets, store
from .errors import NO_METADATA, AdminRejected, BootstrapError, MalformedResponse, OAuthError, UnsafeValue
from .models import is_vschar

if TYPE_CHECKING:  # types only: this module must stay importable without aiohttp
    from ._http import Response, Transport
    from .admin import AdminFor
    from .settings import Settings
    from .wait import RetryPolicy

# (substring of Keycloak's error_description, what to do)
_HINTS: tuple[tuple[str, str], ...] = (
    (
        "Policy 'Trusted Hosts' rejected",
        "Anonymous registration is blocked by the realm's Trusted Hosts policy: set DCR_INITIAL_ACCESS_TOKEN "
        "(mint one with 'dcr-bootstrap initial-token'), or add this host to the realm's Trusted Hosts "
        "client-registration policy.",
    ),
    (
        "No remaining count on initial access token",
        "The initial access token is used up: mint a new one ('dcr-bootstrap initial-token' or the admin "
        "console: Realm settings > Client registration > Initial access token).",
    ),
    (
        "Failed decode token",
        "The initial access token is invalid or expired: mint a new one, and check that the host name it "
        "was minted under (Keycloak's hostname / the realm's frontend URL) matches the issuer used now.",
    ),
    (
        "Policy 'Allowed Client Scopes' rejected",
        "The realm's Allowed Client Scopes policy refused DCR_SCOPE: unset DCR_SCOPE or allow those scopes "
        "in the realm's client registration policies.",
    ),
    (
        "Policy 'Max Clients Limit' rejected",
        "The realm holds too many clients for its Max Clients policy: delete unused clients or raise the limit.",
    ),
    (
        "Not authorized to view client",
        "The saved client was deleted, or its registration access token was revoked.",
    ),
)


def hint_for(exc: BootstrapError, keycloak_url: str | None) -> str | None:
    """A Keycloak-specific remedy for ``exc``, or None."""
    if isinstance(exc, OAuthError) and exc.description:
        for needle, hint in _HINTS:
            if needle in exc.description:
                return hint
    if exc.reason == NO_METADATA and keycloak_url:
        return "Keycloak answers, but the realm does not exist (yet): create or import it, or check KEYCLOAK_REALM."
    return None


def _rejected(resp: Response, what: str, hint: str) -> AdminRejected:
    error, description = resp.error_fields()
    if description is None:  # the admin API says errorMessage where OAuth says error_description
        try:
            body = resp.json()
        except BootstrapError:
            body = {}
        message = body.get("errorMessage")
        description = message if isinstance(message, str) else None
    return AdminRejected(status=resp.status, error=error, description=description, what=what, hint=hint)


async def admin_token(transport: Transport, base_url: str, username: str, password: str) -> str:
    """A master-realm admin token by the password grant of the admin-cli client (one attempt)."""
    resp = await transport.request(
        "POST",
        f"{base_url}/realms/master/protocol/openid-connect/token",
        form={"grant_type": "password", "client_id": "admin-cli", "username": username, "password": password},
    )
    if resp.status != 200:
        raise _rejected(
            resp,
            "Keycloak refused the admin credentials",
            "Check KEYCLOAK_ADMIN_USERNAME and KEYCLOAK_ADMIN_PASSWORD (master realm).",
        )
    return _credential(resp.json().get("access_token"), "admin access token", f"{base_url}/realms/master")


async def mint_initial_access_token(
    transport: Transport, base_url: str, realm: str, admin: str, *, count: int, expiration: int
) -> str:
    """POST /admin/realms/{realm}/clients-initial-access: the seed's setup_dcr.sh, as a function."""
    resp = await transport.request(
        "POST",
        f"{base_url}/admin/realms/{realm}/clients-initial-access",
        bearer=admin,
        json_body={"count": count, "expiration": expiration},
        idempotent=False,
    )
    if resp.status not in (200, 201):
        raise _rejected(
            resp,
            f"Keycloak refused to mint an initial access token for realm {realm}",
            "Check that the realm exists and the admin user may manage its clients.",
        )
    token = _credential(resp.json().get("token"), "initial access token", f"{base_url}/admin/realms/{realm}")
    if not store.env_safe(token):
        raise UnsafeValue(
            f"The initial access token Keycloak minted at {base_url} for realm {realm} has characters a .env "
            "line or a shell cannot carry unquoted (quotes, $, spaces); a Keycloak token never does, so nothing "
            "was written. Check that KEYCLOAK_URL points at Keycloak itself."
        )
    return token


def _credential(value: object, what: str, where: str) -> str:
    """A credential from Keycloak's answer: masked from this moment, then held to RFC 6749's VSCHAR."""
    if not isinstance(value, str) or not value:
        raise MalformedResponse(
            f"Keycloak's answer at {where} holds no {what}; check that KEYCLOAK_URL points at Keycloak itself."
        )
    _secrets.register(value)  # before anything can log it, an error that echoes it included
    if not is_vschar(value):
        raise UnsafeValue(
            f"The {what} Keycloak sent at {where} has characters outside RFC 6749's VSCHAR (control characters, "
            "line breaks); Keycloak never sends them, so it was not used and nothing was written. Check that "
            "KEYCLOAK_URL points at Keycloak itself."
        )
    return value


@dataclass(frozen=True)
class AdminAccess:
    """What the admin API needs: KEYCLOAK_URL, the realm, and a master-realm admin's user and password."""

    base_url: str
    realm: str
    username: str
    password: str = field(repr=False)


async def initial_access_token(
    transport: Transport, policy: RetryPolicy, access: AdminAccess, *, count: int, expiration: int
) -> str:
    """Wait for Keycloak within the policy's deadline, log in as admin, mint a token."""
    admin = await policy.call("admin login", admin_token, transport, access.base_url, access.username, access.password)
    return await policy.call(
        "initial access token",
        mint_initial_access_token,
        transport,
        access.base_url,
        access.realm,
        admin,
        count=count,
        expiration=expiration,
    )


# Clients listed per admin API page while looking for an interrupted run's client.
_PAGE = 200


async def _clients_page(transport: Transport, base_url: str, realm: str, admin: str, first: int) -> list[object]:
    resp = await transport.request(
        "GET", f"{base_url}/admin/realms/{realm}/clients?first={first}&max={_PAGE}", bearer=admin
    )
    if resp.status != 200:
        raise _rejected(resp, f"Keycloak refused to list the clients of realm {realm}", _MANAGE_HINT)
    page = _list_of(resp.body)
    if not page and resp.body.strip() != b"[]":
        raise AdminRejected(
            status=resp.status,
            error=None,
            description=None,
            what="Keycloak's client list is not a JSON list",
            hint="Check that KEYCLOAK_URL points at Keycloak.",
        )
    return page


async def _delete_client(transport: Transport, base_url: str, realm: str, admin: str, uuid: str) -> None:
    resp = await transport.request("DELETE", f"{base_url}/admin/realms/{realm}/clients/{uuid}", bearer=admin)
    if resp.status not in (204, 404):
        raise _rejected(resp, f"Keycloak refused to delete a client of realm {realm}", _MANAGE_HINT)


_MANAGE_HINT = "Give the admin user the realm-management role manage-clients, or delete the client by hand."


def _listed(page: list[object]) -> list[tuple[str, str, str]]:
    """(name, clientId, id) of each well-formed client representation on a page of the admin API."""
    out = []
    for client in page:
        if isinstance(client, dict):
            name, client_id, uuid = client.get("name"), client.get("clientId"), client.get("id")
            if isinstance(name, str) and isinstance(client_id, str) and isinstance(uuid, str):
                out.append((name, client_id, uuid))
    return out


async def _client_uuid(transport: Transport, base_url: str, realm: str, admin: str, client_id: str) -> str:
    resp = await transport.request(
        "GET", f"{base_url}/admin/realms/{realm}/clients?clientId={quote(client_id, safe='')}", bearer=admin
    )
    if resp.status != 200:
        raise _rejected(resp, f"Keycloak refused to look up client {client_id} in realm {realm}", _MANAGE_HINT)
    found = [uuid for _, cid, uuid in _listed(_list_of(resp.body)) if cid == client_id]
    if not found:
        raise AdminRejected(
            status=404,
            error=None,
            description=None,
            what=f"Keycloak has no client {client_id} in realm {realm}",
            hint="Check KEYCLOAK_REALM, or let the next run register a new client.",
        )
    return quote(found[0], safe="")


async def _new_secret(transport: Transport, base_url: str, realm: str, admin: str, uuid: str) -> str:
    resp = await transport.request(
        "POST", f"{base_url}/admin/realms/{realm}/clients/{uuid}/client-secret", bearer=admin, idempotent=False
    )
    answer = _parsed(resp.body) if resp.status == 200 else None
    value = answer.get("value") if isinstance(answer, dict) else None
    if not isinstance(value, str) or not value:
        raise _rejected(resp, f"Keycloak refused to regenerate a client secret in realm {realm}", _MANAGE_HINT)
    return _credential(value, "regenerated client secret", f"{base_url}/admin/realms/{realm}")


class KeycloakAdmin:
    """``admin.Admin`` for Keycloak: the master-realm admin's password grant, then the realm's admin REST API."""

    def __init__(self, transport: Transport, policy: RetryPolicy, access: AdminAccess) -> None:
        self._transport, self._policy, self._access = transport, policy, access
        self._token: str | None = None

    async def _admin(self) -> str:
        if self._token is None:
            a = self._access
            self._token = await self._policy.call(
                "admin login", admin_token, self._transport, a.base_url, a.username, a.password
            )
        return self._token

    async def find_clients_named(self, names: Set[str]) -> list[str]:
        admin, (base_url, realm) = await self._admin(), (self._access.base_url, self._access.realm)
        found: list[str] = []
        first = 0
        while True:
            page = await self._policy.call("client list", _clients_page, self._transport, base_url, realm, admin, first)
            found += [cid for name, cid, _ in _listed(page) if name in names]
            if len(page) < _PAGE:
                return found
            first += _PAGE

    async def delete_client(self, client_id: str) -> bool:
        admin, (base_url, realm) = await self._admin(), (self._access.base_url, self._access.realm)
        try:
            uuid = await self._policy.call(
                "client lookup", _client_uuid, self._transport, base_url, realm, admin, client_id
            )
        except AdminRejected as exc:
            if exc.status == 404:
                return False
            raise
        await self._policy.call("client delete", _delete_client, self._transport, base_url, realm, admin, uuid)
        return True

    async def regenerate_secret(self, client_id: str) -> str:
        """Keycloak's own rotation: a new secret for ``client_id`` (its rotation policy keeps the old one valid)."""
        admin, (base_url, realm) = await self._admin(), (self._access.base_url, self._access.realm)
        uuid = await self._policy.call(
            "client lookup", _client_uuid, self._transport, base_url, realm, admin, client_id
        )
        # Not repeated: a lost answer may have rotated the secret already (the next run notices the old one fail).
        return await _new_secret(self._transport, base_url, realm, admin, uuid)


def access_from(settings: Settings) -> AdminAccess | None:
    """Admin access when KEYCLOAK_URL, the realm and the admin's user and password are all set."""
    password = settings.keycloak_admin_password
    url, realm, user = settings.keycloak_url, settings.keycloak_realm, settings.keycloak_admin_username
    if not (url and realm and user and password):
        return None
    return AdminAccess(url, realm, user, password.get_secret_value())


def admin_for(settings: Settings) -> AdminFor | None:
    """The capability the command layer hands the flow, when the settings hold Keycloak admin credentials."""
    access = access_from(settings)
    if access is None:
        return None
    return lambda transport, policy: KeycloakAdmin(transport, policy, access)


def login_for(settings: Settings) -> Callable[[Transport], Awaitable[str]] | None:
    """The admin login 'doctor' is given (one attempt), when the settings hold Keycloak admin credentials."""
    access = access_from(settings)
    if access is None:
        return None
    return lambda transport: admin_token(transport, access.base_url, access.username, access.password)


def _parsed(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _list_of(body: bytes) -> list[object]:
    value = _parsed(body)
    return value if isinstance(value, list) else []
