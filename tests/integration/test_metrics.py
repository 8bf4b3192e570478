"""'watch' with DCR_METRICS_ADDR against the real Keycloak, its client secret rotation policy on."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from harness.keycloak import Admin

Sample = tuple[str, tuple[tuple[str, str], ...]]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _until(proc: subprocess.Popen[str], event: str) -> dict[str, object]:
    """The first log line of ``proc`` with this event; a round that ends before it is a failure, not a wait."""
    assert proc.stderr is not None
    for line in proc.stderr:
        entry = json.loads(line)
        if entry["event"] == event:
            return dict(entry)
        assert entry["event"] != "Credentials written", f"'watch' finished a round before logging {event!r}"
    raise AssertionError(f"'watch' ended before logging {event!r}")


def test_watch_serves_the_saved_secret_expiry_as_a_gauge_and_proves_readiness(
    admin: Admin, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """After the first round: parseable /metrics, expiry gauge == client_secret_expires_at, probes 200, no secret."""
    admin.set_secret_rotation(realm, expiration=600, remaining=60, rotated=300)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bootstrap", "watch"],
        env=env | {"DCR_METRICS_ADDR": "127.0.0.1:0", "DCR_WATCH_INTERVAL": "300", "DCR_LOG_FORMAT": "json"},
        cwd=env["HOME"],
        stderr=subprocess.PIPE,
        text=True,
    )
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
