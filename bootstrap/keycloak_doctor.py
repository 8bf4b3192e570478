"""What 'doctor' knows about Keycloak: its initial access tokens, realm registration policies and advisories.

Imported by the command layer only (``doctor.ServerChecker``, as ``keycloak.KeycloakAdmin`` is ``admin.Admin``).
Keycloak applies its client registration policies by the kind of registration: one with an initial access
token is "authenticated" (only the policies of subType ``authenticated`` apply: by default Allowed Client
Scopes and Allowed Protocol Mapper Types), one without is "anonymous" (Trusted Hosts, Consent Required,
Full Scope Disabled, Max Clients, ...). Each check is one admin REST GET; nothing is changed.
It never imports ``keycloak`` (only the command layer does): the admin login is a capability it is given.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from .doctor import Finding, Level, jwt_claims
from .errors import AdminRejected, BootstrapError, Unavailable

if TYPE_CHECKING:
    from ._http import Transport
    from .models import ServerMetadata
    from .settings import Settings

POLICY_TYPE = "org.keycloak.services.clientregistration.policy.ClientRegistrationPolicy"

# CVE-2026-16102 (DCR with initial access tokens): the first fixed version of each affected line.
# Affected: below 26.4.14, 26.5.0 to 26.6.4, 26.7.0; fixed in 26.4.14, 26.6.5, 26.7.1 and from 26.8.0.
_ADVISORIES: tuple[tuple[str, tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]], ...] = (
    ("CVE-2026-16102", (((0,), (26, 4, 14)), ((26, 5), (26, 6, 5)), ((26, 7), (26, 7, 1)))),
)


@dataclass(frozen=True)
class Expected:
    """What our registration will look like to the realm."""

    issuer: str
    authenticated: bool  # an initial access token is set
    scopes: tuple[str, ...]  # DCR_SCOPE
    redirect_hosts: tuple[str, ...]
    server_host: str  # where this host reaches Keycloak (DCR_INTERNAL_URL's host, else KEYCLOAK_URL's)
    admin_base: str  # KEYCLOAK_URL/admin: the admin API (DCR_INTERNAL_URL replaces the base on the wire)
    realm: str
    token_id: str | None = None  # the initial access token's jti: its id in the realm's list of them


# The master-realm admin's login (one attempt): keycloak.login_for, wired in by the command layer.
Login = Callable[["Transport"], Awaitable[str]]


class KeycloakChecker:
    """``doctor.ServerChecker`` for one Keycloak realm; the realm's policies only with admin credentials."""

    def __init__(self, expected: Expected, login: Login | None) -> None:
        self._expected, self._login = expected, login

    def token_findings(self, claims: dict[str, Any]) -> list[Finding]:
        """A Keycloak initial access token: typ InitialAccessToken, issued by (and for) this realm's issuer."""
        issuer = self._expected.issuer.rstrip("/")
        out = []
        if claims.get("typ") != "InitialAccessToken":
            fix = "Set DCR_INITIAL_ACCESS_TOKEN to an initial access token ('dcr-bootstrap initial-token')."
            out.append(Finding("blocking", "initial_access_token_type", f"Its typ is {claims.get('typ')!r}.", fix))
        iss, aud = claims.get("iss"), claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud] if aud is not None else []
        if not isinstance(iss, str) or iss.rstrip("/") != issuer:
            fix = (
                "Mint it in this realm, at the public host name (Keycloak's hostname / the realm's frontend URL), "
                "e.g. 'dcr-bootstrap initial-token' with KEYCLOAK_URL set to the public URL."
            )
            out.append(Finding("blocking", "initial_access_token_realm", f"It was issued by {iss}, not {issuer}.", fix))
        elif audiences and issuer not in [a.rstrip("/") for a in audiences if isinstance(a, str)]:
            fix = "Mint it in this realm ('dcr-bootstrap initial-token')."
            out.append(Finding("blocking", "initial_access_token_realm", f"Its audience is {aud}, not {issuer}.", fix))
        else:
            out.append(Finding("ok", "initial_access_token_realm", f"It is an initial access token of {issuer}."))
        return out

    async def realm_findings(self, transport: Transport, metadata: ServerMetadata) -> list[Finding]:
        if self._login is None:
            return [
                Finding(
                    "warning",
                    "realm_policies",
                    "The realm's client registration policies and Keycloak's version were not checked.",
                    "Set KEYCLOAK_ADMIN_USERNAME and KEYCLOAK_ADMIN_PASSWORD to check them.",
                )
            ]
        try:
            return await _admin_findings(transport, await self._login(transport), self._expected)
        except (BootstrapError, Unavailable) as exc:
            detail = exc.line() if isinstance(exc, BootstrapError) else exc.detail
            fix = "Check KEYCLOAK_ADMIN_USERNAME/PASSWORD; the admin needs view-realm and view-clients in the realm."
            return [Finding("warning", "realm_policies", f"The admin API could not be read: {detail}", fix)]


def checker_for(settings: Settings, login: Login | None) -> KeycloakChecker | None:
    """A checker when the settings name a Keycloak realm (KEYCLOAK_URL and KEYCLOAK_REALM), else None."""
    if not (settings.keycloak_url and settings.keycloak_realm):
        return None
    expected = Expected(
        issuer=settings.expected_issuer,
        authenticated=settings.dcr_initial_access_token is not None,
        scopes=tuple((settings.dcr_scope or "").split()),
        redirect_hosts=tuple(urlsplit(uri).hostname or "" for uri in settings.dcr_redirect_uris),
        server_host=urlsplit(settings.dcr_internal_url or settings.keycloak_url).hostname or "",
        admin_base=f"{settings.keycloak_url.rstrip('/')}/admin",
        realm=settings.keycloak_realm,
        token_id=_token_id(settings),
    )
    return KeycloakChecker(expected, login)


def _token_id(settings: Settings) -> str | None:
    token = settings.dcr_initial_access_token
    claims = jwt_claims(token.get_secret_value()) if token is not None else None
    jti = claims.get("jti") if claims is not None else None
    return jti if isinstance(jti, str) else None


async def _admin_findings(transport: Transport, token: str, expected: Expected) -> list[Finding]:
    realm = f"{expected.admin_base}/realms/{quote(expected.realm, safe='')}"
    info = await _get(transport, f"{expected.admin_base}/serverinfo", token)
    findings = [_version(info, expected)]
    if expected.token_id is not None:
        findings.append(_token_uses(await _get(transport, f"{realm}/clients-initial-access", token), expected.token_id))
    components = await _get(transport, f"{realm}/components?type={POLICY_TYPE}", token)
    kind = "authenticated" if expected.authenticated else "anonymous"
    applying = (
        [c for c in components if isinstance(c, dict) and c.get("subType") == kind]
        if isinstance(components, list)
        else []
    )
    for component in applying:
        findings.append(await _policy(transport, realm, token, component, expected))
    if not applying:
        findings.append(Finding("ok", "realm_policies", f"No {kind} client registration policy applies."))
    return findings


async def _get(transport: Transport, url: str, token: str) -> Any:
    resp = await transport.request("GET", url, bearer=token)
    if resp.status != 200:
        error, description = resp.error_fields()
        what = f"Keycloak's admin API refused GET {url}"
        raise AdminRejected(status=resp.status, error=error, description=description, what=what, hint="")
    try:
        return json.loads(resp.body)
    except ValueError:
        return None


def _token_uses(listed: Any, token_id: str) -> Finding:
    """The realm's record of our initial access token (its id is the JWT's jti): still there, uses left."""
    mine = [t for t in listed if isinstance(t, dict) and t.get("id") == token_id] if isinstance(listed, list) else []
    fix = "Mint a new one ('dcr-bootstrap initial-token') and set DCR_INITIAL_ACCESS_TOKEN."
    if not mine:
        what = "The realm has no record of the initial access token: it was revoked, or belongs to another realm."
        return Finding("blocking", "initial_access_token_uses", what, fix)
    remaining = mine[0].get("remainingCount")
    if isinstance(remaining, int) and remaining <= 0:
        return Finding("blocking", "initial_access_token_uses", "The initial access token is used up.", fix)
    return Finding("ok", "initial_access_token_uses", f"The initial access token has {remaining} use(s) left.")


def version_tuple(text: str) -> tuple[int, ...] | None:
    """26.7.3 -> (26, 7, 3); a suffix ('-SNAPSHOT', '.redhat-00001') ends it; None when it starts with none."""
    numbers = []
    for part in text.split("."):
        digits = part.split("-")[0]
        if not digits.isdigit():
            break
        numbers.append(int(digits))
    return tuple(numbers) or None


def advisories_for(version: tuple[int, ...]) -> list[str]:
    """The advisories (of ``_ADVISORIES``) whose affected ranges hold ``version``."""
    return [name for name, ranges in _ADVISORIES if any(low <= version < fixed for low, fixed in ranges)]


def _version(info: Any, expected: Expected) -> Finding:
    system = info.get("systemInfo") if isinstance(info, dict) else None
    text = system.get("version") if isinstance(system, dict) else None
    version = version_tuple(text) if isinstance(text, str) else None
    if version is None:
        return Finding("warning", "keycloak_version", "Keycloak's version could not be read from /admin/serverinfo.")
    affected = advisories_for(version)
    if not affected:
        return Finding("ok", "keycloak_version", f"Keycloak {text}: no known advisory on DCR applies.")
    use = "this registration uses one" if expected.authenticated else "this registration uses none (anonymous)"
    return Finding(
        "warning",
        "keycloak_version",
        f"Keycloak {text} is affected by {', '.join(affected)} (DCR with initial access tokens; {use}).",
        "Upgrade Keycloak to 26.4.14, 26.6.5, 26.7.1 or 26.8.0 or later.",
    )


def _config(component: dict[str, Any], key: str) -> list[str]:
    config = component.get("config")
    values = config.get(key) if isinstance(config, dict) else None
    return [v for v in values if isinstance(v, str)] if isinstance(values, list) else []


def _flag(component: dict[str, Any], key: str, default: bool) -> bool:
    values = _config(component, key)
    return values[0].lower() == "true" if values else default


async def _policy(
    transport: Transport, realm: str, token: str, component: dict[str, Any], expected: Expected
) -> Finding:
    provider, name = component.get("providerId"), str(component.get("name") or component.get("providerId"))
    if provider == "trusted-hosts":
        return await _trusted_hosts(component, name, expected)
    if provider == "max-clients":
        return await _max_clients(transport, realm, token, component, name)
    if provider == "allowed-client-templates":
        return await _allowed_scopes(transport, realm, token, component, name, expected)
    if provider == "scope":
        return await _full_scope(transport, realm, token, name)
    return _static_policy(str(provider), name)


async def _full_scope(transport: Transport, realm: str, token: str, name: str) -> Finding:
    """Full Scope Disabled: the client's tokens lose the realm's default roles (default-roles-<realm>'s
    composites), which an app that checks roles then refuses; name them, so the operator can map them."""
    default = (await _get(transport, realm, token) or {}).get("defaultRole") or {}
    role = default.get("name") if isinstance(default, dict) else None
    roles = await _get(transport, f"{realm}/roles/{quote(str(role), safe='')}/composites", token) if role else []
    names = sorted(r["name"] for r in roles or [] if isinstance(r, dict) and isinstance(r.get("name"), str))
    if not names:
        return _static_policy("scope", name)
    return Finding(
        "warning",
        "policy_scope",
        f"Policy '{name}': the new client gets Full Scope Allowed off, so its tokens lack the realm's default "
        f"roles ({', '.join(names)}) and an app that checks them refuses its calls.",
        f"Map the roles the app needs to the client (Client scopes > Dedicated scope > Scope), or remove the "
        f"policy; the default roles are in {role}.",
    )


# Policies whose effect needs no request: (level, what it does to our client, the fix).
_EFFECTS: dict[str, tuple[Level, str, str]] = {
    "scope": (
        "warning",
        "the new client gets Full Scope Allowed off: its tokens carry only the roles mapped to its scope.",
        "If the app needs realm or client roles in its tokens, map them to the client, or remove the policy.",
    ),
    "consent-required": (
        "ok",
        "the new client requires user consent (no effect on client_credentials).",
        "",
    ),
    "client-disabled": (
        "blocking",
        "the new client is registered disabled: its credentials work only once an admin enables it.",
        "Remove the Client Disabled policy, or have an admin enable each new client.",
    ),
    "allowed-protocol-mappers": ("ok", "we send no protocol mappers.", ""),
    "registration-web-origins": ("ok", "we send no web origins.", ""),
}


def _static_policy(provider: str, name: str) -> Finding:
    effect = _EFFECTS.get(provider)
    if effect is None:
        return Finding(
            "warning",
            f"policy_{provider}",
            f"Policy '{name}' ({provider}) applies; its effect on the registration is unknown here.",
            "Check it in the admin console: Realm settings > Client registration.",
        )
    level, what, fix = effect
    return Finding(level, f"policy_{provider}", f"Policy '{name}': {what}", fix)


async def _trusted_hosts(component: dict[str, Any], name: str, expected: Expected) -> Finding:
    """Anonymous only: the registering host (as Keycloak sees its address) must be trusted, if the policy says so."""
    trusted = _config(component, "trusted-hosts")
    addresses = await _trusted_addresses(trusted)
    if _flag(component, "host-sending-registration-request-must-match", True):
        ours = await _our_addresses(expected.server_host)
        if not ours & addresses:
            return _untrusted_sender(name, ours, trusted)
    if _flag(component, "client-uris-must-match", True):
        untrusted = [h for h in expected.redirect_hosts if h not in trusted and h not in addresses]
        if untrusted:
            what = f"Policy '{name}' refuses the redirect URIs' hosts {', '.join(untrusted)}."
            return Finding("blocking", "policy_trusted-hosts", what, _TRUST_FIX)
    return Finding("ok", "policy_trusted-hosts", f"Policy '{name}' trusts this host.")


_TRUST_FIX = (
    "Set DCR_INITIAL_ACCESS_TOKEN (an initial access token is not subject to Trusted Hosts; 'dcr-bootstrap "
    "initial-token' mints one), or add this host to the policy's trusted hosts."
)


def _untrusted_sender(name: str, ours: set[str], trusted: list[str]) -> Finding:
    """Blocking when we know our address and no entry can match it; a warning when we cannot tell."""
    if not ours:
        what = f"Policy '{name}' trusts only {', '.join(trusted) or 'no host'}; this host's address is unknown here."
        return Finding("warning", "policy_trusted-hosts", what, _TRUST_FIX)
    seen = ", ".join(sorted(ours))
    if any(entry.startswith("*.") for entry in trusted):
        # Keycloak matches a wildcard domain by the reverse DNS name of the sender: not something to judge here.
        what = f"Policy '{name}' trusts {', '.join(trusted)}: {seen} passes only if its reverse DNS name matches."
        return Finding("warning", "policy_trusted-hosts", what, _TRUST_FIX)
    what = f"Policy '{name}' refuses anonymous registration from {seen} (it trusts {', '.join(trusted) or 'no host'})."
    return Finding("blocking", "policy_trusted-hosts", what, _TRUST_FIX)


async def _resolve(host: str) -> set[str]:
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return set()
    return {str(info[4][0]) for info in found}


async def _trusted_addresses(trusted: list[str]) -> set[str]:
    """The policy's entries and what its host names resolve to here (Keycloak resolves them the same way)."""
    out = set(trusted)
    for entry in trusted:
        if not entry.startswith("*."):
            out |= await _resolve(entry)
    return out


async def _our_addresses(server_host: str) -> set[str]:
    """The source address this host uses towards Keycloak (what Keycloak sees, unless a proxy or NAT is between)."""
    out = set()
    for address in await _resolve(server_host):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((address, 9))  # UDP: nothing is sent, the kernel only picks the route
                out.add(str(probe.getsockname()[0]))
        except OSError:
            continue
    return out


async def _max_clients(transport: Transport, realm: str, token: str, component: dict[str, Any], name: str) -> Finding:
    limits = _config(component, "max-clients")
    limit = int(limits[0]) if limits and limits[0].isdigit() else 200  # Keycloak's default
    page = await _get(transport, f"{realm}/clients?briefRepresentation=true&first=0&max={limit + 1}", token)
    count = len(page) if isinstance(page, list) else 0
    if count >= limit:
        return Finding(
            "blocking",
            "policy_max-clients",
            f"Policy '{name}' allows {limit} clients and the realm holds {count}: a registration is refused.",
            "Delete unused clients (e.g. 'dcr-bootstrap delete' where they were registered) or raise the limit.",
        )
    return Finding("ok", "policy_max-clients", f"Policy '{name}': {count} of {limit} clients used.")


async def _allowed_scopes(
    transport: Transport, realm: str, token: str, component: dict[str, Any], name: str, expected: Expected
) -> Finding:
    """Allowed Client Scopes: each scope of DCR_SCOPE must be allowed, or a realm default while those are."""
    if not expected.scopes:
        return Finding("ok", "policy_allowed-client-templates", f"Policy '{name}': DCR_SCOPE is unset.")
    allowed = set(_config(component, "allowed-client-scopes"))
    if _flag(component, "allow-default-scopes", True):
        for kind in ("default-default-client-scopes", "default-optional-client-scopes"):
            listed = await _get(transport, f"{realm}/{kind}", token)
            allowed |= (
                {s["name"] for s in listed if isinstance(s, dict) and isinstance(s.get("name"), str)}
                if isinstance(listed, list)
                else set()
            )
    refused = [scope for scope in expected.scopes if scope not in allowed]
    if refused:
        return Finding(
            "blocking",
            "policy_allowed-client-templates",
            f"Policy '{name}' refuses the scopes {' '.join(refused)} of DCR_SCOPE.",
            "Unset DCR_SCOPE or drop those scopes, or allow them in the policy.",
        )
    return Finding("ok", "policy_allowed-client-templates", f"Policy '{name}' allows DCR_SCOPE.")
