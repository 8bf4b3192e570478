"""The protocol path against a small, strict RFC 8414/7591/7592 server that is not Keycloak.

The fake runs for real on a loopback port (aiohttp.web), with behaviour Keycloak does not have: the
issuer is the bare origin, the registration access token rotates on every read, and client ids are
not UUIDs. Nothing in the tool may depend on Keycloak's paths or habits to pass these.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bootstrap import flow
from bootstrap.errors import InvalidClientMetadata
from tests.fakeserver import FakeServer, saved, settings_for


async def test_registers_then_reloads_saving_the_token_rotated_on_read(server: FakeServer, tmp_path: Path) -> None:
    """A server that rotates on read: the reload saves the new token, which keeps working next time."""
    settings = settings_for(server, tmp_path)
    assert (await flow.run(settings)).action == "registered"
    first = saved(tmp_path)["registration_access_token"]
    assert (await flow.run(settings)).action == "reloaded"
    assert saved(tmp_path)["registration_access_token"] != first
    assert (await flow.run(settings)).action == "reloaded"
    assert len(server.clients) == 1


async def test_changed_metadata_is_updated_in_place(server: FakeServer, tmp_path: Path) -> None:
    """New metadata goes out by PUT with the current secret; the client id stays."""
    await flow.run(settings_for(server, tmp_path))
    outcome = await flow.run(settings_for(server, tmp_path, dcr_client_name="renamed"))
    assert outcome.action == "updated"
    assert server.clients["client-1"]["client_name"] == "renamed"


async def test_vanished_client_is_registered_again(server: FakeServer, tmp_path: Path) -> None:
    """The server forgot the client: the next run registers a new one."""
    await flow.run(settings_for(server, tmp_path))
    server.clients.clear()
    outcome = await flow.run(settings_for(server, tmp_path))
    assert (outcome.action, outcome.registration.client_id) == ("registered", "client-2")


async def test_delete_removes_client_and_file(server: FakeServer, tmp_path: Path) -> None:
    """RFC 7592 DELETE, then the file is gone."""
    settings = settings_for(server, tmp_path)
    await flow.run(settings)
    assert await flow.delete(settings) is True
    assert server.clients == {} and not (tmp_path / "client.json").exists()


async def test_rejected_metadata_maps_to_its_error(server: FakeServer, tmp_path: Path) -> None:
    """invalid_client_metadata from a generic server is InvalidClientMetadata."""
    with pytest.raises(InvalidClientMetadata):
        await flow.run(settings_for(server, tmp_path, dcr_token_endpoint_auth_method="private_key_jwt"))


async def test_static_credentials_are_checked_at_the_discovered_token_endpoint(
    server: FakeServer, tmp_path: Path
) -> None:
    """Static mode against a generic server: token request, same file format."""
    await flow.run(settings_for(server, tmp_path))
    secret = server.clients["client-1"]["client_secret"]
    static = settings_for(server, tmp_path, use_dcr=False, keycloak_client_id="client-1", keycloak_client_secret=secret)
    assert (await flow.run(static)).action == "static"
    assert saved(tmp_path)["mode"] == "static"
