"""The Keycloak harness's watchdog: the server's group ends with its owner's pipe, or with the server itself."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from harness.keycloak import _WATCHDOG
from harness.process import group_alive, spawn


def _watch(command: list[str], tmp_path: Path) -> subprocess.Popen[bytes]:
    return spawn(["sh", "-c", _WATCHDOG, "test-watchdog", *command], tmp_path / "log")


def _gone(pgid: int) -> bool:
    """The group has died out: polled, since its members take SIGTERM one by one (bounded against a hang)."""
    deadline = time.monotonic() + 60
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not group_alive(pgid)


def test_a_server_that_exits_ends_the_watchdog_at_once(tmp_path: Path) -> None:
    """A server dying during start-up ends the group, so the start-up wait reports it instead of timing out."""
    proc = _watch(["sh", "-c", "exit 3"], tmp_path)
    assert proc.wait(timeout=60) is not None  # bounded only against a hang; it ends as soon as sh runs
    assert _gone(proc.pid)


def test_closing_the_owners_pipe_ends_the_server_and_its_group(tmp_path: Path) -> None:
    """EOF on the watchdog's stdin (stop(), or the owner killed) terminates the whole group, server included."""
    marker = tmp_path / "started"
    proc = _watch(["sh", "-c", f"touch {marker}; exec sleep 600"], tmp_path)
    while not marker.exists():  # the server is up: a gate, not a period
        assert proc.poll() is None, (tmp_path / "log").read_text()
        os.sched_yield()
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=60)
    assert _gone(proc.pid)
