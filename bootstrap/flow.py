"""The one orchestrator: wait, discover, reload-or-register (or check static credentials), save.

Every network step shares one deadline (DCR_WAIT_TIMEOUT). The credentials file is locked for the
whole run and only ever replaced atomically, after the server has answered with something usable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from . import discovery, log, registration, store, tokens
from ._http import Transport
from .errors import ClientGone, CredentialsRejected, DiscoveryError, RegistrationRejected, StorageError
from .models import ClientInformation, ClientMetadata, SavedRegistration, ServerMetadata
from .settings import Settings, hostname
from .wait import Deadline, RetryPolicy, call

logger = log.get_logger()
Action = Literal["registered", "reloaded", "updated", "static"]


@dataclass(frozen=True)
class Outcome:
    action: Action
    registration: SavedRegistration


def policy_for(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        Deadline(settings.dcr_wait_timeout), settings.dcr_retry_initial_delay, settings.dcr_retry_max_delay
    )


def _register_secrets(settings: Settings) -> None:
    for secret in (settings.dcr_initial_access_token, settings.keycloak_client_secret):
        if secret is not None:
            log.register_secret(secret.get_secret_value())


async def wait_for_server(settings: Settings) -> ServerMetadata:
    settings.check(need_credentials=False)
    async with Transport(settings) as transport:
        return await discovery.discover(transport, settings.expected_issuer, policy_for(settings))


async def run(settings: Settings) -> Outcome:
    settings.check()
    _register_secrets(settings)
    policy = policy_for(settings)
    with store.locked(settings.dcr_client_file):
        # Read the saved file first: an unreadable one fails now, not after waiting for the server.
        saved = store.load(settings.dcr_client_file)
        async with Transport(settings) as transport:
            server = await discovery.discover(transport, settings.expected_issuer, policy)
            if not settings.use_dcr:
                return await _static(transport, settings, server, policy)
            endpoint = discovery.require_registration_endpoint(server)
            logger.info("Discovered DCR endpoint", endpoint=endpoint, issuer=server.issuer)
            if saved is not None and _belongs_to(saved, server, endpoint):
                outcome = await _reload(transport, settings, server, policy, saved)
                if outcome is not None:
                    return outcome
            elif saved is not None:
                logger.warning(
                    "Saved registration is for another server; registering anew",
                    saved_issuer=saved.issuer,
                    issuer=server.issuer,
                )
            return await _register(transport, settings, server, endpoint, policy)


def _belongs_to(saved: SavedRegistration, server: ServerMetadata, endpoint: str) -> bool:
    if saved.mode != "dcr":
        return False
    if saved.issuer is not None:
        return saved.issuer.rstrip("/") == server.issuer.rstrip("/")
    # A file written by the seed's server has no issuer; its registration URI tells.
    return bool(saved.registration_client_uri and saved.registration_client_uri.startswith(endpoint))


def _merge(
    info: ClientInformation,
    server: ServerMetadata,
    previous: SavedRegistration | None,
    fingerprint: str | None,
) -> SavedRegistration:
    """New state from a server answer; values a server may omit on read keep their saved value."""
    return SavedRegistration(
        client_id=info.client_id,
        client_secret=info.client_secret or (previous.client_secret if previous else None),
        registration_access_token=info.registration_access_token
        or (previous.registration_access_token if previous else None),
        registration_client_uri=info.registration_client_uri
        or (previous.registration_client_uri if previous else None),
        registered_at=(previous.registered_at if previous else None) or hostname(),
        issuer=server.issuer,
        token_endpoint=server.token_endpoint,
        client_secret_expires_at=info.client_secret_expires_at,
        metadata_fingerprint=fingerprint,
        mode="dcr",
    )


def _save(settings: Settings, saved: SavedRegistration) -> None:
    for secret in (saved.client_secret, saved.registration_access_token):
        if secret is not None:
            log.register_secret(secret.get_secret_value())
    store.save(settings.dcr_client_file, saved, settings.dcr_env_file)


async def _register(
    transport: Transport, settings: Settings, server: ServerMetadata, endpoint: str, policy: RetryPolicy
) -> Outcome:
    wanted = ClientMetadata.from_settings(settings)
    iat = settings.dcr_initial_access_token.get_secret_value() if settings.dcr_initial_access_token else None
    try:
        info = await call(policy, "registration", lambda: registration.register(transport, endpoint, wanted, iat))
    except RegistrationRejected as exc:
        logger.error(
            "Failed to register client",
            status=exc.status,
            error=exc.error_code,
            error_description=exc.description,
        )
        raise
    saved = _merge(info, server, None, wanted.fingerprint)
    _save(settings, saved)
    logger.info("Successfully registered client", client_id=saved.client_id, client_name=wanted.client_name)
    return Outcome("registered", saved)


async def _reload(
    transport: Transport,
    settings: Settings,
    server: ServerMetadata,
    policy: RetryPolicy,
    saved: SavedRegistration,
) -> Outcome | None:
    """Check the saved registration; None means 'gone, register again'."""
    wanted = ClientMetadata.from_settings(settings)
    if not saved.manageable:
        return await _reload_unmanaged(transport, settings, server, policy, saved)
    assert saved.registration_client_uri and saved.registration_access_token
    uri = saved.registration_client_uri
    try:
        info = await call(
            policy,
            "registration read",
            lambda: registration.read(transport, uri, saved.registration_access_token.get_secret_value()),  # type: ignore[union-attr]
        )
    except ClientGone:
        _handle_gone(settings, saved)
        return None
    # Servers may rotate the registration access token on any call: keep what came back, first.
    current = _merge(info, server, saved, saved.metadata_fingerprint)
    _save(settings, current)
    if current.metadata_fingerprint == wanted.fingerprint:
        logger.info("Loaded registration for client", client_id=current.client_id)
        return Outcome("reloaded", current)
    token = current.registration_access_token
    assert token is not None
    info = await call(
        policy,
        "registration update",
        lambda: registration.update(transport, uri, token.get_secret_value(), info, wanted),
    )
    updated = _merge(info, server, current, wanted.fingerprint)
    _save(settings, updated)
    logger.info("Updated registration for client", client_id=updated.client_id)
    return Outcome("updated", updated)


async def _reload_unmanaged(
    transport: Transport,
    settings: Settings,
    server: ServerMetadata,
    policy: RetryPolicy,
    saved: SavedRegistration,
) -> Outcome | None:
    """No RFC 7592 management: prove the saved credentials with a token request instead."""
    if server.token_endpoint is None or saved.client_secret is None:
        _handle_gone(settings, saved)
        return None
    endpoint, secret = server.token_endpoint, saved.client_secret.get_secret_value()
    try:
        await call(
            policy,
            "token request",
            lambda: tokens.client_credentials(
                transport,
                endpoint,
                saved.client_id,
                secret,
                auth_method=settings.dcr_token_endpoint_auth_method,
            ),
        )
    except CredentialsRejected as exc:
        if settings.dcr_on_missing_client == "fail":
            raise
        logger.warning("Saved client credentials rejected; registering again", error=exc.error_code)
        return None
    logger.info("Loaded registration for client", client_id=saved.client_id)
    return Outcome("reloaded", saved)


def _handle_gone(settings: Settings, saved: SavedRegistration) -> None:
    if settings.dcr_on_missing_client == "fail":
        raise ClientGone(
            status=401,
            error="invalid_token",
            description=None,
            what=f"The saved client {saved.client_id} no longer exists on the server",
            hint="Set DCR_ON_MISSING_CLIENT=register to register a new one, or restore the client.",
        )
    logger.warning("Saved client no longer exists; registering again", client_id=saved.client_id)


async def _static(transport: Transport, settings: Settings, server: ServerMetadata, policy: RetryPolicy) -> Outcome:
    if not server.token_endpoint:
        raise DiscoveryError(
            f"The server {server.issuer} advertises no token_endpoint, so static credentials cannot be "
            "checked; check that KEYCLOAK_URL/DCR_ISSUER name the authorization server."
        )
    client_id = settings.keycloak_client_id
    secret = settings.keycloak_client_secret
    assert client_id and secret  # Settings.check()
    token_endpoint = server.token_endpoint
    await call(
        policy,
        "token request",
        lambda: tokens.client_credentials(
            transport,
            token_endpoint,
            client_id,
            secret.get_secret_value(),
            auth_method=settings.dcr_token_endpoint_auth_method,
            scope=settings.dcr_scope,
        ),
    )
    saved = SavedRegistration(
        client_id=client_id,
        client_secret=secret,
        registered_at=hostname(),
        issuer=server.issuer,
        token_endpoint=server.token_endpoint,
        mode="static",
    )
    _save(settings, saved)
    logger.info("Static credentials verified", client_id=client_id)
    return Outcome("static", saved)


async def delete(settings: Settings) -> bool:
    """RFC 7592 DELETE, then remove the file(s). True if the server had the client."""
    settings.check(need_server=False, need_credentials=False)
    with store.locked(settings.dcr_client_file):
        saved = store.load(settings.dcr_client_file)
        if saved is None:
            raise StorageError(f"No saved registration at {settings.dcr_client_file}; nothing to delete.")
        existed = False
        if saved.manageable:
            assert saved.registration_client_uri and saved.registration_access_token
            async with Transport(settings) as transport:
                try:
                    await call(
                        policy_for(settings),
                        "registration delete",
                        lambda: registration.delete(
                            transport,
                            saved.registration_client_uri,  # type: ignore[arg-type]
                            saved.registration_access_token.get_secret_value(),  # type: ignore[union-attr]
                        ),
                    )
                    existed = True
                except ClientGone:
                    logger.warning("Client was already gone on the server", client_id=saved.client_id)
        store.remove(settings.dcr_client_file, settings.dcr_env_file)
        logger.info("Deleted registration", client_id=saved.client_id, on_server=existed)
        return existed
