"""Trust boundaries beyond the authorization server: the shared volume, odd answers, logs, lost POSTs.

Each test runs the real code against the loopback server of tests/fakeserver.py (told to misbehave)
or a folder that a co-tenant of the volume has tampered with.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from bootstrap import commands, flow, log, store, tokens
from bootstrap._dotenv import ignored_env_files
from bootstrap.errors import ExitCode, MalformedResponse, RegistrationRejected, ServerResponseError, StorageError
from bootstrap.models import ClientInformation, Intent, SavedRegistration
from bootstrap.settings import Settings, load_settings
from tests.fakeserver import IAT, FakeServer, saved, serving, serving_in_thread, settings_for
from tests.faults import FaultAt, Injected

# --- the volume is not configuration ---


def _exists(path: Path) -> bool:
    return os.path.lexists(path)


def _backups(folder: Path) -> list[Path]:
    return [path for path in folder.iterdir() if path.name.endswith(".bak")]


def _dotenv(folder: Path, mode: int = 0o600) -> Path:
    env = folder / ".env"
    env.write_text("DCR_ISSUER=http://attacker.test\n")
    env.chmod(mode)
    return env


def test_a_dotenv_in_the_credentials_folder_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .env beside the credentials file (a shared volume) never chooses the issuer."""
    _dotenv(tmp_path)
    monkeypatch.setenv("DCR_CLIENT_FILE", str(tmp_path / ".dcr_client.json"))
    assert load_settings().dcr_issuer is None
    assert ignored_env_files[-1][1].startswith("sits in the credentials folder")


def test_a_dotenv_writable_by_others_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A group- or world-writable .env is not read."""
    _dotenv(tmp_path, 0o664)
    monkeypatch.setenv("DCR_CLIENT_FILE", str(tmp_path / "creds" / "c.json"))
    assert load_settings().dcr_issuer is None


def test_a_dotenv_owned_by_another_user_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .env owned by neither this user nor root is not read."""
    _dotenv(tmp_path)
    monkeypatch.setenv("DCR_CLIENT_FILE", str(tmp_path / "creds" / "c.json"))
    if os.geteuid() == 0:
        os.chown(tmp_path / ".env", 4242, -1)
    else:
        monkeypatch.setattr(os, "geteuid", lambda: 4242)  # the file is ours; pretend to be someone else
    assert load_settings().dcr_issuer is None


def test_a_symlinked_dotenv_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .env that is a symbolic link is not followed."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / ".env").symlink_to(_dotenv(tmp_path / "elsewhere"))
    monkeypatch.setenv("DCR_CLIENT_FILE", str(tmp_path / "creds" / "c.json"))
    assert load_settings().dcr_issuer is None


def test_a_private_dotenv_outside_the_credentials_folder_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's own .env in the working directory still works."""
    _dotenv(tmp_path)
    monkeypatch.setenv("DCR_CLIENT_FILE", str(tmp_path / "creds" / "c.json"))
    assert load_settings().dcr_issuer == "http://attacker.test"


async def test_a_symlinked_pending_file_is_never_read_or_copied(server: FakeServer, tmp_path: Path) -> None:
    """A pending file that links elsewhere is removed; its target is neither read nor backed up."""
    target = tmp_path / "environ"
    target.write_text("DCR_INITIAL_ACCESS_TOKEN=leaked-value-123\n")
    store.pending_path(tmp_path / "client.json").symlink_to(target)
    outcome = await flow.run(settings_for(server, tmp_path))
    assert outcome.action == "registered"
    assert not _backups(tmp_path)
    assert not _exists(store.pending_path(tmp_path / "client.json"))


async def test_a_symlinked_credentials_file_is_refused_and_its_target_kept(server: FakeServer, tmp_path: Path) -> None:
    """The credentials file is never read or written through a link."""
    target = tmp_path / "target.json"
    target.write_text("{}")
    (tmp_path / "client.json").symlink_to(target)
    with pytest.raises(StorageError, match="symbolic link"):
        await flow.run(settings_for(server, tmp_path))
    assert target.read_text() == "{}" and server.registered == 0


async def test_a_credentials_file_of_another_user_is_refused(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A credentials file owned by another uid is neither trusted nor replaced."""
    settings = settings_for(server, tmp_path)
    await flow.run(settings)
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(tmp_path / "client.json").st_uid + 1)
    with pytest.raises(StorageError, match="owned by uid"):
        await flow.run(settings)


async def test_an_env_file_that_is_a_link_is_not_written_through(server: FakeServer, tmp_path: Path) -> None:
    """DCR_ENV_FILE pointing at a planted link fails the run; the link's target is untouched."""
    target = tmp_path / "victim"
    target.write_text("keep me\n")
    (tmp_path / "client.env").symlink_to(target)
    with pytest.raises(StorageError, match="symbolic link"):
        await flow.run(settings_for(server, tmp_path, dcr_env_file=tmp_path / "client.env"))
    assert target.read_text() == "keep me\n" and server.clients == {}


# --- every failure compensates ---


@pytest.mark.parametrize("error", [Injected, asyncio.CancelledError], ids=["exception", "cancellation"])
async def test_a_fault_at_any_await_after_registering_leaves_no_live_client_unsaved(
    tmp_path: Path, error: Callable[[str], BaseException]
) -> None:
    """Whatever is thrown at whichever await after the POST, the client is saved or deleted, never left."""
    for n in range(1, 100):
        async with serving(FakeServer(slow={"POST /connect/token": 0.001})) as server:
            home = tmp_path / f"{n}"
            home.mkdir()
            fault = FaultAt(n, armed=lambda s=server: s.registered > 0, error=error)  # type: ignore[misc]
            with contextlib.suppress(Exception, asyncio.CancelledError):  # any outcome; the state is judged
                await fault.run(flow.run(settings_for(server, home)))
            kept = {saved(home)["client_id"]} if (home / "client.json").exists() else set()
            assert set(server.clients) <= kept, f"fault at await {n}: a live client is not saved"
            assert (await flow.run(settings_for(server, home))).registration.client_id in server.clients
            assert len(server.clients) == 1
            if not fault.fired:
                return
    raise AssertionError("the run never finished before the fault")


async def test_an_endpoint_that_does_not_parse_is_refused_and_the_client_deleted(
    server: FakeServer, tmp_path: Path
) -> None:
    """token_endpoint 'http://[::1' is an untrusted answer (exit 7), not a crash."""
    server.metadata_extra = {"token_endpoint": "http://[::1"}
    with pytest.raises(ServerResponseError):
        await flow.run(settings_for(server, tmp_path))
    assert server.clients == {}


def test_an_unexpected_error_after_registering_is_one_line_exit_1_and_no_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug (KeyError) after the POST: the client is deleted, one JSON line, exit 1, no traceback."""

    async def broken(*_: object, **__: object) -> None:
        raise KeyError("access_token")

    monkeypatch.setattr(tokens, "client_credentials", broken)
    with serving_in_thread(FakeServer()) as server:
        monkeypatch.setenv("DCR_ISSUER", server.base)
        monkeypatch.setenv("DCR_INITIAL_ACCESS_TOKEN", IAT)
        monkeypatch.setenv("DCR_CLIENT_FILE", str(tmp_path / "creds" / "client.json"))
        monkeypatch.setenv("DCR_LOG_FORMAT", "json")
        code = commands.execute("run", argparse.Namespace())
    err = capsys.readouterr().err
    assert code == ExitCode.INTERNAL and "Traceback" not in err
    last = json.loads(err.strip().splitlines()[-1])
    assert "has been deleted again" in str(last["event"]) and server.clients == {}


# --- nothing with control characters is stored ---


@pytest.mark.parametrize("field", ["registration_access_token", "client_secret"])
async def test_a_control_character_in_a_read_answer_is_not_saved(
    server: FakeServer, tmp_path: Path, field: str
) -> None:
    """An RFC 7592 read answering a value with CR/LF fails clearly; the file keeps the last good value."""
    settings = settings_for(server, tmp_path)
    await flow.run(settings)
    before = saved(tmp_path)
    server.manage_extra = {field: "abc\r\nSet-Cookie: x"}
    with pytest.raises(MalformedResponse, match="VSCHAR"):
        await flow.run(settings)
    assert saved(tmp_path) == before
    server.manage_extra = {}
    assert (await flow.run(settings)).registration.client_id == before["client_id"]


async def test_a_control_character_in_an_update_answer_is_not_saved(server: FakeServer, tmp_path: Path) -> None:
    """An RFC 7592 update answering a token with a line break fails clearly and saves nothing of it."""
    await flow.run(settings_for(server, tmp_path))
    before = saved(tmp_path)
    renamed = settings_for(server, tmp_path, dcr_client_name="renamed")
    server.manage_extra = {"registration_access_token": "ok\nbad"}
    with pytest.raises(MalformedResponse):
        await flow.run(renamed)
    assert saved(tmp_path) == before


def test_a_saved_file_with_a_line_break_in_its_token_is_a_clear_storage_error(tmp_path: Path) -> None:
    """A file holding a CR/LF token (an old version saved it) is refused in one line, not sent."""
    path = tmp_path / "client.json"
    path.write_text(json.dumps({"client_id": "c", "registration_access_token": "a\r\nb"}))
    path.chmod(0o600)
    with pytest.raises(StorageError, match="not a valid credentials file"):
        store.load(path)


# --- every secret is masked, wherever it came from ---


def _saved_file(home: Path, key: str, secret: str) -> str:
    path = home / "c.json"
    path.write_text(json.dumps({"client_id": "file-id", key: secret}))
    path.chmod(0o600)
    loaded = store.load(path)
    assert loaded is not None
    return loaded.client_id


def _secret_file(home: Path, secret: str) -> None:
    (home / "iat").write_text(secret)
    Settings(dcr_initial_access_token_file=home / "iat")


def _settings(client_id: str | None = None, **values: str) -> str | None:
    Settings(keycloak_client_id=client_id, **values)  # type: ignore[arg-type]
    return client_id


# Each source puts a secret into the process as the tool meets it; returns the client id it pairs with.
SOURCES: dict[str, Callable[[Path, str], str | None]] = {
    "environment": lambda _, secret: _settings(dcr_initial_access_token=secret),
    "admin password": lambda _, secret: _settings(keycloak_admin_password=secret),
    "static secret": lambda _, secret: _settings("static-id", keycloak_client_secret=secret),
    "secret file": lambda home, secret: _secret_file(home, secret),
    "credentials file": lambda home, secret: _saved_file(home, "client_secret", secret),
    "saved registration token": lambda home, secret: _saved_file(home, "registration_access_token", secret) and None,
    "Secret payload": lambda _, secret: (
        SavedRegistration.model_validate({"client_id": "k8s-id", "client_secret": secret}).client_id
    ),
    "server answer": lambda _, secret: (
        ClientInformation.model_validate({"client_id": "srv-id", "client_secret": secret}).client_id
    ),
}


def _forms(secret: str, client_id: str | None) -> dict[str, str]:
    forms = {
        "raw": secret,
        "url-encoded": quote(secret, safe=""),
        "base64": base64.b64encode(secret.encode()).decode(),
        "base64 unpadded": base64.b64encode(secret.encode()).decode().rstrip("="),
    }
    if client_id:
        forms["basic"] = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return forms


@pytest.mark.parametrize("source", list(SOURCES))
def test_a_secret_is_masked_in_every_form_wherever_it_came_from(tmp_path: Path, source: str) -> None:
    """Raw, URL-encoded, base64 and Basic forms of a secret from each source are masked in log lines."""
    secret = f"s3cr3t/{source.replace(' ', '+')}=value?"
    client_id = SOURCES[source](tmp_path, secret)
    for form, text in _forms(secret, client_id).items():
        line = log.redact(None, "error", {"event": f"server said: {text} ({form})"})["event"]
        if text in line:
            raise AssertionError(f"the {form} form of a secret from the {source} was not masked")


async def test_a_server_message_echoing_a_saved_token_is_masked_in_the_error(
    server: FakeServer, tmp_path: Path
) -> None:
    """An error_description quoting our registration access token never carries it into the exception."""
    settings = settings_for(server, tmp_path)
    await flow.run(settings)
    token = saved(tmp_path)["registration_access_token"]
    body = json.dumps({"error": "invalid_client_metadata", "error_description": f"bad token {quote(token)}"})
    server.fail_next("/connect/register/client-1", 400, body=body.encode())
    server.fail_next("/connect/register/client-1", 400, body=body.encode())
    with pytest.raises(RegistrationRejected) as info:
        await flow.run(settings)
    if token in str(info.value) or quote(token) in str(info.value):
        raise AssertionError("the registration access token leaked into an error message")


# --- a POST killed before its answer: the intent ---


async def test_an_intent_with_a_nonce_is_recorded_before_the_registration_is_sent(
    server: FakeServer, tmp_path: Path
) -> None:
    """Killed while the POST is in flight: the intent names the nonce that the server's new client carries."""
    gate = server.gates["POST /connect/register"] = asyncio.Event()
    run = asyncio.ensure_future(flow.run(settings_for(server, tmp_path)))
    while not server.count("POST", "/connect/register"):  # noqa: ASYNC110 - loop turns, not time
        await asyncio.sleep(0)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    gate.set()
    for _ in range(1000):  # the server finishes the POST its client gave up on
        if server.registered:
            break
        await asyncio.sleep(0)
    [intent] = store.load_intents(tmp_path / "client.json")
    [client] = server.clients.values()
    assert client["client_name"] == flow.named(intent.client_name, intent.nonce)


async def test_an_intent_without_admin_credentials_is_logged_by_client_name(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without admin credentials the next run names the possible orphan, and still succeeds."""
    settings = settings_for(server, tmp_path)
    store.save_intents(
        tmp_path / "client.json",
        [Intent(nonce="0123456789ab", issuer=server.base, client_name="mcp", started_at="2026-12-03T00:00:00+00:00")],
    )
    log.configure("json")
    outcome = await flow.run(settings)
    assert outcome.action == "registered"
    assert "mcp (dcr 0123456789ab)" in capsys.readouterr().err
    assert store.load_intents(tmp_path / "client.json")  # kept until an operator (or admin access) resolves it


async def test_a_refused_registration_leaves_no_intent(server: FakeServer, tmp_path: Path) -> None:
    """A POST the server refused created nothing: its intent is dropped."""
    with pytest.raises(Exception, match="rejected"):
        await flow.run(settings_for(server, tmp_path, dcr_initial_access_token="wrong-token"))
    assert store.load_intents(tmp_path / "client.json") == []


async def test_a_successful_registration_leaves_no_intent(server: FakeServer, tmp_path: Path) -> None:
    """Once the answer is recorded the intent is gone, and the name seen by the server carries the nonce."""
    await flow.run(settings_for(server, tmp_path))
    assert not _exists(store.intent_path(tmp_path / "client.json"))
    assert " (dcr " in server.clients["client-1"]["client_name"]
