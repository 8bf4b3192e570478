"""The exception tree. Every error the tool raises on purpose is a ``BootstrapError``.

Each leaf carries one exit code (see ``ExitCode``) and a message that says what went wrong
*and* what to do; the CLI prints ``str(exc)`` as the last log line. Messages never contain
secret values: only names of settings, HTTP status codes and the server's own
``error``/``error_description`` (which RFC 6749/7591 servers do not fill with secrets).

    BootstrapError
    ├── ConfigError ........................ 2  settings missing, contradictory or unreadable
    ├── ServerNotReady ..................... 3  server unreachable until the deadline
    │   (Unavailable ....................... -  one failed attempt; retried, never escapes wait.py)
    ├── ServerResponseError ................ 7  the server answered something unusable
    │   ├── DiscoveryError                      no metadata, issuer mismatch, no registration_endpoint
    │   └── MalformedResponse                   not JSON, missing or wrong-typed fields
    ├── OAuthError ......................... -  an RFC 6749/6750/7591 error response
    │   ├── RegistrationRejected ........... 4  RFC 7591 / 7592 request refused
    │   │   ├── InvalidToken                    initial/registration access token bad, expired, used up
    │   │   ├── InsufficientScope               refused by a server policy (Keycloak: client
    │   │   │                                   registration policies such as Trusted Hosts)
    │   │   ├── InvalidClientMetadata
    │   │   ├── InvalidRedirectUri
    │   │   ├── InvalidSoftwareStatement
    │   │   ├── UnapprovedSoftwareStatement
    │   │   └── ClientGone                      RFC 7592 says the registration no longer exists
    │   └── CredentialsRejected ............ 5  the token endpoint refused the client's credentials
    └── StorageError ....................... 6  credentials file cannot be read, locked or written

Lower-layer errors (aiohttp, OSError, pydantic) are translated into this tree at one
boundary each (``_http.py``, ``store.py``, ``settings.py``) with ``raise ... from``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar


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
    INTERRUPTED = 130


EXIT_CODE_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "credentials written (or the requested subcommand succeeded)",
    ExitCode.INTERNAL: "unexpected internal error (a bug: please report it with the log)",
    ExitCode.CONFIG: "configuration error: a setting is missing, contradictory or unreadable",
    ExitCode.NOT_READY: "the authorization server was not ready before DCR_WAIT_TIMEOUT",
    ExitCode.REGISTRATION_REJECTED: "registration rejected: bad, expired or used-up initial access token, "
    "policy rejection, invalid client metadata, or the saved client is gone (DCR_ON_MISSING_CLIENT=fail)",
    ExitCode.CREDENTIALS_REJECTED: "the token endpoint rejected the client credentials (static or saved)",
    ExitCode.STORAGE: "the credentials file could not be read, locked or written",
    ExitCode.SERVER_RESPONSE: "the server's metadata or response is unusable "
    "(issuer mismatch, no registration_endpoint, malformed JSON)",
    ExitCode.INTERRUPTED: "interrupted by a signal; nothing half-written was left behind",
}


class BootstrapError(Exception):
    """Base of every error the tool raises on purpose."""

    exit_code: ClassVar[ExitCode] = ExitCode.INTERNAL


class ConfigError(BootstrapError):
    exit_code = ExitCode.CONFIG


class StorageError(BootstrapError):
    exit_code = ExitCode.STORAGE


class ServerNotReady(BootstrapError):
    exit_code = ExitCode.NOT_READY


class Unavailable(Exception):
    """One attempt failed in a way that may heal: connection error, timeout, 5xx, 429, 404 while waiting.

    Not a ``BootstrapError``: the retry policy consumes it, and turns the last one into
    ``ServerNotReady`` when the deadline passes.
    """

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class ServerResponseError(BootstrapError):
    exit_code = ExitCode.SERVER_RESPONSE


class DiscoveryError(ServerResponseError):
    pass


class MalformedResponse(ServerResponseError):
    pass


class OAuthError(BootstrapError):
    """An error response in the RFC 6749 §5.2 shape: ``error`` and ``error_description``."""

    error: ClassVar[str] = ""

    def __init__(
        self,
        *,
        status: int,
        error: str | None,
        description: str | None,
        what: str,
        hint: str,
    ) -> None:
        self.status = status
        self.error_code = error or "(none)"
        self.description = description
        self.what = what
        self.hint = hint
        detail = f"{self.error_code}" + (f": {description}" if description else "")
        super().__init__(f"{what} (HTTP {status}, {detail}). {hint}")


class RegistrationRejected(OAuthError):
    exit_code = ExitCode.REGISTRATION_REJECTED


class InvalidToken(RegistrationRejected):
    error = "invalid_token"


class InsufficientScope(RegistrationRejected):
    error = "insufficient_scope"


class InvalidClientMetadata(RegistrationRejected):
    error = "invalid_client_metadata"


class InvalidRedirectUri(RegistrationRejected):
    error = "invalid_redirect_uri"


class InvalidSoftwareStatement(RegistrationRejected):
    error = "invalid_software_statement"


class UnapprovedSoftwareStatement(RegistrationRejected):
    error = "unapproved_software_statement"


class ClientGone(RegistrationRejected):
    """RFC 7592 §2.1: a registration that no longer exists answers 401/403 (some servers 404)."""


class CredentialsRejected(OAuthError):
    exit_code = ExitCode.CREDENTIALS_REJECTED


REGISTRATION_ERRORS: dict[str, type[RegistrationRejected]] = {
    cls.error: cls
    for cls in (
        InvalidToken,
        InsufficientScope,
        InvalidClientMetadata,
        InvalidRedirectUri,
        InvalidSoftwareStatement,
        UnapprovedSoftwareStatement,
    )
}
