"""'watch' made visible: Prometheus metrics and two probes on DCR_METRICS_ADDR (docs/monitoring.md).

``Monitor`` keeps the figures in a private registry (no process collectors, no global state) and
answers the probes: ``/healthz`` while the loop keeps its own pace, ``/readyz`` while the last round
proved the credentials (a run succeeds only after a token request or an RFC 7592 read). The listener
serves these three paths and nothing else, and a scraper cannot hold it: connections are capped and
each lives a bounded time, requests are small and their headers few. No label or line carries a URL,
a client secret or a token: labels are drawn from fixed sets of names.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from . import __version__, _http, lifecycle, log
from ._context import CLEANUP_TIMEOUT, Outcome
from ._parse import split_addr
from .errors import BootstrapError, ConfigError
from .settings import Settings

logger = log.get_logger()

# What each outcome did, as the operation an operator counts.
OPERATIONS = {
    "registered": "register",
    "replaced": "register",
    "reloaded": "read",
    "static": "read",
    "updated": "update",
    "renewed": "renew",
    "rotated": "rotate",
}
# /readyz: the credentials were proven within this many intervals (plus one round's time).
READY_INTERVALS = 3
# /healthz: a loop that has not reached its next step this long after it was due is hung.
SLACK = 30.0
# The listener's bounds: a scrape is a few small requests, anything beyond that is refused or cut off.
MAX_CONNECTIONS = 16
CONNECTION_LIFETIME = 10.0
MAX_REQUEST = 4096


class Monitor:
    """The watch loop's figures and probes; ``clock`` (epoch seconds) and ``ticks`` (monotonic) for tests."""

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        ticks: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings, self._clock, self._ticks = settings, clock, ticks
        self.registry = CollectorRegistry()
        self._alive_until = ticks() + self._round_budget() + SLACK
        self._proven_at: float | None = None  # when the last round succeeded; None after a failed one
        self._define(self.registry)

    def _define(self, r: CollectorRegistry) -> None:
        p = "dcr_bootstrap_"
        self.valid = Gauge(p + "credentials_valid", "1 when the last round proved the credentials", registry=r)
        self.expires = Gauge(
            p + "client_secret_expiration_timestamp_seconds", "When the client secret expires (0: never)", registry=r
        )
        self.next_rotation = Gauge(
            p + "next_rotation_timestamp_seconds", "When the secret is renewed or rotated next (0: never)", registry=r
        )
        self.last_success = Gauge(p + "last_success_timestamp_seconds", "When a round last succeeded", registry=r)
        self.operations = Counter(
            p + "operations", "Rounds by what they did and how", ["operation", "result"], registry=r
        )
        self.requests = Counter(
            p + "http_requests", "HTTP requests by endpoint and status", ["endpoint", "code"], registry=r
        )
        self.durations = Histogram(
            p + "http_request_duration_seconds", "HTTP request time by endpoint", ["endpoint"], registry=r
        )
        self.hooks = Counter(p + "change_hooks", "DCR_ON_CHANGE runs by result", ["result"], registry=r)
        self.rollouts = Counter(p + "rollouts", "DCR_K8S_ROLLOUT patches by result", ["result"], registry=r)
        Gauge(p + "build_info", "The running version", ["version"], registry=r).labels(__version__).set(1)

    def _round_budget(self) -> float:
        s = self.settings
        return s.dcr_wait_timeout + CLEANUP_TIMEOUT + (s.dcr_on_change_timeout if s.dcr_on_change else 0.0)

    # --- what the loop tells ---
    def round_started(self) -> None:
        self._alive_until = self._ticks() + self._round_budget() + SLACK

    def sleeping(self, seconds: float) -> None:
        self._alive_until = self._ticks() + seconds + SLACK

    def succeeded(self, outcome: Outcome) -> None:
        saved = outcome.registration
        now = self._clock()
        self._proven_at = now
        self.valid.set(1)
        self.last_success.set(now)
        self.expires.set(saved.client_secret_expires_at or 0)
        times = [t for t in (lifecycle.renew_at(self.settings, saved), lifecycle.rotate_at(self.settings, saved)) if t]
        self.next_rotation.set(min(times) if times else 0)
        self.operations.labels(OPERATIONS.get(outcome.action, "run"), "success").inc()

    def failed(self, _: BootstrapError) -> None:
        self._proven_at = None
        self.valid.set(0)
        self.operations.labels("run", "failure").inc()

    def hook_ran(self, status: int | None) -> None:
        self.hooks.labels("success" if status == 0 else "failure").inc()

    def rollout_ran(self, result: str) -> None:
        self.rollouts.labels(result).inc()

    def observe_http(self, endpoint: str, code: str, seconds: float) -> None:
        self.requests.labels(endpoint, code).inc()
        self.durations.labels(endpoint).observe(seconds)

    # --- what the probes answer ---
    def healthy(self) -> bool:
        return self._ticks() <= self._alive_until

    def ready(self) -> bool:
        if self._proven_at is None:
            return False
        window = READY_INTERVALS * self.settings.dcr_watch_interval + self._round_budget()
        return self._clock() - self._proven_at <= window


def _app(monitor: Monitor) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(monitor.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def probe(check: Callable[[], bool]) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def answer(_: web.Request) -> web.Response:
            ok = check()
            return web.Response(status=200 if ok else 503, text="ok\n" if ok else "not ok\n")

        return answer

    app = web.Application(client_max_size=MAX_REQUEST)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", probe(monitor.healthy))
    app.router.add_get("/readyz", probe(monitor.ready))
    return app


class _Refuse(asyncio.Protocol):
    """A connection over the cap: closed at once, before a byte is read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class Listener:
    """The HTTP listener on DCR_METRICS_ADDR, on the running loop; ``start`` refuses a busy address."""

    def __init__(self, monitor: Monitor, addr: str) -> None:
        self.monitor, self.addr = monitor, addr
        self._runner = web.AppRunner(
            _app(monitor),
            access_log=None,
            handle_signals=False,
            keepalive_timeout=5.0,
            max_line_size=1024,
            max_field_size=1024,
            max_headers=32,
        )
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> Listener:
        host, port = split_addr(self.addr)
        await self._runner.setup()
        try:
            self._server = await asyncio.get_running_loop().create_server(
                self._connection, host, port, backlog=MAX_CONNECTIONS, reuse_address=True
            )
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(
                f"DCR_METRICS_ADDR={self.addr} cannot be listened on ({exc.strerror or exc}); choose a free port "
                "or stop what listens there, or unset DCR_METRICS_ADDR."
            ) from None
        _http.observers.append(self.monitor.observe_http)
        if self.monitor.settings.dcr_k8s_rollout:  # the k8s package only when configured, as everywhere
            from .k8s import _rollout

            _rollout.observers.append(self.monitor.rollout_ran)
        logger.info("Serving metrics", addr=self.addr, port=self.port, paths="/metrics /healthz /readyz")
        return self

    def _connection(self) -> asyncio.BaseProtocol:
        server = self._runner.server
        assert server is not None
        if len(server.connections) >= MAX_CONNECTIONS:
            return _Refuse()
        handler = server()
        asyncio.get_running_loop().call_later(CONNECTION_LIFETIME, handler.force_close)
        return handler

    async def stop(self) -> None:
        if self.monitor.observe_http in _http.observers:
            _http.observers.remove(self.monitor.observe_http)
        if self.monitor.settings.dcr_k8s_rollout:
            from .k8s import _rollout

            if self.monitor.rollout_ran in _rollout.observers:
                _rollout.observers.remove(self.monitor.rollout_ran)
        if self._server is not None:
            self._server.close()
        await self._runner.cleanup()


async def start(settings: Settings) -> tuple[Monitor, Listener | None]:
    """The watch loop's monitor, and its listener when DCR_METRICS_ADDR is set (a busy port: ConfigError)."""
    monitor = Monitor(settings)
    if not settings.dcr_metrics_addr:
        return monitor, None
    return monitor, await Listener(monitor, settings.dcr_metrics_addr).start()
