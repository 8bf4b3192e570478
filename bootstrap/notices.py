"""A run's outcome said where Kubernetes operators look: the termination message and Events on the Pod.

Both are best effort: the run's own exit code and last log line stay the truth, and nothing here may
fail a run. The termination message (``kubectl describe pod``: Last State / Message) is the failed run's
last line, already masked; an Event (``kubectl get events``) is recorded for each outcome when the Pod's
name and namespace are given by the downward API (DCR_K8S_POD_NAME, DCR_K8S_POD_NAMESPACE). The k8s
package is imported only then, so the default path never pays for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from . import log
from .errors import printable
from .settings import Settings

logger = log.get_logger()
# Kubernetes keeps at most 4096 bytes of a container's termination message.
TERMINATION_LIMIT = 4096
DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")
REASONS = {
    "registered": "Registered",
    "reloaded": "Reloaded",
    "updated": "Updated",
    "renewed": "Renewed",
    "rotated": "Rotated",
    "replaced": "Replaced",
    "static": "Static",
}


def termination_log(setting: str | None) -> Path | None:
    """DCR_TERMINATION_LOG's file; unset: /dev/termination-log when a writable one exists; empty: none."""
    if setting is not None:
        return Path(setting) if setting.strip() else None
    if DEFAULT_TERMINATION_LOG.exists() and os.access(DEFAULT_TERMINATION_LOG, os.W_OK):
        return DEFAULT_TERMINATION_LOG
    return None


def capped(text: str, limit: int = TERMINATION_LIMIT) -> bytes:
    """``text`` in at most ``limit`` UTF-8 bytes, cut on a character boundary."""
    raw = text.encode()
    return raw if len(raw) <= limit else raw[: limit - 3].decode(errors="ignore").encode() + b"..."


# The termination file this process wrote a failure to: a later good 'watch' round empties it again.
_written: list[Path] = []


def write_termination(line: str, setting: str | None) -> None:
    """The failed run's last line (masked, capped) into the termination message file; never raises."""
    try:
        path = termination_log(setting)
        if path is not None:
            path.write_bytes(capped(printable(line, log.VALUE_LIMIT)))  # as the log line reads
            _written[:] = [path]
    except OSError as exc:
        logger.warning(f"Could not write the termination message to {setting or DEFAULT_TERMINATION_LOG}: {exc}")


def _clear_termination() -> None:
    """A sidecar that recovered and is then stopped must not show a failure it no longer has."""
    for path in _written:
        with contextlib.suppress(OSError):  # said when it was written; the next failure overwrites it anyway
            path.write_bytes(b"")
    _written.clear()


def _pod(settings: Settings | None) -> tuple[str, str] | None:
    if settings is None or not (settings.dcr_k8s_pod_name and settings.dcr_k8s_pod_namespace):
        return None
    return settings.dcr_k8s_pod_name, settings.dcr_k8s_pod_namespace


# The last Event this process recorded: a 'watch' that reloads the same client every round says so once.
_last: list[tuple[str, str]] = []


async def record(settings: Settings | None, reason: str, message: str, *, warning: bool = False) -> None:
    """An Event on this Pod when the downward API named it, unless it repeats the last one; never raises."""
    if (pod := _pod(settings)) is None or _last == [(reason, message)]:
        return
    assert settings is not None
    _last[:] = [(reason, message)]
    from . import k8s  # only when configured: the default path never imports it

    try:
        await k8s.record_event(
            *pod,
            reason,
            printable(message, log.VALUE_LIMIT),
            warning=warning,
            allow_http=settings.dcr_k8s_allow_http,
            context=settings.dcr_k8s_context or None,
        )
    except Exception as exc:  # an Event is news, never the run's failure; the cause is still said
        logger.warning(f"Could not record a Kubernetes Event ({type(exc).__name__}: {exc}); the run goes on.")


async def succeeded(settings: Settings, action: str, client_id: str, why: str | None = None) -> None:
    """The Normal Event of a run's outcome: what it did to which client."""
    _clear_termination()
    detail = f" ({why})" if why else ""
    await record(settings, REASONS.get(action, action.capitalize()), f"Client {client_id}: {action}{detail}.")


def _termination_setting(settings: Settings | None) -> str | None:
    # Settings that failed to load still leave the variable: a ConfigError is a failure worth showing too.
    return settings.dcr_termination_log if settings is not None else os.environ.get("DCR_TERMINATION_LOG")


async def round_failed(settings: Settings, line: str) -> None:
    """A failed 'watch' round: the sidecar's restarts and its Events show why."""
    write_termination(line, _termination_setting(settings))
    await record(settings, "Failed", line, warning=True)


def run_failed(settings: Settings | None, line: str) -> None:
    """A failed run, after its event loop ended: its last line as the termination message and an Event."""
    write_termination(line, _termination_setting(settings))
    if _pod(settings) is not None:
        asyncio.run(record(settings, "Failed", line, warning=True))
