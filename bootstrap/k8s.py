"""The workload's one registration in a Kubernetes Secret, with a Lease as the cross-Pod lock.

``run_shared`` wraps ``flow.run`` (see its docstring); ``KubeStore`` is the store underneath. This is
the only module that knows Kubernetes, and it is imported only when ``DCR_K8S_SECRET`` is set, so
the default path starts no slower. Plain REST over aiohttp (already a dependency): get, create and
update of one Secret and one Lease do not justify a generated client of the whole API.

The registration is kept as the ``.dcr_client.json`` document under one data key
(``dcr_client.json``), byte-for-byte the file's format. Writes carry ``resourceVersion``: a stale
one is a ``StoreConflict`` (409) and the caller re-reads and reconciles. Other failures are a
``StorageError`` naming the Secret or Lease, the namespace and the RBAC verb that is missing.

The API server gets the authorization server's rules, since whatever answers at its address may lie:
https unless on loopback (or DCR_K8S_ALLOW_HTTP), no redirect followed, bodies capped (decompressed
too), every attempt bounded by the run's deadline, 429/5xx retried by the run's policy, and every
answer checked before use, so nothing but a ``BootstrapError`` leaves this module. Tokens never
appear in messages; the server's own ``message`` only escaped and capped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
import datetime
import hashlib
import ipaddress
import json
import os
import random
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import SplitResult, urlsplit

import aiohttp

from . import __version__, flow, log, store
from ._http import json_object, read_capped, retry_after, retryable, text_fields
from .errors import BootstrapError, ConfigError, MalformedResponse, ServerNotReady, StorageError, Unavailable, printable
from .models import Retired, SavedRegistration, is_vschar
from .settings import K8S_NAME, Settings, hostname
from .wait import Deadline, RetryPolicy

DATA_KEY = "dcr_client.json"
# In the same document, the registrations replaced by a rotation and kept for their grace: whichever Pod
# runs after the grace deletes them, so none outlives a Pod that died mid-grace.
RETIRED_KEY = "retired"
MANAGED_BY = {"app.kubernetes.io/managed-by": "dcr-bootstrap"}
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_LEASE_SECONDS = 30
# Rewrites of the Secret after 409s before giving up (each one re-reads and reconciles first).
SECRET_WRITE_ATTEMPTS = 5
# A store used on its own (tests, tools) gets the defaults of DCR_WAIT_TIMEOUT and DCR_ATTEMPT_TIMEOUT.
DEFAULT_TIMEOUT = 120.0
ATTEMPT_TIMEOUT = 10.0
# Releasing the Lease and re-reading the Secret before deleting a client must not depend on the time
# the (possibly failed) run has left.
CLEANUP_TIMEOUT = flow.CLEANUP_TIMEOUT
MESSAGE_LIMIT = 200
API_HINT = "Check that the Kubernetes API server is up and reachable, or raise DCR_WAIT_TIMEOUT."

logger = log.get_logger()


class StoreConflict(Exception):
    """The Secret changed (or was created) since it was read: re-read and reconcile."""


class LockTimeout(Exception):
    """The Lease stayed held by another holder until the timeout."""


class AmbiguousWrite(StorageError):
    """A Secret write was sent but its answer was lost (or a 5xx/timeout): it may or may not have landed."""


class InvalidSecret(StorageError):
    """The Secret was read, and its registration key is unusable: it cannot be a client of ours."""


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_name(what: str, name: str) -> str:
    """A namespace or object name as the API server accepts it (DNS-1123 subdomain), before it goes in a URL."""
    if not K8S_NAME.fullmatch(name):
        raise ConfigError(
            f"The Kubernetes {what} name {printable(name, 80)!r} is not a DNS-1123 name (lower-case letters, "
            "digits, '-' and '.', at most 253); fix the namespace file, the kubeconfig context or DCR_K8S_*."
        )
    return name


@dataclass(frozen=True)
class KubeApi:
    """Where and how to reach the API server."""

    server: str
    token: str | None = None
    ca_file: Path | None = None
    ca_data: bytes | None = None
    insecure: bool = False
    default_namespace: str = "default"

    def __post_init__(self) -> None:
        log.register_secrets(self.token)  # masked in every log line from now on

    def __repr__(self) -> str:  # never print the token
        return f"KubeApi(server={self.server!r}, namespace={self.default_namespace!r})"

    @classmethod
    def in_cluster(cls, sa_dir: Path = SERVICE_ACCOUNT_DIR) -> KubeApi:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ConfigError(
                "DCR_K8S_SECRET is set but no Kubernetes API is configured: KUBERNETES_SERVICE_HOST is not set "
                "(not in a Pod) and neither is KUBECONFIG. Run in a Pod, set KUBECONFIG, or unset DCR_K8S_SECRET."
            )
        try:
            token = (sa_dir / "token").read_text().strip()
            namespace = (sa_dir / "namespace").read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise StorageError(
                f"Cannot read the service-account token or namespace in {sa_dir} ({type(exc).__name__}): "
                "mount a service-account token (automountServiceAccountToken or a projected volume)"
            ) from None
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return cls(f"https://{host}:{port}", token=token, ca_file=sa_dir / "ca.crt", default_namespace=namespace)

    @classmethod
    def from_kubeconfig(cls, path: Path) -> KubeApi:
        """The current context of a kubeconfig (JSON or YAML); file paths in it are relative to its folder."""
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise StorageError(f"Cannot read kubeconfig {path} ({type(exc).__name__})") from None
        context, cluster, user = _current(_parse_config(text, path), path)
        return cls(
            server=str(cluster["server"]).rstrip("/"),
            token=_user_token(user, path),
            ca_file=_relative(path, cluster.get("certificate-authority")),
            ca_data=_ca_data(cluster.get("certificate-authority-data"), path),
            insecure=cluster.get("insecure-skip-tls-verify") is True,
            default_namespace=_text(context.get("namespace")) or "default",
        )

    def check(self, *, allow_http: bool = False) -> KubeApi:
        """Refuse, before any request, a server the bearer token must not be sent to; warn when TLS is off."""
        parts = _server_url(self.server)
        if parts.scheme == "http" and not allow_http and not _loopback(parts.hostname or ""):
            raise ConfigError(
                f"The Kubernetes API server {self.server} is plain http and not on loopback: its bearer token and "
                "the Secret would cross the network unencrypted, so nothing was sent. Use https, or set "
                "DCR_K8S_ALLOW_HTTP=true if that network is trusted."
            )
        if self.token is not None and not is_vschar(self.token):
            raise ConfigError("The Kubernetes bearer token contains control characters or line breaks; fix it.")
        if self.insecure:
            logger.warning(
                "TLS verification of the Kubernetes API server is off (insecure-skip-tls-verify in the kubeconfig): "
                "anyone on the path can read the bearer token and the Secret. Set its CA instead.",
                server=self.server,
            )
        return self

    def ssl_context(self) -> ssl.SSLContext | bool:
        if self.insecure:
            return False
        try:
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
            if self.ca_data:
                context.load_verify_locations(cadata=self.ca_data.decode())
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                f"Cannot load the Kubernetes API server's CA ({self.ca_file or 'certificate-authority-data'}: "
                f"{type(exc).__name__}); fix the kubeconfig's certificate-authority, or the mounted ca.crt."
            ) from None
        return context


def _relative(config: Path, value: object) -> Path | None:
    """A path named in a kubeconfig: relative ones are relative to the kubeconfig's folder, as kubectl reads them."""
    name = _text(value)
    return config.parent / name if name else None


def _user_token(user: dict[str, Any], config: Path) -> str | None:
    token = _text(user.get("token"))
    token_file = _relative(config, user.get("tokenFile"))
    if token is not None or token_file is None:
        return token
    try:
        return token_file.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise StorageError(f"Cannot read the tokenFile named in kubeconfig {config} ({type(exc).__name__})") from None


def _ca_data(value: object, config: Path) -> bytes | None:
    if value is None:
        return None
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError:
        raise StorageError(f"kubeconfig {config}: certificate-authority-data is not base64") from None


def _server_url(server: str) -> SplitResult:
    """The API server's URL, parsed, if it is an http(s) URL of a host with nothing else in it."""
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.query:
        raise ConfigError(
            f"The Kubernetes API server {printable(server, 200)!r} is not an http(s) URL of a host; fix "
            "the kubeconfig's cluster server (or KUBERNETES_SERVICE_HOST)."
        )
    return parts


def _current(config: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The kubeconfig's current context, and its cluster and user (the first ones when it names none)."""
    context = _named(config, "contexts", "context", config.get("current-context"), first=True) or {}
    cluster = _named(config, "clusters", "cluster", context.get("cluster"), first=True)
    if not cluster or not _text(cluster.get("server")):
        raise StorageError(f"kubeconfig {path} names no cluster server")
    return context, cluster, _named(config, "users", "user", context.get("user"), first=False) or {}


def _named(config: dict[str, Any], section: str, key: str, name: object, *, first: bool) -> dict[str, Any] | None:
    listed = config.get(section)
    entries = {
        str(entry.get("name")): _dict(entry.get(key))
        for entry in (listed if isinstance(listed, list) else [])
        if isinstance(entry, dict)
    }
    found: dict[str, Any] | None = entries.get(str(name)) if name is not None else None
    return found if found is not None or not first else next(iter(entries.values()), None)


def _parse_config(text: str, path: Path) -> dict[str, Any]:
    try:
        loaded: Any = json.loads(text)
    except ValueError:
        try:
            import yaml  # only for YAML kubeconfigs (kubectl's default)
        except ImportError as exc:
            raise StorageError(f"kubeconfig {path} is YAML; write it as JSON (kubectl config view -o json)") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError:
            raise StorageError(f"kubeconfig {path} is neither JSON nor YAML") from None
    if not isinstance(loaded, dict):
        raise StorageError(f"kubeconfig {path} is not a mapping")
    return loaded


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _micro_time(at: datetime.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: object) -> datetime.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=datetime.UTC)


@dataclass(frozen=True)
class _Answer:
    status: int
    body: dict[str, Any] | None  # the JSON object, or None when the body is not one
    location: str | None = None


# Where each kind of object we touch lives in the API, and its RBAC resource name.
_API_PATHS = {"secret": "/api/v1", "lease": "/apis/coordination.k8s.io/v1", "deployment": "/apis/apps/v1"}
_RESOURCES = {"secret": "secrets", "lease": "leases.coordination.k8s.io", "deployment": "deployments.apps"}


def _encoded(body: dict[str, Any] | None) -> bytes | None:
    return None if body is None else json.dumps(body).encode()


# A PATCH is a JSON merge patch (RFC 7386); every other body is the object itself.
_CONTENT_TYPES = {"PATCH": "application/merge-patch+json"}
# The pod-template annotation that DCR_K8S_ROLLOUT sets: a change of its value rolls the Deployment out.
ROLLOUT_ANNOTATION = "dcr-bootstrap/credentials-hash"


class KubeStore:
    """The workload's one registration in a Secret; optional Lease for exclusive registration.

    ``policy`` carries the run's deadline and backoff: every request is bounded by both.
    """

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        secret: str,
        lease: str | None,
        *,
        policy: RetryPolicy | None = None,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
    ) -> None:
        self.api = api
        self.namespace = check_name("namespace", namespace)
        self.secret = check_name("Secret", secret)
        self.lease = check_name("Lease", lease) if lease is not None else None
        self.lease_seconds = DEFAULT_LEASE_SECONDS
        self.policy = dataclasses.replace(policy or RetryPolicy(Deadline(DEFAULT_TIMEOUT)), hint=API_HINT)
        self.attempt_timeout = attempt_timeout
        # Set once a Secret write has been sent: from then on only a re-read tells whether it landed.
        self.secret_written = False
        self._session: aiohttp.ClientSession | None = None
        self._holder: str | None = None
        self._lease_rv: str | None = None
        self._secret_obj: dict[str, Any] | None = None

    @classmethod
    def from_environment(
        cls,
        secret: str,
        lease: str | None = None,
        namespace: str | None = None,
        kubeconfig: Path | None = None,
        *,
        allow_http: bool = False,
        policy: RetryPolicy | None = None,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
    ) -> KubeStore:
        """In-cluster config when running in a Pod, else ``kubeconfig`` (or ``$KUBECONFIG``); checked before use."""
        if kubeconfig is None and not os.environ.get("KUBERNETES_SERVICE_HOST") and os.environ.get("KUBECONFIG"):
            kubeconfig = Path(os.environ["KUBECONFIG"].split(os.pathsep)[0])
        api = KubeApi.from_kubeconfig(kubeconfig) if kubeconfig else KubeApi.in_cluster()
        api.check(allow_http=allow_http)
        return cls(
            api, namespace or api.default_namespace, secret, lease, policy=policy, attempt_timeout=attempt_timeout
        )

    async def __aenter__(self) -> KubeStore:
        headers = {
            "Accept": "application/json",
            "User-Agent": f"dcr-bootstrap/{__version__}",
            "Accept-Encoding": "gzip, deflate",
        }
        if self.api.token:
            headers["Authorization"] = f"Bearer {self.api.token}"
        connector = aiohttp.TCPConnector(ssl=self.api.ssl_context())
        # auto_decompress off: read_capped inflates at most MAX_BODY, a gzip bomb never becomes gigabytes.
        self._session = aiohttp.ClientSession(
            headers=headers, connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- HTTP -------------------------------------------------------------------------------------

    def _path(self, kind: str, name: str | None = None) -> str:
        base = f"{_API_PATHS[kind]}/namespaces/{self.namespace}/{_RESOURCES[kind].split('.')[0]}"
        return f"{base}/{name}" if name else base

    def _what(self, kind: str, name: str) -> str:
        return f"{kind.capitalize()} {self.namespace}/{name}"

    async def _call(
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
        if kind == "secret" and method != "GET":
            self.secret_written = True
        try:
            answer = await policy.call(f"{verb} {what}", self._attempt, method, kind, name, body, policy.deadline)
        except ServerNotReady as exc:  # the store's failures are StorageErrors (exit 6), whatever the cause
            raise StorageError(f"Kubernetes API at {self.api.server}: {exc}") from None
        return answer.status, self._check(answer, verb, kind, name, accept)

    async def _attempt(
        self, method: str, kind: str, name: str, body: dict[str, Any] | None, deadline: Deadline
    ) -> _Answer:
        if self._session is None:
            raise RuntimeError("KubeStore used outside 'async with'")
        remaining = deadline.remaining()
        if remaining <= 0:
            raise Unavailable("no time left before DCR_WAIT_TIMEOUT", out_of_time=True)
        url = self.api.server + self._path(kind, None if method == "POST" else name)
        # Lease writes are safe to repeat (a resourceVersion or AlreadyExists makes a repeat a 409), and so is
        # a merge patch; a Secret write whose answer is lost is resolved by re-reading the Secret
        # (AmbiguousWrite), not by repeating.
        safe = method in ("GET", "PATCH") or kind == "lease"
        try:
            async with self._session.request(
                method,
                url,
                data=_encoded(body),
                headers={"Content-Type": _CONTENT_TYPES.get(method, "application/json")},
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=min(self.attempt_timeout, remaining)),
            ) as resp:
                status, location = resp.status, resp.headers.get("Location")
                raw = await read_capped(resp, url)
        except MalformedResponse:
            raise self._unreadable(method, kind, name, safe) from None
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError) as exc:
            raise self._failed(exc, method, kind, name, safe) from None
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
        return _Answer(status, json_object(raw), location)

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
        if status in accept and _dict(body).get("kind") == "Status":
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
                "(HTTP 401): mount a valid service-account token (or fix the kubeconfig's user)."
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

    def _resource_version(self, obj: Mapping[str, Any], kind: str, name: str) -> str:
        rv = _text(_dict(obj.get("metadata")).get("resourceVersion"))
        if rv is None:
            raise StorageError(
                f"The Kubernetes API at {self.api.server} answered {self._what(kind, name)} without "
                "metadata.resourceVersion; check that the server URL is the API server."
            )
        return rv

    # -- Secret -----------------------------------------------------------------------------------

    async def load(self, *, budget: float | None = None) -> tuple[dict[str, Any] | None, str | None]:
        """The registration (as the file's dict) and the Secret's resourceVersion; (None, rv|None) if none."""
        status, obj = await self._call("GET", "secret", self.secret, "get", accept=(404,), budget=budget)
        if status == 404:
            self._secret_obj = None
            return None, None
        rv = self._resource_version(obj, "secret", self.secret)
        self._secret_obj = obj
        data = obj.get("data")
        if data is not None and not isinstance(data, dict):
            raise InvalidSecret(f"Secret {self.namespace}/{self.secret} has data that is not a mapping")
        raw = (data or {}).get(DATA_KEY)
        return (self._decode(raw) if raw else None), rv

    def _decode(self, raw: object) -> dict[str, Any]:
        try:
            data = json_object(base64.b64decode(str(raw), validate=True))
        except ValueError:  # not base64
            data = None
        if data is None:
            raise InvalidSecret(
                f"Secret {self.namespace}/{self.secret} key {DATA_KEY} is not valid JSON (a JSON object): "
                "delete the key to register again"
            )
        return data

    async def save(self, data: dict[str, Any], resource_version: str | None) -> str:
        """Create (rv None) or replace (rv given) the Secret; StoreConflict if someone else wrote first."""
        encoded = base64.b64encode(json.dumps(data, indent=2, sort_keys=False).encode() + b"\n").decode()
        if resource_version is None:
            metadata = {"name": self.secret, "namespace": self.namespace, "labels": dict(MANAGED_BY)}
            body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": metadata}
            body["data"] = {DATA_KEY: encoded}
            status, obj = await self._call("POST", "secret", self.secret, "create", body, accept=(409,))
            if status == 409:
                raise StoreConflict(f"Secret {self.namespace}/{self.secret} already exists")
        else:
            body = self._updated(encoded, resource_version)
            status, obj = await self._call("PUT", "secret", self.secret, "update", body, accept=(404, 409))
            if status in (404, 409):
                raise StoreConflict(f"Secret {self.namespace}/{self.secret} changed since it was read")
        rv = self._resource_version(obj, "secret", self.secret)
        self._secret_obj = obj
        return rv

    def _updated(self, encoded: str, resource_version: str) -> dict[str, Any]:
        """The Secret as last read with only our key and label changed: other keys, labels, annotations,
        ownerReferences and finalizers survive (a PUT replaces the whole object)."""
        obj = copy.deepcopy(self._secret_obj) if self._secret_obj else {}
        obj.update(apiVersion="v1", kind="Secret")
        obj.setdefault("type", "Opaque")
        metadata = _dict(obj.get("metadata"))
        labels = {**_dict(metadata.get("labels")), **MANAGED_BY}
        metadata.update(name=self.secret, namespace=self.namespace, resourceVersion=resource_version, labels=labels)
        obj["metadata"] = metadata
        obj["data"] = {**_dict(obj.get("data")), DATA_KEY: encoded}
        return obj

    # -- Deployment -------------------------------------------------------------------------------

    async def roll_out(self, deployment: str, digest: str) -> None:
        """Set the pod template's credentials annotation to ``digest``: the Deployment rolls its Pods."""
        check_name("Deployment", deployment)
        patch = {"spec": {"template": {"metadata": {"annotations": {ROLLOUT_ANNOTATION: digest}}}}}
        await self._call("PATCH", "deployment", deployment, "patch", patch)

    # -- Lease ------------------------------------------------------------------------------------

    def _lease_body(self, holder: str, rv: str | None, transitions: int, acquired: str | None) -> dict[str, Any]:
        now = _micro_time(_now())
        metadata: dict[str, Any] = {"name": self.lease, "namespace": self.namespace, "labels": dict(MANAGED_BY)}
        if rv is not None:
            metadata["resourceVersion"] = rv
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": self.lease_seconds,
                "acquireTime": acquired or now,
                "renewTime": now,
                "leaseTransitions": transitions,
            },
        }

    async def _create_lease(self, holder: str) -> bool:
        assert self.lease is not None
        body = self._lease_body(holder, None, 0, None)
        status, obj = await self._call("POST", "lease", self.lease, "create", body, accept=(409,))
        if status == 409:
            return False  # another Pod created it first
        self._lease_rv = self._resource_version(obj, "lease", self.lease)
        return True

    def _expired(self, spec: dict[str, Any]) -> bool:
        renew = _parse_time(spec.get("renewTime")) or _parse_time(spec.get("acquireTime"))
        duration = _int(spec.get("leaseDurationSeconds")) or self.lease_seconds
        return renew is None or (_now() - renew).total_seconds() > duration

    async def _try_acquire(self, holder: str) -> bool:
        assert self.lease is not None
        status, obj = await self._call("GET", "lease", self.lease, "get", accept=(404,))
        if status == 404:
            return await self._create_lease(holder)
        spec = _dict(obj.get("spec"))
        current = spec.get("holderIdentity")
        if current and current != holder and not self._expired(spec):
            return False
        ours = current == holder  # a renewal keeps acquireTime and the transition count
        transitions = (_int(spec.get("leaseTransitions")) or 0) + (not ours)
        rv = self._resource_version(obj, "lease", self.lease)
        body = self._lease_body(holder, rv, transitions, _text(spec.get("acquireTime")) if ours else None)
        status, obj = await self._call("PUT", "lease", self.lease, "update", body, accept=(404, 409))
        if status in (404, 409):
            return False
        self._lease_rv = self._resource_version(obj, "lease", self.lease)
        return True

    async def acquire(self, holder: str, timeout: float) -> None:  # noqa: ASYNC109 (the interface)
        """Hold the Lease exclusively (takes over an expired one); LockTimeout after ``timeout`` s."""
        if self.lease is None:
            return
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            if await self._try_acquire(holder):
                self._holder = holder
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockTimeout(f"Lease {self.namespace}/{self.lease} still held by another Pod after {timeout:.0f}s")
            await asyncio.sleep(min(remaining, random.uniform(delay / 2, delay)))  # noqa: S311 (jitter)
            delay = min(delay * 2, 1.0)

    async def renew(self) -> bool:
        """Renew the Lease we hold; False if another holder has taken it (or we hold none)."""
        if self.lease is None or self._holder is None:
            return False
        return await self._try_acquire(self._holder)

    async def release(self) -> None:
        """Give the Lease up (if held) so the next Pod need not wait for expiry; on its own short budget."""
        if self.lease is None or self._holder is None:
            return
        status, obj = await self._call("GET", "lease", self.lease, "get", accept=(404,), budget=CLEANUP_TIMEOUT)
        holder, self._holder = self._holder, None
        spec = obj.get("spec")
        if status == 404 or not isinstance(spec, dict) or spec.get("holderIdentity") != holder:
            return
        spec.update(holderIdentity=None, renewTime=None, acquireTime=None)
        # 404/409: someone took or removed it, fine.
        await self._call("PUT", "lease", self.lease, "update", obj, accept=(404, 409), budget=CLEANUP_TIMEOUT)


# --- the shared run -------------------------------------------------------------------------------


def holder_identity() -> str:
    """The Lease holder: the Pod's name (``HOSTNAME`` in a Pod), as kubectl shows it."""
    return os.environ.get("HOSTNAME") or hostname()


async def run_shared(settings: Settings) -> flow.Outcome:
    """``flow.run`` with the workload's one registration kept in a Secret (``DCR_K8S_SECRET``).

    Under the Lease (if configured, taken within DCR_WAIT_TIMEOUT): read the Secret, put its
    registration into the credentials file so that ``flow.run`` reloads and checks it instead of
    registering, run the flow, and write what it produced back to the Secret with the
    ``resourceVersion`` read whenever it changed (RFC 7592 lets the server rotate the registration
    access token on any call; Keycloak does on every update). On a 409, or a write whose answer was
    lost, the Secret is re-read: the same client (or none) is written again over the new version;
    another client stored first wins, and a client this run registered is deleted again (RFC 7592).
    If the Secret cannot be written after a registration, the new client is deleted, unless a
    re-read shows the Secret holds it (or cannot tell): no Secret names a deleted client.
    """
    settings.check()
    assert settings.dcr_k8s_secret is not None
    if "{hostname}" in settings.dcr_client_name:
        logger.warning(
            "DCR_CLIENT_NAME contains {hostname} but the client is shared by every Pod: each Pod would rename "
            "it (an RFC 7592 update per run). Set DCR_CLIENT_NAME to the workload's name, e.g. mcp-server.",
            client_name=settings.dcr_client_name,
        )
    deadline = Deadline(settings.dcr_wait_timeout)
    kube = KubeStore.from_environment(
        settings.dcr_k8s_secret,
        settings.dcr_k8s_lease,
        settings.dcr_k8s_namespace,
        allow_http=settings.dcr_k8s_allow_http,
        policy=flow.policy_for(settings, deadline),
        attempt_timeout=settings.dcr_attempt_timeout,
    )
    async with kube:
        await _acquire(kube, deadline)
        renewer = asyncio.create_task(_keep_lease(kube)) if kube.lease else None
        try:
            return await _shared_run(settings, kube, deadline)
        finally:
            if renewer is not None:
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer
            await _release(kube)


def _secret_name(kube: KubeStore) -> str:
    return f"{kube.namespace}/{kube.secret}"


async def _acquire(kube: KubeStore, deadline: Deadline) -> None:
    if kube.lease is None:
        return
    holder = holder_identity()
    try:
        await kube.acquire(holder, deadline.remaining())
    except LockTimeout:
        raise StorageError(
            f"Lease {kube.namespace}/{kube.lease} stayed held by another Pod until DCR_WAIT_TIMEOUT ran out; "
            "check for a stuck replica (kubectl get lease -o yaml shows the holder), or raise DCR_WAIT_TIMEOUT."
        ) from None
    logger.info("Acquired the Lease", lease=f"{kube.namespace}/{kube.lease}", holder=holder)


async def _keep_lease(kube: KubeStore) -> None:
    """Renew the Lease while the flow runs (it may wait for the server longer than the Lease lasts)."""
    while True:
        await asyncio.sleep(kube.lease_seconds / 3)
        try:
            if not await kube.renew():
                # The Secret's resourceVersion still prevents a lost update or a second client.
                logger.warning("Lost the Lease to another Pod", lease=f"{kube.namespace}/{kube.lease}")
                return
        except BootstrapError as exc:
            logger.warning("Could not renew the Lease", error=str(exc))


async def _release(kube: KubeStore) -> None:
    try:
        await kube.release()
    except BootstrapError as exc:  # it expires by itself; the next Pod waits at most leaseDurationSeconds
        logger.warning("Could not release the Lease", error=str(exc))


def _parse(kube: KubeStore, data: dict[str, Any] | None) -> SavedRegistration | None:
    if data is None:
        return None
    try:
        shared = SavedRegistration.model_validate(data)
    except ValueError:
        raise InvalidSecret(
            f"Secret {_secret_name(kube)} key {DATA_KEY} is not a valid registration; fix or remove that key "
            "(a new client is then registered) and run again."
        ) from None
    return shared  # its secrets are registered for masking by the model


async def _write_local(
    settings: Settings, registration_: SavedRegistration, deadline: Deadline, retired: list[Retired] | None = None
) -> None:
    """Put a registration (and the replaced ones still in their grace) into the Pod's files: atomic, private."""
    path, env_file = settings.dcr_client_file, settings.dcr_env_file
    async with store.locked(path, deadline.remaining):
        store.probe_writable(path, env_file)
        store.save(path, registration_, env_file, settings.file_mode)
        if retired is not None:
            store.save_retired(path, retired)


async def _shared_run(settings: Settings, kube: KubeStore, deadline: Deadline) -> flow.Outcome:
    for attempt in (1, 2):
        data, version = await kube.load()
        shared = _parse(kube, data)
        if shared is not None:
            # The Secret is the workload's truth: its registration replaces whatever this Pod's file holds.
            await _write_local(settings, shared, deadline, _retired_in(data))
            logger.info("Loaded registration from Secret", client_id=shared.client_id, secret=_secret_name(kube))
        try:
            outcome = await _run_flow(settings, kube, deadline)
        except BootstrapError:
            # Without a Lease (or with a single-use initial access token) another Pod may have stored its
            # registration while ours failed: use it rather than fail.
            if attempt == 1 and shared is None and await _filled_meanwhile(kube):
                logger.warning("Our run failed but another Pod has stored a registration; using it")
                continue
            raise
        published = await _publish(settings, kube, outcome, data, version, deadline)
        await _roll_out(settings, kube, shared, published.registration)
        return published
    raise AssertionError("unreachable")


def _retired_in(data: dict[str, Any] | None) -> list[Retired]:
    """The replaced registrations the Secret keeps for their grace (see flow.retire); none if unreadable."""
    try:
        return [Retired.model_validate(item) for item in (data or {}).get(RETIRED_KEY) or []]
    except (ValueError, TypeError):
        logger.warning("The Secret's list of replaced registrations is unreadable; ignored")
        return []


def credentials_digest(registration: SavedRegistration) -> str:
    """A short hash of what the app uses (client id and secret): it changes with them and reveals neither."""
    secret = registration.client_secret.get_secret_value() if registration.client_secret else ""
    return hashlib.sha256(f"{registration.client_id}\0{secret}".encode()).hexdigest()[:16]


async def _roll_out(
    settings: Settings, kube: KubeStore, before: SavedRegistration | None, after: SavedRegistration
) -> None:
    """DCR_K8S_ROLLOUT: a Deployment whose Pods read the credentials at start is rolled when they change."""
    deployment = settings.dcr_k8s_rollout
    if deployment is None or before is None or credentials_digest(before) == credentials_digest(after):
        return  # the first registration: the Pods starting now read it anyway
    await kube.roll_out(deployment, credentials_digest(after))
    logger.info("Rolled out the Deployment for the new credentials", deployment=f"{kube.namespace}/{deployment}")


async def _run_flow(settings: Settings, kube: KubeStore, deadline: Deadline) -> flow.Outcome:
    """``flow.run``; if it fails after saving a client it registered (closing its session, say), delete it.

    The flow's own clean-up covers a failure before its file is written; after that, only this run
    knows the client is new and not yet in the Secret.
    """
    before = _saved_id(settings)
    try:
        return await flow.run(settings, deadline)
    except (Exception, asyncio.CancelledError) as exc:
        new = _saved(settings)
        if new is not None and new.client_id != before:
            note = await _withdraw_unshared(settings, kube, new)
            if isinstance(exc, asyncio.CancelledError):
                logger.warning(note, client_id=new.client_id)
            else:
                exc.add_note(note)
        raise


def _saved(settings: Settings) -> SavedRegistration | None:
    try:
        return store.load(settings.dcr_client_file)
    except StorageError:
        return None


def _saved_id(settings: Settings) -> str | None:
    saved = _saved(settings)
    return saved.client_id if saved is not None else None


async def _filled_meanwhile(kube: KubeStore) -> bool:
    try:
        data, _ = await kube.load()
    except BootstrapError:
        return False
    return data is not None


async def _publish(
    settings: Settings,
    kube: KubeStore,
    outcome: flow.Outcome,
    data: dict[str, Any] | None,
    version: str | None,
    deadline: Deadline,
) -> flow.Outcome:
    """Write the run's registration to the Secret (create, or replace at ``version``); reconcile on 409.

    A write whose answer was lost (``AmbiguousWrite``) is reconciled the same way: the re-read shows
    our client (it landed), another one (theirs wins), or none (write again).
    """
    mine = outcome.registration
    retired = store.load_retired(settings.dcr_client_file)
    wanted = mine.to_file() | ({RETIRED_KEY: [r.to_file() for r in retired]} if retired else {})
    fresh = outcome.action in ("registered", "replaced")  # a client this run created
    undo = (
        flow.withdraw_on_failure(lambda: _withdraw_unshared(settings, kube, mine), mine.client_id)
        if fresh
        else contextlib.nullcontext()
    )
    async with undo:
        for _ in range(SECRET_WRITE_ATTEMPTS):
            if wanted == data:
                return outcome
            try:
                await kube.save(wanted, version)
            except (StoreConflict, AmbiguousWrite) as exc:
                if isinstance(exc, AmbiguousWrite):
                    logger.warning("The Secret write may not have landed; re-reading it", reason=str(exc))
                data, version = await kube.load()
                theirs = _parse(kube, data)
                if theirs is None or theirs.client_id == mine.client_id:
                    # Emptied, or the same client: ours is the latest read of it, write it over the new version.
                    continue
                return await _adopt(settings, kube, mine, theirs, fresh, deadline)
            logger.info("Saved registration to Secret", client_id=mine.client_id, secret=_secret_name(kube))
            return outcome
        raise StorageError(
            f"Secret {_secret_name(kube)} kept changing while we wrote it ({SECRET_WRITE_ATTEMPTS} attempts); "
            "check what else writes it, then run again."
        )


async def _adopt(
    settings: Settings,
    kube: KubeStore,
    mine: SavedRegistration,
    theirs: SavedRegistration,
    fresh: bool,
    deadline: Deadline,
) -> flow.Outcome:
    """Another Pod stored a different client first: the Secret decides, and ours (if new) is deleted."""
    if fresh:
        _, note = await _withdraw_client(settings, mine)
        logger.warning(
            f"Another Pod stored its registration first; using it. {note}",
            client_id=theirs.client_id,
            ours=mine.client_id,
            secret=_secret_name(kube),
        )
    else:
        logger.warning(
            "The Secret now holds another client; using it",
            client_id=theirs.client_id,
            ours=mine.client_id,
            secret=_secret_name(kube),
        )
    await _write_local(settings, theirs, deadline)
    return flow.Outcome("reloaded", theirs)


async def _withdraw_unshared(settings: Settings, kube: KubeStore, new: SavedRegistration) -> str:
    """The Secret could not take a client this run registered: delete it (and its file), unless it is stored.

    A write whose answer was lost (or a failure anywhere after sending it) may have landed: the
    Secret is re-read first, so no Secret ever names a deleted client.
    """
    stored = await _secret_holds(kube, new)
    if stored is None:
        return (
            f"Client {new.client_id} was kept: a write of Secret {_secret_name(kube)} was sent and the Secret could "
            f"not be read back, so it may hold it. {settings.dcr_client_file} keeps it for the next run."
        )
    if stored:
        return f"Secret {_secret_name(kube)} holds client {new.client_id} after all (the write landed); it was kept."
    deleted, note = await _withdraw_client(settings, new)
    if deleted:
        try:
            store.remove(settings.dcr_client_file, settings.dcr_env_file)
        except StorageError:
            return note + f" Remove {settings.dcr_client_file} by hand."
    else:
        # Kept: with the Secret still empty, the next run reloads this file and stores it, adopting the client.
        note += f" {settings.dcr_client_file} keeps it for the next run."
    return note


async def _secret_holds(kube: KubeStore, new: SavedRegistration) -> bool | None:
    """Whether the Secret names ``new`` (None: a write was sent, and the Secret cannot be read to tell)."""
    if not kube.secret_written:
        return False
    try:
        stored = _parse(kube, (await asyncio.shield(kube.load(budget=CLEANUP_TIMEOUT)))[0])
    except InvalidSecret:
        return False  # what it holds is unusable, so not the client we wrote
    except BootstrapError:
        return None
    return stored is not None and stored.client_id == new.client_id


async def _withdraw_client(settings: Settings, new: SavedRegistration) -> tuple[bool, str]:
    """RFC 7592 DELETE of a client this run created, on its own short budget: (gone now, what happened)."""
    async with flow.transport_for(settings, Deadline(flow.CLEANUP_TIMEOUT), new.issuer) as transport:
        return await flow.withdraw(transport, new)
