"""'backup' and 'restore': a private copy of the saved registration, and putting one back only if it is current.

Restore asks the server first (an RFC 7592 read with the backup's registration access token) and
refuses, unless ``--force``, a backup whose client is gone or whose token no longer works, and one
older than the saved registration of the same client (its token rejected while the saved one works,
or an older secret). Nothing it knows is lost: a token the read rotated is saved, the working token of
the same client is kept, and a *different* client that the backup replaces is retired (deleted after
DCR_ROTATE_GRACE, like a replaced registration) instead of being orphaned on the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from . import flow, lifecycle, log, registration, store
from ._http import Transport
from .errors import ClientGone, ConfigError, MalformedResponse, NotAllowed, StorageError, UnsafeValue
from .models import ClientInformation, Retired, SavedRegistration
from .settings import Settings
from .wait import Deadline, RetryPolicy

logger = log.get_logger()
# What an RFC 7592 read may bring that is newer than the backup's copy.
_FROM_SERVER = ("client_secret", "registration_access_token", "registration_client_uri", "client_secret_expires_at")


async def backup(settings: Settings, directory: Path) -> Path:
    """A copy of the saved registration in ``directory``: 0600, written atomically, named for when it was taken."""
    path = settings.dcr_client_file
    async with store.locked(path, Deadline(settings.dcr_wait_timeout).remaining):
        saved = store.load(path)
        if saved is None:
            raise StorageError(f"No saved registration at {path}; run 'dcr-bootstrap' first.")
        target = directory / f"{path.name}.{store.stamp()}.json"
        store.probe_writable(target)
        store.write_private(target, store.file_bytes(saved))
    logger.info("Registration backed up", path=str(target), client_id=saved.client_id, issuer=saved.issuer)
    return target


@dataclass(frozen=True)
class _Restore:
    """One restore: where it reads the server, the files it replaces, and whether refusals are overridden."""

    transport: Transport
    policy: RetryPolicy
    settings: Settings
    file: Path
    force: bool

    @property
    def path(self) -> Path:
        return self.settings.dcr_client_file

    def save(self, registration: SavedRegistration) -> None:
        store.save(
            self.path, registration, self.settings.dcr_env_file, self.settings.file_mode, self.settings.env_names
        )

    def refuse(self, why: str, remedy: str) -> None:
        """Refused (exit 2: FILE, the command's argument, does not fit the server), or with --force a warning."""
        if not self.force:
            raise ConfigError(f"{self.file} was not restored: {why}. {remedy}, or pass --force to restore it anyway.")
        logger.warning(f"Restoring anyway (--force): {why}", path=str(self.file))


async def restore(settings: Settings, file: Path, *, force: bool = False) -> None:
    """FILE becomes the saved registration if the server says it is current; what it replaces is kept."""
    settings.check_server()
    backup = store.load_backup(file)
    _check_issuer(settings, backup, file)
    path = settings.dcr_client_file
    deadline = Deadline(settings.dcr_wait_timeout)
    async with store.locked(path, deadline.remaining):
        store.probe_writable(path, settings.dcr_env_file)
        if settings.dcr_env_file is not None:
            # Fail before a read that may rotate the token, not after it.
            store.env_lines(backup, settings.env_names)
        saved = _saved_or_none(path)
        async with flow.transport_for(settings, deadline) as transport:
            ctx = _Restore(transport, flow.policy_for(settings, deadline), settings, file, force)
            restored = await _checked(ctx, backup, saved)
        retired = _retire_replaced(ctx, restored, saved)
        kept = store.backup(path) if store.read(path) is not None else None
        ctx.save(restored)
    logger.info(
        "Registration restored",
        path=str(path),
        client_id=restored.client_id,
        replaced=str(kept) if kept else None,
        retired=retired,
    )


def _check_issuer(settings: Settings, backup: SavedRegistration, file: Path) -> None:
    if (backup.issuer or "").rstrip("/") != settings.expected_issuer.rstrip("/"):
        raise ConfigError(
            f"{file} holds a registration of {backup.issuer or 'an unnamed issuer'}, not of "
            f"{settings.expected_issuer}; it was not restored. Restore a backup of this server, or point "
            "DCR_ISSUER/KEYCLOAK_URL at the server it belongs to."
        )


def _saved_or_none(path: Path) -> SavedRegistration | None:
    """The registration the restore replaces; None if there is none or it does not parse (it is kept aside)."""
    if store.read(path) is None:  # a file that is not ours is an error here, as in every command
        return None
    try:
        return store.load(path)
    except StorageError:
        return None


async def _checked(ctx: _Restore, backup: SavedRegistration, saved: SavedRegistration | None) -> SavedRegistration:
    """The registration to write: the backup as the server knows it now; refused if it is not current."""
    same = saved if saved is not None and saved.client_id == backup.client_id else None
    if backup.registration_client_uri is None or backup.registration_access_token is None:
        ctx.refuse(
            f"it holds no RFC 7592 registration access token, so the server cannot say whether client "
            f"{backup.client_id} still exists",
            "Restore a backup of a managed registration",
        )
        return _managed_by(backup, same)
    try:
        info, current = await _read(ctx, backup)
    except (ClientGone, NotAllowed) as exc:
        return await _not_readable(ctx, backup, same, exc)
    if same is not None and info.client_secret is None and _older_secret(backup, same):
        _keep_token(ctx, same, current)
        ctx.refuse(
            f"its client secret of client {backup.client_id} is older than the saved one",
            "Keep the saved registration",
        )
    return current


async def _not_readable(
    ctx: _Restore, backup: SavedRegistration, same: SavedRegistration | None, exc: ClientGone | NotAllowed
) -> SavedRegistration:
    """The backup's token was refused: an older backup if the saved one of the same client works, else gone."""
    working = await _working(ctx, same, backup)
    if working is not None:
        ctx.save(working)  # the read may have rotated its token: the saved file keeps the one that works
        ctx.refuse(
            f"the server rejects its registration access token for client {backup.client_id} (HTTP {exc.status}) "
            "while the saved file's works, so the backup is older than the saved registration",
            "Keep the saved registration",
        )
        return _managed_by(backup, working)
    why = (
        "the server forbids reading it (HTTP 403)"
        if isinstance(exc, NotAllowed)
        else f"it is gone on the server, or its registration access token no longer works (HTTP {exc.status})"
    )
    ctx.refuse(
        f"client {backup.client_id}: {why}",
        "Restore a newer backup, or run 'dcr-bootstrap' to register a new client",
    )
    return backup


async def _working(
    ctx: _Restore, same: SavedRegistration | None, backup: SavedRegistration
) -> SavedRegistration | None:
    """The saved registration of the backup's client as the server knows it, if its own token works."""
    token = same.registration_access_token if same is not None else None
    if same is None or token is None or same.registration_client_uri is None:
        return None
    if token == backup.registration_access_token:
        return None  # the same token, refused already
    try:
        return (await _read(ctx, same))[1]
    except (ClientGone, NotAllowed):
        return None


async def _read(ctx: _Restore, saved: SavedRegistration) -> tuple[ClientInformation, SavedRegistration]:
    """RFC 7592 read with the registration's own token: the checked answer, and ``saved`` updated by it."""
    uri, token = saved.registration_client_uri, saved.registration_access_token
    assert uri is not None and token is not None
    info = await ctx.policy.call("registration read", registration.read, ctx.transport, uri, token.get_secret_value())
    _check(info, saved)
    return info, _merged(saved, info)


def _check(info: ClientInformation, asked: SavedRegistration) -> None:
    unsafe = info.unsafe_fields()
    if unsafe:
        raise UnsafeValue(
            f"The server's RFC 7592 read answer has {', '.join(unsafe)} with characters outside RFC 6749's "
            "VSCHAR (control characters, line breaks); a compliant server never sends them, so nothing was "
            "restored. Run again once the server is fixed."
        )
    if info.client_id != asked.client_id:
        raise MalformedResponse(
            f"The server answered the read of client {asked.client_id} with client {info.client_id}; nothing "
            "was restored. Check the server."
        )


def _merged(saved: SavedRegistration, info: ClientInformation) -> SavedRegistration:
    """``saved`` with what the server says now (a rotated token, its current secret), built with validation."""
    data: dict[str, Any] = saved.to_file()
    for key in _FROM_SERVER:
        value = getattr(info, key)
        if value is not None:
            data[key] = value.get_secret_value() if isinstance(value, SecretStr) else value
    if info.client_secret is not None and info.client_secret != saved.client_secret:
        data["client_secret_issued_at"] = lifecycle.now()
    return SavedRegistration.model_validate(data)


def _older_secret(backup: SavedRegistration, saved: SavedRegistration) -> bool:
    """The backup holds a secret that the saved file of the same client replaced later.

    Asked only when the server's read does not say which secret is current (a read that does is the truth,
    and the restored file takes its secret).
    """
    if backup.client_secret is None or backup.client_secret == saved.client_secret:
        return False
    return (saved.client_secret_issued_at or 0) > (backup.client_secret_issued_at or 0)


def _keep_token(ctx: _Restore, saved: SavedRegistration, current: SavedRegistration) -> None:
    """Before refusing: the read may have rotated the token the saved file also holds; save the new one."""
    if current.registration_access_token != saved.registration_access_token:
        ctx.save(_managed_by(saved, current))


def _managed_by(reg: SavedRegistration, working: SavedRegistration | None) -> SavedRegistration:
    """``reg`` with the RFC 7592 token and URI of ``working`` (the same client's), if it has them."""
    if working is None or working.registration_access_token is None:
        return reg
    data = reg.to_file() | {
        "registration_access_token": working.registration_access_token.get_secret_value(),
        "registration_client_uri": working.registration_client_uri,
    }
    return SavedRegistration.model_validate(data)


def _retire_replaced(ctx: _Restore, restored: SavedRegistration, saved: SavedRegistration | None) -> str | None:
    """A different client of this server that the backup replaces is retired, never orphaned; its client_id."""
    path = ctx.path
    retired = [r for r in store.load_retired(path) if r.registration.client_id != restored.client_id]
    replaced = saved is not None and saved.client_id != restored.client_id and _ours(ctx.settings, saved)
    if replaced:
        assert saved is not None
        retired.append(Retired(registration=saved, retire_at=_retire_at(ctx.settings, saved)))
        logger.warning(
            "The restored backup replaces another client; it is deleted after DCR_ROTATE_GRACE",
            client_id=saved.client_id,
            restored=restored.client_id,
        )
    store.save_retired(path, retired)
    return saved.client_id if replaced and saved is not None else None


def _ours(settings: Settings, saved: SavedRegistration) -> bool:
    issuer = (saved.issuer or "").rstrip("/")
    return saved.mode == "dcr" and issuer == settings.expected_issuer.rstrip("/")


def _retire_at(settings: Settings, old: SavedRegistration) -> int:
    """As a replaced registration: after the grace, or when its secret expires if that is sooner."""
    grace_end = lifecycle.now() + int(settings.dcr_rotate_grace)
    expires = old.client_secret_expires_at
    return min(grace_end, int(expires)) if expires else grace_end
