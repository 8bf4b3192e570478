"""What a run costs the server: a restart is one request, a first registration three."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bootstrap import flow, store
from tests.fakeserver import FakeServer, saved, settings_for


def _requests(server: FakeServer) -> list[str]:
    return [f"{seen.method} {seen.path}" for seen in server.seen]


async def test_first_registration_costs_discovery_post_and_token(server: FakeServer, tmp_path: Path) -> None:
    await flow.run(settings_for(server, tmp_path))
    assert _requests(server) == [
        "GET /.well-known/oauth-authorization-server",
        "POST /connect/register",
        "POST /connect/token",
    ]


async def test_restart_costs_one_registration_read(server: FakeServer, tmp_path: Path) -> None:
    """The saved file names the issuer, token endpoint and registration URI: no discovery on a restart."""
    await flow.run(settings_for(server, tmp_path))
    server.seen.clear()
    outcome = await flow.run(settings_for(server, tmp_path))
    assert outcome.action == "reloaded"
    assert [(s.method, s.path) for s in server.seen] == [("GET", f"/connect/register/{outcome.registration.client_id}")]


async def test_restart_keeps_the_token_the_read_rotated(server: FakeServer, tmp_path: Path) -> None:
    await flow.run(settings_for(server, tmp_path))
    before = saved(tmp_path)["registration_access_token"]
    await flow.run(settings_for(server, tmp_path))
    after = saved(tmp_path)["registration_access_token"]
    assert after != before and server.tokens[after] == saved(tmp_path)["client_id"]


async def test_restart_for_a_deleted_client_discovers_and_registers_again(server: FakeServer, tmp_path: Path) -> None:
    """A failed quick read is decided by the full path: discovery, the token check, then a new client."""
    first = await flow.run(settings_for(server, tmp_path))
    server.clients.clear()
    server.tokens.clear()
    outcome = await flow.run(settings_for(server, tmp_path))
    assert outcome.action == "registered"
    assert outcome.registration.client_id != first.registration.client_id
    assert server.count("GET", "/.well-known/oauth-authorization-server") == 2


async def test_restart_with_changed_settings_discovers_and_updates(server: FakeServer, tmp_path: Path) -> None:
    await flow.run(settings_for(server, tmp_path))
    outcome = await flow.run(settings_for(server, tmp_path, dcr_client_name="renamed"))
    assert outcome.action == "updated"
    assert server.clients[outcome.registration.client_id]["client_name"] == "renamed"


async def test_a_run_that_waited_for_the_lock_uses_the_file_written_meanwhile_without_a_request(
    server: FakeServer, tmp_path: Path
) -> None:
    """The run we waited for saved a checked registration while we waited: we use it and ask the server nothing."""
    first = await flow.run(settings_for(server, tmp_path / "elsewhere"))
    settings = settings_for(server, tmp_path)
    server.seen.clear()
    async with store.locked(settings.dcr_client_file):  # another run holds the folder
        follower = asyncio.create_task(flow.run(settings))
        for _ in range(5):  # let it reach its lock poll
            await asyncio.sleep(0)
        assert not follower.done()
        store.save(settings.dcr_client_file, first.registration)  # what that run saved
    outcome = await asyncio.wait_for(follower, timeout=10)
    assert outcome.action == "reloaded" and outcome.registration.client_id == first.registration.client_id
    assert server.seen == []


async def test_a_run_that_waited_for_the_lock_but_finds_the_file_unchanged_checks_it_with_the_server(
    server: FakeServer, tmp_path: Path
) -> None:
    """A file not written during the wait proves nothing about the server: the usual one-request reload runs."""
    await flow.run(settings_for(server, tmp_path))
    settings = settings_for(server, tmp_path)
    server.seen.clear()
    async with store.locked(settings.dcr_client_file):
        follower = asyncio.create_task(flow.run(settings))
        for _ in range(5):
            await asyncio.sleep(0)
    outcome = await asyncio.wait_for(follower, timeout=10)
    assert outcome.action == "reloaded" and len(server.seen) == 1
