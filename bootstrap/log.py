"""structlog set-up: JSON for containers, console lines for people, and secret redaction.

Redaction works twice over: values under sensitive keys are masked, and every secret value the
process has handled (``register_secret``) is masked wherever it appears in a string, in its derived
forms too (URL-encoded, base64, the Basic header of an id/secret pair). Strings are escaped (no
control characters reach a console: no forged log lines) and capped in length.
"""

from __future__ import annotations

import base64
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal
from urllib.parse import quote, quote_plus

import structlog

from .errors import printable

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
# Long enough for any message of ours; a server-sent megabyte never makes a megabyte line.
VALUE_LIMIT = 2000
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret, and the forms it takes on the wire, so that each is masked wherever it appears."""
    if not value or len(value) < 4:
        return
    _secrets.update({value, quote(value, safe=""), quote_plus(value), base64.b64encode(value.encode()).decode()})


def register_basic(client_id: str, secret: str) -> None:
    """The value of an HTTP Basic header for this pair (both raw and RFC 6749 §2.3.1 form-encoded)."""
    for pair in (f"{client_id}:{secret}", f"{quote(client_id, safe='')}:{quote(secret, safe='')}"):
        encoded = base64.b64encode(pair.encode()).decode()
        _secrets.add(encoded)
        _secrets.add(encoded.rstrip("="))


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for secret in sorted(_secrets, key=len, reverse=True):
            if secret in value:
                value = value.replace(secret, MASK)
        return printable(value, VALUE_LIMIT)
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
