"""Rotation and retirement: a new secret by the server's admin API, or a new client that replaces the old
one, which is kept (retired) until the apps using it have had their grace, then deleted.

A secret the admin API regenerated is a server answer like any other: a value outside RFC 6749's VSCHAR
(control characters, line breaks) or one an env file cannot carry is refused before anything is saved,
and the registration is built with validation, never copied around it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from . import lifecycle, log, store
from ._context import Outcome, Run, prove, proves_secret, save
from ._new import register, withdraw
from .envnames import EnvNames
from .errors import StorageError, UnsafeValue
from .models import Retired, SavedRegistration, is_vschar

logger = log.get_logger()


def regenerated(
    current: SavedRegistration, secret: str, env_file: Path | None, names: EnvNames | None = None
) -> SavedRegistration:
    """``current`` with the admin API's new secret; UnsafeValue (nothing saved, the old secret kept) if unsafe."""
    try:
        if not (secret and is_vschar(secret)):
            raise ValueError("not VSCHAR")
        rotated = SavedRegistration.model_validate(
            current.model_dump() | {"client_secret": SecretStr(secret), "client_secret_issued_at": lifecycle.now()}
        )
        if env_file is not None:
            store.env_lines(rotated, names)  # what a shell or docker --env-file cannot carry is refused too
    except (ValueError, StorageError):
        raise UnsafeValue(
            f"The server's admin API regenerated the secret of client {current.client_id} as an empty value or one "
            "with characters outside RFC 6749's VSCHAR (control characters, line breaks, quotes for the env "
            "file); nothing was saved and the old secret is kept. Regenerate it on the server, then run again."
        ) from None
    return rotated


async def rotate(ctx: Run, current: SavedRegistration) -> Outcome | None:
    """DCR_ROTATE_AFTER by the server's own rotation (its admin API, when given), if we may; else None."""
    if ctx.admin is None:
        return None  # the caller replaces the registration instead
    secret = await ctx.admin.regenerate_secret(current.client_id)
    log.register_secrets(secret)
    rotated = regenerated(current, secret, ctx.settings.dcr_env_file, ctx.settings.env_names)
    if proves_secret(ctx, rotated):
        await prove(ctx, rotated)
    save(ctx, rotated)
    logger.info("Rotated the client secret", client_id=rotated.client_id)
    return Outcome("rotated", rotated)


async def replace_registration(ctx: Run, old: SavedRegistration, endpoint: str, why: str) -> Outcome:
    """A new registration takes over; ``old`` is kept (retired) until apps using it have had their grace."""
    grace_end = lifecycle.now() + int(ctx.settings.dcr_rotate_grace)
    expires = old.client_secret_expires_at
    retire_at = min(grace_end, int(expires)) if expires else grace_end
    path = ctx.settings.dcr_client_file
    # Recorded first: a run killed from here on leaves a client that a later run retires, never an orphan.
    store.save_retired(path, [*store.load_retired(path), Retired(registration=old, retire_at=retire_at)])
    logger.warning(f"Registering a new client to replace the saved one: {why}", client_id=old.client_id)
    outcome = await register(ctx, endpoint)
    return Outcome("replaced", outcome.registration)


async def retire(ctx: Run, in_use: set[str]) -> None:
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
