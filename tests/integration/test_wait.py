"""Waiting for a server that is not there yet, or never comes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.keycloak import KeycloakServer, client_credentials_token, free_port
from harness.process import group_alive
from tests.conftest import base_env, run_cli

REALM_WITH_LOOPBACK_TRUSTED = {
    "enabled": True,
    "components": {
        "org.keycloak.services.clientregistration.policy.ClientRegistrationPolicy": [
            {
                "name": "Trusted Hosts",
                "providerId": "trusted-hosts",
                "subType": "anonymous",
                "config": {
                    "trusted-hosts": ["127.0.0.1", "localhost"],
                    "host-sending-registration-request-must-match": ["true"],
                    "client-uris-must-match": ["false"],
                },
            }
        ]
    },
}


def test_never_started_server_exits_with_timeout_code_within_the_deadline(tmp_path: Path) -> None:
    """Nothing listening: exit 3 after DCR_WAIT_TIMEOUT plus at most one attempt's timeout."""
    env = base_env(tmp_path) | {
        "KEYCLOAK_URL": f"http://127.0.0.1:{free_port()}",
        "KEYCLOAK_REALM": "never",
        "DCR_WAIT_TIMEOUT": "4",
        "DCR_ATTEMPT_TIMEOUT": "2",
    }
    started = time.monotonic()
    result = run_cli(env)
    elapsed = time.monotonic() - started
    assert result.code == 3, result.stderr
    assert "not ready" in str(result.last["event"]) and "DCR_WAIT_TIMEOUT" in str(result.last["event"])
    retries = [line for line in result.lines if line["event"] == "Server not ready, retrying"]
    assert len(retries) >= 2
    assert all("cannot connect" in str(r["reason"]) and isinstance(r["next_delay"], float | int) for r in retries)
    # Interpreter start-up is not part of the deadline; allow it generously.
    assert elapsed < 4 + 2 + 5


@pytest.mark.keycloak  # starts a Keycloak of its own
def test_keycloak_started_20_s_after_the_bootstrap_is_waited_for(tmp_path: Path) -> None:
    """The bootstrap starts first; Keycloak 20 s later; the bootstrap waits, registers and exits 0."""
    server = KeycloakServer()
    realm = "late"
    env = base_env(tmp_path) | {
        "KEYCLOAK_URL": server.url,
        "KEYCLOAK_REALM": realm,
        "DCR_WAIT_TIMEOUT": "300",
        "DCR_RETRY_MAX_DELAY": "2",
    }
    (tmp_path / "creds").mkdir()
    bootstrap = subprocess.Popen(
        [sys.executable, "-m", "bootstrap"], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    assert bootstrap.stderr is not None
    started = time.monotonic()
    lines: list[str] = []
    try:
        # Driven by the bootstrap's own retry log lines, not a sleep: start Keycloak at the first
        # retry logged 20 s or more after the bootstrap started.
        for line in bootstrap.stderr:
            lines.append(line)
            if "Server not ready, retrying" in line and time.monotonic() - started >= 20:
                break
        assert bootstrap.poll() is None, "".join(lines)
        server.start()
        server.admin().import_realm({"realm": realm, **REALM_WITH_LOOPBACK_TRUSTED})
        lines += list(bootstrap.stderr)
        assert bootstrap.wait(timeout=120) == 0, "".join(lines[-5:])
        data = json.loads(Path(env["DCR_CLIENT_FILE"]).read_text())
        client_credentials_token(
            f"{server.url}/realms/{realm}/protocol/openid-connect/token", data["client_id"], data["client_secret"]
        )
    finally:
        bootstrap.kill()
        pgid = server.pgid
        server.stop()
    assert pgid is not None and not group_alive(pgid), "Keycloak outlived stop()"
    events = [json.loads(line)["event"] for line in lines if line.startswith("{")]
    assert "Successfully registered client" in events
