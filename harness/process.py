"""A real server as one process group under a watchdog: start, start-up wait, memory, and a stop that leaves nothing.

Shared by the Keycloak and kube-apiserver harnesses. Each server runs in its own session (process
group) so that it, and everything it starts, can be measured and stopped as one. The group's leader is
a watchdog shell that reads a pipe held by the owner; when the pipe closes (``stop_group()``, exit,
crash, SIGKILL of the owner) the watchdog ends the group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path


class HarnessError(RuntimeError):
    """A real server could not be fetched, built or started; the message says why."""


def spawn(watchdog: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``watchdog`` in a session of its own, its stdin a pipe from this process, its output in ``log_path``."""
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            watchdog,
            stdin=subprocess.PIPE,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def log_tail(log_path: Path | None, lines: int = 25) -> str:
    """The last ``lines`` lines of a server's log, or ``(no log)``."""
    if log_path is None or not log_path.exists():
        return "(no log)"
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


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


def answers_200(request: str | urllib.request.Request, context: ssl.SSLContext | None = None) -> bool:
    """Whether ``request`` (a URL: GET) answers 200 within 2 seconds; no answer or an error is False."""
    try:
        with urllib.request.urlopen(request, timeout=2, context=context) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


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


def await_ready(
    proc: subprocess.Popen[bytes],
    started_at: float,
    ready: Callable[[], bool],
    timeout: float,
    what: str,
    tail: Callable[[], str],
    stop: Callable[[], None],
) -> tuple[float, float]:
    """Wait until ``ready`` holds; return (seconds since ``started_at``, the group's RSS in MiB).

    A group that dies, or is not ready within ``timeout`` (then it is stopped), raises HarnessError with
    the log's last lines.
    """
    if not wait_ready(proc, ready, timeout, what, tail):
        last_lines = tail()  # before stop(): it may remove the log's folder
        stop()
        raise HarnessError(f"{what} was not ready within {timeout:.0f}s; last log lines:\n{last_lines}")
    return time.monotonic() - started_at, group_rss_kib(proc.pid) / 1024


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


# apt and dpkg hold locks that another program on the machine (an unattended upgrade, another job) may
# hold for a while: wait for them rather than fail a stage. apt waits for the dpkg lock itself
# (DPkg::Lock::Timeout); the lists lock of 'update' is retried here. Bounded: about ten minutes in all.
APT_LOCK_TIMEOUT = 600
APT_LOCK_RETRIES = 40
APT_LOCK_POLL = 15.0
_APT_LOCKED = ("Could not get lock", "Unable to lock", "Unable to acquire the dpkg frontend lock")


def apt_get(*args: str, timeout: float = 1800) -> None:
    """``apt-get ARGS`` as root, non-interactive, waiting for apt's locks; HarnessError with its tail if it fails."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "-o", f"DPkg::Lock::Timeout={APT_LOCK_TIMEOUT}", *args]
    for _ in range(APT_LOCK_RETRIES):
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        output = proc.stdout + proc.stderr
        if proc.returncode == 0:
            return
        if not any(marker in output for marker in _APT_LOCKED):
            break
        time.sleep(APT_LOCK_POLL)  # another apt holds the lists lock: a poll of a lock, not an ordering of ours
    tail = "\n".join(output.splitlines()[-30:])
    raise HarnessError(f"apt-get {' '.join(args[:2])} ... failed ({proc.returncode}):\n{tail}")
