"""The orchestrator uses a server's admin API only as the capability it is given (admin.Admin), whatever the server."""

from __future__ import annotations

import secrets
from collections.abc import Set
from datetime import UTC, datetime
from pathlib import Path

from bootstrap import flow, store
from bootstrap.admin import AdminFor
from bootstrap.commands import ROTATE_NOW
from bootstrap.models import Intent
from tests.fakeserver import FakeServer, saved, settings_for


class RecordingAdmin:
    """admin.Admin over the fake RFC 7591 server: no Keycloak anywhere, every call recorded."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.calls: list[str] = []

    async def find_clients_named(self, names: Set[str]) -> list[str]:
        self.calls.append("find")
        return [cid for cid, client in self.server.clients.items() if client.get("client_name") in names]

    async def delete_client(self, client_id: str) -> bool:
        self.calls.append(f"delete {client_id}")
        return self.server.clients.pop(client_id, None) is not None

    async def regenerate_secret(self, client_id: str) -> str:
        self.calls.append(f"regenerate {client_id}")
        secret = secrets.token_urlsafe(16)
        self.server.clients[client_id]["client_secret"] = secret
        return secret

    def capability(self) -> AdminFor:
        return lambda transport, policy: self


def _killed_post(server: FakeServer, settings_path: Path, client_name: str) -> str:
    """What a run killed during its POST leaves: its intent here, and a client named with the nonce there."""
    nonce = secrets.token_hex(6)
    orphan = "client-orphan"
    server.clients[orphan] = {"client_id": orphan, "client_name": flow.named(client_name, nonce)}
    started = datetime.now(UTC).isoformat(timespec="seconds")
    store.save_intents(
        settings_path, [Intent(nonce=nonce, issuer=server.base, client_name=client_name, started_at=started)]
    )
    return orphan


async def test_a_killed_posts_client_is_deleted_through_the_given_admin_capability(
    server: FakeServer, tmp_path: Path
) -> None:
    """With an admin capability (here not Keycloak's) the next run finds the nonce-named client and deletes it."""
    settings = settings_for(server, tmp_path)
    orphan = _killed_post(server, settings.dcr_client_file, settings.client_name)
    admin = RecordingAdmin(server)
    await flow.run(settings, admin=admin.capability())
    assert f"delete {orphan}" in admin.calls and orphan not in server.clients
    assert store.load_intents(settings.dcr_client_file) == []


async def test_without_an_admin_capability_the_killed_posts_client_is_only_named(
    server: FakeServer, tmp_path: Path
) -> None:
    """No capability, no admin call: the orphan stays on the server and its intent stays for the operator."""
    settings = settings_for(server, tmp_path)
    orphan = _killed_post(server, settings.dcr_client_file, settings.client_name)
    await flow.run(settings)
    assert orphan in server.clients and len(store.load_intents(settings.dcr_client_file)) == 1


async def test_rotation_regenerates_through_the_given_admin_capability(server: FakeServer, tmp_path: Path) -> None:
    """DCR_ROTATE_AFTER with a capability: the server's own regeneration, the same client, the new secret saved."""
    await flow.run(settings_for(server, tmp_path))
    before = saved(tmp_path)
    admin = RecordingAdmin(server)
    outcome = await flow.run(settings_for(server, tmp_path, dcr_rotate_after=ROTATE_NOW), admin=admin.capability())
    after = saved(tmp_path)
    assert outcome.action == "rotated" and admin.calls == [f"regenerate {before['client_id']}"]
    assert after["client_id"] == before["client_id"] and after["client_secret"] != before["client_secret"]
    assert after["client_secret"] == server.clients[after["client_id"]]["client_secret"]
