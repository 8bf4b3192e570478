"""The one place that performs HTTP: aiohttp in, plain ``Response`` values out.

aiohttp and asyncio errors are translated here, once, into ``Unavailable`` (may heal: the retry
policy decides) so that the protocol modules only ever see a status, headers and a body.
The split-horizon mapping also lives here: URLs under the public base go to the internal one.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from . import __version__
from .errors import ConfigError, MalformedResponse, ServerResponseError, Unavailable
from .log import get_logger
from .settings import Settings

log = get_logger()

# Statuses that mean "not processed, try again later". 500, 502 and 504 are not among them:
# behind them the server (or the upstream of a gateway) may have created the client already.
NOT_PROCESSED = frozenset({429, 503})


@dataclass(frozen=True)
class Response:
    status: int
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.body)
        except ValueError:
            raise MalformedResponse(
                f"{self.url} answered HTTP {self.status} with a body that is not JSON; "
                "check that the URL points at the authorization server, not a proxy error page."
            ) from None
        if not isinstance(value, dict):
            raise MalformedResponse(f"{self.url} answered JSON that is not an object; check the server URL.")
        return value

    def error_fields(self) -> tuple[str | None, str | None]:
        """``error`` and ``error_description`` (RFC 6749 §5.2) if the body has them; never raises."""
        try:
            body = json.loads(self.body)
        except ValueError:
            return None, None
        if not isinstance(body, dict):
            return None, None
        error, description = body.get("error"), body.get("error_description") or body.get("errorMessage")
        return (error if isinstance(error, str) else None), (description if isinstance(description, str) else None)


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
    def __init__(self, settings: Settings) -> None:
        self._public = settings.public_base if settings.dcr_internal_url else None
        self._internal = settings.dcr_internal_url
        self._timeout = aiohttp.ClientTimeout(total=settings.dcr_attempt_timeout)
        self._ssl: ssl.SSLContext | bool = True
        if settings.dcr_ca_bundle:
            self._ssl = ssl.create_default_context(cafile=str(settings.dcr_ca_bundle))
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Transport:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout, headers={"User-Agent": f"dcr-bootstrap/{__version__}"}
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
    ) -> Response:
        assert self._session is not None, "use 'async with Transport(...)'"
        headers = {"Accept": "application/json"}
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        if basic:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
        target = self.wire_url(url)
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
            ) as resp:
                body = await resp.read()
                status = resp.status
                resp_headers = {k.lower(): v for k, v in resp.headers.items()}
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
            # A certificate problem does not heal by waiting: stop at once and say what to set.
            raise ConfigError(
                f"TLS verification failed for {target} ({type(exc).__name__}); trust the server's CA with "
                "DCR_CA_BUNDLE=/path/to/ca.pem, or fix the URL."
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise Unavailable(f"cannot connect to {target}: {exc.os_error.strerror or exc}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            if not idempotent:
                raise ServerResponseError(
                    f"{method} {target} failed after the request was sent ({reason}); the server may have "
                    "acted on it. Check the server's clients, then run again."
                ) from None
            raise Unavailable(f"{method} {target}: {reason}") from None
        # Method, URL, status and time only: headers and bodies carry secrets.
        log.debug("HTTP", method=method, url=target, status=status, ms=round((time.monotonic() - started) * 1000))
        if (status >= 500 or status == 429) and (idempotent or status in NOT_PROCESSED):
            raise Unavailable(
                f"{method} {target} answered HTTP {status}",
                retry_after=retry_after(resp_headers.get("retry-after")),
            )
        return Response(status=status, url=url, headers=resp_headers, body=body)
