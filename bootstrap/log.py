"""structlog set-up: JSON for containers, console lines for people, and secret redaction.

Redaction works twice over: values under sensitive keys are masked, and every secret value the
process has handled is masked wherever it appears in a string, in its derived forms too (URL-encoded,
base64 with and without padding, URL-safe base64, the Basic header of an id/secret pair). Secrets
are registered where they enter (settings, the models of files, Secrets and server answers, the
Kubernetes token), so nothing logged later, a server's own message included, can carry one. Strings are escaped (no
control characters reach a console: no forged log lines) and capped in length.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

from . import _secrets
from .errors import printable

MASK = _secrets.MASK
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
# Long enough for any message of ours; a server-sent megabyte never makes a megabyte line.
VALUE_LIMIT = 2000


register_secrets = _secrets.register
register_basic = _secrets.register_basic


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value, VALUE_LIMIT)  # masks registered secrets, then escapes
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
