"""The whole flow, as a user runs it (``python -m bootstrap``), against the real Keycloak."""

from __future__ import annotations

import json
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from bootstrap import store
from bootstrap.models import Intent
from harness.keycloak import ADMIN_USER, Admin, AdminError, KeycloakServer, client_credentials_token
from tests.conftest import Result, base_env, run_cli

SEED_KEYS = {"client_id", "client_secret", "registration_access_token", "registration_client_uri", "registered_at"}


def token_endpoint(keycloak: KeycloakServer, realm: str) -> str:
    return f"{keycloak.url}/realms/{realm}/protocol/openid-connect/token"


def saved(path: Path) -> dict[str, str]:
    return dict(json.loads(path.read_text()))


def registration_read_status(uri: str, token: str) -> int:
    request = urllib.request.Request(uri, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def assert_rejected(result: Result, code: int, needle: str) -> None:
    assert result.code == code, result.stderr
    assert needle in str(result.last["event"])
    assert "\n" not in str(result.last["event"])


def test_first_run_registers_and_writes_working_credentials(
    keycloak: KeycloakServer, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """First run registers; the file is 0600, has the seed's keys, and its credentials get a token."""
    result = run_cli(env)
    assert result.code == 0, result.stderr
    assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
    data = saved(creds_file)
    assert data.keys() >= SEED_KEYS
    assert data["issuer"] == f"{keycloak.url}/realms/{realm}"
    answer = client_credentials_token(token_endpoint(keycloak, realm), data["client_id"], data["client_secret"])
    assert "access_token" in answer
    events = [line["event"] for line in result.lines]
    assert "Discovered DCR endpoint" in events and "Successfully registered client" in events
    result.assert_clean(env["DCR_INITIAL_ACCESS_TOKEN"], data["client_secret"], data["registration_access_token"])


def test_second_run_reloads_the_same_client(admin: Admin, realm: str, env: dict[str, str], creds_file: Path) -> None:
    """A second run reuses the client, creates none, and leaves a registration token that still works."""
    assert run_cli(env).code == 0
    first = saved(creds_file)
    clients_before = admin.count_clients(realm)
    result = run_cli(env)
    assert result.code == 0, result.stderr
    second = saved(creds_file)
    assert second["client_id"] == first["client_id"]
    assert admin.count_clients(realm) == clients_before
    assert "Loaded registration for client" in [line["event"] for line in result.lines]
    status = registration_read_status(second["registration_client_uri"], second["registration_access_token"])
    assert status == 200
    result.assert_clean(second["client_secret"], second["registration_access_token"])


def test_client_deleted_by_admin_is_registered_again(
    keycloak: KeycloakServer, admin: Admin, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """A client an admin deleted between runs is registered anew, and the new credentials work."""
    assert run_cli(env).code == 0
    old = saved(creds_file)
    admin.delete_client(realm, old["client_id"])
    env["DCR_INITIAL_ACCESS_TOKEN"] = admin.mint_initial_access_token(realm)
    result = run_cli(env)
    assert result.code == 0, result.stderr
    new = saved(creds_file)
    assert new["client_id"] != old["client_id"]
    client_credentials_token(token_endpoint(keycloak, realm), new["client_id"], new["client_secret"])


def test_deleted_client_fails_when_told_not_to_register(
    admin: Admin, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """With DCR_ON_MISSING_CLIENT=fail a vanished client exits 4 and keeps the file."""
    assert run_cli(env).code == 0
    before = creds_file.read_bytes()
    admin.delete_client(realm, saved(creds_file)["client_id"])
    result = run_cli(env | {"DCR_ON_MISSING_CLIENT": "fail"})
    assert_rejected(result, 4, "is gone: the server rejects its credentials")
    assert creds_file.read_bytes() == before


def test_changed_metadata_updates_in_place_and_rotates_the_token(
    admin: Admin, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """Changed metadata is updated by RFC 7592 PUT; the new token is saved, the old one refused."""
    assert run_cli(env).code == 0
    old = saved(creds_file)
    result = run_cli(env | {"DCR_CLIENT_NAME": "renamed-client", "DCR_SOFTWARE_VERSION": "2.0"})
    assert result.code == 0, result.stderr
    new = saved(creds_file)
    assert new["client_id"] == old["client_id"]
    assert admin.client(realm, new["client_id"])["name"] == "renamed-client"
    assert SecretStr(new["registration_access_token"]) != SecretStr(old["registration_access_token"])
    old_status = registration_read_status(new["registration_client_uri"], old["registration_access_token"])
    new_status = registration_read_status(new["registration_client_uri"], new["registration_access_token"])
    assert (old_status, new_status) == (401, 200)
    assert "Updated registration for client" in [line["event"] for line in result.lines]


@pytest.fixture
def valid_file(keycloak: KeycloakServer, admin: Admin, env: dict[str, str], creds_file: Path) -> Iterator[bytes]:
    """A valid credentials file (working credentials, from another realm) that a failed run must not touch."""
    other = admin.create_realm()
    try:
        other_env = env | {"KEYCLOAK_REALM": other, "DCR_INITIAL_ACCESS_TOKEN": admin.mint_initial_access_token(other)}
        assert run_cli(other_env).code == 0
        data = saved(creds_file)
        client_credentials_token(token_endpoint(keycloak, other), data["client_id"], data["client_secret"])
        yield creds_file.read_bytes()
    finally:
        admin.delete_realm(other)


def wait_until_expired(endpoint: str, token: str) -> None:
    """Poll Keycloak's own verdict without spending the token: invalid metadata gets 400 until it expires."""
    deadline = time.monotonic() + 30
    body = json.dumps({"token_endpoint_auth_method": "no_such_method"}).encode()
    while time.monotonic() < deadline:
        request = urllib.request.Request(
            endpoint,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        try:
            urllib.request.urlopen(request, timeout=30).close()
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return
        time.sleep(0.2)
    raise AssertionError("the initial access token did not expire within 30 s")


def test_garbage_initial_access_token_is_refused_and_file_kept(
    env: dict[str, str], creds_file: Path, valid_file: bytes
) -> None:
    """A malformed initial access token: exit 4, one line naming the fix, the old file intact."""
    result = run_cli(env | {"DCR_INITIAL_ACCESS_TOKEN": "not-a-token"})
    assert_rejected(result, 4, "mint a new one")
    assert creds_file.read_bytes() == valid_file
    result.assert_clean("not-a-token")


def test_used_up_initial_access_token_is_refused_and_file_kept(
    admin: Admin, realm: str, env: dict[str, str], creds_file: Path, valid_file: bytes
) -> None:
    """A single-use token already spent: exit 4 with 'used up', the file intact."""
    token = env["DCR_INITIAL_ACCESS_TOKEN"]
    status = _spend(f"{env['KEYCLOAK_URL']}/realms/{realm}/clients-registrations/openid-connect", token)
    assert status == 201
    result = run_cli(env)
    assert_rejected(result, 4, "used up")
    assert creds_file.read_bytes() == valid_file
    result.assert_clean(token)


def test_expired_initial_access_token_is_refused_and_file_kept(
    admin: Admin, realm: str, env: dict[str, str], creds_file: Path, valid_file: bytes
) -> None:
    """An expired initial access token: exit 4, the hint to mint a new one, the file intact."""
    token = admin.mint_initial_access_token(realm, expiration=1)
    wait_until_expired(f"{env['KEYCLOAK_URL']}/realms/{realm}/clients-registrations/openid-connect", token)
    result = run_cli(env | {"DCR_INITIAL_ACCESS_TOKEN": token})
    assert_rejected(result, 4, "mint a new one")
    assert creds_file.read_bytes() == valid_file


def _spend(endpoint: str, token: str) -> int:
    request = urllib.request.Request(
        endpoint,
        data=json.dumps({"client_name": "spender"}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return int(resp.status)


def test_anonymous_registration_blocked_by_trusted_hosts(
    env: dict[str, str], creds_file: Path, valid_file: bytes
) -> None:
    """No initial access token and Keycloak's Trusted Hosts policy: exit 4 with the two ways out."""
    env.pop("DCR_INITIAL_ACCESS_TOKEN")
    result = run_cli(env)
    assert_rejected(result, 4, "Trusted Hosts")
    assert "initial-token" in str(result.last["event"])
    assert creds_file.read_bytes() == valid_file


def test_anonymous_registration_allowed_by_trusted_hosts(
    keycloak: KeycloakServer, admin: Admin, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """With loopback trusted, anonymous registration (no token) succeeds."""
    admin.set_trusted_hosts(realm, ["127.0.0.1", "localhost"])
    env.pop("DCR_INITIAL_ACCESS_TOKEN")
    result = run_cli(env)
    assert result.code == 0, result.stderr
    data = saved(creds_file)
    client_credentials_token(token_endpoint(keycloak, realm), data["client_id"], data["client_secret"])


def test_invalid_metadata_is_refused_and_file_kept(
    admin: Admin, realm: str, env: dict[str, str], creds_file: Path, valid_file: bytes
) -> None:
    """Client metadata the server refuses: exit 4 naming the metadata settings, the file intact."""
    env["DCR_INITIAL_ACCESS_TOKEN"] = admin.mint_initial_access_token(realm)
    result = run_cli(env | {"DCR_TOKEN_ENDPOINT_AUTH_METHOD": "no_such_method"})
    assert_rejected(result, 4, "invalid_client_metadata")
    assert creds_file.read_bytes() == valid_file


def test_static_mode_writes_the_same_format(
    keycloak: KeycloakServer, admin: Admin, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """USE_DCR=false checks the static credentials and writes them with the same keys."""
    secret = admin.create_confidential_client(realm, "static-client")
    secret_file = creds_file.parent.parent / "secret"
    secret_file.write_text(secret + "\n")
    env.pop("DCR_INITIAL_ACCESS_TOKEN")
    result = run_cli(
        env
        | {"USE_DCR": "false", "KEYCLOAK_CLIENT_ID": "static-client", "KEYCLOAK_CLIENT_SECRET_FILE": str(secret_file)}
    )
    assert result.code == 0, result.stderr
    data = saved(creds_file)
    assert data.keys() >= SEED_KEYS
    assert data["client_id"] == "static-client"
    assert SecretStr(data["client_secret"]) == SecretStr(secret)
    assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
    result.assert_clean(secret)


def test_static_mode_with_wrong_secret_fails_clearly(
    admin: Admin, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """Wrong static credentials: exit 5, a line naming the settings to check, no file written."""
    admin.create_confidential_client(realm, "static-client")
    env.pop("DCR_INITIAL_ACCESS_TOKEN")
    result = run_cli(
        env | {"USE_DCR": "false", "KEYCLOAK_CLIENT_ID": "static-client", "KEYCLOAK_CLIENT_SECRET": "wrong-secret"}
    )
    assert_rejected(result, 5, "KEYCLOAK_CLIENT_SECRET")
    assert not creds_file.exists()
    result.assert_clean("wrong-secret")


def test_split_horizon_maps_public_urls_and_checks_the_issuer(
    keycloak: KeycloakServer, admin: Admin, tmp_path: Path, env: dict[str, str], creds_file: Path
) -> None:
    """The realm's public URL is unreachable from here; DCR_INTERNAL_URL maps it, the issuer is checked."""
    public = "http://keycloak.public.invalid:8443"
    realm = admin.create_realm(frontendUrl=public)
    try:
        env |= {
            "KEYCLOAK_URL": public,
            "KEYCLOAK_REALM": realm,
            "DCR_INTERNAL_URL": keycloak.url,
            "DCR_INITIAL_ACCESS_TOKEN": admin.mint_initial_access_token(realm),
        }
        result = run_cli(env)
        assert result.code == 0, result.stderr
        data = saved(creds_file)
        assert data["issuer"] == f"{public}/realms/{realm}"
        assert data["registration_client_uri"].startswith(public)
        client_credentials_token(token_endpoint(keycloak, realm), data["client_id"], data["client_secret"])
        assert run_cli(env).code == 0  # the reload also goes through the mapping
        assert saved(creds_file)["client_id"] == data["client_id"]
    finally:
        admin.delete_realm(realm)


def test_wrong_expected_issuer_is_refused(
    keycloak: KeycloakServer, admin: Admin, env: dict[str, str], creds_file: Path
) -> None:
    """Metadata naming another issuer than the expected one: exit 7, with the split-horizon advice."""
    realm = admin.create_realm(frontendUrl="http://keycloak.public.invalid:8443")
    try:
        result = run_cli(env | {"KEYCLOAK_REALM": realm})
        assert_rejected(result, 7, "Issuer mismatch")
        assert "DCR_INTERNAL_URL" in str(result.last["event"])
        assert not creds_file.exists()
    finally:
        admin.delete_realm(realm)


def test_admin_console_secret_regeneration_is_picked_up(
    keycloak: KeycloakServer, admin: Admin, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """A secret regenerated by an admin reaches the file on the next run (RFC 7592 read returns it)."""
    assert run_cli(env).code == 0
    client_id = saved(creds_file)["client_id"]
    new_secret = admin.regenerate_secret(realm, client_id)
    assert run_cli(env).code == 0
    assert SecretStr(saved(creds_file)["client_secret"]) == SecretStr(new_secret)
    client_credentials_token(token_endpoint(keycloak, realm), client_id, new_secret)


def test_admin_api_refuses_unknown_client(admin: Admin, realm: str) -> None:
    """The harness's admin helper raises for a client that does not exist."""
    with pytest.raises(AdminError):
        admin.delete_client(realm, "no-such-client")


def test_two_replicas_sharing_a_volume_register_one_client(
    admin: Admin, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """Two runs started together on one credentials file: the lock makes one register, the other reload."""
    import subprocess
    import sys

    env["DCR_INITIAL_ACCESS_TOKEN"] = admin.mint_initial_access_token(realm, count=2)
    before = admin.count_clients(realm)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bootstrap"], env=env, cwd=env["HOME"], stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    actions = sorted(
        json.loads(line)["action"] for out in outputs for line in out.splitlines() if '"Credentials written"' in line
    )
    assert actions == ["registered", "reloaded"]
    assert admin.count_clients(realm) == before + 1


def _rfc7592(method: str, uri: str, token: str, body: dict[str, object] | None = None) -> dict[str, object]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    request = urllib.request.Request(uri, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as resp:
        return dict(json.loads(resp.read()))


def test_a_lost_put_answer_keeps_exactly_one_client(
    admin: Admin, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """A PUT applied by Keycloak (token rotated) whose answer never reached us: the next run keeps the client."""
    assert run_cli(env).code == 0
    before = admin.count_clients(realm)
    state = saved(creds_file)
    uri, token = state["registration_client_uri"], state["registration_access_token"]
    current = _rfc7592("GET", uri, token)
    _rfc7592("PUT", uri, token, current)  # rotates the token; the file keeps the old one, as after a lost answer
    assert registration_read_status(uri, token) == 401
    result = run_cli(env)
    assert result.code == 0, result.stderr
    assert result.last["action"] == "reloaded"
    assert any("management of the saved client is lost" in str(line["event"]) for line in result.lines)
    assert admin.count_clients(realm) == before
    assert saved(creds_file)["client_id"] == state["client_id"]


def test_a_client_an_interrupted_run_left_is_deleted_with_admin_credentials(
    keycloak: KeycloakServer, admin: Admin, realm: str, tmp_path: Path
) -> None:
    """An intent without an answer plus admin credentials: the next run deletes the client it named."""
    token = admin.mint_initial_access_token(realm, count=2)
    env = base_env(tmp_path) | {
        "KEYCLOAK_URL": keycloak.url,
        "KEYCLOAK_REALM": realm,
        "DCR_INITIAL_ACCESS_TOKEN": token,
        "KEYCLOAK_ADMIN_USERNAME": ADMIN_USER,
        "KEYCLOAK_ADMIN_PASSWORD": keycloak.admin_password,
    }
    creds = Path(env["DCR_CLIENT_FILE"])
    creds.parent.mkdir(parents=True)
    issuer = f"{keycloak.url}/realms/{realm}"
    intent = Intent(nonce="0123456789ab", issuer=issuer, client_name="mcp", started_at="2026-12-03T00:00:00+00:00")
    store.save_intents(creds, [intent])
    orphan = _register_named(issuer, token, "mcp (dcr 0123456789ab)")  # as the killed run's POST did
    result = run_cli(env)
    assert result.code == 0, result.last
    ids = {c["clientId"] for c in admin.clients(realm)}
    assert orphan not in ids and json.loads(creds.read_text())["client_id"] in ids
    assert store.load_intents(creds) == []
    result.assert_clean(keycloak.admin_password, token)


def _register_named(issuer: str, token: str, name: str) -> str:
    request = urllib.request.Request(
        f"{issuer}/clients-registrations/openid-connect",
        data=json.dumps({"client_name": name, "grant_types": ["client_credentials"]}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return str(json.loads(resp.read())["client_id"])
