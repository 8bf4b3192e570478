"""Run dcr-bootstrap with its waits timed: ``python bench/lockprobe.py [command]``.

Each run appends JSON lines to ``$BENCH_LOCK_LOG`` saying when it asked for a lock, got it and let it
go (``time.monotonic()``, which is one clock for every process on Linux); ``kind`` says which lock:

* ``folder``: the credentials folder's file lock. Where the CLI tries it early, before its heavy
  imports (``quick.take_lock``, "after"), "asked" is that early try and "got" is the early try
  when it got the lock there, else the moment ``store.locked`` got it; otherwise both are
  ``store.locked``'s. So the wait is always counted from the run's first try of the lock.
* ``lease``: the Kubernetes Lease (``DCR_K8S_LEASE``): its acquire and release (``LeaseLock`` in
  "after", ``KubeStore`` in "before").

Nothing else changes: the CLI then runs as ``python -m bootstrap`` does, and nothing is imported
before the CLI would import it (the probe patches ``bootstrap.store`` only after the early try).
Run as a script (not ``-m``) so that ``bootstrap`` comes from ``PYTHONPATH``, before or after.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from bootstrap import quick

_early: dict[str, float | None] = {}  # the early try's "asked" and "got" (None: it found the lock busy)
_lease: dict[str, Any] = {}


def _write(entry: dict[str, Any]) -> None:
    line = json.dumps({"pid": os.getpid(), **entry}) + "\n"
    fd = os.open(os.environ["BENCH_LOCK_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _patch_folder() -> None:
    from bootstrap import store

    locked = store.locked

    @contextlib.asynccontextmanager
    async def timed(path: Path, remaining: Callable[[], float] | None = None) -> AsyncIterator[Any]:
        asked = _early.pop("asked", None) or time.monotonic()
        early_got = _early.pop("got", None)
        got = None
        try:
            async with locked(path, remaining) as turn:
                got = early_got or time.monotonic()
                yield turn
        finally:
            _write({"kind": "folder", "asked": asked, "got": got, "released": time.monotonic()})

    store.locked = timed


def _patch_lease() -> None:
    """Time the Lease's acquire and release, in whichever class the tree keeps them."""
    from bootstrap import k8s

    holder: Any = getattr(k8s, "LeaseLock", None) or k8s.KubeStore
    acquire, release = holder.acquire, holder.release

    @functools.wraps(acquire)
    async def timed_acquire(self: Any, *args: Any, **kwargs: Any) -> Any:
        _lease["asked"] = time.monotonic()
        try:
            result = await acquire(self, *args, **kwargs)
        except BaseException:
            _write({"kind": "lease", "asked": _lease["asked"], "got": None, "released": time.monotonic()})
            raise
        _lease["got"] = time.monotonic()
        return result

    @functools.wraps(release)
    async def timed_release(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await release(self, *args, **kwargs)
        finally:
            if "got" in _lease:
                asked, got = _lease.pop("asked"), _lease.pop("got")
                _write({"kind": "lease", "asked": asked, "got": got, "released": time.monotonic()})

    holder.acquire, holder.release = timed_acquire, timed_release


def _patch() -> None:
    _patch_folder()
    if os.environ.get("DCR_K8S_SECRET") and os.environ.get("DCR_K8S_LEASE"):
        _patch_lease()


def _early_try(take_lock: Callable[[], None]) -> Callable[[], None]:
    def timed() -> None:
        _early["asked"] = time.monotonic()
        take_lock()
        early = getattr(quick, "_early", None)
        _early["got"] = _early["asked"] if getattr(early, "fd", None) is not None else None
        _patch()  # the CLI imports everything next anyway

    return timed


if hasattr(quick, "take_lock"):
    quick.take_lock = _early_try(quick.take_lock)
else:
    _patch()

if __name__ == "__main__":
    from bootstrap.cli import main

    main()
