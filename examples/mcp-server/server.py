"""An example MCP server that knows nothing about DCR.

It reads its client credentials the way the seed's server does — ``KEYCLOAK_CLIENT_ID`` /
``KEYCLOAK_CLIENT_SECRET`` from the environment, else the ``.dcr_client.json`` that dcr-bootstrap wrote
(``DCR_CLIENT_FILE``) — and uses them to introspect the bearer tokens of its callers at Keycloak
(RFC 7662). At start-up it proves the credentials once: it obtains a client_credentials token and
makes an (authenticated) introspection call, then logs "Keycloak accepted the credentials" and serves
MCP over streamable HTTP.

Keycloak 26.4.12/26.6.2/26.7+ introspect a token only for a client in the token's ``aud``: give the
clients that call this server an audience mapper naming this server's client id.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import anyio
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

log = logging.getLogger("example-mcp-server")


def load_credentials() -> tuple[str, str]:
    client_id = os.environ.get("KEYCLOAK_CLIENT_ID")
    secret = os.environ.get("KEYCLOAK_CLIENT_SECRET")
    if client_id and secret:
        return client_id, secret
    path = Path(os.environ.get("DCR_CLIENT_FILE", ".dcr_client.json"))
    data = json.loads(path.read_text())
    return str(data["client_id"]), str(data["client_secret"])


class Keycloak:
    """The two calls this server makes, with its own credentials (client_secret_basic)."""

    def __init__(self, url: str, realm: str, client_id: str, secret: str) -> None:
        base = f"{url.rstrip('/')}/realms/{realm}/protocol/openid-connect"
        self.token_endpoint = f"{base}/token"
        self.introspection_endpoint = f"{base}/token/introspect"
        pair = f"{urllib.parse.quote(client_id, safe='')}:{urllib.parse.quote(secret, safe='')}"
        self._auth = "Basic " + base64.b64encode(pair.encode()).decode()

    def _post(self, url: str, form: dict[str, str]) -> dict[str, Any]:
        request = urllib.request.Request(
            url, data=urllib.parse.urlencode(form).encode(), method="POST", headers={"Authorization": self._auth}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            return dict(json.loads(resp.read()))

    def own_token(self) -> str:
        return str(self._post(self.token_endpoint, {"grant_type": "client_credentials"})["access_token"])

    def introspect(self, token: str) -> dict[str, Any]:
        return self._post(self.introspection_endpoint, {"token": token})


class IntrospectionVerifier:
    def __init__(self, keycloak: Keycloak) -> None:
        self.keycloak = keycloak

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            claims = await anyio.to_thread.run_sync(self.keycloak.introspect, token)
        except urllib.error.URLError:
            return None
        if not claims.get("active"):
            return None
        return AccessToken(
            token=token,
            client_id=str(claims.get("client_id") or claims.get("azp") or ""),
            scopes=str(claims.get("scope", "")).split(),
            expires_at=claims.get("exp"),
        )


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    url, realm = os.environ["KEYCLOAK_URL"], os.environ["KEYCLOAK_REALM"]
    host, port = os.environ.get("MCP_HOST", "0.0.0.0"), int(os.environ.get("MCP_PORT", "8000"))
    public_url = os.environ.get("MCP_PUBLIC_URL", f"http://localhost:{port}")
    client_id, secret = load_credentials()
    keycloak = Keycloak(url, realm, client_id, secret)
    try:
        # Both calls authenticate the client; an answer (even "active": false) proves the credentials.
        keycloak.introspect(keycloak.own_token())
    except urllib.error.HTTPError as exc:
        log.error("Keycloak rejected the credentials of client %s (HTTP %s)", client_id, exc.code)
        return 1
    log.info("Keycloak accepted the credentials of client %s", client_id)

    server = MCPServer(
        "example-mcp-server",
        token_verifier=IntrospectionVerifier(keycloak),
        auth=AuthSettings(
            issuer_url=os.environ.get("MCP_ISSUER_URL", f"{url.rstrip('/')}/realms/{realm}"),
            resource_server_url=public_url,
            validate_token_resource=False,
        ),
    )

    @server.tool()
    def whoami() -> str:
        """The server's own OAuth client id (the one dcr-bootstrap registered)."""
        return client_id

    server.run("streamable-http", host=host, port=port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
