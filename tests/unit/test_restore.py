"""'restore' asks the server before it replaces anything: it refuses a gone, stale or older backup (unless
--force), keeps the working management token, and retires a different client it replaces."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bootstrap import cli, commands, flow, store
from bootstrap.errors import ConfigError, ExitCode, UnsafeValue
from bootstrap.settings import Settings
from tests.fakeserver import FakeServer, saved, serving_in_thread, settings_for


async def _backed_up(server: FakeServer, tmp_path: Path) -> tuple[Settings, Path]:
    """A registered client and a backup of it."""
    settings = settings_for(server, tmp_path)
    await flow.run(settings)
    await commands.COMMANDS["backup"](settings, argparse.Namespace(dir=tmp_path / "backups"))
    [copy] = (tmp_path / "backups").iterdir()
    return settings, copy


async def _restore(settings: Settings, copy: Path, *, force: bool = False) -> None:
    """The 'restore' command as the CLI runs it."""
    await commands.COMMANDS["restore"](settings, argparse.Namespace(file=copy, force=force))


def _token(tmp_path: Path) -> str:
    return str(saved(tmp_path)["registration_access_token"])


async def test_restoring_a_current_backup_reads_it_and_saves_the_rotated_token(
    server: FakeServer, tmp_path: Path
) -> None:
    """The backup's client is read first (RFC 7592); the token that read rotated is the one saved."""
    settings, copy = await _backed_up(server, tmp_path)
    await _restore(settings, copy)
    assert server.count("GET", "/connect/register/client-1") == 1
    assert server.tokens.get(_token(tmp_path)) == "client-1"


async def test_a_backup_whose_client_is_gone_is_refused(server: FakeServer, tmp_path: Path) -> None:
    """The backup's client was deleted on the server: refused (exit 2), the saved file left as it was."""
    settings, copy = await _backed_up(server, tmp_path)
    del server.clients["client-1"]
    before = (tmp_path / "client.json").read_bytes()
    with pytest.raises(ConfigError, match=r"client-1: it is gone on the server.*--force"):
        await _restore(settings, copy)
    assert (tmp_path / "client.json").read_bytes() == before


async def test_a_backup_older_than_the_saved_registration_is_refused_and_the_working_token_kept(
    server: FakeServer, tmp_path: Path
) -> None:
    """A later run rotated the token: the backup's is rejected while the saved one works; refused, token kept."""
    settings, copy = await _backed_up(server, tmp_path)
    await flow.run(settings)  # the read rotates the registration access token: the backup's no longer works
    with pytest.raises(ConfigError, match="older than the saved registration"):
        await _restore(settings, copy)
    assert server.tokens.get(_token(tmp_path)) == "client-1"


async def test_force_restores_an_older_backup_with_the_working_token(server: FakeServer, tmp_path: Path) -> None:
    """--force restores the older backup's secret, but never drops the working registration access token."""
    settings, copy = await _backed_up(server, tmp_path)
    await flow.run(settings)
    await _restore(settings, copy, force=True)
    assert saved(tmp_path)["client_secret"] == json.loads(copy.read_text())["client_secret"]
    assert server.tokens.get(_token(tmp_path)) == "client-1"


async def test_a_backup_with_an_older_secret_is_refused(server: FakeServer, tmp_path: Path) -> None:
    """Same client, working token, a read that omits the secret, and the saved file's secret was issued later:
    refused, the rotated token kept."""
    settings, copy = await _backed_up(server, tmp_path)
    server.manage_extra = {"client_secret": None}  # RFC 7592 lets a read leave the secret out
    newer = saved(tmp_path) | {"client_secret": "a-newer-secret", "client_secret_issued_at": 2_000_000_000}
    (tmp_path / "client.json").write_text(json.dumps(newer))
    with pytest.raises(ConfigError, match="client secret of client client-1 is older"):
        await _restore(settings, copy)
    assert saved(tmp_path)["client_secret"] == "a-newer-secret"
    assert server.tokens.get(_token(tmp_path)) == "client-1"


async def test_a_secret_the_server_reads_back_is_the_one_restored(server: FakeServer, tmp_path: Path) -> None:
    """A read that names the current secret is the truth: the restored file holds it, whatever the backup had."""
    settings, copy = await _backed_up(server, tmp_path)
    copy.write_text(json.dumps(json.loads(copy.read_text()) | {"client_secret": "a-stale-secret"}))
    await _restore(settings, copy)
    assert saved(tmp_path)["client_secret"] == server.clients["client-1"]["client_secret"]


async def test_a_different_client_that_the_backup_replaces_is_retired_then_deleted(
    server: FakeServer, tmp_path: Path
) -> None:
    """The saved file held another client: it goes to the retired list and a run after the grace deletes it."""
    settings, copy = await _backed_up(server, tmp_path)
    (tmp_path / "client.json").unlink()
    await flow.run(settings)  # client-2 is saved now
    await _restore(settings.model_copy(update={"dcr_rotate_grace": 0}), copy)
    assert saved(tmp_path)["client_id"] == "client-1"
    assert [r.registration.client_id for r in store.load_retired(tmp_path / "client.json")] == ["client-2"]
    await flow.run(settings)
    assert set(server.clients) == {"client-1"}


async def test_a_backup_without_a_management_token_is_refused_unless_forced(server: FakeServer, tmp_path: Path) -> None:
    """Nothing to ask the server with: refused; --force restores it."""
    settings, copy = await _backed_up(server, tmp_path)
    copy.write_text(json.dumps(json.loads(copy.read_text()) | {"registration_access_token": None}))
    with pytest.raises(ConfigError, match="no RFC 7592 registration access token"):
        await _restore(settings, copy)
    await _restore(settings, copy, force=True)
    assert saved(tmp_path)["registration_access_token"]  # the same client: the saved file's token is kept


async def test_an_unsafe_read_answer_restores_nothing(server: FakeServer, tmp_path: Path) -> None:
    """A read answer with a control character in a credential: exit 7, the saved file untouched."""
    settings, copy = await _backed_up(server, tmp_path)
    server.manage_extra = {"client_secret": "secret\nKEYCLOAK_CLIENT_ID=evil"}
    before = (tmp_path / "client.json").read_bytes()
    with pytest.raises(UnsafeValue):
        await _restore(settings, copy)
    assert (tmp_path / "client.json").read_bytes() == before


def test_a_refused_restore_is_exit_2_with_one_line_naming_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI: a backup of a deleted client is exit 2, its last line says why and names --force."""
    with serving_in_thread(FakeServer()) as server:
        for name, value in {
            "DCR_ISSUER": server.base,
            "DCR_INITIAL_ACCESS_TOKEN": "initial-token-value",
            "DCR_CLIENT_FILE": str(tmp_path / "client.json"),
            "DCR_LOG_FORMAT": "json",
            "DCR_WAIT_TIMEOUT": "5",
        }.items():
            monkeypatch.setenv(name, value)
        assert cli.run([]) == ExitCode.OK
        assert cli.run(["backup", str(tmp_path / "backups")]) == ExitCode.OK
        [copy] = (tmp_path / "backups").iterdir()
        server.clients.clear()
        capsys.readouterr()
        assert cli.run(["restore", str(copy)]) == ExitCode.CONFIG
        [line] = capsys.readouterr().err.strip().splitlines()
        assert cli.run(["restore", "--force", str(copy)]) == ExitCode.OK
    event = json.loads(line)["event"]
    assert "gone on the server" in event and "pass --force" in event
