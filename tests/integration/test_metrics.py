"""'watch' with DCR_METRICS_ADDR against the real Keycloak, its client secret rotation policy on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from harness.keycloak import ADMIN_USER, Admin, KeycloakServer

Sample = tuple[str, tuple[tuple[str, str], ...]]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _watch(env: dict[str, str]) -> subprocess.Popen[str]:
    """'dcr-bootstrap watch' with this environment, its JSON log on a pipe."""
    command = [sys.executable, "-m", "bootstrap", "watch"]
    return subprocess.Popen(command, env=env, cwd=env["HOME"], stderr=subprocess.PIPE, text=True)


def _until(proc: subprocess.Popen[str], event: str) -> dict[str, object]:
    """The first log line of ``proc`` with this event; a round that ends before it is a failure, not a wait."""
    assert proc.stderr is not None
    for line in proc.stderr:
        entry = json.loads(line)
        if entry["event"] == event:
            return dict(entry)
        assert entry["event"] != "Credentials written", f"'watch' finished a round before logging {event!r}"
        assert "exit_code" not in entry, f"a round failed before {event!r}: {entry['event']}"
    raise AssertionError(f"'watch' ended before logging {event!r}")


def test_watch_serves_the_saved_secret_expiry_as_a_gauge_and_proves_readiness(
    admin: Admin, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """After the first round: parseable /metrics, expiry gauge == client_secret_expires_at, probes 200, no secret."""
    admin.set_secret_rotation(realm, expiration=600, remaining=60, rotated=300)
    proc = _watch(env | {"DCR_METRICS_ADDR": "127.0.0.1:0", "DCR_WATCH_INTERVAL": "300", "DCR_LOG_FORMAT": "json"})
    try:
        base = f"http://127.0.0.1:{_until(proc, 'Serving metrics')['port']}"
        _until(proc, "Credentials written")
        status, text = _get(base + "/metrics")
        probes = [_get(base + "/readyz")[0], _get(base + "/healthz")[0]]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    saved = json.loads(creds_file.read_text())
    found: dict[Sample, float] = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert status == 200 and probes == [200, 200]
    assert saved["client_secret_expires_at"] > 0
    assert found[("dcr_bootstrap_client_secret_expiration_timestamp_seconds", ())] == saved["client_secret_expires_at"]
    assert found[("dcr_bootstrap_credentials_valid", ())] == 1
    for secret in (saved["client_secret"], saved["registration_access_token"], env["DCR_INITIAL_ACCESS_TOKEN"]):
        assert secret not in text


class Proxy:
    """A loopback TCP relay to Keycloak on a loop of its own: stopping it is Keycloak stopping, for the watcher
    alone (the session's Keycloak serves every other test)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.loop = asyncio.new_event_loop()
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, upstream_writer}
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()

    def __enter__(self) -> Proxy:
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(30)

    def __exit__(self, *_: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def _gauge(text: str, name: str) -> float:
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_keycloak_going_away_flips_credentials_valid_and_readyz_while_healthz_stays_up(
    keycloak: KeycloakServer, realm: str, env: dict[str, str]
) -> None:
    """The real Keycloak behind a relay the test stops: the next round fails, credentials_valid 0, /readyz 503,
    /healthz still 200 (the loop is alive and will try again)."""
    with Proxy(urllib.parse.urlsplit(keycloak.url).port or 80) as proxy:
        # Keycloak names itself after the Host it is asked at: the watcher knows it only through the relay.
        relayed = f"http://127.0.0.1:{proxy.port}"
        token = Admin(relayed, ADMIN_USER, keycloak.admin_password).mint_initial_access_token(realm, count=1)
        watched = env | {
            "KEYCLOAK_URL": relayed,
            "DCR_INITIAL_ACCESS_TOKEN": token,
            "DCR_METRICS_ADDR": "127.0.0.1:0",
            "DCR_WATCH_INTERVAL": "1",
            "DCR_WAIT_TIMEOUT": "5",
            "DCR_LOG_FORMAT": "json",
        }
        proc = _watch(watched)
        try:
            base = f"http://127.0.0.1:{_until(proc, 'Serving metrics')['port']}"
            _until(proc, "Credentials written")
            before = [_get(base + "/readyz")[0], _gauge(_get(base + "/metrics")[1], "dcr_bootstrap_credentials_valid")]
            proxy.stop()
            _until_failed_round(proc)
            after = [_get(base + "/readyz")[0], _gauge(_get(base + "/metrics")[1], "dcr_bootstrap_credentials_valid")]
            alive = _get(base + "/healthz")[0]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
    assert before == [200, 1] and after == [503, 0] and alive == 200


def _until_failed_round(proc: subprocess.Popen[str]) -> None:
    """Read the watcher's log until a round ends with an error line (it names its exit code)."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if "exit_code" in json.loads(line):
            return
    raise AssertionError("'watch' ended before a round failed")
