"""The local bring-up (README's first command): Keycloak, the bootstrap, and proof the credentials work.

Starts Keycloak from the harness, creates realm ``mcp`` and a single-use initial access token, runs
``dcr-bootstrap`` as a user would (a subprocess configured by environment variables), obtains a
client_credentials token with the written credentials, runs the bootstrap again to show the reload,
and stops Keycloak. Secrets are redacted in everything it prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bootstrap import store
from harness.keycloak import KeycloakServer, client_credentials_token


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _bootstrap(env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-m", "bootstrap"], env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"dcr-bootstrap exited {result.returncode}")


def main() -> int:
    _step("Starting Keycloak (official distribution, loopback only)")
    server = KeycloakServer().start()
    try:
        return bring_up(server)
    finally:
        _step("Stopping Keycloak")
        server.stop()


def bring_up(server: KeycloakServer, realm_name: str = "mcp", workdir: Path | None = None) -> int:
    """Everything after Keycloak is up (the test suite runs this against its own Keycloak)."""
    admin = server.admin()
    realm = admin.create_realm(realm_name)
    try:
        token = admin.mint_initial_access_token(realm, count=1, expiration=600)
        workdir = workdir or Path(tempfile.mkdtemp(prefix="dcr-demo-"))
        token_file = workdir / "initial_access_token"
        store.write_private(token_file, token.encode())
        creds = workdir / "shared" / ".dcr_client.json"
        env = {
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            "HOME": str(workdir),
            "KEYCLOAK_URL": server.url,
            "KEYCLOAK_REALM": realm,
            "DCR_INITIAL_ACCESS_TOKEN_FILE": str(token_file),
            "DCR_CLIENT_FILE": str(creds),
            "DCR_LOG_FORMAT": "console",
        }
        _step(f"Realm '{realm}' created; single-use initial access token in {token_file}")
        _step("Running dcr-bootstrap (first run: registers)")
        _bootstrap(env)
        data = json.loads(creds.read_text())
        _step(f"Credentials file {creds} (mode {oct(creds.stat().st_mode & 0o777)}), secrets redacted:")
        subprocess.run([sys.executable, "-m", "bootstrap", "show"], env=env, check=True)
        _step("Proof: a client_credentials token request with the written credentials")
        answer = client_credentials_token(
            f"{server.url}/realms/{realm}/protocol/openid-connect/token", data["client_id"], data["client_secret"]
        )
        print(f"token_type={answer['token_type']} expires_in={answer['expires_in']} access_token=**********")
        _step("Running dcr-bootstrap again (a restart: reloads the same client, creates none)")
        clients_before = admin.count_clients(realm)
        _bootstrap(env)
        same = json.loads(creds.read_text())["client_id"] == data["client_id"]
        if not same or admin.count_clients(realm) != clients_before:
            raise SystemExit("the second run did not reuse the client")
        _step(
            f"OK: client {data['client_id']} registered, proven, and reused. Keycloak started in "
            f"{server.startup_seconds:.1f}s using {server.rss_mib:.0f} MiB."
        )
        return 0
    finally:
        admin.delete_realm(realm)


if __name__ == "__main__":
    sys.exit(main())
