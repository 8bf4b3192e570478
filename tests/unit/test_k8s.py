"""KubeStore and run_shared against a hostile fake Kubernetes API on loopback.

The fake keeps Secrets and Leases with resourceVersions (409 on a stale one, AlreadyExists on a
second create) and can be told to misbehave on the next request to a method and kind: redirect to a
second server that records what reaches it, 429/503, answer slowly, apply a write and then drop the
connection, send a gzip bomb, an oversize or HTML body, or a 404 that is no Kubernetes Status.
Every run_shared test also uses the fake authorization server of tests/fakeserver.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bootstrap import flow, k8s, lifecycle, log, store
from bootstrap.commands import ROTATE_NOW
from bootstrap.errors import ConfigError, LockTimeout, StorageError
from bootstrap.k8s import DATA_KEY, KubeApi, KubeStore
from bootstrap.settings import Settings
from bootstrap.wait import Deadline, RetryPolicy
from tests.fakeserver import FakeServer, serve_app, serving, settings_for
from tests.faults import FaultAt

KUBE_TOKEN = "kube-bearer-token-value"
NS = "shop"
SECRET = "dcr"
LEASE = "dcr-lock"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Trick = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def _status(code: int, reason: str, message: str = "") -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code}
    return web.json_response(body | {"message": message}, status=code)


@dataclass
class FakeKube:
    """Secrets and Leases of one API server, with scripted misbehaviour (``trick``)."""

    base: str = ""
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    version: int = 100
    seen: list[str] = field(default_factory=list)  # "METHOD kind"
    authorization: set[str] = field(default_factory=set)
    tricks: dict[str, list[Trick]] = field(default_factory=dict)
    config: Path = Path("/nonexistent")  # a kubeconfig pointing at it, once it serves

    def trick(self, key: str, *tricks: Trick) -> None:
        """Answer the next requests to ``key`` ("PUT secret", "GET lease", ...) with these, in turn."""
        self.tricks.setdefault(key, []).extend(tricks)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._misbehave])
        for kind, prefix in (("secrets", "/api/v1"), ("leases", "/apis/coordination.k8s.io/v1")):
            collection = prefix + "/namespaces/{ns}/" + kind
            app.add_routes(
                [
                    web.get(collection + "/{name}", self.get),
                    web.post(collection, self.create),
                    web.put(collection + "/{name}", self.update),
                ]
            )
        deployment = "/apis/apps/v1/namespaces/{ns}/deployments/{name}"
        app.add_routes([web.get(deployment, self.get), web.patch(deployment, self.patch)])
        return app

    @staticmethod
    def _kind(request: web.Request) -> str:
        return next((kind for kind in ("secret", "deployment") if f"/{kind}s" in request.path), "lease")

    @web.middleware
    async def _misbehave(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        key = f"{request.method} {self._kind(request)}"
        self.seen.append(key)
        self.authorization.add(request.headers.get("Authorization", ""))
        queued = self.tricks.get(key)
        if queued:
            return await queued.pop(0)(request, handler)
        return await handler(request)

    def _key(self, request: web.Request, name: str) -> tuple[str, str, str]:
        return self._kind(request), request.match_info["ns"], name

    def put_secret(self, registration: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        """Store a Secret as an admin would (``extra``: more top-level fields, e.g. metadata)."""
        data = extra.pop("data", {})
        if registration is not None:
            data = dict(data)
            data[DATA_KEY] = base64.b64encode(json.dumps(registration).encode()).decode()
        obj = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": data} | extra
        obj["metadata"] = {"name": SECRET, "namespace": NS} | obj.get("metadata", {})
        return self._store(("secret", NS, SECRET), obj)

    def _store(self, key: tuple[str, str, str], obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        obj["metadata"] = dict(obj.get("metadata") or {}) | {"resourceVersion": str(self.version)}
        self.objects[key] = obj
        return obj

    def shared(self) -> dict[str, Any] | None:
        """The registration in the Secret, or None."""
        raw = (self.objects.get(("secret", NS, SECRET), {}).get("data") or {}).get(DATA_KEY)
        return dict(json.loads(base64.b64decode(raw))) if raw else None

    async def get(self, request: web.Request) -> web.Response:
        obj = self.objects.get(self._key(request, request.match_info["name"]))
        if obj is None:
            return _status(404, "NotFound", "not found")
        return web.json_response(obj)

    async def create(self, request: web.Request) -> web.Response:
        obj = await request.json()
        key = self._key(request, obj["metadata"]["name"])
        if key in self.objects:
            return _status(409, "AlreadyExists", "already exists")
        return web.json_response(self._store(key, obj), status=201)

    async def patch(self, request: web.Request) -> web.Response:
        """A JSON merge patch (RFC 7386) of a Deployment; a template change is a new generation."""
        key = self._key(request, request.match_info["name"])
        current = self.objects.get(key)
        if current is None:
            return _status(404, "NotFound", "not found")
        patched = merge_patch(current, await request.json())
        if patched.get("spec") != current.get("spec"):
            patched["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        return web.json_response(self._store(key, patched))

    def put_deployment(self, replicas: int = 2, **status: int) -> dict[str, Any]:
        """A Deployment named ``app``; ``status``: the controller's counts (every replica updated by default)."""
        counts = {"replicas": replicas, "updatedReplicas": replicas, "availableReplicas": replicas} | status
        obj = {
            "metadata": {"name": "app", "namespace": NS, "generation": 1},
            "spec": {"replicas": replicas, "template": {"metadata": {}}},
            "status": {"observedGeneration": 1} | counts,
        }
        return self._store(("deployment", NS, "app"), obj)

    def deployment(self) -> dict[str, Any]:
        return self.objects[("deployment", NS, "app")]

    def settle(self, **status: int) -> None:
        """The controller finished the roll-out (or reports ``status``)."""
        obj = self.deployment()
        replicas = obj["spec"]["replicas"]
        obj["status"] = {
            "observedGeneration": obj["metadata"]["generation"],
            "replicas": replicas,
            "updatedReplicas": replicas,
            "availableReplicas": replicas,
        } | status

    async def update(self, request: web.Request) -> web.Response:
        obj = await request.json()
        key = self._key(request, request.match_info["name"])
        current = self.objects.get(key)
        if current is None:
            return _status(404, "NotFound", "not found")
        if obj["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            return _status(409, "Conflict", "the object has been modified")
        return web.json_response(self._store(key, obj))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# --- tricks ---


def answer(status: int, body: bytes = b"{}", headers: dict[str, str] | None = None) -> Trick:
    async def trick(request: web.Request, handler: Handler) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers={"Content-Type": "application/json"} | (headers or {}))

    return trick


def redirect(location: str) -> Trick:
    return answer(307, b"", {"Location": location})


def slow(seconds: float) -> Trick:
    async def trick(request: web.Request, handler: Handler) -> web.StreamResponse:
        await asyncio.sleep(seconds)  # the server is slow, not the test
        return await handler(request)

    return trick


def lost() -> Trick:
    """Apply the request, then close the connection instead of answering."""

    async def trick(request: web.Request, handler: Handler) -> web.StreamResponse:
        await handler(request)
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    return trick


def applied_then(status: int) -> Trick:
    """Apply the request, then answer ``status`` anyway (a gateway losing the answer)."""

    async def trick(request: web.Request, handler: Handler) -> web.StreamResponse:
        await handler(request)
        return _status(status, "InternalError", "etcdserver: request timed out")

    return trick


@asynccontextmanager
async def serving_kube(fake: FakeKube) -> AsyncIterator[FakeKube]:
    # A slow handler must not hold up the teardown.
    async with serve_app(fake.app(), shutdown_timeout=0.1) as fake.base:
        yield fake


@dataclass
class Witness:
    """A second server: a redirect's target, recording whether anything reached it."""

    base: str = ""
    received: list[tuple[str, str, bytes]] = field(default_factory=list)

    async def any(self, request: web.Request) -> web.Response:
        self.received.append((request.method, request.headers.get("Authorization", ""), await request.read()))
        return web.json_response({"kind": "Secret", "metadata": {"resourceVersion": "1"}})


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[FakeKube]:
    async with serving_kube(FakeKube()) as fake:
        fake.config = kubeconfig(tmp_path / "fake-kube.json", fake.base)
        yield fake


@pytest.fixture
async def witness() -> AsyncIterator[Witness]:
    seen = Witness()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", seen.any)
    async with serve_app(app) as seen.base:
        yield seen


def kubeconfig(path: Path, server: str, **cluster: Any) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server} | cluster}],
        "users": [{"name": "u", "user": {"token": KUBE_TOKEN}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": NS}}],
        "current-context": "x",
    }
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(autouse=True)
def outside_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOSTNAME", "pod-a")


def kube_store(
    kube: FakeKube, *, timeout: float | None = None, attempt: float | None = None, lease: str | None = None
) -> KubeStore:
    """A store on the fake, from a kubeconfig (``timeout``: the run's deadline, ``attempt``: DCR_ATTEMPT_TIMEOUT)."""
    timing: dict[str, Any] = {}
    if timeout is not None:
        timing["policy"] = RetryPolicy(Deadline(timeout))
    if attempt is not None:
        timing["attempt_timeout"] = attempt
    return KubeStore.from_environment(SECRET, lease, kubeconfig=kube.config, **timing)


def shared_settings(
    server: FakeServer, kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: object
) -> Settings:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "kubeconfig.json", kube.base)))
    values: dict[str, object] = {"dcr_k8s_secret": SECRET, "dcr_k8s_lease": LEASE, "dcr_client_name": "mcp-server"}
    return settings_for(server, tmp_path, **(values | overrides))


def registration(client_id: str = "c-1", **extra: object) -> dict[str, Any]:
    return {"client_id": client_id, "client_secret": "shared-secret-value", "issuer": "http://127.0.0.1/x"} | extra


def no_secret_in(text: str, *secrets: str) -> None:
    for secret in secrets:
        if secret in text:  # an explicit raise: an assert would print the secret
            raise AssertionError("a secret leaked")


def consistent(server: FakeServer, kube: FakeKube, when: str = "") -> None:
    """Every client on the authorization server is the one the Secret names, and that one exists."""
    shared = kube.shared()
    named = {shared["client_id"]} if shared else set()
    assert set(server.clients) <= named, f"{when}: orphans {set(server.clients) - named}"
    assert named <= set(server.clients), f"{when}: the Secret names a deleted client"


# --- item 1: the API server's transport rules ---


async def test_a_redirect_is_a_storage_error_and_nothing_is_resent(kube: FakeKube, witness: Witness) -> None:
    """A 307 on the Secret write is refused: the body and the bearer token never reach the redirect's target."""
    kube.trick("POST secret", redirect(f"{witness.base}/steal"))
    async with kube_store(kube) as s:
        with pytest.raises(StorageError, match="redirect") as caught:
            await s.save(registration(), None)
    assert witness.received == []
    assert "HTTP 307" in str(caught.value)


async def test_a_redirected_run_deletes_its_client_and_never_reports_success(
    kube: FakeKube, witness: Witness, server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_shared with a redirected Secret write fails (exit 6), leaving no client and nothing sent elsewhere."""
    kube.trick("POST secret", redirect(f"{witness.base}/steal"))
    with pytest.raises(StorageError, match="redirect"):
        await k8s.run_shared(shared_settings(server, kube, tmp_path, monkeypatch))
    assert witness.received == [] and server.clients == {}


def test_plain_http_to_a_remote_host_is_refused_before_any_connection(tmp_path: Path) -> None:
    """http:// to a non-loopback API server is a ConfigError before anything is sent."""
    config = kubeconfig(tmp_path / "k.json", "http://kube.example.test:8080")
    with pytest.raises(ConfigError, match="DCR_K8S_ALLOW_HTTP"):
        KubeStore.from_environment(SECRET, kubeconfig=config)


def test_plain_http_to_a_remote_host_is_allowed_by_the_explicit_opt_in(tmp_path: Path) -> None:
    """DCR_K8S_ALLOW_HTTP (allow_http) lets a plain-http API server off loopback be used."""
    config = kubeconfig(tmp_path / "k.json", "http://kube.example.test:8080")
    assert KubeStore.from_environment(SECRET, kubeconfig=config, allow_http=True).api.server.startswith("http:")


async def test_run_shared_refuses_remote_http_unless_allowed(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_shared refuses a remote plain-http API server, registering nothing, unless DCR_K8S_ALLOW_HTTP is set."""
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "k.json", "http://kube.example.test")))
    settings = settings_for(server, tmp_path, dcr_k8s_secret=SECRET, dcr_client_name="mcp-server")
    with pytest.raises(ConfigError, match="plain http"):
        await k8s.run_shared(settings)
    assert server.registered == 0
    # Allowed, it tries: a TEST-NET address (no DNS look-up) that never answers, until the deadline.
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "k.json", "http://192.0.2.1:9")))
    allowed = settings.model_copy(update={"dcr_k8s_allow_http": True, "dcr_wait_timeout": 0.3})
    with pytest.raises(StorageError, match=r"192\.0\.2\.1"):
        await k8s.run_shared(allowed)


def test_insecure_skip_tls_verify_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """insecure-skip-tls-verify: true in a kubeconfig logs a warning (every run reads the kubeconfig)."""
    log.configure("json")
    config = kubeconfig(tmp_path / "k.json", "https://127.0.0.1:6443", **{"insecure-skip-tls-verify": True})
    KubeStore.from_environment(SECRET, kubeconfig=config)
    assert "insecure-skip-tls-verify" in capsys.readouterr().err


async def test_a_gzip_bomb_is_a_storage_error(kube: FakeKube) -> None:
    """A small gzip body inflating past 1 MiB is refused without inflating it."""
    bomb = gzip.compress(b" " * (16 * 1024 * 1024))
    kube.trick("GET secret", answer(200, bomb, {"Content-Encoding": "gzip"}))
    async with kube_store(kube) as s:
        with pytest.raises(StorageError, match="1 MiB"):
            await s.load()


async def test_an_oversize_body_is_a_storage_error(kube: FakeKube) -> None:
    """A body over 1 MiB is refused."""
    kube.trick("GET secret", answer(200, b'{"x": "' + b"a" * (2 * 1024 * 1024) + b'"}'))
    async with kube_store(kube) as s:
        with pytest.raises(StorageError, match="1 MiB"):
            await s.load()


async def test_a_slow_api_server_cannot_outlast_the_deadline(
    kube: FakeKube, server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With DCR_WAIT_TIMEOUT=1 a hanging API server ends the run at the deadline, as a StorageError: the one
    attempt is cut there, never waited out (30 s) nor tried again."""
    kube.trick("GET lease", *[slow(30)] * 5)
    settings = shared_settings(server, kube, tmp_path, monkeypatch, dcr_wait_timeout=1)
    with pytest.raises(StorageError):
        await k8s.run_shared(settings)
    assert kube.seen.count("GET lease") == 1


async def test_an_attempt_is_cut_at_the_attempt_timeout_and_retried(kube: FakeKube) -> None:
    """A GET slower than the attempt timeout is retried, within the deadline."""
    kube.put_secret(registration())
    kube.trick("GET secret", slow(30))
    async with kube_store(kube, timeout=10, attempt=2) as s:  # 2 s: room for a loaded machine's second GET
        data, _ = await s.load()
    assert data == registration() and kube.seen.count("GET secret") == 2


@pytest.mark.parametrize("status", [429, 503, 500, 502])
async def test_a_read_answered_with_429_or_5xx_is_retried(kube: FakeKube, status: int) -> None:
    """429 and 5xx on a read are retried by the run's policy."""
    kube.put_secret(registration())
    kube.trick("GET secret", answer(status, headers={"Retry-After": "0"}))
    async with kube_store(kube) as s:
        data, _ = await s.load()
    assert data == registration()


async def test_a_retry_after_beyond_the_deadline_stops_at_once(kube: FakeKube) -> None:
    """429 with a Retry-After longer than the time left fails now, saying so."""
    kube.trick("GET secret", answer(429, headers={"Retry-After": "3600"}))
    async with kube_store(kube, timeout=5) as s:
        with pytest.raises(StorageError, match="3600"):
            await s.load()  # waiting out the hour would hang here; the answer is at once
    assert kube.seen.count("GET secret") == 1


async def test_a_write_answered_429_is_retried(kube: FakeKube) -> None:
    """429 on a Secret write (not processed) is repeated."""
    kube.trick("POST secret", answer(429, headers={"Retry-After": "0"}))
    async with kube_store(kube) as s:
        await s.save(registration(), None)
    assert kube.shared() == registration()


async def test_a_lost_answer_after_the_write_landed_is_success(
    kube: FakeKube, server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Secret write applies but the connection drops: the re-read finds our client, which is kept."""
    kube.trick("POST secret", lost())
    outcome = await k8s.run_shared(shared_settings(server, kube, tmp_path, monkeypatch))
    assert outcome.action == "registered"
    assert kube.shared() is not None and kube.shared()["client_id"] == outcome.registration.client_id  # type: ignore[index]
    consistent(server, kube)


async def test_a_5xx_after_the_write_landed_is_success(
    kube: FakeKube, server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Secret write applies but a 504 comes back: the re-read finds our client; nothing is deleted."""
    kube.trick("POST secret", applied_then(504))
    outcome = await k8s.run_shared(shared_settings(server, kube, tmp_path, monkeypatch))
    assert outcome.registration.client_id in server.clients
    consistent(server, kube)


async def test_a_5xx_on_a_write_that_did_not_land_writes_again(
    kube: FakeKube, server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 500 on the Secret write, not applied: the re-read finds it empty and the write is made again."""
    kube.trick("POST secret", answer(500, b'{"kind": "Status", "message": "boom"}'))
    outcome = await k8s.run_shared(shared_settings(server, kube, tmp_path, monkeypatch))
    assert kube.seen.count("POST secret") == 2
    assert len(server.clients) == 1 and outcome.registration.client_id in server.clients
    consistent(server, kube)


async def test_a_lost_answer_when_another_client_landed_first_adopts_it(
    kube: FakeKube, server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write's answer is lost and the re-read shows another Pod's client: theirs wins, ours is deleted."""
    settings = shared_settings(server, kube, tmp_path, monkeypatch)
    theirs = await flow.run(settings_for(server, tmp_path / "other", dcr_client_name="mcp-server"))
    (tmp_path / "other").mkdir(exist_ok=True)

    async def other_pod_wins(request: web.Request, handler: Handler) -> web.StreamResponse:
        kube.put_secret(theirs.registration.to_file())
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    kube.trick("POST secret", other_pod_wins)
    outcome = await k8s.run_shared(settings)
    assert outcome.registration.client_id == theirs.registration.client_id
    consistent(server, kube)


# --- item 2: nothing but a BootstrapError escapes; no orphan ---

HOSTILE_ANSWERS = {
    "html on 200": answer(200, b"<html>ok</html>", {"Content-Type": "text/html"}),
    "JSON list": answer(200, b"[1, 2]"),
    "no resourceVersion": answer(200, b'{"kind": "Secret", "metadata": {}}'),
    "resourceVersion a number": answer(200, b'{"kind": "Secret", "metadata": {"resourceVersion": 7}}'),
    "404 without Status": answer(404, b"<html>404</html>"),
    "418 with a huge message": answer(418, json.dumps({"message": "x\n" * 5000}).encode()),
}


@pytest.mark.parametrize("trick", HOSTILE_ANSWERS.values(), ids=HOSTILE_ANSWERS.keys())
async def test_a_hostile_secret_write_answer_is_one_storage_error_and_no_orphan(
    kube: FakeKube, server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trick: Trick
) -> None:
    """An unusable answer to the Secret write is a StorageError on one line; the new client is deleted."""
    kube.trick("POST secret", trick)
    with pytest.raises(StorageError) as caught:
        await k8s.run_shared(shared_settings(server, kube, tmp_path, monkeypatch))
    message = str(caught.value)
    assert "\n" not in message and len(message) < 1200
    assert server.registered == 1 and server.clients == {}
    consistent(server, kube)


MALFORMED = {k: v for k, v in HOSTILE_ANSWERS.items() if not k.startswith("418")}


@pytest.mark.parametrize("trick", MALFORMED.values(), ids=MALFORMED.keys())
@pytest.mark.parametrize("key", ["GET lease", "POST lease", "GET secret"])
async def test_a_hostile_read_or_lease_answer_is_a_storage_error_before_registering(
    kube: FakeKube, server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trick: Trick, key: str
) -> None:
    """Unusable Lease or Secret answers before the flow are a StorageError, and nothing is registered."""
    kube.trick(key, *[trick] * 3)
    with pytest.raises(StorageError):
        await k8s.run_shared(shared_settings(server, kube, tmp_path, monkeypatch))
    assert server.registered == 0


@pytest.mark.parametrize(
    "lease",
    [
        {"spec": "nonsense"},
        {"spec": {"holderIdentity": 5, "renewTime": 12, "leaseDurationSeconds": "x", "leaseTransitions": "y"}},
    ],
)
async def test_a_malformed_lease_is_taken_over_cleanly(kube: FakeKube, lease: dict[str, Any]) -> None:
    """A Lease whose spec has wrong types names no holder: it is taken over, never a TypeError."""
    kube._store(("lease", NS, LEASE), {"metadata": {"name": LEASE}} | lease)
    async with kube_store(kube, lease=LEASE) as s:
        await s.acquire("pod-a", timeout=1)
        await s.release()


async def test_a_held_lease_with_unreadable_times_is_waited_for_by_our_own_clock(kube: FakeKube) -> None:
    """A holder's renewTime is never read: a Lease held with nonsense times is still held until it stays unchanged
    for its duration on our clock, so a short wait ends in LockTimeout naming the holder."""
    spec = {"holderIdentity": "other", "renewTime": "not a time", "acquireTime": ["x"], "leaseDurationSeconds": 60}
    kube._store(("lease", NS, LEASE), {"metadata": {"name": LEASE}, "spec": spec})
    async with kube_store(kube, lease=LEASE) as s:
        with pytest.raises(LockTimeout, match="held by other"):
            await s.acquire("pod-a", timeout=0.2)


@pytest.mark.parametrize(
    "secret",
    [
        {"data": "nonsense"},
        {"data": ["x"]},
    ],
    ids=["data a string", "data a list"],
)
async def test_a_malformed_secret_is_a_storage_error(
    kube: FakeKube,
    server: FakeServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    secret: dict[str, Any],
) -> None:
    """A Secret whose data is not a registration is one StorageError, and nothing is registered."""
    kube.put_secret(**secret)
    with pytest.raises(StorageError, match=f"{NS}/{SECRET}"):
        await k8s.run_shared(shared_settings(server, kube, tmp_path, monkeypatch))
    assert server.registered == 0


@pytest.mark.parametrize("lease", [LEASE, None])
async def test_a_fault_at_any_await_after_registering_leaves_no_orphan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lease: str | None
) -> None:
    """A fault thrown at each await once the run knows its new client: the Secret names every client left,
    and the next clean run succeeds with exactly one client."""
    n, fired = 0, True
    while fired:
        n += 1
        folder = tmp_path / f"trial-{n}"
        folder.mkdir()
        async with serving(FakeServer()) as server, serving_kube(FakeKube()) as kube:
            settings = shared_settings(server, kube, folder, monkeypatch, dcr_k8s_lease=lease)
            fault = FaultAt(n, armed=_knows_its_client(settings))
            with contextlib.suppress(Exception):  # the fault, or the error it became
                await fault.run(k8s.run_shared(settings))
            fired = fault.fired
            await _settle()
            consistent(server, kube, f"trial {n}, {fault}")
            # A fault inside the release leaves the Lease held until it expires; let it have expired.
            kube.objects.pop(("lease", NS, LEASE), None)
            await k8s.run_shared(settings)
            assert len(server.clients) == 1, f"trial {n}: {len(server.clients)} clients"
            consistent(server, kube)
    assert n > 4  # token request, closing up, the Secret write, the Lease: the loop really walked them


def _knows_its_client(settings: Settings) -> Callable[[], bool]:
    """Armed from the moment the run has parsed the registration answer (flow records it as pending at once).

    Before that a fault loses the answer itself: the server's client exists, but no run can know its id.
    """
    pending = store.pending_path(settings.dcr_client_file)
    known: list[bool] = []

    def armed() -> bool:
        if not known and pending.exists():
            known.append(True)
        return bool(known)

    return armed


async def _settle() -> None:
    """Let shielded clean-ups that outlived the fault finish: the tasks running our code (not the fakes'
    handlers), waited for within their own budget (flow.CLEANUP_TIMEOUT), however slow the machine."""
    current = asyncio.current_task()
    ours = [t for t in asyncio.all_tasks() if t is not current and not t.done() and _runs_bootstrap(t)]
    if ours:
        await asyncio.wait(ours, timeout=flow.CLEANUP_TIMEOUT * 2)


def _runs_bootstrap(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and f"{os.sep}bootstrap{os.sep}" in code.co_filename


# --- item 5: what others put on the Secret survives ---


async def test_a_write_keeps_other_keys_labels_annotations_owners_and_finalizers(kube: FakeKube) -> None:
    """Our PUT changes only our key and label; everything else on the Secret is sent back as read."""
    metadata = {
        "labels": {"app": "shop"},
        "annotations": {"note": "keep"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "shop", "uid": "u-1"}],
        "finalizers": ["example.com/keep"],
    }
    kube.put_secret(metadata=metadata, data={"other": base64.b64encode(b"theirs").decode()}, type="example/kind")
    async with kube_store(kube) as s:
        _, rv = await s.load()
        await s.save(registration(), rv)
    obj = kube.objects[("secret", NS, SECRET)]
    assert obj["data"]["other"] == base64.b64encode(b"theirs").decode() and obj["type"] == "example/kind"
    assert obj["metadata"]["labels"] == {"app": "shop", "app.kubernetes.io/managed-by": "dcr-bootstrap"}
    for key in ("annotations", "ownerReferences", "finalizers"):
        assert obj["metadata"][key] == metadata[key]
    assert kube.shared() == registration()


async def test_a_secret_another_tool_manages_keeps_its_managed_by_label(kube: FakeKube) -> None:
    """A Secret Helm created (managed-by: Helm) stays Helm's after our write: a reinstall can adopt it."""
    kube.put_secret(metadata={"labels": {"app.kubernetes.io/managed-by": "Helm"}})
    async with kube_store(kube) as s:
        _, rv = await s.load()
        await s.save(registration(), rv)
    assert kube.objects[("secret", NS, SECRET)]["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "Helm"}


# --- item 3: secrets masked ---


async def test_the_api_servers_message_is_escaped_capped_and_masked(
    kube: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hostile Status message echoing our token ends up escaped, capped and masked in the logged error."""
    log.configure("json")
    message = f"denied for Bearer {KUBE_TOKEN}\nFORGED LINE " + "y" * 5000
    kube.trick("GET secret", answer(422, json.dumps({"kind": "Status", "message": message}).encode()))
    async with kube_store(kube) as s:
        with pytest.raises(StorageError) as caught:
            await s.load()
    text = str(caught.value)
    if "\n" in text or len(text) > 600:  # an explicit raise: an assert would print the message
        raise AssertionError("the server's message reached our error unescaped or uncapped")
    log.get_logger().error(text)
    no_secret_in(capsys.readouterr().err, KUBE_TOKEN)


async def test_the_bearer_token_is_sent_and_registered_as_a_secret(kube: FakeKube, tmp_path: Path) -> None:
    """The token from a kubeconfig's tokenFile is used, and masked in logs."""
    (tmp_path / "tok").write_text("file-token-value-123\n")
    config = kubeconfig(tmp_path / "k.json", kube.base)
    data = json.loads(config.read_text())
    data["users"][0]["user"] = {"tokenFile": "tok"}  # relative to the kubeconfig's folder
    config.write_text(json.dumps(data))
    kube.put_secret(registration())
    async with KubeStore.from_environment(SECRET, kubeconfig=config) as s:
        await s.load()
    if kube.authorization != {"Bearer file-token-value-123"}:
        raise AssertionError("the tokenFile's token was not the one sent")
    no_secret_in(log._scrub("x file-token-value-123 y"), "file-token-value-123")


# --- item 4: Kubernetes input validated ---


@pytest.mark.parametrize("namespace", ["Shop", "../kube-system", "a/b", "x" * 300, "ns?watch=1"])
def test_a_bad_namespace_in_the_kubeconfig_is_a_config_error(tmp_path: Path, namespace: str) -> None:
    """The kubeconfig context's namespace must be a DNS-1123 name before it goes into a URL."""
    config = kubeconfig(tmp_path / "k.json", "https://127.0.0.1:6443")
    data = json.loads(config.read_text())
    data["contexts"][0]["context"]["namespace"] = namespace
    config.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="DNS-1123"):
        KubeStore.from_environment(SECRET, kubeconfig=config)


def test_a_bad_namespace_file_in_the_pod_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-cluster namespace file is validated too."""
    (tmp_path / "token").write_text("t0ken-value")
    (tmp_path / "namespace").write_text("../secrets/other\n")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    api = KubeApi.in_cluster(tmp_path)
    with pytest.raises(ConfigError, match="DNS-1123"):
        KubeStore(api, api.default_namespace, SECRET, None)


def test_kubeconfig_paths_are_relative_to_its_folder(tmp_path: Path) -> None:
    """certificate-authority and tokenFile are read relative to the kubeconfig's folder, as kubectl does."""
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "token").write_text("relative-token-value")
    config = kubeconfig(folder / "k.json", "https://127.0.0.1:6443", **{"certificate-authority": "ca.pem"})
    data = json.loads(config.read_text())
    data["users"][0]["user"] = {"tokenFile": "token"}
    config.write_text(json.dumps(data))
    api = KubeApi.from_kubeconfig(config)
    assert api.ca_file == folder / "ca.pem" and api.token == "relative-token-value"


@pytest.mark.parametrize(
    "config",
    [{"clusters": "x"}, {"clusters": [{"name": "c", "cluster": {"server": 5}}]}, {"clusters": [1, None]}],
)
def test_a_malformed_kubeconfig_is_a_storage_error(tmp_path: Path, config: dict[str, Any]) -> None:
    """Wrong types in a kubeconfig are one StorageError, not a KeyError or TypeError."""
    path = tmp_path / "k.json"
    path.write_text(json.dumps(config))
    with pytest.raises(StorageError, match="kubeconfig"):
        KubeApi.from_kubeconfig(path)


# --- the credential lifecycle in shared mode ---


async def test_a_replaced_client_is_kept_in_the_secret_and_retired_by_another_pod_after_its_grace(
    server: FakeServer, kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registration a Pod replaced is listed in the Secret, so a Pod with a fresh folder deletes it later."""
    server.secret_lifetime = 3600
    for pod in ("pod-a", "pod-b", "pod-c"):
        (tmp_path / pod).mkdir()
    first = await k8s.run_shared(shared_settings(server, kube, tmp_path / "pod-a", monkeypatch))
    replaced = await k8s.run_shared(
        shared_settings(
            server, kube, tmp_path / "pod-b", monkeypatch, dcr_rotate_after=ROTATE_NOW, dcr_rotate_grace="10m"
        )
    )
    assert replaced.action == "replaced"
    shared = kube.shared()
    assert shared is not None and [r["registration"]["client_id"] for r in shared["retired"]] == [
        first.registration.client_id
    ]
    later = lifecycle.now() + 900  # past the grace, long before the new secret is due
    monkeypatch.setattr(lifecycle, "now", lambda: later)
    await k8s.run_shared(shared_settings(server, kube, tmp_path / "pod-c", monkeypatch))
    assert set(server.clients) == {replaced.registration.client_id}
    assert "retired" not in (kube.shared() or {})
