"""The one orchestrator: wait, discover, reload-or-register (or check static credentials), save.

Every network step shares one deadline (DCR_WAIT_TIMEOUT) and this module alone decides what is
retried (``RetryPolicy.call``). The credentials file is locked for the whole run and only ever
replaced atomically, after the server has answered with something usable and, for a new client,
after a token request proved it works. No client of ours is left behind by our hand: a new
registration is written to ``.pending`` the moment it exists, deleted again if the run fails, and
adopted by the next run if this one is killed. A saved client is called gone only when the server
rejects its credentials, never merely because its RFC 7592 token stopped working.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

from pydantic import SecretStr

from . import discovery, keycloak, lifecycle, log, registration, store, tokens
from ._http import Transport
from ._rotation import regenerated
from .errors import (
    BootstrapError,
    ClientGone,
    CredentialsRejected,
    DiscoveryError,
    MalformedResponse,
    RegistrationRejected,
    ServerNotReady,
    ServerResponseError,
    StorageError,
    UnsafeValue,
)
from .models import (
    SECRET_AUTH_METHODS,
    ClientInformation,
    ClientMetadata,
    Intent,
    Retired,
    SavedRegistration,
    ServerMetadata,
    is_vschar,
)
from .settings import Settings, hostname
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


async def wait_for_server(settings: Settings) -> ServerMetadata:
    settings.check_server()
    deadline = Deadline(settings.dcr_wait_timeout)
    async with transport_for(settings, deadline) as transport:
        return await policy_for(settings, deadline).call(
            "discovery", discovery.discover, transport, settings.expected_issuer
        )


@dataclass(frozen=True)
class _Run:
    """What every step of one run needs, fixed once the server is discovered."""

    transport: Transport
    settings: Settings
    server: ServerMetadata
    policy: RetryPolicy
    wanted: ClientMetadata


async def run(settings: Settings, deadline: Deadline | None = None) -> Outcome:
    """``deadline``: one begun earlier (the Kubernetes store waits for its Lease within the same one)."""
    settings.check()
    deadline = deadline or Deadline(settings.dcr_wait_timeout)
    policy = policy_for(settings, deadline)
    path, env_file = settings.dcr_client_file, settings.dcr_env_file
    transport = transport_for(settings, deadline)  # a bad DCR_CA_BUNDLE fails here, before the lock
    async with store.locked(path, deadline.remaining) as turn:
        store.sweep(path, env_file, store.pending_path(path))
        # Fail on an unwritable volume or unreadable file now: not after waiting, not after registering.
        store.probe_writable(path, env_file)
        saved = store.load(path)
        pending = store.load_pending(path)
        interrupted = bool(store.load_intents(path))
        retiring = bool(store.load_retired(path))
        clean = pending is None and not (interrupted or retiring)
        if clean and saved is not None and turn.written_meanwhile(path) and usable_as_is(settings, saved):
            # The run we waited for wrote it moments ago, after the server confirmed it: no request needed.
            logger.info("Loaded registration for client", client_id=saved.client_id, waited=True)
            return Outcome("reloaded", saved)
        return await _checked(transport, settings, policy, saved, pending, clean, interrupted, retiring)


async def _checked(
    transport: Transport,
    settings: Settings,
    policy: RetryPolicy,
    saved: SavedRegistration | None,
    pending: SavedRegistration | None,
    clean: bool,
    interrupted: bool,
    retiring: bool,
) -> Outcome:
    """The run under the lock, from the server: a quick reload, else discovery and the full decision."""
    async with transport:
        wanted = wanted_metadata(settings)
        if clean and saved is not None:
            found = await _quick_reload(transport, settings, policy, wanted, saved)
            if isinstance(found, Outcome):
                return found
            saved = found
        server = await policy.call("discovery", discovery.discover, transport, settings.expected_issuer)
        ctx = _Run(transport, settings, server, policy, wanted)
        return await _discovered(ctx, saved, pending, interrupted=interrupted, retiring=retiring)


async def _discovered(
    ctx: _Run, saved: SavedRegistration | None, pending: SavedRegistration | None, *, interrupted: bool, retiring: bool
) -> Outcome:
    """The run once the server is known: earlier runs' leftovers first, the decision, then retirements."""
    if interrupted:  # clients that killed POSTs left: before anything registers anew
        await resolve_intents(ctx, {r.client_id for r in (saved, pending) if r is not None})
    outcome = await _decide(ctx, saved, pending)
    if retiring or outcome.action == "replaced":
        await _retire_quietly(ctx, outcome.registration.client_id)
    return outcome


async def _retire_quietly(ctx: _Run, in_use: str) -> None:
    """Replaced registrations past their grace go once this run's outcome is saved; a failure is only logged."""
    try:
        await retire(ctx, {in_use})
    except BootstrapError as exc:
        logger.warning("Could not delete a replaced registration; the next run tries again", error=exc.line())


async def _decide(ctx: _Run, saved: SavedRegistration | None, pending: SavedRegistration | None) -> Outcome:
    """With the server discovered: static credentials, or adopt, reload or register."""
    if not ctx.settings.use_dcr:
        return await _static(ctx, saved)
    endpoint = discovery.require_registration_endpoint(ctx.server)
    logger.info("Discovered DCR endpoint", endpoint=endpoint, issuer=ctx.server.issuer)
    if pending is not None and (adopted := await _adopt(ctx, pending)) is not None:
        return adopted
    if saved is not None and (reloaded := await _reload_or_set_aside(ctx, saved, endpoint)) is not None:
        return reloaded
    return await _register(ctx, endpoint)


async def _reload_or_set_aside(ctx: _Run, saved: SavedRegistration, endpoint: str) -> Outcome | None:
    """The saved client if it is still good; None to register (a file of another server is kept aside)."""
    if _belongs_to(saved, ctx.server, endpoint):
        return await _reload(ctx, saved, endpoint)
    kept = store.backup(ctx.settings.dcr_client_file)
    logger.warning(
        "Saved registration is for another server or mode; kept it as a backup and registering anew",
        saved_issuer=saved.issuer,
        saved_mode=saved.mode,
        issuer=ctx.server.issuer,
        backup=str(kept),
    )
    return None


def _belongs_to(saved: SavedRegistration, server: ServerMetadata, endpoint: str) -> bool:
    if saved.mode != "dcr":
        return False
    if saved.issuer is not None:
        return saved.issuer.rstrip("/") == server.issuer.rstrip("/")
    # A file written by the seed's server has no issuer; its registration URI tells.
    return bool(saved.registration_client_uri and saved.registration_client_uri.startswith(endpoint))


_CARRIED = ("client_secret", "registration_access_token", "registration_client_uri", "token_endpoint_auth_method")


def _merge(
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
        client_secret_expires_at=_first(
            info.client_secret_expires_at, previous.client_secret_expires_at if previous else None
        ),
        client_secret_issued_at=_issued_at(values.get("client_secret"), previous),
        metadata_fingerprint=fingerprint,
        mode="dcr",
        **values,
    )


def _first(*values: int | None) -> int | None:
    return next((value for value in values if value is not None), None)


def _issued_at(secret: SecretStr | None, previous: SavedRegistration | None) -> int | None:
    """When this secret was first seen: kept while it stays the same, now when it changed."""
    if secret is None:
        return None
    if previous is not None and previous.client_secret == secret and previous.client_secret_issued_at:
        return previous.client_secret_issued_at
    return lifecycle.now()


def _save(ctx: _Run, saved: SavedRegistration) -> None:
    store.save(ctx.settings.dcr_client_file, saved, ctx.settings.dcr_env_file, ctx.settings.file_mode)


# --- a new client ---


async def _register(ctx: _Run, endpoint: str) -> Outcome:
    secret = ctx.settings.dcr_initial_access_token
    iat = secret.get_secret_value() if secret else None
    intent = _intend(ctx)
    asked = ctx.wanted.model_copy(update={"client_name": named(ctx.wanted.client_name, intent.nonce)})
    try:
        info = await ctx.policy.call("registration", registration.register, ctx.transport, endpoint, asked, iat)
    except (RegistrationRejected, ServerNotReady) as exc:
        _forget(ctx, intent)  # refused, or never processed: the server created nothing
        if isinstance(exc, RegistrationRejected):
            # The seed's event, kept for log-based alerts; the CLI's last line carries the remedy.
            logger.error("Failed to register client", status=exc.status, error=exc.error)
        raise
    # From the server's answer on, any failure (of whatever type) deletes the client again.
    async with _withdraw_on_failure(ctx, info):
        _check_values(info, "registration response")
        new = _merge(info, ctx.server, None, ctx.wanted.fingerprint)
        # Recorded before anything else can fail: a run killed from here on leaves no orphan.
        store.save_pending(ctx.settings.dcr_client_file, new)
        _forget(ctx, intent)
        await _finish(ctx, new)
    logger.info("Successfully registered client", client_id=new.client_id, client_name=ctx.wanted.client_name)
    return Outcome("registered", new)


def named(client_name: str, nonce: str) -> str:
    """The client_name sent in a registration: the wanted one, with the run's nonce to find it by."""
    return f"{client_name} (dcr {nonce})"


def _intend(ctx: _Run) -> Intent:
    """Record, before the POST, that this run is about to create a client, and by which nonce."""
    intent = Intent(
        nonce=secrets.token_hex(6),
        issuer=ctx.server.issuer,
        client_name=ctx.wanted.client_name,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    path = ctx.settings.dcr_client_file
    store.save_intents(path, [*store.load_intents(path), intent])
    return intent


def _forget(ctx: _Run, intent: Intent) -> None:
    path = ctx.settings.dcr_client_file
    store.save_intents(path, [i for i in store.load_intents(path) if i.nonce != intent.nonce])


async def resolve_intents(ctx: _Run, in_use: set[str]) -> None:
    """Registrations that a killed run asked for and never recorded: find and delete them, or say how.

    RFC 7591 cannot look a client up, so this needs the server's own admin API: with Keycloak admin
    credentials (the ones ``initial-token`` uses) the clients named with the nonce are deleted, except
    one this folder uses. Without them, each nonce is logged on every run until an operator acts.
    """
    path = ctx.settings.dcr_client_file
    intents = store.load_intents(path)
    admin = ctx.settings.keycloak_admin()
    mine = [i for i in intents if i.issuer.rstrip("/") == ctx.server.issuer.rstrip("/")]
    if admin is None or not mine:
        _warn_unresolved(intents, store.intent_path(path))
        return
    try:
        removed = await keycloak.delete_clients_named(
            ctx.transport, ctx.policy, admin, names={named(i.client_name, i.nonce) for i in mine}, keep=in_use
        )
    except BootstrapError as exc:  # a cleanup of an earlier run's leftovers never fails this one
        logger.warning("Could not look for clients an interrupted run left", error=str(exc))
        return
    store.save_intents(path, list(set(intents) - set(mine)))
    for client_id in removed:
        logger.warning("Deleted a client that an interrupted run left on the server", client_id=client_id)


def _warn_unresolved(intents: list[Intent], intent_file: Path) -> None:
    for intent in intents:
        logger.warning(
            "A run was stopped while registering; the server may hold a client nobody uses",
            client_name=named(intent.client_name, intent.nonce),
            issuer=intent.issuer,
            started_at=intent.started_at,
            remedy=f"delete that client on the server, then remove {intent_file}; or set "
            "KEYCLOAK_ADMIN_USERNAME and KEYCLOAK_ADMIN_PASSWORD so the next run does it",
        )


def _check_values(info: ClientInformation, what: str) -> None:
    """Values a server sent are held to the rules of the ones from the environment, before any is saved."""
    unsafe = info.unsafe_fields()
    if unsafe:
        raise UnsafeValue(
            f"The server's {what} has {', '.join(unsafe)} with characters outside RFC 6749's VSCHAR (control "
            "characters, line breaks); a compliant server never sends them, so nothing was saved. Run again "
            "once the server is fixed."
        )


async def _adopt(ctx: _Run, pending: SavedRegistration) -> Outcome | None:
    """A run was interrupted between registering and saving: finish its work instead of registering again."""
    path = ctx.settings.dcr_client_file
    if pending.issuer != ctx.server.issuer:
        kept = store.backup(store.pending_path(path))
        store.clear_pending(path)
        logger.warning("Set aside a pending registration for another server", backup=str(kept))
        return None
    logger.warning("Finishing a registration that an interrupted run left", client_id=pending.client_id)
    async with _withdraw_on_failure(ctx, pending):
        await _finish(ctx, pending)
    logger.info("Successfully registered client", client_id=pending.client_id, client_name=ctx.wanted.client_name)
    return Outcome("registered", pending)


async def _finish(ctx: _Run, new: SavedRegistration) -> None:
    """Check what the server gave us, prove it works, then make it the saved registration."""
    _check_new(ctx, new)
    if "client_credentials" in ctx.wanted.grant_types and new.client_secret is not None:
        await _prove(ctx, new)
    _save(ctx, new)
    store.clear_pending(ctx.settings.dcr_client_file)


def _check_new(ctx: _Run, new: SavedRegistration) -> None:
    if ctx.settings.dcr_env_file is not None:
        store.env_lines(new)  # refuses values a shell or docker --env-file cannot carry, before any proof
    asked = ctx.wanted.token_endpoint_auth_method
    given = new.token_endpoint_auth_method or asked
    if ctx.wanted.needs_secret and (given not in SECRET_AUTH_METHODS or new.client_secret is None):
        raise MalformedResponse(
            f"The server registered client {new.client_id} with token_endpoint_auth_method {given!r} and "
            f"{'a' if new.client_secret else 'no'} client_secret, but we asked for {asked}; a client without "
            "its secret is refused. Check the server's client registration policy."
        )


def _withdraw_on_failure(ctx: _Run, new: Created) -> contextlib.AbstractAsyncContextManager[None]:
    """If the run fails after the server created ``new``, delete it (RFC 7592) and say so in the error."""
    return withdraw_on_failure(lambda: _withdraw_new(ctx, new), new.client_id)


@contextlib.asynccontextmanager
async def withdraw_on_failure(undo: Callable[[], Awaitable[str]], client_id: str) -> AsyncIterator[None]:
    """On a failure or a cancellation inside the block, ``undo()`` and add its sentence to the error.

    To *withdraw* is this code's one verb for deleting a client that this run registered and could not
    keep (RFC 7592 DELETE); ``delete`` is the user's command for a saved one.
    """
    try:
        yield
    except (Exception, asyncio.CancelledError) as exc:  # whatever failed: a bug must not leave a client live
        try:
            note = await undo()
        except Exception as failed:
            note = f"Client {client_id} was created on the server and could not be deleted ({type(failed).__name__})."
        if isinstance(exc, asyncio.CancelledError):
            logger.warning(note, client_id=client_id)
        else:
            exc.add_note(note)  # the CLI's last line carries it, whatever the error
        raise


async def _withdraw_new(ctx: _Run, new: Created) -> str:
    pending = store.pending_path(ctx.settings.dcr_client_file)
    remedy = (
        f"it is recorded in {pending}, and the next run finishes or deletes it."
        if pending.exists()
        else "delete it there by hand."
    )
    deleted, note = await withdraw(ctx.transport, new, remedy)
    if deleted:
        with contextlib.suppress(StorageError):
            store.clear_pending(ctx.settings.dcr_client_file)
    return note


async def withdraw(transport: Transport, new: Created, remedy: str = "delete it there by hand.") -> tuple[bool, str]:
    """RFC 7592 DELETE of a client this run created, on its own budget: (gone now, a sentence saying so)."""
    uri, token = new.registration_client_uri, new.registration_access_token
    if uri is None or token is None or not is_vschar(token.get_secret_value()):
        return False, (
            f"Client {new.client_id} was created on the server and cannot be deleted by RFC 7592 (no usable "
            f"management token); {remedy}"
        )
    try:
        await asyncio.shield(registration.delete(transport, uri, token.get_secret_value(), budget=CLEANUP_TIMEOUT))
    except ClientGone:
        pass
    except Exception as exc:  # any failure: report it, and keep the error that made us clean up
        return False, (
            f"Client {new.client_id} was created on the server and could not be deleted ({type(exc).__name__}); "
            f"{remedy}"
        )
    return True, f"Client {new.client_id} was created on the server and has been deleted again."


async def withdraw_client(settings: Settings, new: Created) -> tuple[bool, str]:
    """The seam for stores (the Kubernetes Secret): withdraw a client this run created and could not keep,
    on its own short budget, trusting the issuer the registration names. (gone now, a sentence saying so)."""
    issuer = getattr(new, "issuer", None)
    async with transport_for(settings, Deadline(CLEANUP_TIMEOUT), issuer) as transport:
        return await withdraw(transport, new)


def usable_as_is(settings: Settings, saved: SavedRegistration) -> bool:
    """Whether a registration another run saved moments ago (the one we waited for) serves these settings
    without a request: the same server and mode, the metadata asked for, nothing due."""
    return (
        settings.use_dcr
        and saved.mode == "dcr"
        and saved.issuer is not None
        and saved.issuer.rstrip("/") == settings.expected_issuer.rstrip("/")
        and saved.metadata_fingerprint == wanted_metadata(settings).fingerprint
        and not lifecycle.due(settings, saved)
    )


# --- a saved client ---


def _saved_server(settings: Settings, saved: SavedRegistration) -> ServerMetadata | None:
    """The server as the saved file knows it, when that is enough for a restart without discovery."""
    if not (settings.use_dcr and saved.mode == "dcr" and saved.issuer and saved.token_endpoint):
        return None
    if not (saved.registration_client_uri and saved.registration_access_token):
        return None
    if saved.issuer.rstrip("/") != settings.expected_issuer.rstrip("/"):
        return None
    return ServerMetadata(issuer=saved.issuer, token_endpoint=saved.token_endpoint)


async def _quick_reload(
    transport: Transport, settings: Settings, policy: RetryPolicy, wanted: ClientMetadata, saved: SavedRegistration
) -> Outcome | SavedRegistration:
    """A restart in one request: the RFC 7592 read alone, with the URLs the file keeps.

    Anything but "unchanged" (gone, an update due, an odd answer) is left to the full path after
    discovery, which then decides with fresh metadata; what this read rotated is kept for it.
    """
    known = _saved_server(settings, saved)
    if known is None:
        return saved
    ctx = _Run(transport, settings, known, policy, wanted)
    try:
        _, current = await _read(ctx, saved)
    except UnsafeValue:
        raise  # a clear error now; the full path would only meet the rotated token
    except (ClientGone, ServerResponseError):
        return saved
    if current.metadata_fingerprint == wanted.fingerprint and not lifecycle.due(settings, current):
        logger.info("Loaded registration for client", client_id=current.client_id)
        return Outcome("reloaded", current)
    return current


async def _read(ctx: _Run, saved: SavedRegistration) -> tuple[ClientInformation, SavedRegistration]:
    uri, token = saved.registration_client_uri, saved.registration_access_token
    assert uri is not None and token is not None
    info = await ctx.policy.call("registration read", registration.read, ctx.transport, uri, token.get_secret_value())
    _check_values(info, "RFC 7592 read answer")
    # Servers may rotate the registration access token on any call: keep what came back, first.
    current = _merge(info, ctx.server, saved, saved.metadata_fingerprint)
    _save(ctx, current)
    return info, current


async def _reload(ctx: _Run, saved: SavedRegistration, endpoint: str) -> Outcome | None:
    """Check the saved registration (renewing or rotating it when due); None means 'gone, register again'."""
    uri = saved.registration_client_uri
    if uri is None or saved.registration_access_token is None:
        return await _keep_if_working(ctx, saved, None)
    try:
        info, current = await _read(ctx, saved)  # a server that already rotated the secret returns it here
    except ClientGone as exc:
        return await _keep_if_working(ctx, saved, exc)
    if current.metadata_fingerprint == ctx.wanted.fingerprint and not lifecycle.due(ctx.settings, current):
        logger.info("Loaded registration for client", client_id=current.client_id)
        return Outcome("reloaded", current)
    return await _refresh(ctx, current, info, endpoint)


async def _refresh(ctx: _Run, current: SavedRegistration, info: ClientInformation, endpoint: str) -> Outcome | None:
    """Metadata to update, or credentials due: rotate, else update (which may renew), else replace."""
    if lifecycle.rotation_due(ctx.settings, current) and (rotated := await _rotate(ctx, current)):
        return rotated
    try:
        updated = await _update(ctx, current, info)  # Keycloak's rotation policy rotates the secret on update
    except ClientGone as exc:
        return await _keep_if_working(ctx, current, exc)
    if updated.client_secret != current.client_secret:  # renewed (or rotated) by the server: done
        logger.info("Renewed the client secret", client_id=updated.client_id)
        return Outcome("renewed", updated)
    if lifecycle.due(ctx.settings, updated):
        return await _replace(ctx, updated, endpoint, "the server did not renew its secret")
    logger.info("Updated registration for client", client_id=updated.client_id)
    return Outcome("updated", updated)


async def _update(ctx: _Run, current: SavedRegistration, info: ClientInformation) -> SavedRegistration:
    """RFC 7592 update with the wanted metadata; a new secret it returns is proven before it is saved."""
    uri, token = current.registration_client_uri, current.registration_access_token
    assert uri is not None and token is not None  # _merge keeps the saved ones when the server sends none
    answer = await ctx.policy.call(
        "registration update", registration.update, ctx.transport, uri, token.get_secret_value(), info, ctx.wanted
    )
    _check_values(answer, "RFC 7592 update answer")
    updated = _merge(answer, ctx.server, current, ctx.wanted.fingerprint)
    if updated.client_secret != current.client_secret and _proves_secret(ctx, updated):
        await _prove(ctx, updated)
    _save(ctx, updated)
    return updated


def _proves_secret(ctx: _Run, creds: SavedRegistration) -> bool:
    return "client_credentials" in ctx.wanted.grant_types and creds.client_secret is not None


async def _rotate(ctx: _Run, current: SavedRegistration) -> Outcome | None:
    """DCR_ROTATE_AFTER by the server's own rotation (Keycloak's admin API), if we may; else None."""
    access = ctx.settings.keycloak_admin()
    if access is None:
        return None  # the caller replaces the registration instead
    secret = await keycloak.regenerate_secret(ctx.transport, ctx.policy, access, current.client_id)
    log.register_secrets(secret)
    rotated = regenerated(current, secret, ctx.settings.dcr_env_file)
    if _proves_secret(ctx, rotated):
        await _prove(ctx, rotated)
    _save(ctx, rotated)
    logger.info("Rotated the client secret", client_id=rotated.client_id)
    return Outcome("rotated", rotated)


async def _replace(ctx: _Run, old: SavedRegistration, endpoint: str, why: str) -> Outcome:
    """A new registration takes over; ``old`` is kept (retired) until apps using it have had their grace."""
    grace_end = lifecycle.now() + int(ctx.settings.dcr_rotate_grace)
    expires = old.client_secret_expires_at
    retire_at = min(grace_end, int(expires)) if expires else grace_end
    path = ctx.settings.dcr_client_file
    # Recorded first: a run killed from here on leaves a client that a later run retires, never an orphan.
    store.save_retired(path, [*store.load_retired(path), Retired(registration=old, retire_at=retire_at)])
    logger.warning(f"Registering a new client to replace the saved one: {why}", client_id=old.client_id)
    outcome = await _register(ctx, endpoint)
    return Outcome("replaced", outcome.registration)


async def retire(ctx: _Run, in_use: set[str]) -> None:
    """Delete (RFC 7592) the replaced registrations whose grace has ended; never one still in use."""
    path = ctx.settings.dcr_client_file
    kept: list[Retired] = []
    for retired in store.load_retired(path):
        old = retired.registration
        if old.client_id in in_use or retired.retire_at > lifecycle.now():
            kept.append(retired)
            continue
        deleted, note = await withdraw(ctx.transport, old, "it stays listed and the next run tries again.")
        logger.info(note, client_id=old.client_id) if deleted else logger.warning(note, client_id=old.client_id)
        if not deleted and old.registration_access_token is not None:
            kept.append(retired)
    store.save_retired(path, kept)


async def _keep_if_working(ctx: _Run, saved: SavedRegistration, lost: ClientGone | None) -> Outcome | None:
    """The one place that calls a saved client gone: only when the server rejects its credentials.

    ``lost`` is the RFC 7592 answer that made us ask (None: the server offers no management). A client
    whose credentials still work is kept, even if its registration token was rotated by an update whose
    answer we never got: registering again would leave it behind, working, forever.
    """
    if await _still_works(ctx, saved):
        return await _kept_working(ctx, saved, lost)
    if ctx.settings.dcr_on_missing_client == "fail":
        raise ClientGone(
            status=lost.status if lost else 401,
            error=lost.error if lost else None,
            description=lost.description if lost else None,
            what=f"The saved client {saved.client_id} is gone: the server rejects its credentials",
            hint="DCR_ON_MISSING_CLIENT=fail forbids registering a new one: unset it (the default is register) "
            "or restore the client.",
        )
    logger.warning("Saved client no longer exists; registering again", client_id=saved.client_id)
    return None


async def _kept_working(ctx: _Run, saved: SavedRegistration, lost: ClientGone | None) -> Outcome:
    """A client whose credentials work, without RFC 7592 management: rotated through the admin API when due."""
    _save(ctx, saved)
    if lifecycle.rotation_due(ctx.settings, saved) and (rotated := await _rotate(ctx, saved)):
        return rotated
    if lost is not None:
        logger.warning(
            "RFC 7592 management of the saved client is lost, but its credentials still work; keeping it",
            client_id=saved.client_id,
            status=lost.status,
            remedy="have the server's administrator issue a new registration access token and put it in "
            "the credentials file, or run 'dcr-bootstrap delete' and delete the client on the server to "
            "register a new one",
        )
    logger.info("Loaded registration for client", client_id=saved.client_id)
    how = (
        f"its RFC 7592 management is lost (HTTP {lost.status})" if lost else "the server offers no RFC 7592 management"
    )
    return Outcome("reloaded", saved, f"{how} and no Keycloak admin credentials are set to regenerate its secret")


async def _still_works(ctx: _Run, saved: SavedRegistration) -> bool:
    if saved.client_secret is None or not ctx.server.token_endpoint:
        return False
    try:
        await _prove(ctx, saved)
    except CredentialsRejected as exc:
        # Authenticated but refused the grant or scope: the client exists.
        return not exc.bad_credentials
    return True


async def _prove(ctx: _Run, creds: SavedRegistration) -> str:
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


async def _static(ctx: _Run, saved: SavedRegistration | None) -> Outcome:
    client_id, secret = ctx.settings.keycloak_client_id, ctx.settings.keycloak_client_secret
    assert client_id and secret  # Settings.check()
    static = SavedRegistration(
        client_id=client_id,
        client_secret=secret,
        registered_at=hostname(),
        issuer=ctx.server.issuer,
        token_endpoint=ctx.server.token_endpoint,
        token_endpoint_auth_method=ctx.settings.dcr_token_endpoint_auth_method,
        mode="static",
    )
    await _prove(ctx, static)
    if saved is not None and (saved.mode != "static" or saved.issuer != ctx.server.issuer):
        kept = store.backup(ctx.settings.dcr_client_file)
        logger.warning("Kept the saved registration as a backup before writing static credentials", backup=str(kept))
    _save(ctx, static)
    logger.info("Static credentials verified", client_id=client_id)
    return Outcome("static", static)


async def delete(settings: Settings, budget: float | None = None) -> bool:
    """'delete': the saved client and its retired ones (``_delete``); True if the server had the saved one."""
    from . import _delete  # it builds on this module

    return await _delete.delete(settings, budget)
