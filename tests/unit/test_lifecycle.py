"""The credential lifecycle's contained parts: file access for another uid, MCP's registration metadata."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from bootstrap import cli, envfile, flow, store
from bootstrap.errors import ConfigError, ExitCode
from bootstrap.models import SavedRegistration
from bootstrap.settings import load_settings
from tests.fakeserver import FakeServer, saved, serving, settings_for


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_credentials_file_is_0600_by_default(server: FakeServer, tmp_path: Path) -> None:
    """Without DCR_FILE_MODE the file is readable by its owner alone."""
    await flow.run(settings_for(server, tmp_path))
    assert _mode(tmp_path / "client.json") == 0o600


@pytest.mark.parametrize("mode", ["0640", "0440", "0400", "640"])
async def test_file_mode_applies_to_the_file_and_the_env_file(server: FakeServer, tmp_path: Path, mode: str) -> None:
    """DCR_FILE_MODE sets the mode of both files, whatever the umask (a group-readable file for fsGroup)."""
    settings = settings_for(server, tmp_path, dcr_file_mode=mode, dcr_env_file=tmp_path / "client.env")
    await flow.run(settings)
    await flow.run(settings)  # replacing a 0400 file works too: it is renamed over, never opened for writing
    assert _mode(tmp_path / "client.json") == _mode(tmp_path / "client.env") == int(mode, 8)


def test_a_world_readable_file_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """0644 would give the secret to every user: one clear line naming the allowed modes."""
    monkeypatch.setenv("DCR_FILE_MODE", "0644")
    with pytest.raises(ConfigError, match=r"DCR_FILE_MODE: .*'0600', '0640', '0440' or '0400'"):
        load_settings()


async def test_the_registration_says_it_is_a_web_application(server: FakeServer, tmp_path: Path) -> None:
    """application_type is sent (web by default), as MCP's authorization spec asks of DCR clients."""
    await flow.run(settings_for(server, tmp_path))
    assert server.clients[saved(tmp_path)["client_id"]]["application_type"] == "web"


async def test_application_type_can_be_native(server: FakeServer, tmp_path: Path) -> None:
    """DCR_APPLICATION_TYPE=native is sent as it is."""
    await flow.run(settings_for(server, tmp_path, dcr_application_type="native"))
    assert server.clients[saved(tmp_path)["client_id"]]["application_type"] == "native"


async def test_credentials_are_never_reused_with_another_server(server: FakeServer, tmp_path: Path) -> None:
    """A file saved for one issuer is set aside, never sent, when the run names another issuer."""
    await flow.run(settings_for(server, tmp_path))
    first = saved(tmp_path)
    async with serving(FakeServer()) as other:
        outcome = await flow.run(settings_for(other, tmp_path))
        assert outcome.action == "registered" and outcome.registration.issuer == other.base
        assert all(first["client_secret"] not in s.authorization for s in other.seen)
        assert all(first["registration_access_token"] not in s.authorization for s in other.seen)


# --- backup and restore ---

ISSUER = "https://as.example.test/realms/demo"


@pytest.fixture
def creds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A saved registration of ISSUER, and the settings that name it."""
    path = tmp_path / "creds" / ".dcr_client.json"
    path.parent.mkdir()
    store.save(path, SavedRegistration(client_id="c-1", client_secret=SecretStr("s-1-value"), issuer=ISSUER))
    monkeypatch.setenv("DCR_CLIENT_FILE", str(path))
    monkeypatch.setenv("DCR_ISSUER", ISSUER)
    return path


def test_backup_copies_the_registration_0600_into_the_folder(creds: Path, tmp_path: Path) -> None:
    """'backup DIR' writes a private, timestamped copy that equals the saved file."""
    assert cli.run(["backup", str(tmp_path / "backups")]) == ExitCode.OK
    [copy] = (tmp_path / "backups").iterdir()
    assert copy.read_bytes() == creds.read_bytes() and _mode(copy) == 0o600


def test_restore_puts_a_backup_back_and_keeps_what_it_replaced(creds: Path, tmp_path: Path) -> None:
    """'restore FILE' makes the backup the saved registration; the file it replaces is kept as a .bak."""
    cli.run(["backup", str(tmp_path / "backups")])
    [copy] = (tmp_path / "backups").iterdir()
    store.save(creds, SavedRegistration(client_id="c-2", client_secret=SecretStr("s-2-value"), issuer=ISSUER))
    assert cli.run(["restore", str(copy)]) == ExitCode.OK
    assert json.loads(creds.read_text())["client_id"] == "c-1"
    [kept] = [p for p in creds.parent.iterdir() if p.name.endswith(".bak")]
    assert json.loads(kept.read_text())["client_id"] == "c-2"


def test_restore_refuses_a_registration_of_another_issuer(creds: Path, tmp_path: Path) -> None:
    """A backup of another server is refused with exit 2, and the saved file is left as it was."""
    other = tmp_path / "other.json"
    store.save(other, SavedRegistration(client_id="x", client_secret=SecretStr("s-x-value"), issuer="https://x.test"))
    before = creds.read_bytes()
    assert cli.run(["restore", str(other)]) == ExitCode.CONFIG
    assert creds.read_bytes() == before


def test_restore_of_a_file_that_is_not_a_registration_is_a_storage_error(creds: Path, tmp_path: Path) -> None:
    """Restoring a file that does not parse changes nothing (exit 6)."""
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    before = creds.read_bytes()
    assert cli.run(["restore", str(junk)]) == ExitCode.STORAGE
    assert creds.read_bytes() == before


# --- the migration guide as commands ---

STATIC_ENV = (
    "# the server's settings\nKEYCLOAK_URL=http://kc:8080\nUSE_DCR=false\nKEYCLOAK_CLIENT_ID=old\n"
    "KEYCLOAK_CLIENT_SECRET=old-secret\nLOG_LEVEL=debug\n"
)


def test_an_edit_sets_keys_in_place_comments_out_others_and_keeps_every_other_line(tmp_path: Path) -> None:
    """Named keys change where they stand; other lines (comments, unknown keys) stay byte for byte."""
    (tmp_path / ".env").write_text(STATIC_ENV)
    env = envfile.load(tmp_path / ".env")
    text = env.edited({"USE_DCR": "true", "DCR_INITIAL_ACCESS_TOKEN": "t"}, frozenset({"KEYCLOAK_CLIENT_SECRET"}))
    assert text == (
        "# the server's settings\nKEYCLOAK_URL=http://kc:8080\nUSE_DCR=true\nKEYCLOAK_CLIENT_ID=old\n"
        "# KEYCLOAK_CLIENT_SECRET=old-secret\nLOG_LEVEL=debug\nDCR_INITIAL_ACCESS_TOKEN=t\n"
    )


@pytest.mark.parametrize("command", ["setup", "to-static"])
def test_a_dotenv_that_does_not_parse_is_refused_and_left_untouched(creds: Path, tmp_path: Path, command: str) -> None:
    """A .env with a line python-dotenv cannot read: exit 2, the file and its folder unchanged."""
    dotenv = tmp_path / ".env"
    dotenv.write_text("USE_DCR=false\nthis is not a setting\n")
    assert cli.run([command, "--env-file", str(dotenv)]) == ExitCode.CONFIG
    assert dotenv.read_text() == "USE_DCR=false\nthis is not a setting\n"
    assert not (tmp_path / ".env.backup").exists()


def test_to_static_keeps_the_client_in_the_dotenv_and_removes_the_registration(creds: Path, tmp_path: Path) -> None:
    """'to-static' writes USE_DCR=false and the saved id and secret, backs the .env up, removes the file."""
    dotenv = tmp_path / ".env"
    dotenv.write_text("USE_DCR=true\nDCR_INITIAL_ACCESS_TOKEN=iat-value\nLOG_LEVEL=debug\n")
    assert cli.run(["to-static", "--env-file", str(dotenv)]) == ExitCode.OK
    assert dotenv.read_text() == (
        "USE_DCR=false\n# DCR_INITIAL_ACCESS_TOKEN=iat-value\nLOG_LEVEL=debug\n"
        "KEYCLOAK_CLIENT_ID=c-1\nKEYCLOAK_CLIENT_SECRET=s-1-value\n"
    )
    assert _mode(dotenv) == 0o600 and (tmp_path / ".env.backup").read_text().startswith("USE_DCR=true\n")
    assert not creds.exists()


def test_to_static_twice_changes_nothing_the_second_time(creds: Path, tmp_path: Path) -> None:
    """Run again, 'to-static' finds the static credentials in place and leaves everything as it is."""
    dotenv = tmp_path / ".env"
    dotenv.write_text("USE_DCR=true\n")
    cli.run(["to-static", "--env-file", str(dotenv)])
    after = dotenv.read_text()
    assert cli.run(["to-static", "--env-file", str(dotenv)]) == ExitCode.OK
    assert dotenv.read_text() == after


def test_setup_on_a_dotenv_set_up_already_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """'setup' twice: the second finds USE_DCR=true and a token, mints nothing and writes nothing."""
    dotenv = tmp_path / ".env"
    dotenv.write_text("USE_DCR=true\nDCR_INITIAL_ACCESS_TOKEN=iat-value\n")
    monkeypatch.setenv("DCR_CLIENT_FILE", str(tmp_path / "creds" / "c.json"))
    assert cli.run(["setup", "--env-file", str(dotenv)]) == ExitCode.OK  # no Keycloak needed: nothing to do
    assert dotenv.read_text() == "USE_DCR=true\nDCR_INITIAL_ACCESS_TOKEN=iat-value\n"
    assert not (tmp_path / ".env.backup").exists()
