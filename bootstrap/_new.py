"""A new client: the intent recorded before the POST, the registration, its proof, and its withdrawal.

No client of ours is left behind by our hand: a new registration is written to ``.pending`` the moment
it exists, deleted again if the run fails (``withdraw``), and adopted by the next run if this one is
killed (``adopt``); clients a killed POST created are found by the run's nonce (``resolve_intents``).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from . import log, registration, store
from ._context import (
    CLEANUP_TIMEOUT,
    Created,
    Outcome,
    Run,
    check_values,
    merge,
    prove,
    save,
    transport_for,
)
from ._http import Transport
from .admin import Admin
from .errors import (
    BootstrapError,
    ClientGone,
    MalformedResponse,
    RegistrationRejected,
    ServerNotReady,
    StorageError,
)
from .models import (
    SECRET_AUTH_METHODS,
    Intent,
    SavedRegistration,
    is_vschar,
)
from .settings import Settings
from .wait import Deadline

logger = log.get_logger()


async def register(ctx: Run, endpoint: str) -> Outcome:
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
        check_values(info, "registration response")
        new = merge(info, ctx.server, None, ctx.wanted.fingerprint)
        # Recorded before anything else can fail: a run killed from here on leaves no orphan.
        store.save_pending(ctx.settings.dcr_client_file, new)
        _forget(ctx, intent)
        await _finish(ctx, new)
    logger.info("Successfully registered client", client_id=new.client_id, client_name=ctx.wanted.client_name)
    return Outcome("registered", new)


def named(client_name: str, nonce: str) -> str:
    """The client_name sent in a registration: the wanted one, with the run's nonce to find it by."""
    return f"{client_name} (dcr {nonce})"


def _intend(ctx: Run) -> Intent:
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


def _forget(ctx: Run, intent: Intent) -> None:
    path = ctx.settings.dcr_client_file
    store.save_intents(path, [i for i in store.load_intents(path) if i.nonce != intent.nonce])


async def resolve_intents(ctx: Run, in_use: set[str]) -> None:
    """Registrations that a killed run asked for and never recorded: find and delete them, or say how.

    RFC 7591 cannot look a client up, so this needs the server's own admin API (``ctx.admin``, given
    with admin credentials): the clients named with the nonce are deleted, except one this folder uses.
    Without it, each nonce is logged on every run until an operator acts.
    """
    path = ctx.settings.dcr_client_file
    intents = store.load_intents(path)
    mine = [i for i in intents if i.issuer.rstrip("/") == ctx.server.issuer.rstrip("/")]
    if ctx.admin is None or not mine:
        _warn_unresolved(intents, store.intent_path(path))
        return
    try:
        removed = await _delete_named(ctx.admin, {named(i.client_name, i.nonce) for i in mine}, in_use)
    except BootstrapError as exc:  # a cleanup of an earlier run's leftovers never fails this one
        logger.warning("Could not look for clients an interrupted run left", error=str(exc))
        return
    store.save_intents(path, list(set(intents) - set(mine)))
    for client_id in removed:
        logger.warning("Deleted a client that an interrupted run left on the server", client_id=client_id)


async def _delete_named(admin: Admin, names: set[str], keep: set[str]) -> list[str]:
    """Delete the clients named one of ``names`` (except the client ids in ``keep``); their client ids."""
    found = [client_id for client_id in await admin.find_clients_named(names) if client_id not in keep]
    return [client_id for client_id in found if await admin.delete_client(client_id)]


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


async def adopt(ctx: Run, pending: SavedRegistration) -> Outcome | None:
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


async def _finish(ctx: Run, new: SavedRegistration) -> None:
    """Check what the server gave us, prove it works, then make it the saved registration."""
    _check_new(ctx, new)
    if "client_credentials" in ctx.wanted.grant_types and new.client_secret is not None:
        await prove(ctx, new)
    save(ctx, new)
    store.clear_pending(ctx.settings.dcr_client_file)


def _check_new(ctx: Run, new: SavedRegistration) -> None:
    if ctx.settings.dcr_env_file is not None:
        store.env_lines(
            new, ctx.settings.env_names
        )  # refuses values a shell or docker --env-file cannot carry, before any proof
    asked = ctx.wanted.token_endpoint_auth_method
    given = new.token_endpoint_auth_method or asked
    if ctx.wanted.needs_secret and (given not in SECRET_AUTH_METHODS or new.client_secret is None):
        raise MalformedResponse(
            f"The server registered client {new.client_id} with token_endpoint_auth_method {given!r} and "
            f"{'a' if new.client_secret else 'no'} client_secret, but we asked for {asked}; a client without "
            "its secret is refused. Check the server's client registration policy."
        )


def _withdraw_on_failure(ctx: Run, new: Created) -> contextlib.AbstractAsyncContextManager[None]:
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


async def _withdraw_new(ctx: Run, new: Created) -> str:
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
