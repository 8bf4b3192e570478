"""Everything Keycloak-specific, in one place: issuer layout, error hints, and the admin API.

The protocol modules never look at Keycloak's paths or messages. The CLI asks ``hint_for`` whether
an error has a Keycloak remedy when it writes the last line; ``initial-token`` runs the admin calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import AdminRejected, BootstrapError, OAuthError, ServerNotReady

if TYPE_CHECKING:  # types only: this module must stay importable without aiohttp
    from ._http import Response, Transport
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
    if isinstance(exc, ServerNotReady) and keycloak_url and "no metadata yet" in str(exc):
        return "Keycloak answers, but the realm does not exist (yet): create or import it, or check KEYCLOAK_REALM."
    return None


def issuer(base_url: str, realm: str) -> str:
    """Keycloak's issuer layout: one realm is one authorization server."""
    return f"{base_url.rstrip('/')}/realms/{realm}"


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
    return str(resp.json()["access_token"])


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
    return str(resp.json()["token"])


async def initial_access_token(
    transport: Transport,
    policy: RetryPolicy,
    base_url: str,
    realm: str,
    username: str,
    password: str,
    *,
    count: int,
    expiration: int,
) -> str:
    """Wait for Keycloak within the policy's deadline, log in as admin, mint a token."""
    admin = await policy.call("admin login", admin_token, transport, base_url, username, password)
    return await policy.call(
        "initial access token",
        mint_initial_access_token,
        transport,
        base_url,
        realm,
        admin,
        count=count,
        expiration=expiration,
    )
