"""One client of the Kubernetes API: the session, one request with its retries, and every answer checked.

The API server gets the authorization server's rules, since whatever answers at its address may lie:
no redirect followed, bodies capped (decompressed too), every attempt bounded by the run's deadline,
429/5xx retried by the run's policy (``wait.RetryPolicy``, as every other request of the tool), and
every answer checked before use, so nothing but a ``BootstrapError`` leaves this module. Tokens never
appear in messages; the server's own ``message`` only escaped and capped.
"""

from __future__ import annotations

import dataclasses
import json
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp

from .. import __version__, log
from .._http import json_object, observe, read_capped, retry_after, retryable, text_fields
from ..errors import AmbiguousWrite, MalformedResponse, ServerNotReady, StorageError, Unavailable, printable
from ..wait import Deadline, RetryPolicy
from ._config import KubeApi, check_name
from ._values import dict_or_empty, text_or_none

ROLE = "kubernetes"  # the endpoint label of these requests in the watch listener's metrics

# A client used on its own (tests, tools) gets the defaults of DCR_WAIT_TIMEOUT and DCR_ATTEMPT_TIMEOUT.
DEFAULT_TIMEOUT = 120.0
ATTEMPT_TIMEOUT = 10.0
MESSAGE_LIMIT = 200
logger = log.get_logger()
API_HINT = "Check that the Kubernetes API server is up and reachable, or raise DCR_WAIT_TIMEOUT."


@dataclass(frozen=True)
class _Answer:
    status: int
    body: dict[str, Any] | None  # the JSON object, or None when the body is not one
    location: str | None = None
    generation: int = 0  # of the credentials it was sent with (Credentials.generation)


MANAGED_BY = {"app.kubernetes.io/managed-by": "dcr-bootstrap"}


def kept_metadata(obj: dict[str, Any], name: str, namespace: str, resource_version: str) -> dict[str, Any]:
    """An object's metadata as read, for a PUT of it: what others put there (labels, annotations, owners,
    finalizers, Helm's ownership) stays; our managed-by label is added only where none is set."""
    metadata = dict(dict_or_empty(obj.get("metadata")))
    labels = {**MANAGED_BY, **dict_or_empty(metadata.get("labels"))}
    metadata.update(name=name, namespace=namespace, resourceVersion=resource_version, labels=labels)
    return metadata


# Where each kind of object we touch lives in the API, and its RBAC resource name.
_API_PATHS = {
    "secret": "/api/v1",
    "lease": "/apis/coordination.k8s.io/v1",
    "deployment": "/apis/apps/v1",
    "event": "/api/v1",
}
_RESOURCES = {
    "secret": "secrets",
    "lease": "leases.coordination.k8s.io",
    "deployment": "deployments.apps",
    "event": "events",
}


def _encoded(body: dict[str, Any] | None) -> bytes | None:
    return None if body is None else json.dumps(body).encode()


# A PATCH is a JSON merge patch (RFC 7386); every other body is the object itself.
_CONTENT_TYPES = {"PATCH": "application/merge-patch+json"}


class KubeClient:
    """Requests to one namespace of the API server; ``policy`` carries the run's deadline and backoff."""

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        *,
        policy: RetryPolicy | None = None,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
    ) -> None:
        self.api = api
        self.namespace = check_name("namespace", namespace)
        self.policy = dataclasses.replace(policy or RetryPolicy(Deadline(DEFAULT_TIMEOUT)), hint=API_HINT)
        self.attempt_timeout = attempt_timeout
        self._session: aiohttp.ClientSession | None = None
        self._retired: list[aiohttp.ClientSession] = []
        self._identity: tuple[bytes, bytes] | None = None

    async def __aenter__(self) -> KubeClient:
        self._session = self._open(None)
        return self

    def _open(self, identity: tuple[bytes, bytes] | None) -> aiohttp.ClientSession:
        """A session whose TLS presents the kubeconfig's client certificate, or ``identity`` (an exec plugin's).

        The bearer token is no default header: each request carries the current one (it rotates)."""
        headers = {
            "Accept": "application/json",
            "User-Agent": f"dcr-bootstrap/{__version__}",
            "Accept-Encoding": "gzip, deflate",
        }
        connector = aiohttp.TCPConnector(ssl=self.api.ssl_context(identity))
        self._identity = identity
        # auto_decompress off: read_capped inflates at most MAX_BODY, a gzip bomb never becomes gigabytes.
        return aiohttp.ClientSession(
            headers=headers, connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
        )

    async def _session_for(self, identity: tuple[bytes, bytes] | None) -> aiohttp.ClientSession:
        """The session for this client identity: a new one when an exec plugin handed out a new certificate."""
        if self._session is None:
            raise RuntimeError("KubeClient used outside 'async with'")
        if identity != self._identity:
            # Requests in flight keep the old session; it is closed with the client.
            self._retired.append(self._session)
            self._session = self._open(identity)
        return self._session

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for session in [*self._retired, *([self._session] if self._session is not None else [])]:
            await session.close()
        self._retired.clear()
        self._session = None

    def _path(self, kind: str, name: str | None = None) -> str:
        base = f"{_API_PATHS[kind]}/namespaces/{self.namespace}/{_RESOURCES[kind].split('.')[0]}"
        return f"{base}/{name}" if name else base

    def _what(self, kind: str, name: str) -> str:
        return f"{kind.capitalize()} {self.namespace}/{name}"

    async def call(
        self,
        method: str,
        kind: str,
        name: str,
        verb: str,
        body: dict[str, Any] | None = None,
        *,
        accept: tuple[int, ...] = (),
        budget: float | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """One request, retried by the policy; a status in ``accept`` is the caller's, anything unusable raises.

        A PATCH is a JSON merge patch (RFC 7386): setting a value is safe to repeat.
        """
        policy = self.policy if budget is None else dataclasses.replace(self.policy, deadline=Deadline(budget))
        what = self._what(kind, name)
        try:
            answer = await policy.call(f"{verb} {what}", self._attempt, method, kind, name, body, policy.deadline)
            # A token rotated (or an exec credential revoked) since we fetched it: once more with fresh ones.
            # The API server authenticates before anything else, so nothing of a rejected request was applied.
            if answer.status == 401 and await self.api.credentials.renew(
                answer.generation, policy.deadline.remaining()
            ):
                logger.info(
                    "Kubernetes API rejected our credentials; retrying once with renewed ones", server=self.api.server
                )
                answer = await policy.call(f"{verb} {what}", self._attempt, method, kind, name, body, policy.deadline)
        except ServerNotReady as exc:  # the store's failures are StorageErrors (exit 6), whatever the cause
            raise StorageError(f"Kubernetes API at {self.api.server}: {exc}") from None
        return answer.status, self._check(answer, verb, kind, name, accept)

    async def _attempt(
        self, method: str, kind: str, name: str, body: dict[str, Any] | None, deadline: Deadline
    ) -> _Answer:
        remaining = deadline.remaining()
        if remaining <= 0:
            raise Unavailable("no time left before DCR_WAIT_TIMEOUT", out_of_time=True)
        auth = await self.api.credentials.current(remaining)
        session = await self._session_for(auth.identity)
        headers = {"Content-Type": _CONTENT_TYPES.get(method, "application/json")}
        if auth.token:
            headers["Authorization"] = f"Bearer {auth.token}"
        remaining = deadline.remaining()  # an exec plugin may have taken some
        url = self.api.server + self._path(kind, None if method == "POST" else name)
        # Lease writes are safe to repeat (a resourceVersion or AlreadyExists makes a repeat a 409), and so is
        # a merge patch; a Secret write whose answer is lost is resolved by re-reading the Secret
        # (AmbiguousWrite), not by repeating.
        safe = method in ("GET", "PATCH") or kind == "lease"
        started = time.monotonic()
        try:
            async with session.request(
                method,
                url,
                data=_encoded(body),
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=max(0.001, min(self.attempt_timeout, remaining))),
                server_hostname=self.api.tls_server_name,
            ) as resp:
                status, location = resp.status, resp.headers.get("Location")
                raw = await read_capped(resp, url)
        except MalformedResponse:
            observe(ROLE, "error", started)
            raise self._unreadable(method, kind, name, safe) from None
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError) as exc:
            observe(ROLE, "error", started)
            raise self._failed(exc, method, kind, name, safe) from None
        observe(ROLE, str(status), started)
        if retryable(status, sent=True, idempotent=safe):
            raise Unavailable(
                f"{method} {self._what(kind, name)} answered HTTP {status}",
                status=status,
                retry_after=retry_after(resp.headers.get("Retry-After")),
            )
        if status >= 500 and not safe:
            raise AmbiguousWrite(
                f"The Kubernetes API answered HTTP {status} to the {method} of {self._what(kind, name)}"
            )
        return _Answer(status, json_object(raw), location, auth.generation)

    def _unreadable(self, method: str, kind: str, name: str, safe: bool) -> StorageError:
        text = (
            f"The Kubernetes API at {self.api.server} answered the {method} of {self._what(kind, name)} with a body "
            "over 1 MiB (decompressed) or one that does not decompress; nothing past the cap was read."
        )
        return StorageError(text) if safe else AmbiguousWrite(text)

    def _failed(self, exc: Exception, method: str, kind: str, name: str, safe: bool) -> Exception:
        """aiohttp's failures as the one error each means here: retry, stop, or re-read the Secret."""
        what, reason = self._what(kind, name), type(exc).__name__
        if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError | ssl.SSLError):
            return StorageError(
                f"TLS with the Kubernetes API at {self.api.server} failed for {what} ({reason}); check the CA "
                "(the kubeconfig's certificate-authority, or the mounted ca.crt) and the server name."
            )
        if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):  # nothing was sent
            return Unavailable(f"cannot connect to the Kubernetes API at {self.api.server} ({reason})", connect=True)
        if isinstance(exc, TimeoutError):
            reason = "timed out"
        if safe:
            return Unavailable(f"{method} {what}: {reason}")
        return AmbiguousWrite(f"The {method} of {what} was sent but no answer came ({reason})")

    def _check(self, answer: _Answer, verb: str, kind: str, name: str, accept: tuple[int, ...]) -> dict[str, Any]:
        """The answer's object; anything the caller cannot use (not 2xx or ``accept``) as one StorageError."""
        status, body, what = answer.status, answer.body, self._what(kind, name)
        if 200 <= status < 300 and isinstance(body, dict):
            return body
        if status in accept and dict_or_empty(body).get("kind") == "Status":
            return {}
        if 200 <= status < 300 or status in accept:
            raise StorageError(
                f"The Kubernetes API at {self.api.server} answered HTTP {status} to {verb} {what} with a body that is "
                "not a Kubernetes object (an HTML page from a proxy?); check that the server URL is the API server."
            )
        if 300 <= status < 400:
            to = f" to {printable(answer.location, MESSAGE_LIMIT)}" if answer.location else ""
            raise StorageError(
                f"The Kubernetes API at {self.api.server} answered {verb} {what} with a redirect (HTTP {status}{to}); "
                "redirects are not followed, so nothing was re-sent. Point the kubeconfig at the API server itself."
            )
        raise StorageError(self._refusal(status, body, verb, kind, name))

    def _refusal(self, status: int, body: Any, verb: str, kind: str, name: str) -> str:
        what = self._what(kind, name)
        if status == 401:
            return (
                f"Kubernetes API at {self.api.server} rejected our credentials when trying to {verb} {what} "
                "(HTTP 401): mount a valid service-account token (or fix the kubeconfig's user: its token, "
                "certificate or exec plugin)."
            )
        if status == 403:
            resource = _RESOURCES[kind]
            return (
                f"Kubernetes API refused to {verb} {what} (HTTP 403): the service account needs RBAC verb "
                f"'{verb}' on {resource} '{name}' in namespace {self.namespace} (see deploy/k8s/shared-secret.yaml)."
            )
        (message,) = text_fields(body, "message")
        reason = f": {printable(message, MESSAGE_LIMIT)}" if message else ""
        return f"Kubernetes API failed to {verb} {what} (HTTP {status}){reason}"

    def resource_version(self, obj: Mapping[str, Any], kind: str, name: str) -> str:
        rv = text_or_none(dict_or_empty(obj.get("metadata")).get("resourceVersion"))
        if rv is None:
            raise StorageError(
                f"The Kubernetes API at {self.api.server} answered {self._what(kind, name)} without "
                "metadata.resourceVersion; check that the server URL is the API server."
            )
        return rv
