"""'delete' and DCR_DELETE_ON_EXIT: every client this file holds goes, the replaced (retired) ones too,
and the pending one an interrupted run left.

As Vault Agent's ``revoke_on_shutdown`` revokes all its leases, deleting deletes everything we issued
and still list. A client is called gone as the run calls it (``_context.still_works``): when RFC 7592
deletes it, or when the server rejects its credentials too. A 401 from RFC 7592 alone means only that
its registration access token stopped working: a client whose credentials still work stays saved and
is named in the last line (exit NOT_DELETED), never dropped from the file while it lives.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from . import log, registration, store
from ._context import Run, policy_for, still_works, transport_for, wanted_metadata
from .admin import AdminFor
from .errors import BootstrapError, ClientGone, NotDeleted, StorageError
from .models import SavedRegistration, ServerMetadata, is_vschar
from .settings import Settings
from .wait import Deadline

logger = log.get_logger()


@dataclass(frozen=True)
class _Result:
    """What became of one client: deleted now (``existed``), gone already, or kept (``kept`` says why)."""

    existed: bool = False
    kept: str | None = None


async def delete(settings: Settings, budget: float | None = None, admin: AdminFor | None = None) -> bool:
    """RFC 7592 DELETE of the saved client and every retired one; True if the server had the saved client."""
    deadline = Deadline(settings.dcr_wait_timeout if budget is None else min(budget, settings.dcr_wait_timeout))
    path = settings.dcr_client_file
    async with store.locked(path, deadline.remaining):
        saved, pending = store.load(path), store.load_pending(path)
        retired = store.load_retired(path)
        ours = [r for r in (saved, pending, *(r.registration for r in retired)) if r is not None]
        if not ours:
            raise StorageError(f"No saved registration at {path}; nothing to delete.")
        async with transport_for(settings, deadline, ours[0].issuer) as transport:
            policy = policy_for(settings, deadline)
            server = ServerMetadata(issuer=ours[0].issuer or "", token_endpoint=ours[0].token_endpoint)
            api = admin(transport, policy) if admin is not None else None
            ctx = Run(transport, settings, server, policy, wanted_metadata(settings), api)
            failed = await _delete_retired(ctx)
            if pending is not None:
                failed += await _delete_pending(ctx, pending)
            current = _Result()
            if saved is not None:
                current = await _delete_saved(ctx, saved, failed)
        _fail_if_kept(settings, failed)
        return current.existed


async def _delete_saved(
    ctx: Run,
    saved: SavedRegistration,
    failed: list[tuple[str, str]],
) -> _Result:
    """The saved client: the file goes only once the client is gone; else it is named with the others kept."""
    try:
        result = await _delete_one(ctx, saved)
    except BootstrapError as exc:
        if failed:
            exc.add_note(f"Also not deleted: {_named(failed)}.")
        raise
    if result.kept is not None:
        failed.insert(0, (saved.client_id, result.kept))
        return result
    store.remove(ctx.settings.dcr_client_file, ctx.settings.dcr_env_file)
    logger.info("Deleted registration", client_id=saved.client_id, on_server=result.existed)
    return result


async def _delete_retired(ctx: Run) -> list[tuple[str, str]]:
    """Every replaced registration, whatever its grace: those that could not go stay listed."""
    path = ctx.settings.dcr_client_file
    kept, failed = [], []
    for retired in store.load_retired(path):
        old = retired.registration
        try:
            result = await _delete_one(ctx, old)
        except BootstrapError as exc:
            result = _Result(kept=exc.line())
        if result.kept is None:
            logger.info("Deleted a replaced registration", client_id=old.client_id, on_server=result.existed)
            continue
        kept.append(retired)
        failed.append((old.client_id, result.kept))
    store.save_retired(path, kept)
    return failed


async def _delete_pending(ctx: Run, pending: SavedRegistration) -> list[tuple[str, str]]:
    """A registration an interrupted run left (the next run would adopt it): it goes too, or is named."""
    try:
        result = await _delete_one(ctx, pending)
    except BootstrapError as exc:
        result = _Result(kept=exc.line())
    if result.kept is not None:
        return [(pending.client_id, result.kept)]
    store.clear_pending(ctx.settings.dcr_client_file)
    logger.info("Deleted a registration an interrupted run left", client_id=pending.client_id)
    return []


async def _delete_one(ctx: Run, reg: SavedRegistration) -> _Result:
    """RFC 7592 DELETE; when refused as unknown (401/404), gone only if its credentials are rejected too."""
    if reg.mode != "dcr":
        return _Result()  # static credentials are the operator's client: only our file goes
    uri, token = reg.registration_client_uri, reg.registration_access_token
    if uri is not None and token is not None and is_vschar(token.get_secret_value()):
        try:
            secret = token.get_secret_value()
            await ctx.policy.call("registration delete", registration.delete, ctx.transport, uri, secret)
            return _Result(existed=True)
        except ClientGone as exc:
            lost = f"RFC 7592 refused to delete it (HTTP {exc.status})"
    else:
        lost = "it has no usable RFC 7592 registration access token"
    server = ServerMetadata(issuer=reg.issuer or "", token_endpoint=reg.token_endpoint)
    if await still_works(replace(ctx, server=server), reg):
        if ctx.admin is not None and await ctx.admin.delete_client(reg.client_id):
            return _Result(existed=True)  # the server's admin API deleted what RFC 7592 no longer could
        return _Result(kept=f"{lost}, yet its credentials still work")
    logger.warning("Client was already gone on the server", client_id=reg.client_id)
    return _Result()


def _named(failed: list[tuple[str, str]]) -> str:
    return "; ".join(f"client {client_id} ({why})" for client_id, why in failed)


def _fail_if_kept(settings: Settings, failed: list[tuple[str, str]]) -> None:
    if not failed:
        return
    raise NotDeleted(
        f"Not deleted: {_named(failed)}; each stays listed in {settings.dcr_client_file} or its list of replaced "
        "registrations. Delete them on the server (Keycloak: the realm's Clients, or 'kcadm.sh delete "
        "clients/<id>'), then run 'dcr-bootstrap delete' again to remove what is left."
    )
