"""What every step of one run shares: the run's context, the outcome, and the few checks all paths make.

``Run`` is fixed once the server is discovered; ``merge`` builds the state to save from a server's answer
(values a server may omit keep their saved value); ``prove`` is the token request that shows credentials
work, and ``still_works`` the one judgement of whether a saved client is gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import SecretStr

from . import lifecycle, log, store, tokens
from ._http import Transport
from ._parse import hostname
from .admin import Admin
from .errors import (
    CredentialsRejected,
    DiscoveryError,
    UnsafeValue,
)
from .models import (
    ClientInformation,
    ClientMetadata,
    SavedRegistration,
    ServerMetadata,
)
from .settings import Settings
from .urls import origin
from .wait import Deadline, RetryPolicy

logger = log.get_logger()
Action = Literal["registered", "reloaded", "updated", "renewed", "rotated", "replaced", "static"]


# Deleting a client we just created must not depend on the time the failed run had left.
CLEANUP_TIMEOUT = 5.0


# Deleting a per-Pod client on SIGTERM must finish well inside Kubernetes' default 30 s grace period.
EXIT_DELETE_TIMEOUT = 15.0


class Created(Protocol):
    """What deleting a client we made needs: a registration answer or the registration saved from it."""

    @property
    def client_id(self) -> str: ...
    @property
    def registration_client_uri(self) -> str | None: ...
    @property
    def registration_access_token(self) -> SecretStr | None: ...


@dataclass(frozen=True)
class Outcome:
    action: Action
    registration: SavedRegistration
    # Why the credentials were kept as they were, when something asked for new ones ('rotate' says it).
    why: str | None = None


def wanted_metadata(settings: Settings) -> ClientMetadata:
    grants = settings.dcr_grant_types
    return ClientMetadata(
        client_name=settings.client_name,
        grant_types=grants,
        redirect_uris=settings.dcr_redirect_uris,
        # RFC 7591 §2.1: response_types follow grant_types; client_credentials needs none.
        response_types=["code"] if "authorization_code" in grants else [],
        token_endpoint_auth_method=settings.dcr_token_endpoint_auth_method,
        application_type=settings.dcr_application_type,
        scope=settings.dcr_scope,
        contacts=settings.dcr_contacts or None,
        software_id=settings.dcr_software_id,
        software_version=settings.dcr_software_version,
    )


def policy_for(settings: Settings, deadline: Deadline) -> RetryPolicy:
    return RetryPolicy(deadline, settings.dcr_retry_initial_delay, settings.dcr_retry_max_delay)


def transport_for(settings: Settings, deadline: Deadline, issuer: str | None = None) -> Transport:
    """``issuer`` names the trusted origin when the settings do not (``delete`` trusts the saved issuer)."""
    return Transport(
        attempt_timeout=settings.dcr_attempt_timeout,
        remaining=deadline.remaining,
        tls=settings.tls_context(),
        public_base=settings.public_base,
        internal_base=settings.dcr_internal_url,
        secret_origins=settings.secret_origins(issuer),
    )


@dataclass(frozen=True)
class Run:
    """What every step of one run needs, fixed once the server is discovered."""

    transport: Transport
    settings: Settings
    server: ServerMetadata
    policy: RetryPolicy
    wanted: ClientMetadata
    admin: Admin | None = None  # the server's admin API, when the command layer gave the run one


_CARRIED = ("client_secret", "registration_access_token", "registration_client_uri", "token_endpoint_auth_method")


def merge(
    info: ClientInformation, server: ServerMetadata, previous: SavedRegistration | None, fingerprint: str | None
) -> SavedRegistration:
    """New state from a server answer; values a server may omit on read keep their saved value."""
    values = {key: getattr(previous, key) for key in _CARRIED} if previous else {}
    values |= {key: value for key in _CARRIED if (value := getattr(info, key)) is not None}
    return SavedRegistration(
        client_id=info.client_id,
        registered_at=(previous.registered_at if previous else None) or hostname(),
        issuer=server.issuer,
        token_endpoint=server.token_endpoint,
        introspection_endpoint=server.introspection_endpoint or (previous.introspection_endpoint if previous else None),
        client_secret_expires_at=_first(
            info.client_secret_expires_at, previous.client_secret_expires_at if previous else None
        ),
        client_secret_issued_at=_issued_at(values.get("client_secret"), previous),
        metadata_fingerprint=fingerprint,
        mode="dcr",
        **values,
    )


def trusted(settings: Settings, server: ServerMetadata) -> ServerMetadata:
    """The metadata with an introspection endpoint only where the app may send its secret (the origin rules)."""
    endpoint = server.introspection_endpoint
    if endpoint is None or origin(endpoint) in settings.secret_origins(server.issuer):
        return server
    logger.warning(
        "The server's introspection_endpoint is outside the origins that may receive the client secret; it is "
        "not passed on to the app (add its origin to DCR_TRUSTED_ORIGINS if it is right)",
        introspection_endpoint=endpoint,
    )
    return server.model_copy(update={"introspection_endpoint": None})


def _first(*values: int | None) -> int | None:
    return next((value for value in values if value is not None), None)


def _issued_at(secret: SecretStr | None, previous: SavedRegistration | None) -> int | None:
    """When this secret was first seen: kept while it stays the same, now when it changed."""
    if secret is None:
        return None
    if previous is not None and previous.client_secret == secret and previous.client_secret_issued_at:
        return previous.client_secret_issued_at
    return lifecycle.now()


def save(ctx: Run, saved: SavedRegistration) -> None:
    settings = ctx.settings
    store.save(settings.dcr_client_file, saved, settings.dcr_env_file, settings.file_mode, settings.env_names)


def check_values(info: ClientInformation, what: str) -> None:
    """Values a server sent are held to the rules of the ones from the environment, before any is saved."""
    unsafe = info.unsafe_fields()
    if unsafe:
        raise UnsafeValue(
            f"The server's {what} has {', '.join(unsafe)} with characters outside RFC 6749's VSCHAR (control "
            "characters, line breaks); a compliant server never sends them, so nothing was saved. Run again "
            "once the server is fixed."
        )


def proves_secret(ctx: Run, creds: SavedRegistration) -> bool:
    return "client_credentials" in ctx.wanted.grant_types and creds.client_secret is not None


async def still_works(ctx: Run, saved: SavedRegistration) -> bool:
    if saved.client_secret is None or not ctx.server.token_endpoint:
        return False
    try:
        await prove(ctx, saved)
    except CredentialsRejected as exc:
        # Authenticated but refused the grant or scope: the client exists.
        return not exc.bad_credentials
    return True


async def prove(ctx: Run, creds: SavedRegistration) -> str:
    """A client_credentials token request with these credentials; returns the token endpoint used."""
    endpoint = ctx.server.token_endpoint
    if not endpoint:
        raise DiscoveryError(
            f"The server {ctx.server.issuer} advertises no token_endpoint, so client credentials cannot be "
            "checked; check that KEYCLOAK_URL/DCR_ISSUER name the authorization server."
        )
    assert creds.client_secret is not None
    await ctx.policy.call(
        "token request",
        tokens.client_credentials,
        ctx.transport,
        endpoint,
        creds.client_id,
        creds.client_secret.get_secret_value(),
        auth_method=creds.token_endpoint_auth_method or ctx.settings.dcr_token_endpoint_auth_method,
        scope=ctx.settings.dcr_scope,
    )
    return endpoint
