"""The local bring-up (README's first command): the whole design, from Keycloak to an MCP call.

Starts Keycloak from the harness, creates realm ``mcp`` and a single-use initial access token, runs
``dcr-bootstrap`` as a user would (a subprocess configured by environment variables), proves the written
credentials with a client_credentials token, then starts the unmodified example MCP server
(``examples/mcp-server``, in its own environment) against the written file and makes an MCP call to it
(initialize + ``tools/list`` through the MCP SDK's client) with a caller client's token, which the server
authorises by introspection with the bootstrapped credentials. Then a restart: the server stops, the
bootstrap runs again and reloads the saved registration with one request, the server starts again and
answers another call. Everything stops at the end; secrets are redacted in everything it prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootstrap import store
from harness.example_server import ExampleServer, ensure_env, list_tools
from harness.keycloak import Admin, KeycloakServer, client_credentials_token
from harness.process import HarnessError

CALLER = "mcp-caller"


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


@dataclass
class Shown:
    """What the bring-up showed, and the secret values it handled (none of them may be printed)."""

    tools: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)


@dataclass
class _Demo:
    server: KeycloakServer
    admin: Admin
    realm: str
    workdir: Path
    shown: Shown = field(default_factory=Shown)

    @property
    def creds(self) -> Path:
        return self.workdir / "shared" / ".dcr_client.json"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            "HOME": str(self.workdir),
            "KEYCLOAK_URL": self.server.url,
            "KEYCLOAK_REALM": self.realm,
            "DCR_INITIAL_ACCESS_TOKEN_FILE": str(self.workdir / "initial_access_token"),
            "DCR_CLIENT_FILE": str(self.creds),
            "DCR_LOG_FORMAT": "console",
            **extra,
        }

    def saved(self) -> dict[str, Any]:
        return dict(json.loads(self.creds.read_text()))

    def register(self) -> None:
        token = self.admin.mint_initial_access_token(self.realm, count=1, expiration=600)
        self.shown.secrets.append(token)
        store.write_private(self.workdir / "initial_access_token", token.encode())
        _step(f"Realm '{self.realm}' created; single-use initial access token in {self.workdir}")
        _step("Running dcr-bootstrap (first run: registers)")
        _bootstrap(self.env())
        data = self.saved()
        self.shown.secrets += [data["client_secret"], data["registration_access_token"]]
        mode = oct(self.creds.stat().st_mode & 0o777)
        _step(f"Credentials file {self.creds} (mode {mode}), secrets redacted:")
        _bootstrap(self.env(), "show")

    def prove(self) -> None:
        _step("Proof: a client_credentials token request with the written credentials")
        data = self.saved()
        endpoint = f"{self.server.url}/realms/{self.realm}/protocol/openid-connect/token"
        answer = client_credentials_token(endpoint, data["client_id"], data["client_secret"])
        self.shown.secrets.append(str(answer["access_token"]))
        print(f"token_type={answer['token_type']} expires_in={answer['expires_in']} access_token=**********")

    def caller(self, audience: str) -> str:
        """A caller client's token, with the server's client in its audience (introspection needs it)."""
        token = self.admin.caller_token(self.realm, CALLER, audience)
        self.shown.secrets += [token, self.admin.client_secret(self.realm, CALLER)]
        _step(f"Caller client '{CALLER}' created (service account; audience: {audience}); its token: **********")
        return token

    def serve_and_call(self, example: ExampleServer, caller_token: str, title: str) -> None:
        _step(title)
        example.start()
        try:
            print(f"server log: {example.accepted_line()}")
            print(f"an MCP call without a token: refused (HTTP 401) at {example.url}")
            tools = list_tools(example.url, caller_token)
            print(
                f"MCP call as client '{CALLER}' (initialize + tools/list, authorised by introspection): tools={tools}"
            )
            self.shown.tools += tools
        finally:
            example.stop()
        print("example MCP server stopped")

    def reload(self) -> None:
        _step("Running dcr-bootstrap again (a restart: reloads the saved registration, creates no client)")
        before = self.saved()["client_id"], self.admin.count_clients(self.realm)
        requests = _requests_of(_bootstrap(self.env(DCR_LOG_LEVEL="debug")))
        print(f"the restart made {len(requests)} request(s): " + "; ".join(requests))
        if (self.saved()["client_id"], self.admin.count_clients(self.realm)) != before:
            raise SystemExit("the second run did not reuse the client")


def _bootstrap(env: dict[str, str], *args: str) -> str:
    """Run ``dcr-bootstrap`` as a user would; print and return its output (its logs mask every secret)."""
    result = subprocess.run(
        [sys.executable, "-m", "bootstrap", *args],
        env=env,
        check=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = result.stdout
    print(output, end="", flush=True)
    if result.returncode != 0:
        raise SystemExit(f"dcr-bootstrap exited {result.returncode}")
    return output


def _requests_of(output: str) -> list[str]:
    """The HTTP requests a debug-level run logged (method, URL and status only: never headers or bodies)."""
    return [line.split("HTTP", 1)[1].strip() for line in output.splitlines() if "[debug" in line and " HTTP " in line]


def main() -> int:
    _step("Starting Keycloak (official distribution, loopback only)")
    try:
        server = KeycloakServer().start()
        try:
            bring_up(server)
        finally:
            _step("Stopping Keycloak")
            server.stop()
    except HarnessError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    return 0


def bring_up(server: KeycloakServer, realm_name: str = "mcp", workdir: Path | None = None) -> Shown:
    """Everything after Keycloak is up (the test suite runs this against its own Keycloak)."""
    python = ensure_env()
    admin = server.admin()
    realm = admin.create_realm(realm_name)
    demo = _Demo(server, admin, realm, workdir or Path(tempfile.mkdtemp(prefix="dcr-demo-")))
    try:
        demo.register()
        demo.prove()
        client_id = demo.saved()["client_id"]
        caller_token = demo.caller(client_id)
        example = ExampleServer(python, demo.creds, server.url, realm, demo.workdir / "example-server.log")
        demo.serve_and_call(example, caller_token, f"Starting the unmodified example MCP server against {demo.creds}")
        demo.reload()
        demo.serve_and_call(example, caller_token, "Starting the example MCP server again (after the restart)")
        _step(
            f"OK: client {client_id} registered, proven, served the MCP call, and was reused on restart. "
            f"Keycloak started in {server.startup_seconds:.1f}s using {server.rss_mib:.0f} MiB."
        )
        return demo.shown
    finally:
        admin.delete_realm(realm)


if __name__ == "__main__":
    sys.exit(main())
