"""A real server as one process group under a watchdog: start-up wait, memory, and a stop that leaves nothing.

Shared by the Keycloak and kube-apiserver harnesses. Each server runs in its own session (process
group) so that it, and everything it starts, can be measured and stopped as one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


class HarnessError(RuntimeError):
    """A real server could not be fetched, built or started; the message says why."""


def group_rss_kib(pgid: int) -> int:
    total = 0
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # field 5 of stat: pgrp
                rss_pages = int(fields[21])
                total += rss_pages * os.sysconf("SC_PAGE_SIZE") // 1024
        except (OSError, IndexError, ValueError):
            continue
    return total


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_ready(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float, what: str, tail: Callable[[], str]
) -> bool:
    """Poll ``ready`` until it holds (True) or ``timeout`` passes (False); HarnessError if the group died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None or not group_alive(proc.pid):
            raise HarnessError(f"{what} exited during start-up; last log lines:\n{tail()}")
        if ready():
            return True
        time.sleep(0.25)
    return False


def stop_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Close the watchdog's pipe (it terminates the group), then make sure the group is gone."""
    if proc.stdin and not proc.stdin.closed:
        proc.stdin.close()
    deadline = time.monotonic() + timeout
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if group_alive(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        while group_alive(proc.pid):
            time.sleep(0.05)
