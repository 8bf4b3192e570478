"""'watch' with DCR_METRICS_ADDR: the exposition, the probes, and a listener that nothing can misuse."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from bootstrap import _http, commands, metrics
from bootstrap.errors import ConfigError
from bootstrap.settings import Settings, load_settings
from tests.fakeserver import IAT, FakeServer, saved, serving, settings_for
from tests.unit.conftest import Clock


@dataclass
class Watched:
    """A 'watch' task whose sleeps wait for the test: ``rounds`` yields after each round, ``next`` resumes it."""

    base: str = ""
    ended: asyncio.Queue[float] = field(default_factory=asyncio.Queue)
    resume: asyncio.Event = field(default_factory=asyncio.Event)

    async def sleep(self, wait: float) -> None:
        await self.ended.put(wait)
        await self.resume.wait()
        self.resume.clear()

    async def next_round(self) -> None:
        self.resume.set()
        await self.ended.get()

    async def get(self, path: str, **headers: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as http, http.get(self.base + path, headers=headers) as resp:
            return resp.status, await resp.text()


@asynccontextmanager
async def watching(settings: Settings) -> AsyncIterator[Watched]:
    """'watch' with its listener on a free loopback port, after its first round."""
    watched = Watched()
    with capture_logs() as logs:
        task = asyncio.ensure_future(commands._watch(settings, argparse.Namespace(), watched.sleep))
        await watched.ended.get()
    port = next(entry["port"] for entry in logs if entry["event"] == "Serving metrics")
    watched.base = f"http://127.0.0.1:{port}"
    try:
        yield watched
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The exposition parsed by prometheus_client's own parser: (name, labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _with_listener(server: FakeServer, tmp_path: Path, **overrides: object) -> Settings:
    return settings_for(server, tmp_path, dcr_metrics_addr="127.0.0.1:0", **overrides)


async def test_metrics_are_served_in_the_prometheus_text_format(server: FakeServer, tmp_path: Path) -> None:
    """After a first registration: valid credentials, one register, the requests by endpoint, the version."""
    async with watching(_with_listener(server, tmp_path)) as watched:
        status, text = await watched.get("/metrics")
    found = samples(text)
    assert status == 200
    assert found[("dcr_bootstrap_credentials_valid", ())] == 1
    assert found[("dcr_bootstrap_operations_total", (("operation", "register"), ("result", "success")))] == 1
    endpoints = {dict(labels)["endpoint"] for name, labels in found if name == "dcr_bootstrap_http_requests_total"}
    assert {"discovery", "registration", "token"} <= endpoints
    assert any(name == "dcr_bootstrap_build_info" for name, _ in found)


async def test_the_expiry_gauge_is_the_saved_client_secret_expires_at(server: FakeServer, tmp_path: Path) -> None:
    """A server that gives secrets a lifetime: the gauge says when the saved secret expires."""
    server.secret_lifetime = 3600
    async with watching(_with_listener(server, tmp_path)) as watched:
        _, text = await watched.get("/metrics")
    expires = saved(tmp_path)["client_secret_expires_at"]
    assert samples(text)[("dcr_bootstrap_client_secret_expiration_timestamp_seconds", ())] == expires > 0


async def test_no_secret_appears_in_the_exposition(server: FakeServer, tmp_path: Path) -> None:
    """Neither the client secret, the registration access token nor the initial access token is in any line."""
    async with watching(_with_listener(server, tmp_path)) as watched:
        _, text = await watched.get("/metrics")
    written = saved(tmp_path)
    for secret in (written["client_secret"], written["registration_access_token"], IAT):
        assert secret not in text


async def test_readyz_and_credentials_valid_flip_when_the_server_stops_answering_while_healthz_stays_up(
    tmp_path: Path,
) -> None:
    """A round that fails: credentials_valid 0 and /readyz 503, while the live loop keeps /healthz 200."""
    async with AsyncExitStack() as fake_running:
        fake = await fake_running.enter_async_context(serving(FakeServer()))
        settings = _with_listener(fake, tmp_path, dcr_wait_timeout=1)
        async with watching(settings) as watched:
            assert (await watched.get("/readyz"))[0] == 200
            await fake_running.aclose()  # the server stops answering
            await watched.next_round()
            _, text = await watched.get("/metrics")
            assert samples(text)[("dcr_bootstrap_credentials_valid", ())] == 0
            assert (await watched.get("/readyz"))[0] == 503
            assert (await watched.get("/healthz"))[0] == 200


async def test_the_listener_serves_nothing_but_metrics_and_probes(server: FakeServer, tmp_path: Path) -> None:
    """Any other path is 404."""
    async with watching(_with_listener(server, tmp_path)) as watched:
        assert (await watched.get("/"))[0] == 404
        assert (await watched.get("/metrics/../../etc/passwd"))[0] == 404


async def test_an_oversized_request_is_refused(server: FakeServer, tmp_path: Path) -> None:
    """A header past the listener's small limit is answered with an error, not read on."""
    async with watching(_with_listener(server, tmp_path)) as watched:
        status, _ = await watched.get("/metrics", **{"X-Big": "a" * 8192})
    assert status in (400, 431)


async def test_connections_over_the_cap_are_closed_at_once(server: FakeServer, tmp_path: Path) -> None:
    """Idle connections hold at most MAX_CONNECTIONS slots; the next one is closed before anything is read."""
    async with watching(_with_listener(server, tmp_path)) as watched:
        host, port = watched.base.removeprefix("http://").split(":")
        held = [await asyncio.open_connection(host, int(port)) for _ in range(metrics.MAX_CONNECTIONS)]
        reader, writer = await asyncio.open_connection(host, int(port))
        assert await reader.read() == b""
        for _, w in [*held, (reader, writer)]:
            w.close()


def test_a_busy_metrics_port_is_one_configuration_error_exit_2(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """'watch' on a port something else listens on: exit 2 with one line naming DCR_METRICS_ADDR."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setenv("DCR_METRICS_ADDR", f"127.0.0.1:{busy.getsockname()[1]}")
        monkeypatch.setenv("DCR_ISSUER", server.base)
        monkeypatch.setenv("DCR_CLIENT_FILE", str(tmp_path / "client.json"))
        code = commands.execute("watch", argparse.Namespace())
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert code == 2
    assert [line["event"].split(" ")[0] for line in lines if line["level"] == "error"] == [
        f"DCR_METRICS_ADDR=127.0.0.1:{port}"
    ]


@pytest.mark.parametrize("value", ["9464", "localhost", "host:99999", "a b:1", ":"])
def test_a_metrics_address_that_is_not_host_and_port_is_refused(value: str) -> None:
    """DCR_METRICS_ADDR is checked when the settings load."""
    with pytest.raises(ConfigError, match="DCR_METRICS_ADDR"):
        load_settings(dcr_metrics_addr=value)


def test_healthz_fails_when_the_loop_misses_its_pace(server: FakeServer, tmp_path: Path) -> None:
    """A loop that did not come back from its sleep by its time plus the slack is not healthy."""
    ticks = [0.0]
    monitor = metrics.Monitor(settings_for(server, tmp_path), ticks=lambda: ticks[0])
    monitor.sleeping(300)
    ticks[0] = 300 + metrics.SLACK
    assert monitor.healthy()
    ticks[0] += 1
    assert not monitor.healthy()


def test_http_requests_are_named_by_endpoint_role_never_by_url() -> None:
    """Discovery, token, admin, registration and its management: the only endpoint labels."""
    base = "https://idp.example/realms/r"
    assert _http.endpoint_role("GET", base + "/.well-known/openid-configuration", False) == "discovery"
    assert _http.endpoint_role("POST", base + "/protocol/openid-connect/token", True) == "token"
    assert _http.endpoint_role("GET", "https://idp.example/admin/realms/r/clients", False) == "admin"
    assert _http.endpoint_role("POST", base + "/clients-registrations/openid-connect", False) == "registration"
    assert _http.endpoint_role("PUT", base + "/clients-registrations/openid-connect/x", False) == (
        "registration_management"
    )


async def test_a_change_hook_run_is_counted_by_its_result(server: FakeServer, tmp_path: Path, clock: Clock) -> None:
    """A round that gave new credentials runs DCR_ON_CHANGE; its exit status 0 counts as one success."""
    settings = _with_listener(server, tmp_path, dcr_rotate_after=60, dcr_on_change="true")
    async with watching(settings) as watched:
        clock.at += 120  # the secret is due for rotation: the next round replaces the client
        await watched.next_round()
        _, text = await watched.get("/metrics")
    found = samples(text)
    assert found[("dcr_bootstrap_change_hooks_total", (("result", "success"),))] == 1
    assert found[("dcr_bootstrap_operations_total", (("operation", "register"), ("result", "success")))] == 2
