"""A small RFC 8414/7591/7592 server on loopback that can be told to misbehave.

It records every request (method, path, Authorization header) for assertions instead of asserting
in its handlers (an assert there would become a 500, which the tool retries until its deadline).
Hostile behaviour is scripted: ``metadata``, ``register_extra`` and ``manage_extra`` override what it says,
``fail_next`` answers the next request to a path with a status, and the registration access
token rotates on every RFC 7592 read.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from bootstrap.settings import Settings

IAT = "initial-token-value"


def settings_for(server: FakeServer, tmp_path: Path, **overrides: object) -> Settings:
    """Settings for a run against ``server`` with the credentials file in ``tmp_path``."""
    values: dict[str, object] = {
        "dcr_issuer": server.base,
        "dcr_initial_access_token": IAT,
        "dcr_client_file": tmp_path / "client.json",
        "dcr_wait_timeout": 5,
    }
    return Settings(**(values | overrides)).check()  # type: ignore[arg-type]


def saved(tmp_path: Path) -> dict[str, Any]:
    """The credentials file that ``settings_for`` names, as JSON."""
    return dict(json.loads((tmp_path / "client.json").read_text()))


@dataclass
class Seen:
    method: str
    path: str
    authorization: str


@dataclass
class FakeServer:
    base: str = ""
    clients: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # registration access token -> client id
    registered: int = 0
    seen: list[Seen] = field(default_factory=list)
    metadata_extra: dict[str, Any] = field(default_factory=dict)
    register_extra: dict[str, Any] = field(default_factory=dict)
    manage_extra: dict[str, Any] = field(default_factory=dict)  # overrides in RFC 7592 read/update answers
    failures: dict[str, list[tuple[int, dict[str, str], bytes]]] = field(default_factory=dict)
    echo_authorization: bool = False
    slow: dict[str, float] = field(default_factory=dict)  # "METHOD /path" -> seconds the server takes
    gates: dict[str, asyncio.Event] = field(default_factory=dict)  # "METHOD /path" -> handled once set
    secret_lifetime: int | None = None  # seconds: answers carry client_secret_expires_at, as Keycloak's policy
    rotate_on_update: bool = False  # an RFC 7592 update issues a new secret; the old one stays valid
    now: Callable[[], float] = time.time
    old_secrets: dict[str, set[str]] = field(default_factory=dict)  # client id -> rotated secrets still valid

    def fail_next(self, path: str, status: int, *, headers: dict[str, str] | None = None, body: bytes = b"{}") -> None:
        self.failures.setdefault(path, []).append((status, headers or {}, body))

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.add_routes(
            [
                web.get("/.well-known/oauth-authorization-server", self.metadata),
                web.post("/connect/register", self.register),
                web.get("/connect/register/{cid}", self.read),
                web.put("/connect/register/{cid}", self.update),
                web.delete("/connect/register/{cid}", self.delete),
                web.post("/connect/token", self.token),
            ]
        )
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.path, request.headers.get("Authorization", "")))
        gate = self.gates.get(f"{request.method} {request.path}")
        if gate is not None:
            await gate.wait()  # the test decides when the server goes on
        delay = self.slow.get(f"{request.method} {request.path}")
        if delay:
            await asyncio.sleep(delay)  # the server is slow, not the test
        queued = self.failures.get(request.path)
        if queued:
            status, headers, body = queued.pop(0)
            return web.Response(status=status, headers=headers, body=body, content_type="application/json")
        response: web.StreamResponse = await handler(request)
        return response

    def count(self, method: str, path: str) -> int:
        return sum(1 for s in self.seen if s.method == method and s.path == path)

    async def metadata(self, _: web.Request) -> web.Response:
        doc = {
            "issuer": self.base,
            "registration_endpoint": f"{self.base}/connect/register",
            "token_endpoint": f"{self.base}/connect/token",
        }
        return web.json_response(doc | self.metadata_extra)

    def _issue(self, cid: str) -> dict[str, Any]:
        rat = secrets.token_urlsafe(16)
        self.tokens = {t: c for t, c in self.tokens.items() if c != cid} | {rat: cid}
        return self.clients[cid] | {
            "registration_access_token": rat,
            "registration_client_uri": f"{self.base}/connect/register/{cid}",
        }

    def _new_secret(self, cid: str) -> dict[str, Any]:
        fields: dict[str, Any] = {"client_secret": secrets.token_urlsafe(16)}
        if self.secret_lifetime is not None:
            fields["client_secret_expires_at"] = int(self.now()) + self.secret_lifetime
        return fields

    async def register(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {IAT}":
            return web.json_response({"error": "invalid_token"}, status=401)
        body = await request.json()
        if body.get("token_endpoint_auth_method") not in ("client_secret_basic", "client_secret_post"):
            return web.json_response({"error": "invalid_client_metadata"}, status=400)
        self.registered += 1
        cid = f"client-{self.registered}"
        self.clients[cid] = body | {"client_id": cid} | self._new_secret(cid)
        answer = self._issue(cid) | self.register_extra
        if "client_id" in self.register_extra:  # a hostile id: remember the client under it too
            self.clients[self.register_extra["client_id"]] = self.clients[cid]
        return web.json_response({k: v for k, v in answer.items() if v is not None}, status=201)

    def _authorized(self, request: web.Request) -> str | None:
        cid = request.match_info["cid"]
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return cid if self.tokens.get(token) == cid and cid in self.clients else None

    async def read(self, request: web.Request) -> web.Response:
        cid = self._authorized(request)
        if cid is None:
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response(self._issue(cid) | self.manage_extra)

    async def update(self, request: web.Request) -> web.Response:
        cid = self._authorized(request)
        if cid is None:
            return web.json_response({"error": "invalid_token"}, status=401)
        body = await request.json()
        kept = {k: v for k, v in self.clients[cid].items() if k in ("client_secret", "client_secret_expires_at")}
        if self.rotate_on_update:
            self.old_secrets.setdefault(cid, set()).add(kept["client_secret"])
            kept = self._new_secret(cid)
        self.clients[cid] = body | kept
        return web.json_response(self._issue(cid) | self.manage_extra)

    async def delete(self, request: web.Request) -> web.Response:
        cid = self._authorized(request)
        if cid is None:
            return web.json_response({"error": "invalid_token"}, status=401)
        del self.clients[cid]
        self.tokens = {t: c for t, c in self.tokens.items() if c != cid}
        return web.Response(status=204)

    async def token(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        try:
            cid, _, secret = base64.b64decode(header.split()[1]).decode().partition(":")
        except (IndexError, ValueError):
            cid, secret = "", ""
        valid = {self.clients.get(cid, {}).get("client_secret")} | self.old_secrets.get(cid, set())
        if secret not in valid:
            description = f"bad credentials in {header}" if self.echo_authorization else "bad credentials"
            return web.json_response({"error": "invalid_client", "error_description": description}, status=401)
        return web.json_response({"access_token": "at", "token_type": "Bearer"})


@asynccontextmanager
async def serve_app(app: web.Application, *, shutdown_timeout: float = 60.0) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port for the block; yields its base URL."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serving(fake: FakeServer) -> AsyncIterator[FakeServer]:
    async with serve_app(fake.app()) as fake.base:
        yield fake


@contextmanager
def app_in_thread(app: web.Application) -> Iterator[str]:
    """``serve_app`` on a loop of its own, for a test whose main thread runs the CLI (signals need it)."""
    loop = asyncio.new_event_loop()
    up, stop = threading.Event(), asyncio.Event()
    base: list[str] = []

    async def serve() -> None:
        async with serve_app(app) as url:
            base.append(url)
            up.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    up.wait(10)
    try:
        yield base[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


@contextmanager
def serving_in_thread(fake: FakeServer) -> Iterator[FakeServer]:
    """``serving`` on a loop of its own, for a test whose main thread runs the CLI (signals need it)."""
    with app_in_thread(fake.app()) as fake.base:
        yield fake
