"""The one place that performs HTTP: aiohttp in, plain ``Response`` values out.

aiohttp and asyncio errors are translated here, once, into ``Unavailable`` (may heal: the retry
policy decides) so that the protocol modules only ever see a status, headers and a body.
The split-horizon mapping also lives here: URLs under the public base go to the internal one.
Every server is treated as one that may lie: bodies are capped (compressed ones too), no attempt
outlives the run's deadline, and a secret is only ever sent to an origin the operator trusts.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from . import __version__
from .errors import ConfigError, MalformedResponse, ServerResponseError, Unavailable
from .log import get_logger, register_basic
from .urls import is_absolute_http, origin

log = get_logger()

# Statuses that mean "not processed, try again later". 500, 502 and 504 are not among them:
# behind them the server (or the upstream of a gateway) may have created the client already.
NOT_PROCESSED = frozenset({429, 503})


def retryable(status: int | None, *, sent: bool, idempotent: bool) -> bool:
    """The one answer to "may this attempt be repeated?".

    ``status`` is None when no answer came. A request that never left (connection refused) is always
    repeatable; one that left is repeated only if repeating is safe, or if the server said it did not
    process it (429/503). Any other answer is the server's decision, not a transient failure.
    """
    if status is None:
        return not sent or idempotent
    if status >= 500 or status == 429:
        return idempotent or status in NOT_PROCESSED
    return False


# No metadata, registration or token response comes near this; a larger one is a broken or hostile server.
MAX_BODY = 1024 * 1024


# Told of every attempt's answer as (endpoint role, status or "error", seconds) when 'watch' serves
# metrics (bootstrap.metrics); a role is one of a few names, never a URL, header or body.
Observer = Callable[[str, str, float], None]
observers: list[Observer] = []


def endpoint_role(method: str, url: str, form: bool) -> str:
    """The low-cardinality name of what ``url`` is for: discovery, token, admin or (RFC 7591/7592) registration."""
    path = urlsplit(url).path
    if "/.well-known/" in path:
        return "discovery"
    if form:
        return "token"
    if path.startswith("/admin/") or "/admin/realms/" in path:
        return "admin"
    return "registration" if method == "POST" else "registration_management"


def observe(role: str, code: str, started: float) -> None:
    for observer in observers:
        observer(role, code, time.monotonic() - started)


@dataclass(frozen=True)
class Response:
    status: int
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> dict[str, Any]:
        value = json_object(self.body)
        if value is None:
            raise MalformedResponse(
                f"{self.url} answered HTTP {self.status} with a body that is not JSON (not a JSON object); "
                "check that the URL points at the authorization server, not a proxy error page."
            )
        return value

    def error_fields(self) -> tuple[str | None, str | None]:
        """``error`` and ``error_description`` (RFC 6749 §5.2) if the body has them; never raises."""
        error, description = text_fields(json_object(self.body), "error", "error_description")
        return error, description


def json_object(raw: bytes | str) -> dict[str, Any] | None:
    """The JSON object ``raw`` holds, or None (not JSON, or JSON of another kind); never raises.

    The one reader of answers for both HTTP clients (this one, and the Kubernetes store's).
    """
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def text_fields(obj: dict[str, Any] | None, *names: str) -> tuple[str | None, ...]:
    """The string values of ``names`` in ``obj`` (None where absent or not a string): error fields, say."""
    found = obj or {}
    return tuple(value if isinstance(value := found.get(name), str) else None for name in names)


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class Transport:
    """An aiohttp session with the run's rules: split horizon, trusted origins, caps and the deadline."""

    def __init__(
        self,
        *,
        attempt_timeout: float,
        remaining: Callable[[], float] | None = None,
        tls: ssl.SSLContext | None = None,
        public_base: str | None = None,
        internal_base: str | None = None,
        secret_origins: Collection[str] = (),
    ) -> None:
        self._attempt_timeout = attempt_timeout
        self._remaining = remaining
        self._ssl: ssl.SSLContext | bool = tls if tls is not None else True
        self._public = public_base if internal_base else None
        self._internal = internal_base
        self._secret_origins = frozenset(secret_origins)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Transport:
        # auto_decompress off: a 1 MB gzip bomb must not become gigabytes; _decode caps what we inflate.
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": f"dcr-bootstrap/{__version__}", "Accept-Encoding": "gzip, deflate"},
            auto_decompress=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def wire_url(self, url: str) -> str:
        """Where a URL named by the server is actually fetched from (split horizon)."""
        if self._public and self._internal and (url == self._public or url.startswith(self._public + "/")):
            return self._internal + url[len(self._public) :]
        return url

    def check_secret_url(self, url: str, what: str) -> None:
        """Refuse, before sending, a secret to anything but the issuer's origin (or one the operator trusts)."""
        if not is_absolute_http(url):
            raise ServerResponseError(f"The server's {what} is not an absolute http(s) URL; nothing was sent to it.")
        if origin(url) not in self._secret_origins and origin(self.wire_url(url)) not in self._secret_origins:
            raise ServerResponseError(
                f"The server's {what} {url} is outside the issuer's origin; its secret was not sent. If that "
                "host really belongs to the authorization server, add its origin to DCR_TRUSTED_ORIGINS."
            )

    def _timeout(self, idempotent: bool) -> aiohttp.ClientTimeout:
        remaining = self._remaining() if self._remaining is not None else None
        if remaining is not None and remaining <= 0:
            raise Unavailable("no time left before DCR_WAIT_TIMEOUT", out_of_time=True)
        attempt = self._attempt_timeout if remaining is None else min(self._attempt_timeout, remaining)
        if idempotent:
            return aiohttp.ClientTimeout(total=attempt)
        # A request that must not be repeated waits for its answer as long as the run may: cutting it
        # short cannot undo it on the server, only turn "slow" into a client nobody knows. Connecting
        # (nothing sent yet) still gives up after one attempt's time and is retried.
        return aiohttp.ClientTimeout(total=remaining, sock_connect=attempt)

    async def request(
        self,
        method: str,
        url: str,
        *,
        bearer: str | None = None,
        json_body: dict[str, Any] | None = None,
        form: dict[str, str] | None = None,
        basic: tuple[str, str] | None = None,
        idempotent: bool = True,
        budget: float | None = None,
    ) -> Response:
        """One attempt. ``budget`` (seconds) overrides the deadline-bound budget (clean-up after a failure)."""
        assert self._session is not None, "use 'async with Transport(...)'"
        headers = self._headers(url, bearer, basic)
        if not is_absolute_http(url):
            raise ServerResponseError(f"{url!r} named by the server is not an absolute http(s) URL; nothing was sent.")
        target = self.wire_url(url)
        role = endpoint_role(method, url, form is not None)
        started = time.monotonic()
        try:
            async with self._session.request(
                method,
                target,
                headers=headers,
                json=json_body,
                data=form,
                ssl=self._ssl,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=budget) if budget else self._timeout(idempotent),
            ) as resp:
                status = resp.status
                resp_headers = {k.lower(): v for k, v in resp.headers.items()}
                body = await read_capped(resp, target)
        except (aiohttp.ClientError, TimeoutError) as exc:
            observe(role, "error", started)
            raise _translate(exc, method, target, idempotent=idempotent) from None
        observe(role, str(status), started)
        # Method, URL, status and time only: headers and bodies carry secrets.
        log.debug("HTTP", method=method, url=target, status=status, ms=round((time.monotonic() - started) * 1000))
        if retryable(status, sent=True, idempotent=idempotent):
            raise Unavailable(
                f"{method} {target} answered HTTP {status}",
                status=status,
                retry_after=retry_after(resp_headers.get("retry-after")),
            )
        return Response(status=status, url=url, headers=resp_headers, body=body)

    def _headers(self, url: str, bearer: str | None, basic: tuple[str, str] | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if bearer or basic:
            self.check_secret_url(url, "token endpoint" if basic else "URL")
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        if basic:
            register_basic(*basic)
            headers["Authorization"] = "Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
        return headers


def _translate(exc: aiohttp.ClientError | TimeoutError, method: str, target: str, *, idempotent: bool) -> Exception:
    """aiohttp's and asyncio's failures, as the one error each means to us."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        # A certificate problem does not heal by waiting: stop at once and say what to set.
        return ConfigError(
            f"TLS verification failed for {target} ({type(exc).__name__}); trust the server's CA with "
            "DCR_CA_BUNDLE=/path/to/ca.pem, or fix the URL."
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Unavailable(f"cannot connect to {target}: {exc.os_error.strerror or exc}", connect=True)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # nothing was sent: safe to try again
        return Unavailable(f"{method} {target}: connecting timed out")
    if isinstance(exc, aiohttp.InvalidURL):
        return ServerResponseError(f"{target} is not a valid URL; nothing was sent to it.")
    reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
    if not retryable(None, sent=True, idempotent=idempotent):
        return ServerResponseError(
            f"{method} {target} failed after the request was sent ({reason}); the server may have "
            "acted on it. Check the server's clients, then run again."
        )
    return Unavailable(f"{method} {target}: {reason}")


async def read_capped(resp: aiohttp.ClientResponse, url: str) -> bytes:
    """The body, at most MAX_BODY bytes after decoding; more is a MalformedResponse, never memory."""
    raw = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        raw += chunk
        if len(raw) > MAX_BODY:
            raise _too_large(url)
    encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return bytes(raw)
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise MalformedResponse(f"{url} answered with Content-Encoding {encoding!r}, which we did not ask for.")
    # wbits 47 reads gzip and zlib; raw deflate (what some servers send as "deflate") needs -15.
    inflater = zlib.decompressobj(47 if bytes(raw[:1]) in (b"\x1f", b"\x78") else -15)
    try:
        body = inflater.decompress(bytes(raw), MAX_BODY + 1)
    except zlib.error:
        raise MalformedResponse(f"{url} answered with a body that does not decompress.") from None
    if len(body) > MAX_BODY or inflater.unconsumed_tail:
        raise _too_large(url)
    return body


def _too_large(url: str) -> MalformedResponse:
    return MalformedResponse(
        f"{url} answered with a body larger than {MAX_BODY // 1024} KiB; nothing was read past that. "
        "Check that the URL points at the authorization server."
    )
