"""The credentials file: load, save atomically with mode 0600 from the first byte, lock, remove.

A valid file is never replaced by a partial one: we write a temp file in the same directory
(created 0600 with O_EXCL, so no moment exists when others can read it), fsync it, rename it over
the target and fsync the directory. A failed run leaves the old file byte-for-byte intact.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from .errors import StorageError
from .models import SavedRegistration


def load(path: Path) -> SavedRegistration | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"Cannot read {path} ({exc.strerror}); check the volume and its permissions.") from None
    try:
        return SavedRegistration.model_validate(json.loads(raw))
    except (ValueError, ValidationError):
        raise StorageError(
            f"{path} is not a valid credentials file; move it away (or run 'dcr-bootstrap delete') "
            "and run again to register a new client."
        ) from None


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``; the file is 0600 from its first byte."""
    directory = path.parent if str(path.parent) else Path(".")
    # A random name: in containers the PID repeats across runs, so a PID-named leftover would block O_EXCL.
    tmp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        # Created 0600 (a umask can only narrow it): private from its first byte, no chmod afterwards.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(
            f"Cannot write {path} ({exc.strerror}); make {directory} writable for this user "
            "(a named volume starts root-owned) and run again."
        ) from None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot fsync a directory; the rename itself is done
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def save(path: Path, registration: SavedRegistration, env_file: Path | None = None) -> None:
    write_private(path, (json.dumps(registration.to_file(), indent=2) + "\n").encode())
    if env_file is not None:
        secret = registration.client_secret.get_secret_value() if registration.client_secret else ""
        write_private(
            env_file,
            f"KEYCLOAK_CLIENT_ID={registration.client_id}\nKEYCLOAK_CLIENT_SECRET={secret}\n".encode(),
        )


def remove(path: Path, env_file: Path | None = None) -> None:
    for target in (path, env_file):
        if target is None:
            continue
        try:
            target.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"Cannot remove {target} ({exc.strerror}); remove it by hand.") from None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside ``path`` so two replicas sharing a volume never race."""
    name = path.name if path.name.startswith(".") else f".{path.name}"
    lock_path = path.with_name(f"{name}.lock")
    try:
        lock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StorageError(
            f"Cannot create the lock file {lock_path} ({exc.strerror}); "
            f"make {lock_path.parent} writable for this user and run again."
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
