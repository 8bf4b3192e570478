"""docker-compose.yml, run as local processes against the real Keycloak (no container engine here).

The test reads the compose file and runs what its services would run, with their environment, entrypoint
and command taken from the file (and the images' Dockerfiles), host names mapped to loopback and each
volume replaced by a temporary folder. Keycloak itself is the harness's, configured as the compose
service configures it (realm import file, public hostname). A wiring mistake in the compose file — a
wrong path, a wrong variable name, a missing volume — makes the flow fail.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.keycloak import ROOT, Admin, KeycloakServer, client_credentials_token, free_port

COMPOSE = ROOT / "docker-compose.yml"


def dockerfile_facts(context: Path) -> tuple[list[str], dict[str, str], str | None, dict[str, Path]]:
    """ENTRYPOINT, ENV and WORKDIR of the final stage, and which repo files COPY puts where."""
    lines = re.sub(r"\\\n", " ", (context / "Dockerfile").read_text()).splitlines()
    final = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    entrypoint: list[str] = []
    env: dict[str, str] = {}
    workdir = None
    copies: dict[str, Path] = {}
    for line in lines[final:]:
        word, _, rest = line.partition(" ")
        if word == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif word == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
        elif word == "WORKDIR":
            workdir = rest.strip()
        elif word == "COPY" and "--from" not in rest:
            *sources, dst = rest.split()
            for src in sources:
                if dst.endswith("/") or dst == ".":
                    dst_path = f"{workdir if dst == '.' else dst.rstrip('/')}/{Path(src).name}"
                else:
                    dst_path = dst if dst.startswith("/") else f"{workdir}/{dst}"
                copies[dst_path] = context / src
    return entrypoint, env, workdir, copies


@dataclass
class Stack:
    compose: dict[str, Any]
    keycloak: KeycloakServer
    volumes: Path

    def service(self, name: str) -> dict[str, Any]:
        return dict(self.compose["services"][name])

    def _mounts(self, svc: dict[str, Any]) -> dict[str, Path]:
        mounts: dict[str, Path] = {}
        for spec in svc.get("volumes", []):
            source, target = spec.split(":")[:2]
            if source.startswith("."):
                mounts[target] = (ROOT / source).resolve()
            else:
                assert source in self.compose["volumes"], f"undeclared volume {source}"
                mounts[target] = self.volumes / source
                mounts[target].mkdir(parents=True, exist_ok=True)
        return mounts

    def _map(self, value: str, mounts: dict[str, Path]) -> str:
        # Compose's "${NAME:-default}" with the defaults: this test sets none of those variables.
        value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
        # Host names to loopback: the keycloak service is the harness's Keycloak.
        value = value.replace("http://keycloak:8080", self.keycloak.url)
        for target, source in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            value = value.replace(target, str(source))
        return value

    def process(self, name: str, overrides: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
        """The argv and environment that service ``name`` would run with, mapped to this machine."""
        svc = self.service(name)
        context = ROOT / (svc.get("build", {}).get("context", "."))
        image_entrypoint, image_env, _, copies = dockerfile_facts(context)
        mounts = self._mounts(svc)
        mounts.update(copies)
        entrypoint = svc.get("entrypoint", image_entrypoint)
        argv = [self._map(a, mounts) for a in [*entrypoint, *svc.get("command", [])]]
        if argv and argv[0] == "python":
            argv[0] = sys.executable
        env = {
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "HOME": str(self.volumes),
            **{k: v for k, v in image_env.items() if k != "PATH"},
            **{k: self._map(str(v), mounts) for k, v in (svc.get("environment") or {}).items()},
            **(overrides or {}),
        }
        return argv, env

    def run(self, name: str) -> subprocess.CompletedProcess[str]:
        argv, env = self.process(name)
        return subprocess.run(argv, env=env, cwd=self.volumes, capture_output=True, text=True, timeout=180, check=False)


@pytest.fixture
def stack(keycloak: KeycloakServer, admin: Admin, tmp_path: Path) -> Iterator[Stack]:
    compose = yaml.safe_load(COMPOSE.read_text())
    kc = compose["services"]["keycloak"]
    # The keycloak service imports the realm file it mounts, and names itself by KC_HOSTNAME.
    realm_file = next(
        ROOT / s.split(":")[0] for s in kc["volumes"] if s.split(":")[1].startswith("/opt/keycloak/data/import/")
    )
    realm = json.loads(realm_file.read_text())
    realm.setdefault("attributes", {})["frontendUrl"] = kc["environment"]["KC_HOSTNAME"]
    admin.import_realm(realm)
    try:
        yield Stack(compose, keycloak, tmp_path / "volumes")
    finally:
        admin.delete_realm(realm["realm"])


def up(stack: Stack, admin: Admin) -> None:
    """What `docker compose up` runs before the server: dev-secrets, initial-token, bootstrap."""
    result = stack.run("dev-secrets")
    assert result.returncode == 0, result.stderr
    password_file = stack.volumes / "dcr-admin" / "password"
    assert password_file.read_text().strip()
    # The harness's Keycloak plays the keycloak service, so its admin password is the one that works.
    password_file.write_text(admin.password)
    for service in ("initial-token", "bootstrap"):
        result = stack.run(service)
        assert result.returncode == 0, f"{service}: {result.stderr[-2000:]}"


def serve(stack: Stack) -> tuple[subprocess.Popen[str], str]:
    """Start the mcp-server service's command; return once it has proven its credentials at Keycloak."""
    port = free_port()
    argv, env = stack.process("mcp-server", {"MCP_HOST": "127.0.0.1", "MCP_PORT": str(port)})
    proc = subprocess.Popen(argv, env=env, cwd=stack.volumes, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        # The credentials are checked before the HTTP port is bound: wait for both, however slow the machine.
        if "Uvicorn running on" in line and any("Keycloak accepted the credentials" in seen for seen in lines):
            break
    else:
        proc.wait()
        raise AssertionError("mcp-server did not start:\n" + "".join(lines[-20:]))
    return proc, f"http://127.0.0.1:{port}/mcp"


def mcp_status(url: str, token: str | None) -> int:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # uvicorn binds its port just after the server logged its start


def caller_token(admin: Admin, keycloak: KeycloakServer, audience: str) -> str:
    """A token of a caller client whose audience names the MCP server's client (as Keycloak 26.7 requires)."""
    secret = admin.create_confidential_client("mcp", "mcp-caller")
    admin.add_audience_mapper("mcp", "mcp-caller", audience)
    token_endpoint = f"{keycloak.url}/realms/mcp/protocol/openid-connect/token"
    return str(client_credentials_token(token_endpoint, "mcp-caller", secret)["access_token"])


def test_compose_stack_registers_serves_and_reuses_the_client(
    stack: Stack, admin: Admin, keycloak: KeycloakServer
) -> None:
    """compose up: the server starts with the bootstrap's credentials; a second up reuses the client."""
    up(stack, admin)
    creds = stack.volumes / "dcr-credentials" / ".dcr_client.json"
    data = json.loads(creds.read_text())

    proc, url = serve(stack)
    try:
        assert mcp_status(url, None) == 401
        token = caller_token(admin, keycloak, audience=data["client_id"])
        status = mcp_status(url, token)
        assert status == 200  # the server introspected the token with its own credentials
    finally:
        proc.terminate()
        proc.wait(timeout=20)

    clients = admin.count_clients("mcp")
    up(stack, admin)
    assert json.loads(creds.read_text())["client_id"] == data["client_id"]
    assert admin.count_clients("mcp") == clients


def test_keycloak_healthcheck_passes_against_a_ready_keycloak(keycloak: KeycloakServer) -> None:
    """The keycloak service's healthcheck (no curl: bash /dev/tcp) succeeds on a ready management port."""
    check = yaml.safe_load(COMPOSE.read_text())["services"]["keycloak"]["healthcheck"]["test"]
    assert check[0] == "CMD"
    argv = [arg.replace("127.0.0.1/9000", f"127.0.0.1/{keycloak.management_port}") for arg in check[1:]]
    assert subprocess.run(argv, timeout=10, check=False).returncode == 0
    closed = [arg.replace("127.0.0.1/9000", f"127.0.0.1/{free_port()}") for arg in check[1:]]
    assert subprocess.run(closed, timeout=10, check=False, stderr=subprocess.DEVNULL).returncode != 0


def test_broken_wiring_fails_the_flow(stack: Stack, admin: Admin) -> None:
    """The server reading the credentials from a path the bootstrap did not write to fails the flow."""
    up(stack, admin)
    broken = copy.deepcopy(stack.compose)
    broken["services"]["mcp-server"]["environment"]["DCR_CLIENT_FILE"] = "/var/lib/dcr/client.json"
    with pytest.raises(AssertionError, match="did not start"):
        serve(Stack(broken, stack.keycloak, stack.volumes))
