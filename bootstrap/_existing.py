"""A saved client: the one-request restart, the RFC 7592 read, update and renewal, and keeping a client
whose management is lost while its credentials work (the one place that calls a saved client gone).
"""

from __future__ import annotations

from dataclasses import replace

from . import lifecycle, log, registration
from ._context import Outcome, Run, check_values, merge, prove, proves_secret, save, still_works
from ._rotation import replace_registration, rotate
from .errors import (
    ClientGone,
    ServerResponseError,
    UnsafeValue,
)
from .models import (
    ClientInformation,
    SavedRegistration,
    ServerMetadata,
)
from .settings import Settings

logger = log.get_logger()


def _saved_server(settings: Settings, saved: SavedRegistration) -> ServerMetadata | None:
    """The server as the saved file knows it, when that is enough for a restart without discovery."""
    if not (settings.use_dcr and saved.mode == "dcr" and saved.issuer and saved.token_endpoint):
        return None
    if not (saved.registration_client_uri and saved.registration_access_token):
        return None
    if saved.issuer.rstrip("/") != settings.expected_issuer.rstrip("/"):
        return None
    return ServerMetadata(
        issuer=saved.issuer, token_endpoint=saved.token_endpoint, introspection_endpoint=saved.introspection_endpoint
    )


async def quick_reload(unknown: Run, saved: SavedRegistration) -> Outcome | SavedRegistration:
    """A restart in one request: the RFC 7592 read alone, with the URLs the file keeps (no discovery).

    Anything but "unchanged" (gone, an update due, an odd answer) is left to the full path after
    discovery, which then decides with fresh metadata; what this read rotated is kept for it.
    """
    known = _saved_server(unknown.settings, saved)
    if known is None:
        return saved
    ctx = replace(unknown, server=known)
    wanted, settings = ctx.wanted, ctx.settings
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


async def _read(ctx: Run, saved: SavedRegistration) -> tuple[ClientInformation, SavedRegistration]:
    uri, token = saved.registration_client_uri, saved.registration_access_token
    assert uri is not None and token is not None
    info = await ctx.policy.call("registration read", registration.read, ctx.transport, uri, token.get_secret_value())
    check_values(info, "RFC 7592 read answer")
    # Servers may rotate the registration access token on any call: keep what came back, first.
    current = merge(info, ctx.server, saved, saved.metadata_fingerprint)
    save(ctx, current)
    return info, current


async def reload(ctx: Run, saved: SavedRegistration, endpoint: str) -> Outcome | None:
    """Check the saved registration (renewing or rotating it when due); None means 'gone, register again'."""
    uri = saved.registration_client_uri
    if uri is None or saved.registration_access_token is None:
        return await keep_if_working(ctx, saved, None)
    try:
        info, current = await _read(ctx, saved)  # a server that already rotated the secret returns it here
    except ClientGone as exc:
        return await keep_if_working(ctx, saved, exc)
    if current.metadata_fingerprint == ctx.wanted.fingerprint and not lifecycle.due(ctx.settings, current):
        logger.info("Loaded registration for client", client_id=current.client_id)
        return Outcome("reloaded", current)
    return await _refresh(ctx, current, info, endpoint)


async def _refresh(ctx: Run, current: SavedRegistration, info: ClientInformation, endpoint: str) -> Outcome | None:
    """Metadata to update, or credentials due: rotate, else update (which may renew), else replace."""
    if lifecycle.rotation_due(ctx.settings, current) and (rotated := await rotate(ctx, current)):
        return rotated
    try:
        updated = await _update(ctx, current, info)  # Keycloak's rotation policy rotates the secret on update
    except ClientGone as exc:
        return await keep_if_working(ctx, current, exc)
    if updated.client_secret != current.client_secret:  # renewed (or rotated) by the server: done
        logger.info("Renewed the client secret", client_id=updated.client_id)
        return Outcome("renewed", updated)
    if lifecycle.due(ctx.settings, updated):
        return await replace_registration(ctx, updated, endpoint, "the server did not renew its secret")
    logger.info("Updated registration for client", client_id=updated.client_id)
    return Outcome("updated", updated)


async def _update(ctx: Run, current: SavedRegistration, info: ClientInformation) -> SavedRegistration:
    """RFC 7592 update with the wanted metadata; a new secret it returns is proven before it is saved."""
    uri, token = current.registration_client_uri, current.registration_access_token
    assert uri is not None and token is not None  # merge keeps the saved ones when the server sends none
    answer = await ctx.policy.call(
        "registration update", registration.update, ctx.transport, uri, token.get_secret_value(), info, ctx.wanted
    )
    check_values(answer, "RFC 7592 update answer")
    updated = merge(answer, ctx.server, current, ctx.wanted.fingerprint)
    if updated.client_secret != current.client_secret and proves_secret(ctx, updated):
        await prove(ctx, updated)
    save(ctx, updated)
    return updated


async def keep_if_working(ctx: Run, saved: SavedRegistration, lost: ClientGone | None) -> Outcome | None:
    """The one place that calls a saved client gone: only when the server rejects its credentials.

    ``lost`` is the RFC 7592 answer that made us ask (None: the server offers no management). A client
    whose credentials still work is kept, even if its registration token was rotated by an update whose
    answer we never got: registering again would leave it behind, working, forever.
    """
    if await still_works(ctx, saved):
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


async def _kept_working(ctx: Run, saved: SavedRegistration, lost: ClientGone | None) -> Outcome:
    """A client whose credentials work, without RFC 7592 management: rotated through the admin API when due."""
    save(ctx, saved)
    if lifecycle.rotation_due(ctx.settings, saved) and (rotated := await rotate(ctx, saved)):
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
