"""'doctor': will a registration work? Findings about the server, without registering anything.

The generic checks live here: reachability through the split horizon (DCR_INTERNAL_URL), the discovery
document and its issuer, the endpoints' origins, and an initial access token that is a JWT (its ``exp``).
What only one server knows (Keycloak's realm policies, its version, its token claims) comes from a
``ServerChecker`` the command layer passes in, as the flow is given ``admin.Admin``: this module never
imports a server's module.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from . import discovery
from ._http import Transport
from .errors import BootstrapError, DoctorBlocked, Unavailable
from .models import ServerMetadata
from .settings import Settings
from .urls import is_absolute_http, origin

Level = Literal["ok", "warning", "blocking"]


@dataclass(frozen=True)
class Finding:
    """One line of the report: how bad, what was found, and what to do about it."""

    level: Level
    check: str  # a short, stable name for machines (``--json``)
    what: str
    fix: str = ""

    def line(self) -> str:
        return f"[{self.level}] {self.check}: {self.what}" + (f" Fix: {self.fix}" if self.fix else "")

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


class ServerChecker(Protocol):
    """What a server's own module adds to the report (``keycloak_doctor.KeycloakChecker`` for Keycloak)."""

    def token_findings(self, claims: dict[str, Any]) -> list[Finding]:
        """Findings on the claims of an initial access token that is a JWT (decoded, not verified)."""
        ...

    async def realm_findings(self, transport: Transport, metadata: ServerMetadata) -> list[Finding]:
        """Findings from the server's admin side: policies that refuse or change a registration, its version."""
        ...


async def diagnose(
    settings: Settings, transport: Transport, checker: ServerChecker | None, now: Callable[[], float] = time.time
) -> list[Finding]:
    """Every finding, in the order a run meets them; server-side checks only once discovery worked."""
    findings, metadata = await _discovery(settings, transport)
    if metadata is None:
        return findings
    findings += _endpoints(settings, metadata)
    findings += _initial_token(settings, checker, now())
    if checker is not None:
        findings += await checker.realm_findings(transport, metadata)
    return findings


def blocked(findings: list[Finding]) -> DoctorBlocked | None:
    """The error 'doctor' exits with when a finding blocks (its last line names the first), or None."""
    blocking = [f for f in findings if f.level == "blocking"]
    if not blocking:
        return None
    first = blocking[0]
    return DoctorBlocked(
        f"{len(blocking)} blocking finding(s): a registration would fail. First: {first.what} Fix: {first.fix}"
    )


def render(findings: list[Finding], as_json: bool) -> str:
    if as_json:
        return json.dumps([f.as_dict() for f in findings], indent=2) + "\n"
    return "".join(f.line() + "\n" for f in findings)


async def _discovery(settings: Settings, transport: Transport) -> tuple[list[Finding], ServerMetadata | None]:
    """One attempt at the discovery document, through DCR_INTERNAL_URL when set; the issuer compared."""
    expected = settings.expected_issuer
    via = f" through DCR_INTERNAL_URL ({settings.dcr_internal_url})" if settings.dcr_internal_url else ""
    try:
        metadata = await discovery.fetch_metadata(transport, expected)
    except Unavailable as exc:
        fix = "Check KEYCLOAK_URL/DCR_ISSUER (and DCR_INTERNAL_URL: the address this host reaches the server at)."
        if exc.status == 404:
            fix = "The server answers but serves no metadata there: check the realm (KEYCLOAK_REALM) or DCR_ISSUER."
        return [
            Finding("blocking", "reachability", f"No discovery document for {expected}{via}: {exc.detail}.", fix)
        ], None
    except BootstrapError as exc:
        return [Finding("blocking", "discovery", exc.line(), "Point KEYCLOAK_URL/DCR_ISSUER at the server.")], None
    found = [Finding("ok", "reachability", f"The discovery document for {expected} was fetched{via}.")]
    if metadata.issuer.rstrip("/") != expected.rstrip("/"):
        fix = (
            "If that is the server's public URL and this host reaches it at another address, set KEYCLOAK_URL (or "
            "DCR_ISSUER) to the public one and DCR_INTERNAL_URL to the address used here."
        )
        return [
            *found,
            Finding("blocking", "issuer", f"The server names itself {metadata.issuer}, not {expected}.", fix),
        ], None
    return [*found, Finding("ok", "issuer", f"The server's issuer is {metadata.issuer}, as expected.")], metadata


def _endpoints(settings: Settings, metadata: ServerMetadata) -> list[Finding]:
    """registration_endpoint and token_endpoint: advertised, absolute, and where a secret may go."""
    trusted = settings.secret_origins(metadata.issuer)
    out = []
    for name, url in (
        ("registration_endpoint", metadata.registration_endpoint),
        ("token_endpoint", metadata.token_endpoint),
    ):
        if not url:
            fix = "Enable Dynamic Client Registration on the server, or set USE_DCR=false with static credentials."
            out.append(Finding("blocking", name, f"The server advertises no {name}.", fix))
        elif not is_absolute_http(url) or origin(url) not in trusted:
            fix = "If that host really belongs to the authorization server, add its origin to DCR_TRUSTED_ORIGINS."
            out.append(Finding("blocking", name, f"The {name} {url} is outside the origins trusted with secrets.", fix))
        else:
            out.append(Finding("ok", name, f"The {name} is {url}."))
    return out


def _initial_token(settings: Settings, checker: ServerChecker | None, now: float) -> list[Finding]:
    token = settings.dcr_initial_access_token
    if token is None:
        return [
            Finding(
                "ok",
                "initial_access_token",
                "No initial access token: the registration is anonymous, under the server's anonymous policies.",
            )
        ]
    claims = jwt_claims(token.get_secret_value())
    if claims is None:
        return [
            Finding(
                "warning",
                "initial_access_token",
                "The initial access token is not a JWT: its expiry and audience cannot be checked here.",
            )
        ]
    found = [_expiry(claims, now)]
    if checker is not None:
        found += checker.token_findings(claims)
    return found


def _expiry(claims: dict[str, Any], now: float) -> Finding:
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool) or exp <= 0:
        return Finding("ok", "initial_access_token_expiry", "The initial access token does not expire.")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp))
    if exp <= now:
        fix = "Mint a new one ('dcr-bootstrap initial-token') and set DCR_INITIAL_ACCESS_TOKEN."
        return Finding("blocking", "initial_access_token_expiry", f"The initial access token expired at {when}.", fix)
    return Finding("ok", "initial_access_token_expiry", f"The initial access token is valid until {when}.")


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a compact JWS, decoded WITHOUT verifying the signature (only the server can); None if
    the token is not one. Only the claims are read: the token itself is never part of a finding."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    return payload if isinstance(payload, dict) else None
