"""Files in a folder that others may write to (the shared volume): never through a link, only our own.

Every file the tool reads or replaces there (credentials, pending, backups, env file, lock, a
``.env``) goes through ``read_own`` or ``check_own``: opened without following symbolic links (and
without blocking on a FIFO), then required to be a regular file owned by the user we run as. Anything
else was put there by someone else, and is never read, copied or written through.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

# No file of ours comes near this; a larger one is not ours (or would make us read a device forever).
MAX_FILE = 1024 * 1024


class Untrusted(Exception):
    """The path exists but is not a regular file owned by us; ``reason`` says what it is instead."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} {reason}")
        self.path = path
        self.reason = reason


def problem(st: os.stat_result, *, owners: frozenset[int] | None = None, shared_write: bool = True) -> str | None:
    """Why a file with this stat is not ours, or None. ``shared_write=False`` refuses group/world-writable."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    allowed = owners if owners is not None else frozenset({os.geteuid()})
    if st.st_uid not in allowed:
        return f"is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    if not shared_write and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "is writable by other users"
    return None


def read_own(path: Path, *, owners: frozenset[int] | None = None, shared_write: bool = True) -> bytes:
    """The bytes of ``path``; FileNotFoundError if absent, Untrusted if it is not ours, OSError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Untrusted(path, "is a symbolic link") from None
        raise
    try:
        reason = problem(os.fstat(fd), owners=owners, shared_write=shared_write)
        if reason is not None:
            raise Untrusted(path, reason)
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 64 * 1024):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_FILE:
                raise Untrusted(path, f"is larger than {MAX_FILE // 1024} KiB")
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_own(path: Path) -> None:
    """Before replacing ``path``: absent, or a regular file of ours (a link is never written through)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    reason = problem(st)
    if reason is not None:
        raise Untrusted(path, reason)
