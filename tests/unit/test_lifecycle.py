"""The credential lifecycle's contained parts: file access for another uid, MCP's registration metadata."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr

from bootstrap import cli, commands, envfile, flow, hooks, lifecycle, store
from bootstrap.commands import ROTATE_NOW
from bootstrap.errors import ConfigError, ExitCode
from bootstrap.models import SavedRegistration
from bootstrap.settings import load_settings
from tests.fakeserver import FakeServer, saved, serving, serving_in_thread, settings_for
from tests.faults import FaultAt, Injected
from tests.unit.conftest import Clock


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
    assert cli.run(["restore", "--force", str(copy)]) == ExitCode.OK  # no RFC 7592 token to check it with
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


# --- expiry and rotation ---


async def test_a_secret_that_never_expires_is_only_reloaded(server: FakeServer, tmp_path: Path, clock: Clock) -> None:
    """client_secret_expires_at 0 or absent: a restart reloads, whatever DCR_RENEW_BEFORE says."""
    settings = settings_for(server, tmp_path, dcr_renew_before="29d")
    await flow.run(settings)
    assert (await flow.run(settings)).action == "reloaded"


async def test_a_secret_due_is_renewed_by_an_update_that_rotates_it(
    server: FakeServer, tmp_path: Path, clock: Clock
) -> None:
    """Within DCR_RENEW_BEFORE of its expiry the secret is renewed by an RFC 7592 update; the new one is saved."""
    server.secret_lifetime, server.rotate_on_update = 3600, True
    settings = settings_for(server, tmp_path)
    first = (await flow.run(settings)).registration
    clock.at += 2500  # a third of the lifetime is left
    outcome = await flow.run(settings)
    assert (outcome.action, outcome.registration.client_id) == ("renewed", first.client_id)
    assert saved(tmp_path)["client_secret"] == server.clients[first.client_id]["client_secret"] != first.client_secret
    assert saved(tmp_path)["client_secret_expires_at"] == int(clock.at) + 3600


async def test_a_secret_not_yet_due_is_reloaded_without_an_update(
    server: FakeServer, tmp_path: Path, clock: Clock
) -> None:
    """With more than a third of its life left the secret is kept: one read, no update."""
    server.secret_lifetime, server.rotate_on_update = 3600, True
    settings = settings_for(server, tmp_path)
    await flow.run(settings)
    clock.at += 1000
    assert (await flow.run(settings)).action == "reloaded"
    assert server.count("PUT", "/connect/register/client-1") == 0


async def test_a_secret_the_server_will_not_renew_is_replaced_and_the_old_client_retired_after_grace(
    server: FakeServer, tmp_path: Path, clock: Clock
) -> None:
    """No renewal by update: a new client takes over, the old one lives out its grace, then is deleted."""
    server.secret_lifetime = 3600
    settings = settings_for(server, tmp_path, dcr_rotate_grace="10m")
    first = (await flow.run(settings)).registration
    clock.at += 3000
    outcome = await flow.run(settings)
    assert outcome.action == "replaced" and set(server.clients) == {first.client_id, outcome.registration.client_id}
    clock.at += 60  # inside the grace: the old client still serves apps that read it at their start
    await flow.run(settings)
    assert first.client_id in server.clients
    clock.at += 600
    await flow.run(settings)
    assert set(server.clients) == {outcome.registration.client_id}
    assert store.load_retired(tmp_path / "client.json") == []


async def test_an_expired_secret_is_replaced_never_kept_as_current(
    server: FakeServer, tmp_path: Path, clock: Clock
) -> None:
    """A run after the secret expired leaves a current, unexpired secret in the file."""
    server.secret_lifetime = 3600
    settings = settings_for(server, tmp_path)
    await flow.run(settings)
    clock.at += 7200
    outcome = await flow.run(settings)
    assert outcome.action == "replaced" and not lifecycle.expired(outcome.registration, int(clock.at))
    assert saved(tmp_path)["client_id"] == outcome.registration.client_id


async def test_rotation_after_its_age_gives_a_new_client_without_admin_credentials(
    server: FakeServer, tmp_path: Path, clock: Clock
) -> None:
    """DCR_ROTATE_AFTER without the server's own rotation: a new registration; the old one retires later."""
    settings = settings_for(server, tmp_path, dcr_rotate_after="30d", dcr_rotate_grace="1h")
    first = (await flow.run(settings)).registration
    clock.at += 29 * 86400
    assert (await flow.run(settings)).action == "reloaded"
    clock.at += 2 * 86400
    outcome = await flow.run(settings)
    assert outcome.action == "replaced" and outcome.registration.client_id != first.client_id
    clock.at += 3600
    assert (await flow.run(settings)).action == "reloaded" and len(server.clients) == 1


def _one_client_or_named_by_an_intent(server: FakeServer, home: Path) -> bool:
    """One client; or, after a kill during a POST (RFC 7591 cannot find it), each other one named in an intent."""
    named = {flow.named(i.client_name, i.nonce) for i in store.load_intents(home / "client.json")}
    others = [c for cid, c in server.clients.items() if cid != saved(home)["client_id"]]
    return all(c["client_name"] in named for c in others)


@pytest.mark.parametrize(
    ("error", "kill"),
    [(Injected, False), (asyncio.CancelledError, False), (Injected, True)],
    ids=["exception", "cancellation", "kill-9"],
)
async def test_a_fault_at_any_await_of_a_replacement_leaves_working_credentials_and_then_one_client(
    tmp_path: Path, error: Callable[[str], BaseException], kill: bool
) -> None:
    """Stopped at any await of a replacement: the file still works, and after the next run one client is left."""
    for n in range(1, 200):
        async with serving(FakeServer(secret_lifetime=3600, slow={"POST /connect/token": 0.001})) as server:
            home = tmp_path / f"{n}"
            home.mkdir()
            settings = settings_for(server, home, dcr_rotate_after=ROTATE_NOW, dcr_rotate_grace=0)
            await flow.run(settings)
            fault = FaultAt(n, error=error, kill=kill)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await fault.run(flow.run(settings))
            current = saved(home)
            assert server.clients[current["client_id"]]["client_secret"] == current["client_secret"], f"fault {n}"
            await flow.run(settings_for(server, home, dcr_rotate_grace=0))  # the next run: nothing due any more
            assert _one_client_or_named_by_an_intent(server, home), f"fault at await {n}: {len(server.clients)} clients"
            if not fault.fired:
                return
    raise AssertionError("the run never finished before the fault")


# --- the app learns of the change ---


async def test_on_change_reports_the_exit_status(tmp_path: Path) -> None:
    """The command runs without a shell and its exit status comes back (and is logged)."""
    assert await hooks.on_change(f"{sys.executable} -c 'raise SystemExit(3)'", 10) == 3


async def test_on_change_is_killed_after_its_timeout(tmp_path: Path) -> None:
    """A command that hangs is killed after DCR_ON_CHANGE_TIMEOUT and reported as such."""
    assert await hooks.on_change(f"{sys.executable} -c 'import time; time.sleep(60)'", 0.2) is None


async def test_on_change_runs_no_shell_unless_asked(tmp_path: Path) -> None:
    """'$(...)' in the command is an argument, not a substitution."""
    marker = tmp_path / "ran"
    command = f"{sys.executable} -c 'import sys; open(sys.argv[1], \"w\").write(sys.argv[2])' {marker} '$(id)'"
    assert await hooks.on_change(command, 10) == 0
    assert marker.read_text() == "$(id)"


async def test_watch_runs_on_change_when_the_secret_changes_and_not_for_a_token_rotation(
    server: FakeServer, tmp_path: Path, clock: Clock
) -> None:
    """In 'watch', DCR_ON_CHANGE runs after a renewed secret, never after a round that changed only the token."""
    server.secret_lifetime, server.rotate_on_update = 3600, True
    marker = tmp_path / "changes"
    hook = f'{sys.executable} -c \'open("{marker}", "a").write("x")\''
    quiet = settings_for(server, tmp_path, dcr_watch_interval=60)
    await flow.run(quiet)  # the file the app started with
    await flow.run(quiet)  # rounds that only rotate the registration access token
    renewing = settings_for(server, tmp_path, dcr_watch_interval=3000, dcr_on_change=hook)

    async def sleep(wait: float) -> None:  # each round sleeps until the secret is due again: the clock moves
        clock.at += wait
        if marker.exists() and len(marker.read_text()) >= 2:
            raise asyncio.CancelledError

    await commands._watch(renewing, argparse.Namespace(), sleep)
    assert server.count("PUT", "/connect/register/client-1") >= 2


def test_show_lists_a_replaced_registration_with_its_secrets_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """'show' prints the registration a replacement retired, and when it goes, its secrets masked."""
    clock = Clock()
    monkeypatch.setattr(lifecycle, "now", lambda: int(clock()))
    with serving_in_thread(FakeServer(secret_lifetime=3600, now=clock)) as server:
        settings = settings_for(server, tmp_path, dcr_rotate_grace="1h")
        first = asyncio.run(flow.run(settings)).registration
        clock.at += 3000
        asyncio.run(flow.run(settings))
        monkeypatch.setenv("DCR_CLIENT_FILE", str(tmp_path / "client.json"))
        monkeypatch.setenv("DCR_ISSUER", server.base)
        assert cli.run(["show"]) == ExitCode.OK
    out = capsys.readouterr().out
    [retired] = json.loads(out)["retired"]
    assert retired["client_id"] == first.client_id and retired["retire_at"] == first.client_secret_expires_at
    assert first.client_secret is not None and first.client_secret.get_secret_value() not in out
