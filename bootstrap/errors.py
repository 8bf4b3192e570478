"""The exception tree. Every error the tool raises on purpose is a ``BootstrapError``.

Each branch carries one exit code (``exit_code``, an ``ExitCode``: the codes and their meanings are
defined there and nowhere else; docs/exit-codes.md is rendered from it) and a message that says what
went wrong *and* what to do; the CLI prints ``str(exc)`` and its notes (``add_note``: what happened
to a client we created, say) as the last log line. ``reason``, where set, names the condition for
code (``keycloak.hint_for``), so nothing matches our own message text. Messages never contain secret
values: only names of settings, HTTP status codes and the server's own ``error``/``error_description``
(masked, escaped and capped: a hostile server writes them).

    BootstrapError
    ├── ConfigError ........................ CONFIG            settings missing, contradictory or unreadable
    ├── ServerNotReady ..................... NOT_READY         server unreachable until the deadline
    │   (Unavailable ....................... -  one failed attempt; retried, never escapes wait.py)
    ├── ServerResponseError ................ SERVER_RESPONSE   unusable or untrusted answer
    │   ├── DiscoveryError                      no metadata, issuer mismatch, no registration_endpoint
    │   └── MalformedResponse                   not JSON, too large, missing or unsafe fields
    │       └── UnsafeValue                     a credential with control characters: never saved
    ├── OAuthError ......................... -  an RFC 6749/6750/7591 error response (``error``)
    │   ├── RegistrationRejected ........... REGISTRATION_REJECTED  RFC 7591 / 7592 request refused
    │   │   ├── InvalidToken                    initial/registration access token bad, expired, used up
    │   │   ├── InsufficientScope               refused by a server policy (Keycloak: client
    │   │   │                                   registration policies such as Trusted Hosts)
    │   │   ├── InvalidClientMetadata
    │   │   ├── ClientGone                      RFC 7592 401/404: no such registration (or token)
    │   │   └── NotAllowed                      RFC 7592 403: the server forbids managing it
    │   ├── CredentialsRejected ............ CREDENTIALS_REJECTED   the token endpoint refused them
    │   └── AdminRejected .................. ADMIN_REJECTED    Keycloak's admin API refused
    ├── NotRotated ......................... NOT_ROTATED       'rotate' left the secret as it was
    ├── NotDeleted ......................... NOT_DELETED       'delete' left a working client it could not delete
    ├── DoctorBlocked ...................... DOCTOR_BLOCKED    'doctor' found something a registration fails on
    └── StorageError ....................... STORAGE           a file or the Secret: read, lock, write
        ├── StoreConflict                       the Secret changed since it was read (409): re-read
        ├── AmbiguousWrite                      a Secret write was sent, its answer lost: re-read
        ├── InvalidSecret                       the Secret's registration key is unusable
        ├── LockTimeout                         the Lease stayed held by another holder until the deadline
        └── LeaseLost                           our Lease was taken or not renewed in time: stopped unwritten

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
    """Documented process exit codes, each with its meaning: the one definition (docs/exit-codes.md shows it)."""

    meaning: str

    def __new__(cls, value: int, meaning: str) -> ExitCode:
        member = int.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        return member

    OK = 0, "credentials written (or the requested subcommand succeeded)"
    INTERNAL = 1, "unexpected internal error (a bug: please report it with the log); a client it created is deleted"
    CONFIG = 2, "configuration error: a setting is missing, contradictory, unsafe or unreadable"
    NOT_READY = (
        3,
        ("the authorization server was not ready before DCR_WAIT_TIMEOUT (or asked us to retry later than that)"),
    )
    REGISTRATION_REJECTED = (
        4,
        (
            "registration rejected: bad, expired or used-up initial access token, policy rejection, invalid client "
            "metadata, RFC 7592 management forbidden (403), or the saved client is gone (DCR_ON_MISSING_CLIENT=fail)"
        ),
    )
    CREDENTIALS_REJECTED = 5, "the token endpoint rejected the client credentials (static, saved or new)"
    STORAGE = (
        6,
        (
            "the credentials file (or the Kubernetes Secret) could not be read, locked or written, is not ours, or "
            "there is none (show, env, delete)"
        ),
    )
    SERVER_RESPONSE = (
        7,
        (
            "the server's metadata or response is unusable or untrusted (issuer mismatch, no registration_endpoint, "
            "an endpoint outside the issuer's origin, malformed JSON, control characters in a credential)"
        ),
    )
    ADMIN_REJECTED = 8, "Keycloak's admin API refused the admin credentials or the request (initial-token)"
    NOT_ROTATED = (
        9,
        (
            "rotate: the secret was NOT rotated (e.g. RFC 7592 management lost and no admin credentials, static "
            "credentials); the saved credentials are kept and still work"
        ),
    )
    NOT_DELETED = (
        10,
        (
            "delete (or DCR_DELETE_ON_EXIT): a client still works but could not be deleted; it is named in the last "
            "line and stays in the file (or its list of replaced registrations)"
        ),
    )
    DOCTOR_BLOCKED = (
        11,
        (
            "doctor: a finding blocks a registration (unreachable server, issuer mismatch, expired initial access "
            "token, a realm policy that refuses it...); each finding's line names its fix. Nothing was registered"
        ),
    )
    INTERRUPTED = 130, "interrupted by a signal; nothing half-written was left behind"


# Conditions that code (not people) tells apart: BootstrapError.reason / Unavailable.reason.
NO_METADATA = "no-metadata"  # the metadata URL answers 404: for Keycloak, the realm does not exist (yet)


def printable(text: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """Mask known secrets, escape control characters and cap the length of text that came from a server."""
    out = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in _secrets.mask(text))
    return out if len(out) <= limit else out[:limit] + "...(truncated)"


class BootstrapError(Exception):
    """Base of every error the tool raises on purpose."""

    exit_code: ClassVar[ExitCode] = ExitCode.INTERNAL
    reason: str | None = None

    def line(self) -> str:
        """The message and its notes: the CLI's last log line."""
        return " ".join([str(self), *getattr(self, "__notes__", ())])


class ConfigError(BootstrapError):
    exit_code = ExitCode.CONFIG


class NotRotated(BootstrapError):
    """'rotate' ran and the secret is the one it was: say so, and why, instead of exiting 0."""

    exit_code = ExitCode.NOT_ROTATED


class NotDeleted(BootstrapError):
    """'delete' left a client that still works (its credentials are accepted): it stays saved, and named."""

    exit_code = ExitCode.NOT_DELETED


class DoctorBlocked(BootstrapError):
    """'doctor' found at least one thing a registration would fail on (the findings say what and how to fix)."""

    exit_code = ExitCode.DOCTOR_BLOCKED


class StorageError(BootstrapError):
    exit_code = ExitCode.STORAGE


class StoreConflict(StorageError):
    """The Secret changed (or was created) since it was read: re-read and reconcile."""


class AmbiguousWrite(StorageError):
    """A Secret write was sent but its answer was lost (or a 5xx/timeout): it may or may not have landed."""


class InvalidSecret(StorageError):
    """The Secret was read, and its registration key is unusable: it cannot be a client of ours."""


class LockTimeout(StorageError):
    """The Lease stayed held by another holder until the run's deadline."""


class LeaseLost(StorageError):
    """The Lease was taken by another holder, or not renewed within the renew deadline, while we ran."""


class ServerNotReady(BootstrapError):
    exit_code = ExitCode.NOT_READY

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class Unavailable(Exception):
    """One attempt failed in a way that may heal: connection error, timeout, 5xx, 429, 404 while waiting.

    Not a ``BootstrapError``: the retry policy consumes it, and turns the last one into
    ``ServerNotReady`` when the deadline passes. ``connect`` marks "nothing listens yet", which
    costs the server nothing and is probed more often than a server that answers "busy"; ``status``
    is the HTTP status when the server answered.
    """

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        connect: bool = False,
        out_of_time: bool = False,
        reason: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
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

    def __init__(self, *, status: int, error: str | None, description: str | None, what: str, hint: str) -> None:
        self.status = status
        self.error = printable(error, 80) if error else "(none)"
        self.description = printable(description) if description else None
        detail = self.error + (f": {self.description}" if self.description else "")
        super().__init__(f"{what} (HTTP {status}, {detail}). {hint}")


class RegistrationRejected(OAuthError):
    exit_code = ExitCode.REGISTRATION_REJECTED


class InvalidToken(RegistrationRejected):
    pass


class InsufficientScope(RegistrationRejected):
    pass


class InvalidClientMetadata(RegistrationRejected):
    pass


class ClientGone(RegistrationRejected):
    """RFC 7592 §2.1: an unknown client or an invalid registration access token answers 401 (some: 404)."""


class NotAllowed(RegistrationRejected):
    """RFC 7592 §2.1: 403, the token is valid but managing this client is forbidden; never 'gone'."""


class CredentialsRejected(OAuthError):
    exit_code = ExitCode.CREDENTIALS_REJECTED

    @property
    def bad_credentials(self) -> bool:
        """The client failed to authenticate (RFC 6749 §5.2; Keycloak answers 401 unauthorized_client)."""
        return self.status == 401 or self.error == "invalid_client"


class AdminRejected(OAuthError):
    exit_code = ExitCode.ADMIN_REJECTED


# The RFC 7591 §3.2.2 / RFC 6750 §3.1 error codes that have a class of their own.
REGISTRATION_ERRORS: dict[str, type[RegistrationRejected]] = {
    "invalid_token": InvalidToken,
    "insufficient_scope": InsufficientScope,
    "invalid_client_metadata": InvalidClientMetadata,
}
