"""The workload's one registration in a Kubernetes Secret, with a Lease as the cross-Pod lock.

``run_shared`` wraps ``flow.run`` (see its docstring); ``KubeStore`` is the store underneath. This is
the only module that knows Kubernetes, and it is imported only when ``DCR_K8S_SECRET`` is set, so
the default path starts no slower. Plain REST over aiohttp (already a dependency): get, create and
update of one Secret and one Lease do not justify a generated client of the whole API.

The registration is kept as the ``.dcr_client.json`` document under one data key
(``dcr_client.json``), byte-for-byte the file's format. Writes carry ``resourceVersion``: a stale
one is a ``StoreConflict`` (409) and the caller re-reads and reconciles. Other failures are a
``StorageError`` naming the Secret or Lease, the namespace and the RBAC verb that is missing.
Tokens never appear in messages.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import os
import random
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from . import flow, log, store
from .errors import BootstrapError, ConfigError, StorageError
from .models import SavedRegistration
from .settings import Settings, hostname
from .wait import Deadline

DATA_KEY = "dcr_client.json"
MANAGED_BY = {"app.kubernetes.io/managed-by": "dcr-bootstrap"}
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_LEASE_SECONDS = 30
# Rewrites of the Secret after 409s before giving up (each one re-reads and reconciles first).
SECRET_WRITE_ATTEMPTS = 5

logger = log.get_logger()


class StoreConflict(Exception):
    """The Secret changed (or was created) since it was read: re-read and reconcile."""


class LockTimeout(Exception):
    """The Lease stayed held by another holder until the timeout."""


@dataclass(frozen=True)
class KubeApi:
    """Where and how to reach the API server."""

    server: str
    token: str | None = None
    ca_file: Path | None = None
    ca_data: bytes | None = None
    insecure: bool = False
    default_namespace: str = "default"

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
        except OSError as exc:
            raise StorageError(
                f"Cannot read the service-account token or namespace in {sa_dir} ({exc.strerror}): "
                "mount a service-account token (automountServiceAccountToken or a projected volume)"
            ) from exc
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return cls(f"https://{host}:{port}", token=token, ca_file=sa_dir / "ca.crt", default_namespace=namespace)

    @classmethod
    def from_kubeconfig(cls, path: Path) -> KubeApi:
        """The current context of a kubeconfig (JSON or YAML): server, token, CA data or file."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise StorageError(f"Cannot read kubeconfig {path} ({exc.strerror})") from exc
        context, cluster, user = _current(_parse_config(text, path), path)
        token = user.get("token")
        if token is None and user.get("tokenFile"):
            token = Path(user["tokenFile"]).read_text().strip()
        ca_data = (
            base64.b64decode(cluster["certificate-authority-data"]) if "certificate-authority-data" in cluster else None
        )
        ca_file = Path(cluster["certificate-authority"]) if "certificate-authority" in cluster else None
        return cls(
            server=str(cluster["server"]).rstrip("/"),
            token=token,
            ca_file=ca_file,
            ca_data=ca_data,
            insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
            default_namespace=context.get("namespace") or "default",
        )

    def ssl_context(self) -> ssl.SSLContext | bool:
        if self.insecure:
            return False
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.ca_data:
            context.load_verify_locations(cadata=self.ca_data.decode())
        return context


def _current(config: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The kubeconfig's current context, and its cluster and user (the first ones when it names none)."""
    context = _named(config, "contexts", "context", config.get("current-context"), first=True) or {}
    cluster = _named(config, "clusters", "cluster", context.get("cluster"), first=True)
    if not cluster or "server" not in cluster:
        raise StorageError(f"kubeconfig {path} names no cluster server")
    return context, cluster, _named(config, "users", "user", context.get("user"), first=False) or {}


def _named(config: dict[str, Any], section: str, key: str, name: object, *, first: bool) -> dict[str, Any] | None:
    entries = {entry["name"]: entry.get(key) or {} for entry in config.get(section) or []}
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
        loaded = yaml.safe_load(text)
    if not isinstance(loaded, dict):
        raise StorageError(f"kubeconfig {path} is not a mapping")
    return loaded


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _micro_time(at: datetime.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class KubeStore:
    """The workload's one registration in a Secret; optional Lease for exclusive registration."""

    def __init__(self, api: KubeApi, namespace: str, secret: str, lease: str | None) -> None:
        self.api = api
        self.namespace = namespace
        self.secret = secret
        self.lease = lease
        self.lease_seconds = DEFAULT_LEASE_SECONDS
        self._session: aiohttp.ClientSession | None = None
        self._holder: str | None = None
        self._lease_rv: str | None = None
        self._secret_metadata: dict[str, Any] | None = None

    @classmethod
    def from_environment(
        cls,
        secret: str,
        lease: str | None = None,
        namespace: str | None = None,
        kubeconfig: Path | None = None,
    ) -> KubeStore:
        """In-cluster config when running in a Pod, else ``kubeconfig`` (or ``$KUBECONFIG``)."""
        if kubeconfig is None and not os.environ.get("KUBERNETES_SERVICE_HOST") and os.environ.get("KUBECONFIG"):
            kubeconfig = Path(os.environ["KUBECONFIG"].split(os.pathsep)[0])
        api = KubeApi.from_kubeconfig(kubeconfig) if kubeconfig else KubeApi.in_cluster()
        return cls(api, namespace or api.default_namespace, secret, lease)

    async def __aenter__(self) -> KubeStore:
        headers = {"Accept": "application/json", "User-Agent": "dcr-bootstrap"}
        if self.api.token:
            headers["Authorization"] = f"Bearer {self.api.token}"
        connector = aiohttp.TCPConnector(ssl=self.api.ssl_context())
        self._session = aiohttp.ClientSession(
            self.api.server, headers=headers, connector=connector, timeout=aiohttp.ClientTimeout(total=15)
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
        base = (
            f"/api/v1/namespaces/{self.namespace}/secrets"
            if kind == "secret"
            else f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"
        )
        return f"{base}/{name}" if name else base

    async def _call(
        self, method: str, kind: str, name: str, verb: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        if self._session is None:
            raise RuntimeError("KubeStore used outside 'async with'")
        path = self._path(kind, None if method == "POST" else name)
        what = f"{'Secret' if kind == 'secret' else 'Lease'} {self.namespace}/{name}"
        try:
            async with self._session.request(method, path, json=body) as resp:
                status = resp.status
                try:
                    payload: Any = await resp.json(content_type=None)
                except ValueError:
                    payload = {}
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError) as exc:
            raise StorageError(
                f"Cannot reach the Kubernetes API at {self.api.server} for {what}: {type(exc).__name__}"
            ) from None
        self._check(status, payload, verb, kind, name)
        return status, payload if isinstance(payload, dict) else {}

    def _check(self, status: int, payload: Any, verb: str, kind: str, name: str) -> None:
        """An answer the caller cannot handle (anything but 2xx, 404 and 409) as one StorageError."""
        what = f"{'Secret' if kind == 'secret' else 'Lease'} {self.namespace}/{name}"
        if status == 401:
            raise StorageError(
                f"Kubernetes API at {self.api.server} rejected our credentials when trying to {verb} {what} "
                "(HTTP 401): mount a valid service-account token (or fix the kubeconfig's user)."
            )
        if status == 403:
            resource = "secrets" if kind == "secret" else "leases.coordination.k8s.io"
            raise StorageError(
                f"Kubernetes API refused to {verb} {what} (HTTP 403): the service account needs RBAC verb "
                f"'{verb}' on {resource} '{name}' in namespace {self.namespace} (see deploy/k8s/shared-secret.yaml)."
            )
        if status >= 500 or (status >= 400 and status not in (404, 409)):
            reason = payload.get("message", "") if isinstance(payload, dict) else ""
            raise StorageError(f"Kubernetes API failed to {verb} {what} (HTTP {status}): {str(reason)[:200]}")

    # -- Secret -----------------------------------------------------------------------------------

    async def load(self) -> tuple[dict[str, str] | None, str | None]:
        """The registration (as the file's dict) and the Secret's resourceVersion; (None, rv|None) if none."""
        status, obj = await self._call("GET", "secret", self.secret, "get")
        if status == 404:
            self._secret_metadata = None
            return None, None
        self._secret_metadata = obj.get("metadata") or {}
        rv = self._secret_metadata.get("resourceVersion")
        raw = (obj.get("data") or {}).get(DATA_KEY)
        if not raw:
            return None, rv
        try:
            data = json.loads(base64.b64decode(raw))
        except ValueError as exc:
            raise StorageError(
                f"Secret {self.namespace}/{self.secret} key {DATA_KEY} is not valid JSON: "
                "delete the key to register again"
            ) from exc
        if not isinstance(data, dict):
            raise StorageError(f"Secret {self.namespace}/{self.secret} key {DATA_KEY} is not a JSON object")
        return data, rv

    async def save(self, data: dict[str, Any], resource_version: str | None) -> str:
        """Create (rv None) or replace (rv given) the Secret; StoreConflict if someone else wrote first."""
        encoded = base64.b64encode(json.dumps(data, indent=2, sort_keys=False).encode() + b"\n").decode()
        metadata: dict[str, Any] = {"name": self.secret, "namespace": self.namespace, "labels": dict(MANAGED_BY)}
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": {DATA_KEY: encoded}}
        if resource_version is None:
            body["metadata"] = metadata
            status, obj = await self._call("POST", "secret", self.secret, "create", body)
            if status == 409:
                raise StoreConflict(f"Secret {self.namespace}/{self.secret} already exists")
        else:
            # Keep what others put on the Secret (kubectl's last-applied annotation, their labels).
            kept = self._secret_metadata or {}
            labels = {**(kept.get("labels") or {}), **MANAGED_BY}
            body["metadata"] = {**metadata, "labels": labels, "resourceVersion": resource_version}
            if kept.get("annotations"):
                body["metadata"]["annotations"] = kept["annotations"]
            status, obj = await self._call("PUT", "secret", self.secret, "update", body)
            if status in (404, 409):
                raise StoreConflict(f"Secret {self.namespace}/{self.secret} changed since it was read")
        return str(obj["metadata"]["resourceVersion"])

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
        status, obj = await self._call("POST", "lease", self.lease, "create", self._lease_body(holder, None, 0, None))
        if status == 409:
            return False  # another Pod created it first
        self._lease_rv = obj["metadata"]["resourceVersion"]
        return True

    def _expired(self, spec: dict[str, Any]) -> bool:
        renew = _parse_time(spec.get("renewTime")) or _parse_time(spec.get("acquireTime"))
        duration = int(spec.get("leaseDurationSeconds") or self.lease_seconds)
        return renew is None or (_now() - renew).total_seconds() > duration

    async def _try_acquire(self, holder: str) -> bool:
        assert self.lease is not None
        status, obj = await self._call("GET", "lease", self.lease, "get")
        if status == 404:
            return await self._create_lease(holder)
        spec = obj.get("spec") or {}
        current = spec.get("holderIdentity")
        if current and current != holder and not self._expired(spec):
            return False
        ours = current == holder  # a renewal keeps acquireTime and the transition count
        transitions = int(spec.get("leaseTransitions") or 0) + (not ours)
        body = self._lease_body(
            holder, obj["metadata"]["resourceVersion"], transitions, spec.get("acquireTime") if ours else None
        )
        status, obj = await self._call("PUT", "lease", self.lease, "update", body)
        if status in (404, 409):
            return False
        self._lease_rv = obj["metadata"]["resourceVersion"]
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
        """Give the Lease up (if held) so the next Pod need not wait for expiry."""
        if self.lease is None or self._holder is None:
            return
        status, obj = await self._call("GET", "lease", self.lease, "get")
        holder, self._holder = self._holder, None
        if status == 404 or (obj.get("spec") or {}).get("holderIdentity") != holder:
            return
        obj["spec"]["holderIdentity"] = None
        obj["spec"]["renewTime"] = None
        obj["spec"]["acquireTime"] = None
        await self._call("PUT", "lease", self.lease, "update", obj)  # 409: someone took it, fine


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
    access token on any call; Keycloak does on every update). On a 409 the Secret is re-read: the
    same client is written again over the new version; another client stored first wins, and a
    client this run registered is deleted again (RFC 7592). If the Secret cannot be written after a
    registration, the new client is deleted, so none is orphaned.
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
    kube = KubeStore.from_environment(settings.dcr_k8s_secret, settings.dcr_k8s_lease, settings.dcr_k8s_namespace)
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
        except StorageError as exc:
            logger.warning("Could not renew the Lease", error=str(exc))


async def _release(kube: KubeStore) -> None:
    try:
        await kube.release()
    except StorageError as exc:  # it expires by itself; the next Pod waits at most leaseDurationSeconds
        logger.warning("Could not release the Lease", error=str(exc))


def _parse(kube: KubeStore, data: dict[str, Any] | None) -> SavedRegistration | None:
    if data is None:
        return None
    try:
        shared = SavedRegistration.model_validate(data)
    except ValueError:
        raise StorageError(
            f"Secret {_secret_name(kube)} key {DATA_KEY} is not a valid registration; fix or remove that key "
            "(a new client is then registered) and run again."
        ) from None
    for secret in (shared.client_secret, shared.registration_access_token):
        if secret is not None:
            log.register_secret(secret.get_secret_value())
    return shared


async def _write_local(settings: Settings, registration_: SavedRegistration, deadline: Deadline) -> None:
    """Put a registration into the credentials file (and env file): atomic, 0600, the file's format."""
    path, env_file = settings.dcr_client_file, settings.dcr_env_file
    async with store.locked(path, deadline.remaining):
        store.probe_writable(path, env_file)
        store.save(path, registration_, env_file)


async def _shared_run(settings: Settings, kube: KubeStore, deadline: Deadline) -> flow.Outcome:
    for attempt in (1, 2):
        data, version = await kube.load()
        shared = _parse(kube, data)
        if shared is not None:
            # The Secret is the workload's truth: its registration replaces whatever this Pod's file holds.
            await _write_local(settings, shared, deadline)
            logger.info("Loaded registration from Secret", client_id=shared.client_id, secret=_secret_name(kube))
        try:
            outcome = await flow.run(settings, deadline)
        except BootstrapError:
            # Without a Lease (or with a single-use initial access token) another Pod may have stored its
            # registration while ours failed: use it rather than fail.
            if attempt == 1 and shared is None and await _filled_meanwhile(kube):
                logger.warning("Our run failed but another Pod has stored a registration; using it")
                continue
            raise
        return await _publish(settings, kube, outcome, data, version, deadline)
    raise AssertionError("unreachable")


async def _filled_meanwhile(kube: KubeStore) -> bool:
    try:
        data, _ = await kube.load()
    except StorageError:
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
    """Write the run's registration to the Secret (create, or replace at ``version``); reconcile on 409."""
    mine = outcome.registration
    wanted = mine.to_file()
    fresh = outcome.action == "registered"
    undo = (
        flow.undo_on_failure(lambda: _undo_registration(settings, mine), mine.client_id)
        if fresh
        else contextlib.nullcontext()
    )
    async with undo:
        for _ in range(SECRET_WRITE_ATTEMPTS):
            if wanted == data:
                return outcome
            try:
                await kube.save(wanted, version)
            except StoreConflict:
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
        _, note = await delete_client(settings, mine)
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


async def _undo_registration(settings: Settings, new: SavedRegistration) -> str:
    """The Secret could not take a client this run registered: delete it, and its file if that worked."""
    deleted, note = await delete_client(settings, new)
    if deleted:
        try:
            store.remove(settings.dcr_client_file, settings.dcr_env_file)
        except StorageError:
            return note + f" Remove {settings.dcr_client_file} by hand."
    else:
        # Kept: with the Secret still empty, the next run reloads this file and stores it, adopting the client.
        note += f" {settings.dcr_client_file} keeps it for the next run."
    return note


async def delete_client(settings: Settings, new: SavedRegistration) -> tuple[bool, str]:
    """RFC 7592 DELETE of a client this run created, on its own short budget: (gone now, what happened)."""
    async with flow.transport_for(settings, Deadline(flow.CLEANUP_TIMEOUT), new.issuer) as transport:
        return await flow.delete_created(transport, new)
