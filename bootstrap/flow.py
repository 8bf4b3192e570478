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
            run = _Run(transport, settings, server, policy, ClientMetadata.from_settings(settings))
            if not settings.use_dcr:
                return await _static(run)
            endpoint = discovery.require_registration_endpoint(server)
            logger.info("Discovered DCR endpoint", endpoint=endpoint, issuer=server.issuer)
            if saved is not None and _belongs_to(saved, server, endpoint):
                outcome = await _reload(run, saved)
                if outcome is not None:
                    return outcome
            elif saved is not None:
                logger.warning(
                    "Saved registration is for another server; registering anew",
                    saved_issuer=saved.issuer,
                    issuer=server.issuer,
                )
            return await _register(run, endpoint)


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


@dataclass(frozen=True)
class _Run:
    """What every step of one run needs, fixed once the server is discovered."""

    transport: Transport
    settings: Settings
    server: ServerMetadata
    policy: RetryPolicy
    wanted: ClientMetadata


async def _register(run: _Run, endpoint: str) -> Outcome:
    secret = run.settings.dcr_initial_access_token
    iat = secret.get_secret_value() if secret else None
    try:
        info = await call(
            run.policy, "registration", lambda: registration.register(run.transport, endpoint, run.wanted, iat)
        )
    except RegistrationRejected as exc:
        logger.error(
            "Failed to register client",
            status=exc.status,
            error=exc.error_code,
            error_description=exc.description,
        )
        raise
    saved = _merge(info, run.server, None, run.wanted.fingerprint)
    _save(run.settings, saved)
    logger.info("Successfully registered client", client_id=saved.client_id, client_name=run.wanted.client_name)
    return Outcome("registered", saved)


async def _reload(run: _Run, saved: SavedRegistration) -> Outcome | None:
    """Check the saved registration; None means 'gone, register again'."""
    uri, token = saved.registration_client_uri, saved.registration_access_token
    if uri is None or token is None:
        return await _reload_unmanaged(run, saved)
    try:
        info = await call(
            run.policy, "registration read", lambda: registration.read(run.transport, uri, token.get_secret_value())
        )
    except ClientGone:
        if run.settings.dcr_on_missing_client == "fail":
            raise
        logger.warning("Saved client no longer exists; registering again", client_id=saved.client_id)
        return None
    # Servers may rotate the registration access token on any call: keep what came back, first.
    current = _merge(info, run.server, saved, saved.metadata_fingerprint)
    _save(run.settings, current)
    if current.metadata_fingerprint == run.wanted.fingerprint:
        logger.info("Loaded registration for client", client_id=current.client_id)
        return Outcome("reloaded", current)
    new_token = current.registration_access_token
    assert new_token is not None  # _merge keeps the saved one when the server sends none
    info = await call(
        run.policy,
        "registration update",
        lambda: registration.update(run.transport, uri, new_token.get_secret_value(), info, run.wanted),
    )
    updated = _merge(info, run.server, current, run.wanted.fingerprint)
    _save(run.settings, updated)
    logger.info("Updated registration for client", client_id=updated.client_id)
    return Outcome("updated", updated)


async def _prove(run: _Run, client_id: str, secret: str) -> str:
    """A client_credentials token request with these credentials; returns the token endpoint used."""
    endpoint = run.server.token_endpoint
    if not endpoint:
        raise DiscoveryError(
            f"The server {run.server.issuer} advertises no token_endpoint, so client credentials cannot be "
            "checked; check that KEYCLOAK_URL/DCR_ISSUER name the authorization server."
        )
    await call(
        run.policy,
        "token request",
        lambda: tokens.client_credentials(
            run.transport,
            endpoint,
            client_id,
            secret,
            auth_method=run.settings.dcr_token_endpoint_auth_method,
            scope=run.settings.dcr_scope,
        ),
    )
    return endpoint


async def _reload_unmanaged(run: _Run, saved: SavedRegistration) -> Outcome | None:
    """No RFC 7592 management: prove the saved credentials with a token request instead."""
    if saved.client_secret is None:
        _handle_gone(run.settings, saved)
        return None
    try:
        await _prove(run, saved.client_id, saved.client_secret.get_secret_value())
    except CredentialsRejected as exc:
        if run.settings.dcr_on_missing_client == "fail":
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
            what=f"The saved client {saved.client_id} can no longer be checked or used",
            hint="Set DCR_ON_MISSING_CLIENT=register to register a new one, or restore the client.",
        )
    logger.warning("Saved client no longer exists; registering again", client_id=saved.client_id)


async def _static(run: _Run) -> Outcome:
    client_id, secret = run.settings.keycloak_client_id, run.settings.keycloak_client_secret
    assert client_id and secret  # Settings.check()
    token_endpoint = await _prove(run, client_id, secret.get_secret_value())
    saved = SavedRegistration(
        client_id=client_id,
        client_secret=secret,
        registered_at=hostname(),
        issuer=run.server.issuer,
        token_endpoint=token_endpoint,
        mode="static",
    )
    _save(run.settings, saved)
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
        uri, token = saved.registration_client_uri, saved.registration_access_token
        if uri is not None and token is not None:
            async with Transport(settings) as transport:
                try:
                    await call(
                        policy_for(settings),
                        "registration delete",
                        lambda: registration.delete(transport, uri, token.get_secret_value()),
                    )
                    existed = True
                except ClientGone:
                    logger.warning("Client was already gone on the server", client_id=saved.client_id)
        store.remove(settings.dcr_client_file, settings.dcr_env_file)
        logger.info("Deleted registration", client_id=saved.client_id, on_server=existed)
        return existed
