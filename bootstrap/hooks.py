"""DCR_ON_CHANGE: tell the app that its credentials changed, as Vault Agent's template ``exec`` does.

The command is split like a shell would split it but run without one (no expansion, no injection
through the environment); ``sh -c '...'`` asks for a shell explicitly. It gets the tool's environment,
is killed after DCR_ON_CHANGE_TIMEOUT, and its exit status is logged; it never fails the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex

from .log import get_logger

logger = get_logger()


async def on_change(command: str, timeout: float) -> int | None:  # noqa: ASYNC109 (a setting, not a deadline)
    """Run ``command``; its exit status, or None when it could not start or was killed after ``timeout``."""
    argv = shlex.split(command)
    try:
        proc = await asyncio.create_subprocess_exec(*argv)
    except OSError as exc:
        logger.error("DCR_ON_CHANGE could not be started", command=argv[0], error=exc.strerror)
        return None
    try:
        status = await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        logger.error("DCR_ON_CHANGE was killed after DCR_ON_CHANGE_TIMEOUT", command=argv[0], timeout=timeout)
        return None
    (logger.info if status == 0 else logger.warning)("DCR_ON_CHANGE ran", command=argv[0], exit_status=status)
    return status
