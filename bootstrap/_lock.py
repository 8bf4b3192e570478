"""The folder's lock: ``.NAME.lock`` beside the credentials file, held for a whole run, so that two replicas
sharing a volume never race. ``store`` re-exports ``locked``; the CLI's early try is ``quick.take_lock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from . import quick
from ._files import problem
from .errors import StorageError

_LOCK_POLL = 0.05
version = quick.file_version


def lock_path(path: Path) -> Path:
    return quick.beside(path, "lock")


@dataclass(frozen=True)
class Turn:
    """How we got the lock: ``waited`` for another holder (seen here, or by the CLI's early try,
    ``quick.take_lock``), and the credentials file's ``version`` when the wait began."""

    waited: bool
    before: list[int] | None

    def written_meanwhile(self, path: Path) -> bool:
        """The run we waited for replaced the file while we waited."""
        return self.waited and version(path) != self.before


@contextlib.asynccontextmanager
async def locked(path: Path, remaining: Callable[[], float] | None = None) -> AsyncIterator[Turn]:
    """Hold an exclusive lock beside ``path`` so two replicas sharing a volume never race.

    Waits at most ``remaining()`` seconds, in small jittered polls that a signal can cancel.
    """
    lock = lock_path(path)
    early = quick.adopt_lock(lock)
    try:
        lock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = (
            early.fd
            if early.fd is not None
            else os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        )
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StorageError(
                f"The lock file {lock} is a symbolic link; remove it (someone may be trying to make us "
                "write elsewhere) and run again."
            ) from None
        raise StorageError(
            f"Cannot create the lock file {lock} ({exc.strerror}); "
            f"make {lock.parent} writable for this user and run again."
        ) from None
    try:
        reason = problem(os.fstat(fd))
        if reason is not None:
            raise StorageError(f"The lock file {lock} {reason}; remove it and run again.")
        waited, before = early.busy, early.version
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    waited, before = True, version(path)
                left = remaining() if remaining is not None else 1.0
                if left <= 0:
                    raise StorageError(
                        f"Another dcr-bootstrap held {lock} until DCR_WAIT_TIMEOUT ran out; check for a "
                        "stuck replica, or raise DCR_WAIT_TIMEOUT."
                    ) from None
                await asyncio.sleep(min(left, _LOCK_POLL * random.uniform(0.5, 1.5)))  # noqa: S311
        yield Turn(waited, before)
    finally:
        os.close(fd)
