"""The exception tree. Every error the tool raises on purpose is a ``BootstrapError``.

Each leaf carries one exit code (see ``ExitCode``) and a message that says what went wrong
*and* what to do; the CLI prints ``str(exc)`` as the last log line. Messages never contain
secret values: only names of settings, HTTP status codes and the server's own
``error``/``error_description`` (escaped and capped: a hostile server writes them).

    BootstrapError
    ├── ConfigError ........................ 2  settings missing, contradictory or unreadable
    ├── ServerNotReady ..................... 3  server unreachable until the deadline
    │   (Unavailable ....................... -  one failed attempt; retried, never escapes wait.py)
    ├── ServerResponseError ................ 7  the server answered something unusable or untrusted
    │   ├── DiscoveryError                      no metadata, issuer mismatch, no registration_endpoint
    │   └── MalformedResponse                   not JSON, too large, missing or unsafe fields
    │       └── UnsafeValue                     a credential with control characters: never saved
    ├── OAuthError ......................... -  an RFC 6749/6750/7591 error response
    │   ├── RegistrationRejected ........... 4  RFC 7591 / 7592 request refused
    │   │   ├── InvalidToken                    initial/registration access token bad, expired, used up
    │   │   ├── InsufficientScope               refused by a server policy (Keycloak: client
    │   │   │                                   registration policies such as Trusted Hosts)
    │   │   ├── InvalidClientMetadata
    │   │   ├── ClientGone                      RFC 7592 401/404: no such registration (or token)
    │   │   └── NotAllowed                      RFC 7592 403: the server forbids managing it
    │   ├── CredentialsRejected ............ 5  the token endpoint refused the client's credentials
    │   └── AdminRejected .................. 8  Keycloak's admin API refused (initial-token)
    └── StorageError ....................... 6  credentials file cannot be read, locked or written

Lower-layer errors (aiohttp, OSError, pydantic) are translated into this tree at one
boundary each (``_http.py``, ``store.py``, ``settings.py``) with ``raise ... from``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar

from . import _secrets

# A server's error_description goes into our last log line: keep it short and printable.
DESCRIPTION_LIMIT = 300


class ExitCode(IntEnum):
    """Documented process exit codes; the README table is generated from this."""

    OK = 0
    INTERNAL = 1
    CONFIG = 2
    NOT_READY = 3
    REGISTRATION_REJECTED = 4
    CREDENTIALS_REJECTED = 5
    STORAGE = 6
    SERVER_RESPONSE = 7
    ADMIN_REJECTED = 8
    INTERRUPTED = 130


EXIT_CODE_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "credentials written (or the requested subcommand succeeded)",
    ExitCode.INTERNAL: "unexpected internal error (a bug: please report it with the log)",
    ExitCode.CONFIG: "configuration error: a setting is missing, contradictory, unsafe or unreadable",
    ExitCode.NOT_READY: "the authorization server was not ready before DCR_WAIT_TIMEOUT (or asked us to "
    "retry later than that)",
    ExitCode.REGISTRATION_REJECTED: "registration rejected: bad, expired or used-up initial access token, "
    "policy rejection, invalid client metadata, RFC 7592 management forbidden (403), or the saved client is "
    "gone (DCR_ON_MISSING_CLIENT=fail)",
    ExitCode.CREDENTIALS_REJECTED: "the token endpoint rejected the client credentials (static, saved or new)",
    ExitCode.STORAGE: "the credentials file could not be read, locked or written, or there is none (show, env, delete)",
    ExitCode.SERVER_RESPONSE: "the server's metadata or response is unusable or untrusted "
    "(issuer mismatch, no registration_endpoint, an endpoint outside the issuer's origin, malformed JSON)",
    ExitCode.ADMIN_REJECTED: "Keycloak's admin API refused the admin credentials or the request (initial-token)",
    ExitCode.INTERRUPTED: "interrupted by a signal; nothing half-written was left behind",
}


def printable(text: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """Mask known secrets, escape control characters and cap the length of text that came from a server."""
    out = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in _secrets.mask(text))
    return out if len(out) <= limit else out[:limit] + "...(truncated)"


class BootstrapError(Exception):
    """Base of every error the tool raises on purpose."""

    exit_code: ClassVar[ExitCode] = ExitCode.INTERNAL

    def add_context(self, text: str) -> None:
        """Append a sentence to the message (what happened to a client we created, for example)."""
        self.args = (f"{self.args[0]} {text}", *self.args[1:]) if self.args else (text,)


class ConfigError(BootstrapError):
    exit_code = ExitCode.CONFIG


class StorageError(BootstrapError):
    exit_code = ExitCode.STORAGE


class ServerNotReady(BootstrapError):
    exit_code = ExitCode.NOT_READY


class Unavailable(Exception):
    """One attempt failed in a way that may heal: connection error, timeout, 5xx, 429, 404 while waiting.

    Not a ``BootstrapError``: the retry policy consumes it, and turns the last one into
    ``ServerNotReady`` when the deadline passes. ``connect`` marks "nothing listens yet", which
    costs the server nothing and is probed more often than a server that answers "busy"; ``status``
    is the HTTP status when the server answered.
    """

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        connect: bool = False,
        out_of_time: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.connect = connect
        self.out_of_time = out_of_time


class ServerResponseError(BootstrapError):
    exit_code = ExitCode.SERVER_RESPONSE


class DiscoveryError(ServerResponseError):
    pass


class MalformedResponse(ServerResponseError):
    pass


class UnsafeValue(MalformedResponse):
    """A server sent a credential outside RFC 6749 VSCHAR; it is never saved (nor retried elsewhere)."""


class OAuthError(BootstrapError):
    """An error response in the RFC 6749 §5.2 shape: ``error`` and ``error_description``."""

    error: ClassVar[str] = ""

    def __init__(self, *, status: int, error: str | None, description: str | None, what: str, hint: str) -> None:
        self.status = status
        self.error_code = printable(error, 80) if error else "(none)"
        self.description = printable(description) if description else None
        detail = self.error_code + (f": {self.description}" if self.description else "")
        super().__init__(f"{what} (HTTP {status}, {detail}). {hint}")


class RegistrationRejected(OAuthError):
    exit_code = ExitCode.REGISTRATION_REJECTED


class InvalidToken(RegistrationRejected):
    error = "invalid_token"


class InsufficientScope(RegistrationRejected):
    error = "insufficient_scope"


class InvalidClientMetadata(RegistrationRejected):
    error = "invalid_client_metadata"


class ClientGone(RegistrationRejected):
    """RFC 7592 §2.1: an unknown client or an invalid registration access token answers 401 (some: 404)."""


class NotAllowed(RegistrationRejected):
    """RFC 7592 §2.1: 403, the token is valid but managing this client is forbidden; never 'gone'."""


class CredentialsRejected(OAuthError):
    exit_code = ExitCode.CREDENTIALS_REJECTED

    @property
    def bad_credentials(self) -> bool:
        """The client failed to authenticate (RFC 6749 §5.2; Keycloak answers 401 unauthorized_client)."""
        return self.status == 401 or self.error_code == "invalid_client"


class AdminRejected(OAuthError):
    exit_code = ExitCode.ADMIN_REJECTED


REGISTRATION_ERRORS: dict[str, type[RegistrationRejected]] = {
    cls.error: cls for cls in (InvalidToken, InsufficientScope, InvalidClientMetadata)
}
