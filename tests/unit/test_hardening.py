"""A hostile server, a careless operator or a crash never costs a secret, a file or a client.

Each test runs the real flow against the loopback server in tests/fakeserver.py, told to misbehave.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bootstrap import cli, flow, log, store
from bootstrap.errors import (
    ConfigError,
    ExitCode,
    MalformedResponse,
    NotAllowed,
    ServerNotReady,
    ServerResponseError,
    StorageError,
)
from bootstrap.settings import Settings, load_settings
from tests.fakeserver import IAT, FakeServer, saved, settings_for

# --- 1. secrets go only to the issuer ---


async def test_registration_endpoint_on_another_origin_gets_no_initial_token(
    server: FakeServer, tmp_path: Path
) -> None:
    server.metadata_extra = {"registration_endpoint": "http://127.0.0.2:9/connect/register"}
    with pytest.raises(ServerResponseError, match="DCR_TRUSTED_ORIGINS"):
        await flow.run(settings_for(server, tmp_path))
    assert server.registered == 0


async def test_token_endpoint_on_another_origin_gets_no_credentials_and_the_client_is_deleted(
    server: FakeServer, tmp_path: Path
) -> None:
    server.metadata_extra = {"token_endpoint": "http://127.0.0.2:9/connect/token"}
    with pytest.raises(ServerResponseError, match="has been deleted again"):
        await flow.run(settings_for(server, tmp_path))
    assert server.clients == {} and not (tmp_path / "client.json").exists()


async def test_trusted_origin_setting_allows_another_endpoint_origin(server: FakeServer, tmp_path: Path) -> None:
    server.metadata_extra = {
        "registration_endpoint": server.base.replace("127.0.0.1", "localhost") + "/connect/register"
    }
    origin = server.base.replace("127.0.0.1", "localhost")
    outcome = await flow.run(settings_for(server, tmp_path, dcr_trusted_origins=[origin]))
    assert outcome.action == "registered"


def test_a_password_in_a_url_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYCLOAK_URL", "http://admin:hunter2pw@kc:8080")
    with pytest.raises(ConfigError, match="KEYCLOAK_URL") as info:
        load_settings()
    assert "hunter2pw" not in str(info.value)


def test_https_issuer_refuses_plain_http_trusted_origins() -> None:
    settings = Settings(dcr_issuer="https://as.example.test", dcr_trusted_origins=["http://other.test"])
    with pytest.raises(ConfigError, match="downgraded"):
        settings.check()


def test_redaction_covers_the_basic_header_of_a_secret() -> None:
    log.register_basic("some-client", "some-secret-value")
    header = "Basic c29tZS1jbGllbnQ6c29tZS1zZWNyZXQtdmFsdWU="
    event = log.redact(None, "error", {"event": f"server said: bad credentials in {header}"})
    assert "c29tZS1jbGllbnQ6c29tZS1zZWNyZXQtdmFsdWU" not in event["event"]


# --- 2. the env file cannot inject ---


async def test_env_file_refuses_a_client_id_that_would_run_code(server: FakeServer, tmp_path: Path) -> None:
    server.register_extra = {"client_id": "x$(touch /tmp/pwned)"}
    env_file = tmp_path / "client.env"
    with pytest.raises(StorageError, match="env file"):
        await flow.run(settings_for(server, tmp_path, dcr_env_file=env_file))
    assert not env_file.exists() and not (tmp_path / "client.json").exists()


async def test_env_file_sourced_by_sh_sets_exactly_the_two_values(server: FakeServer, tmp_path: Path) -> None:
    env_file = tmp_path / "client.env"
    await flow.run(settings_for(server, tmp_path, dcr_env_file=env_file))
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", f'. "{env_file}"; printf %s "$KEYCLOAK_CLIENT_ID"', stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert out.decode() == saved(tmp_path)["client_id"]


async def test_a_client_id_with_a_line_break_is_refused_and_deleted(server: FakeServer, tmp_path: Path) -> None:
    server.register_extra = {"client_id": "a\nLD_PRELOAD=/x"}
    with pytest.raises(MalformedResponse, match="VSCHAR"):
        await flow.run(settings_for(server, tmp_path))
    assert not (tmp_path / "client.json").exists()
    assert server.count("DELETE", "/connect/register/client-1") == 1


def test_env_file_equal_to_client_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="same file"):
        Settings(dcr_client_file=tmp_path / "c.json", dcr_env_file=tmp_path / "c.json")


# --- 3. no orphans by our hand ---


async def test_an_unwritable_directory_fails_before_registering(server: FakeServer, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        directory = Path("/proc/self")  # root writes anywhere else; /proc refuses even root
    else:
        directory = tmp_path / "ro"
        directory.mkdir(mode=0o500)
    with pytest.raises(StorageError):
        await flow.run(settings_for(server, tmp_path, dcr_client_file=directory / "client.json"))
    assert server.registered == 0


async def test_a_save_failing_after_registration_deletes_the_new_client(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(*_: object, **__: object) -> None:
        raise StorageError("Cannot write client.json (No space left on device).")

    monkeypatch.setattr(store, "save", full_disk)
    with pytest.raises(StorageError, match="Client client-1 was created on the server and has been deleted again"):
        await flow.run(settings_for(server, tmp_path))
    assert server.clients == {}


async def test_a_rotated_token_whose_answer_was_lost_keeps_the_working_client(
    server: FakeServer, tmp_path: Path
) -> None:
    settings = settings_for(server, tmp_path)
    await flow.run(settings)
    server.tokens.clear()  # as if a PUT rotated the token and its answer never arrived
    outcome = await flow.run(settings)
    assert outcome.action == "reloaded" and server.registered == 1 and len(server.clients) == 1


async def test_403_on_read_is_not_allowed_and_never_registers_again(server: FakeServer, tmp_path: Path) -> None:
    settings = settings_for(server, tmp_path)
    await flow.run(settings)
    server.fail_next("/connect/register/client-1", 403)
    with pytest.raises(NotAllowed):
        await flow.run(settings)
    assert server.registered == 1


async def test_a_client_with_rejected_credentials_is_registered_again(server: FakeServer, tmp_path: Path) -> None:
    settings = settings_for(server, tmp_path)
    await flow.run(settings)
    server.clients.clear()
    outcome = await flow.run(settings)
    assert (outcome.action, outcome.registration.client_id) == ("registered", "client-2")


async def test_a_downgraded_auth_method_is_refused_and_the_client_deleted(server: FakeServer, tmp_path: Path) -> None:
    server.register_extra = {"token_endpoint_auth_method": "none", "client_secret": None}
    with pytest.raises(MalformedResponse, match="without its secret"):
        await flow.run(settings_for(server, tmp_path))
    assert server.clients == {}


async def test_a_pending_registration_left_by_a_killed_run_is_adopted(server: FakeServer, tmp_path: Path) -> None:
    settings = settings_for(server, tmp_path)
    await flow.run(settings)
    path = tmp_path / "client.json"
    os.replace(path, store.pending_path(path))  # killed after the POST answered, before the save
    outcome = await flow.run(settings)
    assert outcome.action == "registered" and server.registered == 1
    assert not store.pending_path(path).exists()


# --- 4. nothing lost ---


async def test_a_file_from_another_issuer_is_kept_as_a_backup(server: FakeServer, tmp_path: Path) -> None:
    path = tmp_path / "client.json"
    path.write_text(json.dumps({"client_id": "elsewhere", "client_secret": "s", "issuer": "https://other.test"}))
    await flow.run(settings_for(server, tmp_path))
    backups = [tmp_path / name for name in os.listdir(tmp_path) if name.endswith(".bak")]
    assert len(backups) == 1 and json.loads(backups[0].read_text())["client_id"] == "elsewhere"
    assert stat.S_IMODE(backups[0].stat().st_mode) == 0o600


async def test_stale_temp_files_are_swept_under_the_lock(server: FakeServer, tmp_path: Path) -> None:
    stale = tmp_path / ".client.json.0123456789ab.tmp"
    stale.write_text("secret leftovers")
    await flow.run(settings_for(server, tmp_path))
    assert not stale.exists()


async def test_a_symlinked_lock_file_is_refused(server: FakeServer, tmp_path: Path) -> None:
    (tmp_path / ".client.json.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StorageError, match="symbolic link"):
        await flow.run(settings_for(server, tmp_path))
    assert not (tmp_path / "elsewhere").exists()


async def test_waiting_for_the_lock_ends_at_the_deadline(tmp_path: Path) -> None:
    path = tmp_path / "client.json"
    async with store.locked(path):
        with pytest.raises(StorageError, match="held"):
            async with store.locked(path, lambda: 0.0):
                pass


async def test_an_unmanaged_reload_makes_the_file_private_and_the_env_file_current(
    server: FakeServer, tmp_path: Path
) -> None:
    server.register_extra = {"registration_client_uri": None, "registration_access_token": None}
    await flow.run(settings_for(server, tmp_path))
    path = tmp_path / "client.json"
    path.chmod(0o644)
    env_file = tmp_path / "client.env"
    await flow.run(settings_for(server, tmp_path, dcr_env_file=env_file))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and env_file.exists()


# --- 5. bounded ---


async def test_a_huge_body_is_refused_without_reading_it_all(server: FakeServer, tmp_path: Path) -> None:
    server.fail_next("/.well-known/oauth-authorization-server", 200, body=b" " * (3 * 1024 * 1024))
    with pytest.raises(MalformedResponse, match="larger than"):
        await flow.run(settings_for(server, tmp_path))


async def test_a_gzip_bomb_is_not_inflated_past_the_cap(server: FakeServer, tmp_path: Path) -> None:
    bomb = gzip.compress(b" " * (64 * 1024 * 1024))
    server.fail_next("/.well-known/oauth-authorization-server", 200, headers={"Content-Encoding": "gzip"}, body=bomb)
    with pytest.raises(MalformedResponse, match="larger than"):
        await flow.run(settings_for(server, tmp_path))


async def test_retry_after_beyond_the_deadline_ends_the_run_at_once(server: FakeServer, tmp_path: Path) -> None:
    server.fail_next("/.well-known/oauth-authorization-server", 429, headers={"Retry-After": "3600"})
    with pytest.raises(ServerNotReady, match="asked to retry"):
        await flow.run(settings_for(server, tmp_path))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DCR_GRANT_TYPES", ""),
        ("DCR_GRANT_TYPES", "client_credential"),
        ("DCR_ATTEMPT_TIMEOUT", "inf"),
        ("DCR_CLIENT_FILE", "/"),
        ("DCR_CLIENT_NAME", "x" * 300),
        ("DCR_INITIAL_ACCESS_TOKEN", "abc\r\nX-Injected: 1"),
    ],
)
def test_bad_configuration_exits_2(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv("DCR_ISSUER", "http://127.0.0.1:9")
    monkeypatch.setenv(name, value)
    assert cli.run([]) == ExitCode.CONFIG


@pytest.mark.parametrize("content", [None, "not a certificate"])
def test_a_missing_or_non_pem_ca_bundle_exits_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str | None
) -> None:
    bundle = tmp_path / "ca.pem"
    if content is not None:
        bundle.write_text(content)
    monkeypatch.setenv("DCR_ISSUER", "https://127.0.0.1:9")
    monkeypatch.setenv("DCR_CA_BUNDLE", str(bundle))
    assert cli.run([]) == ExitCode.CONFIG


# --- 6. right exit codes and true messages ---


@pytest.mark.parametrize("command", ["show", "env", "delete"])
def test_commands_without_a_saved_file_exit_6(command: str) -> None:
    assert cli.run([command]) == ExitCode.STORAGE


async def test_a_relative_registration_endpoint_is_reported_as_not_sent(server: FakeServer, tmp_path: Path) -> None:
    server.metadata_extra = {"registration_endpoint": "/connect/register"}
    with pytest.raises(ServerResponseError, match="nothing was sent"):
        await flow.run(settings_for(server, tmp_path))


async def test_control_characters_from_the_server_are_escaped_and_capped(server: FakeServer, tmp_path: Path) -> None:
    description = 'forged\n{"level":"info"}' + "x" * 100_000
    body = json.dumps({"error": "invalid_client_metadata", "error_description": description}).encode()
    server.fail_next("/connect/register", 400, body=body)
    env = {
        "PATH": os.environ["PATH"],
        "DCR_ISSUER": server.base,
        "DCR_INITIAL_ACCESS_TOKEN": IAT,
        "DCR_LOG_FORMAT": "console",
        "DCR_CLIENT_FILE": str(tmp_path / "client.json"),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bootstrap", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == ExitCode.REGISTRATION_REJECTED
    last = err.decode().strip().splitlines()[-1]
    assert "forged\\n" in last and len(last) < 3000


def test_show_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"client_id": "c", "client_secret": "s"}))
    env = {"PATH": os.environ["PATH"], "DCR_CLIENT_FILE": str(path), "DCR_LOG_FORMAT": "json"}
    proc = subprocess.run(
        ["sh", "-c", f"'{sys.executable}' -m bootstrap show | head -c 1"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "BrokenPipe" not in proc.stderr


# --- more of the cases under Why ---


async def test_a_registration_client_uri_on_another_origin_gets_no_token(server: FakeServer, tmp_path: Path) -> None:
    settings = settings_for(server, tmp_path)
    await flow.run(settings)
    data = saved(tmp_path) | {"registration_client_uri": "http://127.0.0.2:9/connect/register/client-1"}
    (tmp_path / "client.json").write_text(json.dumps(data))
    with pytest.raises(ServerResponseError, match="outside the issuer's origin"):
        await flow.run(settings)


async def test_a_put_that_timed_out_is_not_retried_with_the_old_token(server: FakeServer, tmp_path: Path) -> None:
    """A PUT whose answer never comes within the deadline is not sent again (it may have rotated the token)."""
    await flow.run(settings_for(server, tmp_path))
    # The deadline leaves a loaded machine ample time to reach the PUT; the PUT hangs far past it.
    server.slow["PUT /connect/register/client-1"] = 60.0
    changed = settings_for(server, tmp_path, dcr_client_name="renamed", dcr_wait_timeout=4)
    with pytest.raises(ServerResponseError, match="may have acted on it"):
        await flow.run(changed)
    assert server.count("PUT", "/connect/register/client-1") == 1


def test_initial_token_against_an_unreachable_server_exits_3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYCLOAK_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("KEYCLOAK_REALM", "r")
    monkeypatch.setenv("KEYCLOAK_ADMIN_USERNAME", "admin")
    monkeypatch.setenv("KEYCLOAK_ADMIN_PASSWORD", "admin-password")
    monkeypatch.setenv("DCR_WAIT_TIMEOUT", "0.3")
    assert cli.run(["initial-token"]) == ExitCode.NOT_READY


async def test_a_static_mode_file_is_kept_as_a_backup_when_dcr_takes_over(server: FakeServer, tmp_path: Path) -> None:
    path = tmp_path / "client.json"
    path.write_text(
        json.dumps({"client_id": "static-id", "client_secret": "s", "issuer": server.base, "mode": "static"})
    )
    await flow.run(settings_for(server, tmp_path))
    backups = [tmp_path / name for name in os.listdir(tmp_path) if name.endswith(".bak")]
    assert [json.loads(b.read_text())["client_id"] for b in backups] == ["static-id"]


async def test_an_echoed_authorization_header_never_reaches_the_log(server: FakeServer, tmp_path: Path) -> None:
    server.echo_authorization = True
    env = {
        "PATH": os.environ["PATH"],
        "USE_DCR": "false",
        "DCR_ISSUER": server.base,
        "KEYCLOAK_CLIENT_ID": "echo-client",
        "KEYCLOAK_CLIENT_SECRET": "wrong-secret-value",
        "DCR_CLIENT_FILE": str(tmp_path / "client.json"),
        "DCR_LOG_FORMAT": "json",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bootstrap", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == ExitCode.CREDENTIALS_REJECTED
    assert "ZWNoby1jbGllbnQ6d3Jvbmctc2VjcmV0LXZhbHVl" not in err.decode()  # base64 of echo-client:wrong-secret-value


async def test_slow_registration_answer_is_awaited_not_orphaned(server: FakeServer, tmp_path: Path) -> None:
    """A POST slower than DCR_ATTEMPT_TIMEOUT is waited for (within the deadline): one client, saved."""
    server.slow["POST /connect/register"] = 1.0
    outcome = await flow.run(settings_for(server, tmp_path, dcr_attempt_timeout=0.3))
    assert outcome.action == "registered"
    assert server.registered == 1 and saved(tmp_path)["client_id"] == outcome.registration.client_id
