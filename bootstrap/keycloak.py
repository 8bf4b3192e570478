"""Everything Keycloak-specific, in one place: issuer layout, error hints, and the admin API.

The protocol modules never look at Keycloak's paths or messages; they ask ``hint_for`` whether a
server's error description has a known remedy, and fall back to the generic RFC hint otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import CredentialsRejected, RegistrationRejected

if TYPE_CHECKING:  # a type only: settings imports this module for the issuer layout
    from ._http import Transport

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


def hint_for(description: str | None) -> str | None:
    if not description:
        return None
    for needle, hint in _HINTS:
        if needle in description:
            return hint
    return None


def issuer(base_url: str, realm: str) -> str:
    """Keycloak's issuer layout: one realm is one authorization server."""
    return f"{base_url.rstrip('/')}/realms/{realm}"


def not_ready_hint(issuer_url: str) -> str:
    if "/realms/" in issuer_url:
        return (
            "Check that Keycloak runs and is reachable from here, that the realm exists (HTTP 404 means "
            "it does not, yet), or raise DCR_WAIT_TIMEOUT."
        )
    return "Check that the server runs and is reachable from here, or raise DCR_WAIT_TIMEOUT."


async def admin_token(transport: Transport, base_url: str, username: str, password: str) -> str:
    """A master-realm admin token by the password grant of the admin-cli client."""
    resp = await transport.request(
        "POST",
        f"{base_url}/realms/master/protocol/openid-connect/token",
        form={"grant_type": "password", "client_id": "admin-cli", "username": username, "password": password},
    )
    if resp.status != 200:
        error, description = resp.error_fields()
        raise CredentialsRejected(
            status=resp.status,
            error=error,
            description=description,
            what="Keycloak refused the admin credentials",
            hint="Check KEYCLOAK_ADMIN_USERNAME and KEYCLOAK_ADMIN_PASSWORD (master realm).",
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
        error, description = resp.error_fields()
        raise RegistrationRejected(
            status=resp.status,
            error=error,
            description=description,
            what=f"Keycloak refused to mint an initial access token for realm {realm}",
            hint="Check that the realm exists and the admin user may manage its clients.",
        )
    return str(resp.json()["token"])
