"""The credentials file: load, save atomically with mode 0600 from the first byte, lock, remove.

A valid file is never replaced by a partial one: we write a temp file in the same directory
(created 0600 with O_EXCL, so no moment exists when others can read it), fsync it, rename it over
the target and fsync the directory. A failed run leaves the old file byte-for-byte intact, and a
file that another issuer or static mode wrote is kept as a timestamped backup, never destroyed.

Beside the file live, all 0600 and all ours: ``.NAME.lock`` (held for the whole run: ``_lock``),
``.NAME.intent`` (registrations asked for whose answer was not yet recorded: see ``flow``),
``.NAME.retired`` (registrations replaced by a new one, kept until their grace ends),
``.NAME.pending`` (a registration the server made but the run has not finished checking: the next
run adopts it instead of leaving an orphan) and short-lived ``.NAME.<hex>.tmp`` files, which a run
killed between write and rename leaves and the next run sweeps away under the lock. The folder may
be shared with others: every one of these is read and replaced only if it is a regular file of ours,
never through a symbolic link (``_files``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from . import envnames, quick
from ._files import Untrusted, check_own, read_own
from ._lock import Turn as Turn
from ._lock import locked as locked
from .envnames import EnvNames
from .errors import StorageError
from .log import get_logger
from .models import Intent, Retired, SavedRegistration

log = get_logger()
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# What an env file may carry unquoted so that `.`/`source`, `docker --env-file` and systemd all read the
# same value and nothing is expanded: no quotes, $, `, \, spaces, ~, globs or line breaks.
_ENV_SAFE = re.compile(r"[A-Za-z0-9._:/+=@%,-]*")
_PROBE_SIZE = 4096  # about one credentials file: a full disk fails the probe, not the save


def _directory(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def pending_path(path: Path) -> Path:
    return quick.beside(path, "pending")


def retired_path(path: Path) -> Path:
    return quick.beside(path, "retired")


def load_retired(path: Path) -> list[Retired]:
    """Registrations replaced by a newer one and kept for their grace period (see ``flow``)."""
    return _load_list(retired_path(path), Retired, "list of replaced registrations")


def save_retired(path: Path, retired: Sequence[Retired]) -> None:
    _save_list(retired_path(path), [r.to_file() for r in retired])


def _load_list(target: Path, model: type[M], what: str) -> list[M]:
    """A JSON list of ``model`` kept beside the file; an unreadable one is ignored with a warning."""
    raw = read(target)
    if raw is None:
        return []
    try:
        return [model.model_validate(item) for item in json.loads(raw)]
    except (ValueError, TypeError, ValidationError):
        log.warning(f"Unreadable {what} ignored", path=str(target))
        return []


def _save_list(target: Path, items: list[dict[str, Any]]) -> None:
    """The list, 0600 and atomic; no file at all when it is empty."""
    if not items:
        remove(target)
        return
    write_private(target, (json.dumps(items, indent=2) + "\n").encode())


def intent_path(path: Path) -> Path:
    return quick.beside(path, "intent")


def _not_ours(exc: Untrusted) -> StorageError:
    return StorageError(
        f"{exc.path} {exc.reason}; dcr-bootstrap reads and replaces only regular files of its own user in its "
        "folder (another container sharing the volume may have put it there). Remove it and run again."
    )


version = quick.file_version  # the standard-library side needs it before the heavy imports


def read(path: Path) -> bytes | None:
    """A file of ours in the folder, or None if there is none; never read through a link."""
    try:
        return read_own(path)
    except FileNotFoundError:
        return None
    except Untrusted as exc:
        raise _not_ours(exc) from None
    except OSError as exc:
        raise StorageError(f"Cannot read {path} ({exc.strerror}); check the volume and its permissions.") from None


def load(path: Path) -> SavedRegistration | None:
    raw = read(path)
    if raw is None:
        return None
    try:
        return SavedRegistration.model_validate(json.loads(raw))
    except (ValueError, ValidationError):
        raise StorageError(
            f"{path} is not a valid credentials file; move it away (or run 'dcr-bootstrap delete') "
            "and run again to register a new client."
        ) from None


# The modes DCR_FILE_MODE may give the credentials (and env) file: never world-readable, never writable by
# others. Group read lets a server of another uid in the volume's group (fsGroup) read it.
FILE_MODES = frozenset({0o600, 0o640, 0o440, 0o400})


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Atomically replace ``path`` with ``data``; the file is 0600 from its first byte, ``mode`` when it lands."""
    write_private_many([(path, data)], mode)


def write_private_many(files: Sequence[tuple[Path, bytes]], mode: int = 0o600) -> None:
    """Write every temp file first, then rename them all: a full disk fails before any target changes."""
    assert mode in FILE_MODES, f"{mode:o} is not a mode for credentials"
    temps: list[tuple[Path, Path]] = []
    current = files[0][0]
    try:
        for current, data in files:
            # A random name: in containers the PID repeats across runs, so a PID-named leftover would block O_EXCL.
            tmp = _directory(current) / f".{current.name}.{secrets.token_hex(6)}.tmp"
            _write_new(tmp, data, mode, temps.append, (tmp, current))
        for tmp, target in temps:
            current = target
            check_own(target)  # never replace what another user (or a link) put at our name
            os.replace(tmp, target)
        for directory in {_directory(target) for _, target in temps}:
            _fsync_dir(directory)
    except (OSError, Untrusted) as exc:
        for tmp, _ in temps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(exc, Untrusted):
            raise _not_ours(exc) from None
        raise StorageError(
            f"Cannot write {current} ({exc.strerror}); make {_directory(current)} writable for this user "
            "(a named volume starts root-owned) and with free space, then run again."
        ) from None


def _write_new(tmp: Path, data: bytes, mode: int, created: Callable[[T], None], token: T) -> None:
    """Create ``tmp`` 0600 with O_EXCL (private from its first byte), fill it, give it ``mode``, fsync it."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    created(token)  # from here on the caller removes it if anything fails
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if mode != 0o600:
            os.fchmod(fd, mode)  # exactly this, whatever the umask; still under the temp name
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot fsync a directory; the rename itself is done
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def env_safe(value: str) -> bool:
    """Whether ``value`` reads the same, unquoted, in sh, docker --env-file, systemd and python-dotenv."""
    return _ENV_SAFE.fullmatch(value) is not None


def env_lines(registration: SavedRegistration, names: EnvNames | None = None) -> bytes:
    """``NAME=value`` lines (``DCR_ENV_NAMES``; the seed's KEYCLOAK_CLIENT_ID/SECRET by default) that sourcing
    sets to exactly these values and that run nothing."""
    pairs = envnames.values(registration, names or envnames.parse(envnames.DEFAULT))
    for name, value in pairs:
        if not env_safe(value):
            raise StorageError(
                f"The value for {name} the server issued has characters an env file cannot carry safely (quotes, "
                "$, spaces or control characters), so no env file was written. Unset DCR_ENV_FILE and read the "
                "JSON file, or use 'eval \"$(dcr-bootstrap env)\"', which quotes."
            )
    return "".join(f"{name}={value}\n" for name, value in pairs).encode()


def file_bytes(registration: SavedRegistration) -> bytes:
    """The credentials file's content: the seed's format, secrets in clear (only ever written 0600 or mode)."""
    return (json.dumps(registration.to_file(), indent=2) + "\n").encode()


def save(
    path: Path,
    registration: SavedRegistration,
    env_file: Path | None = None,
    mode: int = 0o600,
    names: EnvNames | None = None,
) -> None:
    """The credentials file (and env file), with ``mode`` (DCR_FILE_MODE); both replaced or neither."""
    files = [(path, file_bytes(registration))]
    if env_file is not None:
        files.append((env_file, env_lines(registration, names)))
    write_private_many(files, mode)


def save_pending(path: Path, registration: SavedRegistration) -> None:
    write_private(pending_path(path), file_bytes(registration))


def read_named(path: Path, what: str) -> bytes:
    """A file the operator names (a backup, their .env): a regular file of this user or root, never a link."""
    try:
        return read_own(path, owners=frozenset({os.geteuid(), 0}))
    except FileNotFoundError:
        raise StorageError(f"{path} does not exist; name {what}.") from None
    except Untrusted as exc:
        raise StorageError(f"{exc.path} {exc.reason}; name {what} itself.") from None
    except OSError as exc:
        raise StorageError(f"Cannot read {path} ({exc.strerror}).") from None


def load_backup(path: Path) -> SavedRegistration:
    """A backup to restore, holding a valid registration."""
    raw = read_named(path, "a file written by 'dcr-bootstrap backup'")
    try:
        return SavedRegistration.model_validate(json.loads(raw))
    except (ValueError, ValidationError):
        raise StorageError(
            f"{path} is not a registration written by 'dcr-bootstrap backup'; nothing was restored."
        ) from None


def load_pending(path: Path) -> SavedRegistration | None:
    pending = pending_path(path)
    try:
        read_own(pending)
    except FileNotFoundError:
        return None
    except Untrusted as exc:
        # Not ours (a link to /proc/self/environ, say): never read or copy it; the name is ours, free it.
        log.warning("Removed a pending registration that is not ours", path=str(pending), reason=exc.reason)
        remove(pending)
        return None
    except OSError:
        pass  # load() below says what is wrong
    try:
        return load(pending)
    except StorageError:
        kept = backup(pending)
        log.warning("Unreadable pending registration set aside", path=str(kept))
        remove(pending)
        return None


def clear_pending(path: Path) -> None:
    remove(pending_path(path))


def load_intents(path: Path) -> list[Intent]:
    """Registrations asked for by runs that never recorded the answer (see ``flow``)."""
    return _load_list(intent_path(path), Intent, "registration intents")


def save_intents(path: Path, intents: Sequence[Intent]) -> None:
    _save_list(intent_path(path), [intent.model_dump() for intent in intents])


def stamp() -> str:
    """Now, in UTC, as it goes into the names of backups (sorts by time)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def backup(path: Path) -> Path:
    """Copy ``path`` to a timestamped 0600 file beside it, so that nothing we replace is lost."""
    target = path.with_name(f"{path.name}.{stamp()}.bak")
    data = read(path)
    if data is None:
        raise StorageError(f"Cannot back up {path}: it is gone; check what else writes to {_directory(path)}.")
    write_private(target, data)
    return target


def remove(*targets: Path | None) -> None:
    for target in targets:
        if target is None:
            continue
        try:
            target.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"Cannot remove {target} ({exc.strerror}); remove it by hand.") from None


def sweep(*paths: Path | None) -> None:
    """Remove temp files of ours that a killed run left (they may hold secrets). Call under the lock."""
    for path in paths:
        if path is None:
            continue
        pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{12}}\.tmp")
        with contextlib.suppress(OSError):
            for entry in _directory(path).iterdir():
                if pattern.fullmatch(entry.name):
                    with contextlib.suppress(OSError):
                        entry.unlink()
                        log.info("Removed a temp file left by an interrupted run", path=str(entry))


def probe_writable(*paths: Path | None) -> None:
    """Create, fill and remove a file where we will write: fail before registering, not after."""
    for path in paths:
        if path is None:
            continue
        directory = _directory(path)
        probe = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, b"\0" * _PROBE_SIZE)
                os.fsync(fd)
            finally:
                os.close(fd)
                probe.unlink()
        except OSError as exc:
            raise StorageError(
                f"Cannot write in {directory} ({exc.strerror}); nothing was registered. Make it writable for "
                "this user (a named volume starts root-owned), free some space, then run again."
            ) from None
