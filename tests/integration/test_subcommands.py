"""The operations subcommands: show, delete, wait, initial-token, setup."""

from __future__ import annotations

import base64
import json
import signal
import stat
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

from harness.keycloak import Admin, KeycloakServer
from tests.conftest import run_cli


def test_show_prints_the_registration_with_secrets_redacted(env: dict[str, str], creds_file: Path) -> None:
    """'show' prints the saved registration; no secret value appears."""
    assert run_cli(env).code == 0
    data = json.loads(creds_file.read_text())
    result = run_cli(env, "show")
    assert result.code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["client_id"] == data["client_id"]
    assert shown["client_secret"] == "**********"
    result.assert_clean(data["client_secret"], data["registration_access_token"])


def test_delete_removes_the_client_on_the_server_and_the_file(
    admin: Admin, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """'delete' deletes the client by RFC 7592 and removes the credentials file."""
    assert run_cli(env).code == 0
    client_id = json.loads(creds_file.read_text())["client_id"]
    result = run_cli(env, "delete")
    assert result.code == 0, result.stderr
    assert not creds_file.exists()
    assert client_id not in {c["clientId"] for c in admin.clients(realm)}


def test_wait_returns_once_the_realm_serves_metadata(env: dict[str, str], creds_file: Path) -> None:
    """'wait' exits 0 when the server is ready and writes nothing."""
    result = run_cli(env, "wait")
    assert result.code == 0, result.stderr
    assert result.last["event"] == "Server ready"
    assert not creds_file.exists()


def test_initial_token_mints_a_token_that_registers_a_client(
    keycloak: KeycloakServer, realm: str, env: dict[str, str], tmp_path: Path
) -> None:
    """'initial-token' mints through the admin API into a 0600 file; that token registers a client."""
    env.pop("DCR_INITIAL_ACCESS_TOKEN")
    admin_env = env | {"KEYCLOAK_ADMIN_USERNAME": "admin", "KEYCLOAK_ADMIN_PASSWORD": keycloak.admin_password}
    token_file = tmp_path / "iat"
    result = run_cli(admin_env, "initial-token", "--count", "1", "--expiration", "600", "--output", str(token_file))
    assert result.code == 0, result.stderr
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    result.assert_clean(token_file.read_text().strip(), keycloak.admin_password)
    registered = run_cli(env | {"DCR_INITIAL_ACCESS_TOKEN_FILE": str(token_file)})
    assert registered.code == 0, registered.stderr


def test_initial_token_with_wrong_admin_password_fails_clearly(realm: str, env: dict[str, str], tmp_path: Path) -> None:
    """Wrong admin credentials: exit 5, a line naming the settings, the password not echoed."""
    result = run_cli(
        env | {"KEYCLOAK_ADMIN_USERNAME": "admin", "KEYCLOAK_ADMIN_PASSWORD": "wrong-password"}, "initial-token"
    )
    assert result.code == 8, result.stderr  # ExitCode.ADMIN_REJECTED
    assert "KEYCLOAK_ADMIN_PASSWORD" in str(result.last["event"])
    result.assert_clean("wrong-password")


def _start_watch(env: dict[str, str], **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bootstrap", "watch"],
        env=env | {"DCR_WATCH_INTERVAL": "0.2"} | extra,
        cwd=env["HOME"],
        stderr=subprocess.PIPE,
        text=True,
    )


def _written(proc: subprocess.Popen[str], count: int) -> list[str]:
    assert proc.stderr is not None
    actions: list[str] = []
    for line in proc.stderr:
        if '"Credentials written"' in line:
            actions.append(json.loads(line)["action"])
            if len(actions) == count:
                break
    return actions


def test_watch_rechecks_until_terminated(env: dict[str, str], creds_file: Path) -> None:
    """'watch' (sidecar mode) registers, re-checks on its interval, and exits 0 on SIGTERM."""
    proc = _start_watch(env)
    actions = _written(proc, 2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert actions == ["registered", "reloaded"]
    assert creds_file.exists()


def test_watch_with_delete_on_exit_deletes_its_client_on_sigterm(
    admin: Admin, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """DCR_DELETE_ON_EXIT: SIGTERM deletes the Pod's client on the server, so the count returns to before."""
    before = len(admin.clients(realm))
    proc = _start_watch(env, DCR_DELETE_ON_EXIT="true")
    assert _written(proc, 1) == ["registered"]
    assert len(admin.clients(realm)) == before + 1
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert len(admin.clients(realm)) == before
    assert not creds_file.exists()
    assert '"on_server": true' in stderr


def test_setup_switches_a_static_dotenv_to_dcr_with_a_token_that_registers(
    keycloak: KeycloakServer, admin: Admin, realm: str, env: dict[str, str], tmp_path: Path
) -> None:
    """'setup': a .env.backup, USE_DCR=true, a fresh initial access token, static lines commented out, 0600."""
    env.pop("DCR_INITIAL_ACCESS_TOKEN")
    dotenv = tmp_path / "app" / ".env"
    dotenv.parent.mkdir()
    original = "# app\nUSE_DCR=false\nKEYCLOAK_CLIENT_ID=old\nKEYCLOAK_CLIENT_SECRET=old-secret\nPORT=8000\n"
    dotenv.write_text(original)
    admin_env = env | {"KEYCLOAK_ADMIN_USERNAME": "admin", "KEYCLOAK_ADMIN_PASSWORD": keycloak.admin_password}
    result = run_cli(admin_env, "setup", "--env-file", str(dotenv))
    assert result.code == 0, result.stderr
    lines = dotenv.read_text().splitlines()
    token = next(line.split("=", 1)[1] for line in lines if line.startswith("DCR_INITIAL_ACCESS_TOKEN="))
    assert lines[:6] == [
        "# app",
        "USE_DCR=true",
        "# KEYCLOAK_CLIENT_ID=old",
        "# KEYCLOAK_CLIENT_SECRET=old-secret",
        "PORT=8000",
        f"DCR_INITIAL_ACCESS_TOKEN={token}",
    ]
    assert (dotenv.parent / ".env.backup").read_text() == original
    assert stat.S_IMODE(dotenv.stat().st_mode) == 0o600
    result.assert_clean(token, keycloak.admin_password)
    registered = run_cli(env | {"DCR_INITIAL_ACCESS_TOKEN": token})
    assert registered.code == 0, registered.stderr


def test_the_migration_flow_setup_then_run_from_one_env_file(
    keycloak: KeycloakServer, realm: str, env: dict[str, str], tmp_path: Path
) -> None:
    """The README's migration: 'setup' edits the app's .env, and a run named --env-file registers from it."""
    app = tmp_path / "app"
    app.mkdir()
    dotenv = app / ".env"
    dotenv.write_text(
        f"KEYCLOAK_URL={keycloak.url}\nKEYCLOAK_REALM={realm}\nUSE_DCR=false\nKEYCLOAK_CLIENT_ID=old\n"
        f"KEYCLOAK_CLIENT_SECRET=old-secret\nDCR_CLIENT_FILE={app / '.dcr_client.json'}\nDCR_CLIENT_NAME=migrated\n"
    )
    dotenv.chmod(0o600)
    bare = {key: value for key, value in env.items() if not key.startswith(("KEYCLOAK_", "DCR_"))}
    bare |= {"DCR_LOG_FORMAT": "json", "DCR_CLIENT_FILE": str(app / ".dcr_client.json")}
    admin_env = bare | {"KEYCLOAK_ADMIN_USERNAME": "admin", "KEYCLOAK_ADMIN_PASSWORD": keycloak.admin_password}
    assert run_cli(admin_env, "--env-file", str(dotenv), "setup").code == 0
    implicit = run_cli(bare, "run", cwd=app)  # beside the credentials file: ignored, and the last line says so
    assert implicit.code == 2 and "pass --env-file .env to read it" in implicit.stderr.splitlines()[-1]
    explicit = run_cli(bare, "--env-file", str(dotenv), "run", cwd=app)
    assert explicit.code == 0, explicit.stderr
    assert json.loads((app / ".dcr_client.json").read_text())["client_id"]


def _backed_up(env: dict[str, str], creds_file: Path) -> tuple[str, Path]:
    """A registered client and a backup of it (DCR_CLIENT_FILE's folder is creds/, the backups go beside)."""
    assert run_cli(env).code == 0
    backups = creds_file.parent.parent / "backups"
    assert run_cli(env, "backup", str(backups)).code == 0
    [copy] = backups.iterdir()
    return json.loads(creds_file.read_text())["client_id"], copy


def test_restore_of_a_current_backup_is_read_on_keycloak_and_reloads(env: dict[str, str], creds_file: Path) -> None:
    """A real backup of the client in use is restored after Keycloak answered its RFC 7592 read."""
    client_id, copy = _backed_up(env, creds_file)
    result = run_cli(env, "restore", str(copy))
    assert result.code == 0, result.stderr
    assert result.last["event"] == "Registration restored" and result.last["client_id"] == client_id
    assert run_cli(env).last["action"] == "reloaded"


def test_restore_refuses_a_backup_whose_token_keycloak_rotated_and_keeps_the_working_one(
    admin: Admin, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """An update rotated the registration access token: the older backup is exit 2; the saved token still works."""
    client_id, copy = _backed_up(env, creds_file)
    updated = env | {"DCR_SOFTWARE_VERSION": "2.0"}  # new metadata: an RFC 7592 update, which rotates the token
    assert run_cli(updated).last["action"] == "updated"
    result = run_cli(updated, "restore", str(copy))
    assert result.code == 2, result.stderr
    assert "older than the saved registration" in str(result.last["event"])
    assert run_cli(updated).last["action"] == "reloaded"  # management kept: no new client
    assert [c["clientId"] for c in admin.clients(realm) if c["clientId"] == client_id] == [client_id]


def test_restore_refuses_a_backup_of_a_client_deleted_on_keycloak(
    admin: Admin, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """The backup's client was deleted by an admin: exit 2 naming it and --force; the file is unchanged."""
    client_id, copy = _backed_up(env, creds_file)
    admin.delete_client(realm, client_id)
    before = creds_file.read_bytes()
    result = run_cli(env, "restore", str(copy))
    assert result.code == 2, result.stderr
    assert client_id in str(result.last["event"]) and "--force" in str(result.last["event"])
    assert creds_file.read_bytes() == before


def test_restore_of_another_client_retires_the_one_it_replaces(
    admin: Admin, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """The saved file held a different client: restored, that client is retired and deleted after the grace."""
    env["DCR_INITIAL_ACCESS_TOKEN"] = admin.mint_initial_access_token(realm, count=2)
    first, copy = _backed_up(env, creds_file)
    creds_file.unlink()
    assert run_cli(env).last["action"] == "registered"
    second = json.loads(creds_file.read_text())["client_id"]
    result = run_cli(env | {"DCR_ROTATE_GRACE": "0"}, "restore", str(copy))
    assert result.code == 0, result.stderr
    assert result.last["retired"] == second
    assert run_cli(env).last["action"] == "reloaded"
    ids = {c["clientId"] for c in admin.clients(realm)}
    assert first in ids and second not in ids


def test_an_env_file_under_another_servers_names_introspects_on_keycloak(
    keycloak: KeycloakServer, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """DCR_ENV_NAMES: an app reading OAUTH_* gets Keycloak's introspection endpoint and credentials it accepts."""
    env_file = creds_file.parent / "app.env"
    names = "client_id=OAUTH_CLIENT_ID,client_secret=OAUTH_CLIENT_SECRET,introspection_endpoint=OAUTH_INTROSPECT"
    result = run_cli(env | {"DCR_ENV_FILE": str(env_file), "DCR_ENV_NAMES": names})
    assert result.code == 0, result.stderr
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert set(values) == {"OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OAUTH_INTROSPECT"}
    assert values["OAUTH_INTROSPECT"] == f"{keycloak.url}/realms/{realm}/protocol/openid-connect/token/introspect"
    form = urllib.parse.urlencode({"token": "not-a-token"}).encode()
    basic = base64.b64encode(f"{values['OAUTH_CLIENT_ID']}:{values['OAUTH_CLIENT_SECRET']}".encode()).decode()
    request = urllib.request.Request(values["OAUTH_INTROSPECT"], data=form, headers={"Authorization": f"Basic {basic}"})
    with urllib.request.urlopen(request, timeout=30) as answer:  # a client Keycloak rejects gets 401 here
        assert json.loads(answer.read()) == {"active": False}
