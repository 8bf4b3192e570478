"""Run dcr-bootstrap with its file lock timed: ``python bench/lockprobe.py [command]``.

For the shared-folder fleet: wraps ``bootstrap.store.locked`` so each run appends one JSON line to
``$BENCH_LOCK_LOG`` saying when it asked for the lock, got it and let it go (``time.monotonic()``,
which is one clock for every process on Linux). Nothing else changes: the CLI then runs as usual.
Run as a script (not ``-m``) so that ``bootstrap`` comes from ``PYTHONPATH``, before or after.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from bootstrap import store

_locked = store.locked


@contextlib.asynccontextmanager
async def _timed(path: Path, remaining: Callable[[], float] | None = None) -> AsyncIterator[None]:
    asked = time.monotonic()
    got = released = None
    try:
        async with _locked(path, remaining):
            got = time.monotonic()
            yield
    finally:
        released = time.monotonic()
        line = json.dumps({"pid": os.getpid(), "asked": asked, "got": got, "released": released}) + "\n"
        fd = os.open(os.environ["BENCH_LOCK_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


store.locked = _timed

if __name__ == "__main__":
    from bootstrap.cli import main

    main()
