"""docker-compose.yml on a real engine, four times: fresh, down + up, stop + up, down -v + up.

Each test (each row of the AFTER_FRESH table) is one phase of the same compose project and runs after
the one before it (file order, then the table's order).
Secrets are never printed: the credentials file is read in a container that prints only its client_id,
mode and owner, and the caller's token stays in memory.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from harness.docker import ComposeStack, Engine
from harness.keycloak import Admin
from tests.containers.conftest import record_image_facts

REALM = "mcp"
CALLER = "mcp-caller"
# What the credentials file looks like from inside the volume, without its secrets.
FILE_FACTS = """
import json, os
st = os.stat("/v/.dcr_client.json")
data = json.load(open("/v/.dcr_client.json"))
print(json.dumps({"mode": oct(st.st_mode & 0o777), "uid": st.st_uid, "gid": st.st_gid,
                  "client_id": data["client_id"], "issuer": data["issuer"], "mode_": data["mode"]}))
"""


def admin_of(stack: ComposeStack) -> Admin:
    """Keycloak's admin API on the published port, with the password dev-secrets made (never printed)."""
    password = stack.compose("exec", "-T", "keycloak", "cat", "/run/dcr-admin/password").stdout.strip()
    assert password, "the keycloak container has no admin password file"
    return Admin(stack.keycloak_url, "admin", password)


def bootstrap_action(stack: ComposeStack) -> str:
    """The ``action`` of the bootstrap's last 'Credentials written' line in this phase."""
    actions = []
    for line in stack.logs_of("bootstrap", since=stack.phase_start).splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") == "Credentials written":
            actions.append(str(record["action"]))
    assert actions, f"the bootstrap wrote no credentials in this phase; logs in {stack.logs}"
    return actions[-1]


def credentials_file(stack: ComposeStack) -> dict[str, Any]:
    return dict(json.loads(stack.run_in_volume("dcr-credentials", FILE_FACTS)))


def registered_clients(admin: Admin) -> list[str]:
    """Client ids in the realm that the bootstrap registered (DCR_CLIENT_NAME mcp-server-{hostname})."""
    return [str(c["clientId"]) for c in admin.clients(REALM) if str(c.get("name", "")).startswith("mcp-server-")]


def _post(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return int(resp.status), dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), dict(exc.headers), exc.read().decode(errors="replace")


def _jsonrpc_result(text: str) -> dict[str, Any]:
    """The JSON-RPC message of a plain JSON or a server-sent-events answer."""
    for line in text.splitlines():
        if line.startswith("data:"):
            return dict(json.loads(line[5:]))
    return dict(json.loads(text))


def mcp_whoami(url: str, token: str) -> str:
    """initialize, notifications/initialized, then tools/call whoami; the tool's text."""
    auth = {"Authorization": f"Bearer {token}"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    status, headers, text = _post(url, init, auth)
    assert status == 200, f"initialize: HTTP {status}"
    assert "result" in _jsonrpc_result(text), "initialize returned no result"
    session = {k: v for k, v in headers.items() if k.lower() == "mcp-session-id"}
    status, _, _ = _post(url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, {**auth, **session})
    assert status in (200, 202), f"notifications/initialized: HTTP {status}"
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
    status, _, text = _post(url, call, {**auth, **session})
    assert status == 200, f"tools/call: HTTP {status}"
    result = _jsonrpc_result(text)["result"]
    assert not result.get("isError"), result
    return str(result["content"][0]["text"])


def assert_serves(stack: ComposeStack, admin: Admin, client_id: str) -> None:
    """The MCP port answers 401 with a Bearer challenge, and a caller's token gets a tool call through."""
    status, headers, _ = _post(stack.mcp_url, {"jsonrpc": "2.0", "id": 0, "method": "ping"}, {})
    challenge = next((v for k, v in headers.items() if k.lower() == "www-authenticate"), "")
    assert status == 401, f"without a token: HTTP {status}"
    assert challenge.startswith("Bearer"), challenge
    assert mcp_whoami(stack.mcp_url, admin.caller_token(REALM, CALLER, client_id)) == client_id


def assert_bootstrap_did(stack: ComposeStack, action: str) -> dict[str, Any]:
    """The bootstrap exited 0 in this phase with ``action``; the file is 0600 and owned by 10001."""
    assert stack.exit_code("bootstrap") == 0, f"bootstrap did not exit 0; logs in {stack.logs}"
    assert bootstrap_action(stack) == action
    facts = credentials_file(stack)
    assert (facts["mode"], facts["uid"], facts["gid"]) == ("0o600", 10001, 10001), facts
    assert facts["issuer"] == "http://localhost:8080/realms/mcp"
    return facts


@pytest.fixture(scope="module")
def first_client() -> dict[str, str]:
    """The client id the fresh phase registered, for the phases after it."""
    return {}


def test_fresh_up_registers_one_client_that_the_server_uses(
    engine: Engine, stack: ComposeStack, base_images: dict[str, str], first_client: dict[str, str]
) -> None:
    """Fresh `up --build`: registered, file 0600/10001, server accepted and serves MCP, exactly one client."""
    stack.compose("down", "--volumes")  # a project name of our own: nothing to remove, but be sure
    stack.up("1-fresh")
    facts = assert_bootstrap_did(stack, "registered")
    admin = admin_of(stack)
    assert_serves(stack, admin, facts["client_id"])
    assert registered_clients(admin) == [facts["client_id"]]
    first_client["client_id"] = facts["client_id"]
    record_image_facts(
        engine,
        {"bootstrap": "dcr-bootstrap:dev", "mcp-server": "dcr-bootstrap-example-mcp-server:dev", **base_images},
    )


# The phases after the fresh one, in this order on the same stack: (the phase before, this phase, the compose
# command between them, the bootstrap's action, whether it keeps the fresh phase's client).
AFTER_FRESH = [
    # Volumes kept: Keycloak kept its realm, and the bootstrap reloads the same client.
    pytest.param("1-fresh", "2-down-up", ("down",), "reloaded", True, id="down-then-up"),
    # The same containers start again, and the bootstrap reloads the same client.
    pytest.param("2-down-up", "3-stop-up", ("stop",), "reloaded", True, id="stop-then-up"),
    # Volumes removed: a new realm, with exactly one new client.
    pytest.param("3-stop-up", "4-down-v-up", ("down", "--volumes"), "registered", False, id="down-v-then-up"),
]


@pytest.mark.parametrize(("before", "phase", "command", "action", "same_client"), AFTER_FRESH)
def test_next_up_keeps_or_replaces_the_client_as_the_volumes_say(
    stack: ComposeStack,
    first_client: dict[str, str],
    before: str,
    phase: str,
    command: tuple[str, ...],
    action: str,
    same_client: bool,
) -> None:
    """After the compose command, `up`: the bootstrap's action, one client in the realm, and the server uses it."""
    assert first_client, "needs the fresh phase"
    stack.transition(before, *command)
    stack.up(phase)
    facts = assert_bootstrap_did(stack, action)
    assert (facts["client_id"] == first_client["client_id"]) is same_client, facts["client_id"]
    admin = admin_of(stack)
    assert registered_clients(admin) == [facts["client_id"]]
    assert_serves(stack, admin, facts["client_id"])
