"""structlog set-up: JSON for containers, console lines for people, and secret redaction.

Redaction works twice over: values under sensitive keys are masked, and every secret value the
process has handled (``register_secret``) is masked wherever it appears in a string.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

MASK = "**********"
SENSITIVE_KEYS = frozenset(
    {
        "client_secret",
        "registration_access_token",
        "access_token",
        "refresh_token",
        "initial_access_token",
        "token",
        "password",
        "authorization",
    }
)
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret so that it is masked even where it hides inside a message."""
    if value and len(value) >= 4:
        _secrets.add(value)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {k: MASK if str(k).lower() in SENSITIVE_KEYS and v else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        event_dict[key] = MASK if key.lower() in SENSITIVE_KEYS and value else _scrub(value)
    return event_dict


class _StderrLogger:
    """Writes each line to the *current* sys.stderr (test runners and daemons swap it)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = failure = msg


def configure(fmt: Literal["auto", "json", "console"] = "auto", level: str = "info") -> None:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty(), pad_event_to=0)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=lambda *_: _StderrLogger(),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "dcr-bootstrap") -> Any:
    return structlog.get_logger(name)
