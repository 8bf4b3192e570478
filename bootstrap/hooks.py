"""DCR_ON_CHANGE: tell the app that its credentials changed, as Vault Agent's template ``exec`` does.

The command is split like a shell would split it but run without one (no expansion, no injection
through the environment); ``sh -c '...'`` asks for a shell explicitly. It gets the tool's environment
without the bootstrap's own secrets (``child_environment``), runs in a process group of its own, is
killed with that group after DCR_ON_CHANGE_TIMEOUT or when ``watch`` stops, and its exit status is
logged; it never fails the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
from collections.abc import Mapping

from .log import get_logger

logger = get_logger()

# What the bootstrap alone needs: the initial access token, the admin credentials, and the files holding
# them. No child gets them: the server wrap mode starts (entrypoint.sh unsets these very names; a test
# keeps the two equal), a DCR_ON_CHANGE hook, a kubeconfig's exec credential plugin.
BOOTSTRAP_ONLY = (
    "DCR_INITIAL_ACCESS_TOKEN",
    "DCR_INITIAL_ACCESS_TOKEN_FILE",
    "KEYCLOAK_ADMIN_USERNAME",
    "KEYCLOAK_ADMIN_PASSWORD",
    "KEYCLOAK_ADMIN_PASSWORD_FILE",
    "KEYCLOAK_CLIENT_SECRET_FILE",
)


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without BOOTSTRAP_ONLY (in any case: the settings read names so), plus
    ``extra``."""
    hidden = {name.upper() for name in BOOTSTRAP_ONLY}
    kept = {name: value for name, value in os.environ.items() if name.upper() not in hidden}
    return kept | dict(extra or {})


async def on_change(command: str, timeout: float) -> int | None:  # noqa: ASYNC109 (a setting, not a deadline)
    """Run ``command``; its exit status, or None when it could not start or was killed after ``timeout``."""
    argv = shlex.split(command)
    try:
        proc = await _start(argv)
    except OSError as exc:
        logger.error("DCR_ON_CHANGE could not be started", command=argv[0], error=exc.strerror)
        return None
    try:
        status = await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        await _kill_group(proc)
        logger.error("DCR_ON_CHANGE was killed after DCR_ON_CHANGE_TIMEOUT", command=argv[0], timeout=timeout)
        return None
    except asyncio.CancelledError:
        await _kill_group(proc)  # watch is stopping: the hook and whatever it started go with it
        raise
    (logger.info if status == 0 else logger.warning)("DCR_ON_CHANGE ran", command=argv[0], exit_status=status)
    return status


async def _start(argv: list[str]) -> asyncio.subprocess.Process:
    """Start the hook as the leader of a new process group. Cancelled while asyncio still sets up its pipes
    (the hook may already run and start others), the start is finished, and the group killed."""
    starting = asyncio.ensure_future(
        asyncio.create_subprocess_exec(*argv, env=child_environment(), start_new_session=True)
    )
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        with contextlib.suppress(OSError):
            await _kill_group(await starting)
        raise


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """Kill the hook's process group (it leads one: start_new_session) and reap the hook."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
