"""'doctor' against the real Keycloak: each realm named for what would refuse a registration, and a healthy one.

doctor registers nothing: each test checks the realm's client count is what it was.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from harness.keycloak import Admin, KeycloakServer
from tests.conftest import Result, base_env, run_cli

DOCTOR_BLOCKED = 11


def doctor(env: dict[str, str], admin: Admin, realm: str) -> tuple[Result, dict[str, str]]:
    """Run 'doctor --json' with admin credentials; the result, and check -> level of its findings."""
    before = admin.count_clients(realm)
    full = env | {"KEYCLOAK_ADMIN_USERNAME": admin.username, "KEYCLOAK_ADMIN_PASSWORD": admin.password}
    result = run_cli(full, "doctor", "--json")
    assert admin.count_clients(realm) == before, "doctor registered something"
    result.assert_clean(env.get("DCR_INITIAL_ACCESS_TOKEN"), admin.password)
    return result, {f["check"]: f["level"] for f in json.loads(result.stdout)}


def anonymous_env(keycloak: KeycloakServer, realm: str, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "creds").mkdir(exist_ok=True)
    return base_env(tmp_path) | {"KEYCLOAK_URL": keycloak.url, "KEYCLOAK_REALM": realm, "DCR_WAIT_TIMEOUT": "15"}


def test_doctor_names_the_trusted_hosts_policy_that_refuses_anonymous_registration(
    keycloak: KeycloakServer, admin: Admin, realm: str, tmp_path: Path
) -> None:
    """A realm trusting another host, no initial access token: blocking, and a real run is indeed refused."""
    admin.set_trusted_hosts(realm, ["trusted.example.test"])
    env = anonymous_env(keycloak, realm, tmp_path)
    result, found = doctor(env, admin, realm)
    assert result.code == DOCTOR_BLOCKED
    assert found["policy_trusted-hosts"] == "blocking"
    assert "Trusted Hosts" in str(result.last["event"])
    assert run_cli(env).code == 4  # what doctor predicted: the registration is refused


def test_doctor_names_the_default_roles_that_full_scope_disabled_takes_from_the_clients_tokens(
    keycloak: KeycloakServer, admin: Admin, realm: str, tmp_path: Path
) -> None:
    """A new realm's anonymous Full Scope Disabled policy: a warning naming default-roles-<realm>'s roles."""
    result, found = doctor(anonymous_env(keycloak, realm, tmp_path), admin, realm)
    scope = next(f for f in json.loads(result.stdout) if f["check"] == "policy_scope")
    assert found["policy_scope"] == "warning"
    assert "offline_access" in scope["what"] and f"default-roles-{realm}" in scope["fix"]


def test_doctor_names_max_clients_reached(
    keycloak: KeycloakServer, admin: Admin, realm: str, env: dict[str, str]
) -> None:
    """An authenticated Max Clients policy whose limit the realm holds already: blocking."""
    admin.add_registration_policy(
        realm, "max-clients", "authenticated", {"max-clients": [str(admin.count_clients(realm))]}
    )
    result, found = doctor(env, admin, realm)
    assert result.code == DOCTOR_BLOCKED
    assert found["policy_max-clients"] == "blocking"


def test_doctor_names_an_expired_initial_access_token(
    keycloak: KeycloakServer, admin: Admin, realm: str, tmp_path: Path
) -> None:
    """A token minted for one second, once the clock passed its exp: blocking."""
    token = admin.mint_initial_access_token(realm, count=1, expiration=1)
    payload = token.split(".")[1]
    exp = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"]
    deadline = time.monotonic() + 30
    while time.time() <= exp and time.monotonic() < deadline:  # real time must pass the token's exp
        time.sleep(0.2)
    env = anonymous_env(keycloak, realm, tmp_path) | {"DCR_INITIAL_ACCESS_TOKEN": token}
    result, found = doctor(env, admin, realm)
    assert result.code == DOCTOR_BLOCKED
    assert found["initial_access_token_expiry"] == "blocking"
    assert found["initial_access_token_realm"] == "ok"


def test_doctor_finds_nothing_blocking_in_a_healthy_realm(
    keycloak: KeycloakServer, admin: Admin, realm: str, env: dict[str, str]
) -> None:
    """A fresh initial access token of this realm: every finding ok, exit 0, and a real run then registers."""
    result, found = doctor(env, admin, realm)
    assert result.code == 0, result.stderr
    assert set(found.values()) == {"ok"}, found
    assert {"reachability", "issuer", "initial_access_token_realm", "initial_access_token_uses"} <= set(found)
    assert run_cli(env).code == 0


def test_doctor_names_a_used_up_initial_access_token(
    keycloak: KeycloakServer, admin: Admin, realm: str, env: dict[str, str]
) -> None:
    """The single-use token spent by a real run: the realm's record says so, doctor blocks."""
    assert run_cli(env).code == 0
    result, found = doctor(env, admin, realm)
    assert result.code == DOCTOR_BLOCKED
    assert found["initial_access_token_uses"] == "blocking"
