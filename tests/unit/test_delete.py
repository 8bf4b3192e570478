"""'delete' and DCR_DELETE_ON_EXIT: a live client is never dropped, and replaced ones go too."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootstrap import commands, flow, lifecycle, store
from bootstrap.errors import NotDeleted
from tests.fakeserver import FakeServer, settings_for


def _lose_management(server: FakeServer, client_id: str) -> None:
    """The server forgets the client's registration access token (RFC 7592 answers 401); the client lives."""
    server.tokens = {t: c for t, c in server.tokens.items() if c != client_id}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch, server: FakeServer) -> list[int]:
    """The time the tool and the server see, moved by the test."""
    at = [1_800_000_000]
    monkeypatch.setattr(lifecycle, "now", lambda: at[0])
    server.now = lambda: at[0]
    return at


async def _replaced(server: FakeServer, tmp_path: Path, clock: list[int]) -> tuple[str, str]:
    """A file whose client was replaced (the old one retired, inside its grace): (old id, new id)."""
    server.secret_lifetime = 3600
    settings = settings_for(server, tmp_path, dcr_rotate_grace="1h")
    old = (await flow.run(settings)).registration.client_id
    clock[0] += 3000
    outcome = await flow.run(settings)
    assert outcome.action == "replaced"
    return old, outcome.registration.client_id


async def test_delete_keeps_a_client_that_rfc7592_calls_gone_but_whose_credentials_work(
    server: FakeServer, tmp_path: Path
) -> None:
    """A 401 to the DELETE with credentials still accepted: NotDeleted naming the client, the file kept."""
    settings = settings_for(server, tmp_path)
    client_id = (await flow.run(settings)).registration.client_id
    _lose_management(server, client_id)
    with pytest.raises(NotDeleted, match=rf"client {client_id} \(RFC 7592 refused to delete it \(HTTP 401\)"):
        await flow.delete(settings)
    assert store.load(tmp_path / "client.json") is not None and client_id in server.clients


async def test_delete_removes_the_file_of_a_client_whose_credentials_are_rejected_too(
    server: FakeServer, tmp_path: Path
) -> None:
    """RFC 7592 401 and the token endpoint 401: the client is gone, the file goes, exit 0."""
    settings = settings_for(server, tmp_path)
    client_id = (await flow.run(settings)).registration.client_id
    del server.clients[client_id]
    assert await flow.delete(settings) is False
    assert not (tmp_path / "client.json").exists()


async def test_delete_also_deletes_the_replaced_registrations(
    server: FakeServer, tmp_path: Path, clock: list[int]
) -> None:
    """The retired client goes with the current one, inside its grace: nothing we issued is left."""
    await _replaced(server, tmp_path, clock)
    assert await flow.delete(settings_for(server, tmp_path)) is True
    assert server.clients == {} and store.load_retired(tmp_path / "client.json") == []


async def test_a_replaced_registration_that_cannot_be_deleted_is_named_and_stays_listed(
    server: FakeServer, tmp_path: Path, clock: list[int]
) -> None:
    """A retired client that still works without management: named in the error, kept in the list."""
    old, new = await _replaced(server, tmp_path, clock)
    _lose_management(server, old)
    with pytest.raises(NotDeleted, match=rf"client {old} "):
        await flow.delete(settings_for(server, tmp_path))
    assert set(server.clients) == {old} and new not in server.clients
    assert [r.registration.client_id for r in store.load_retired(tmp_path / "client.json")] == [old]
    assert not (tmp_path / "client.json").exists()  # the current client is gone: its file too


async def test_delete_on_exit_also_deletes_the_replaced_registrations(
    server: FakeServer, tmp_path: Path, clock: list[int]
) -> None:
    """DCR_DELETE_ON_EXIT (a per-Pod client) leaves no retired client behind either."""
    await _replaced(server, tmp_path, clock)
    await commands._delete_on_exit(settings_for(server, tmp_path, dcr_delete_on_exit=True))
    assert server.clients == {}


async def test_delete_also_deletes_the_registration_an_interrupted_run_left_pending(
    server: FakeServer, tmp_path: Path
) -> None:
    """A pending registration (the next run would adopt it) is deleted too, and its record removed."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    await flow.run(settings_for(server, tmp_path / "a"))
    left = (await flow.run(settings_for(server, tmp_path / "b"))).registration
    store.save_pending(tmp_path / "a" / "client.json", left)
    await flow.delete(settings_for(server, tmp_path / "a"))
    assert server.clients == {} and store.load_pending(tmp_path / "a" / "client.json") is None
