"""Renewal and rotation against the real Keycloak with its client secret rotation policy on."""

from __future__ import annotations

import json
from pathlib import Path

from harness.keycloak import ADMIN_USER, Admin, KeycloakServer
from tests.conftest import run_cli
from tests.integration.rotation import check_regenerated, token_works


def _written_action(stderr: str) -> str:
    lines = [json.loads(line) for line in stderr.splitlines() if '"Credentials written"' in line]
    return str(lines[-1]["action"])


def test_a_secret_due_is_renewed_by_keycloaks_rotation_policy_and_the_old_one_keeps_working(
    keycloak: KeycloakServer, admin: Admin, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """Within DCR_RENEW_BEFORE, a DCR update makes Keycloak rotate: new secret saved, old valid for its grace."""
    admin.set_secret_rotation(realm, expiration=600, remaining=600, rotated=300)
    first = run_cli(env)
    assert first.code == 0, first.last
    old = json.loads(creds_file.read_text())
    assert old["client_secret_expires_at"] > 0  # the policy makes Keycloak say when the secret expires
    # Ten minutes of its life passed (the file says when we first saw it): with 10m left it is due now.
    creds_file.write_text(json.dumps(old | {"client_secret_issued_at": old["client_secret_issued_at"] - 600}))
    renewed = run_cli(env | {"DCR_RENEW_BEFORE": "10m"})
    assert renewed.code == 0, renewed.last
    new = json.loads(creds_file.read_text())
    assert _written_action(renewed.stderr) == "renewed"
    assert new["client_id"] == old["client_id"] and new["client_secret"] != old["client_secret"]
    assert token_works(keycloak, realm, new["client_id"], new["client_secret"])
    assert token_works(keycloak, realm, old["client_id"], old["client_secret"])  # the rotated secret's grace
    assert [c["clientId"] for c in admin.clients(realm)].count(new["client_id"]) == 1
    renewed.assert_clean(old["client_secret"], new["client_secret"])


def test_rotate_with_admin_credentials_regenerates_the_secret_in_place(
    keycloak: KeycloakServer, admin: Admin, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """'rotate' with Keycloak admin credentials: Keycloak's own regeneration, same client, old secret in grace."""
    admin.set_secret_rotation(realm, expiration=600, remaining=60, rotated=300)
    assert run_cli(env).code == 0
    old = json.loads(creds_file.read_text())
    before = admin.count_clients(realm)
    rotated = run_cli(
        env | {"KEYCLOAK_ADMIN_USERNAME": ADMIN_USER, "KEYCLOAK_ADMIN_PASSWORD": keycloak.admin_password}, "rotate"
    )
    assert rotated.code == 0, rotated.last
    assert _written_action(rotated.stderr) == "rotated"
    new = check_regenerated(keycloak, admin, realm, creds_file, old, before)
    assert token_works(keycloak, realm, old["client_id"], old["client_secret"])  # its grace, by the policy
    rotated.assert_clean(old["client_secret"], new["client_secret"], keycloak.admin_password)


def test_rotate_without_admin_credentials_replaces_the_client_and_retires_the_old_after_grace(
    keycloak: KeycloakServer, admin: Admin, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """'rotate' without admin access or a rotation policy: a new client; with no grace, the next run deletes the old."""
    env["DCR_INITIAL_ACCESS_TOKEN"] = admin.mint_initial_access_token(realm, count=2)
    assert run_cli(env).code == 0
    old = json.loads(creds_file.read_text())
    before = admin.count_clients(realm)
    rotated = run_cli(env | {"DCR_ROTATE_GRACE": "0"}, "rotate")
    assert rotated.code == 0, rotated.last
    new = json.loads(creds_file.read_text())
    assert _written_action(rotated.stderr) == "replaced" and new["client_id"] != old["client_id"]
    assert token_works(keycloak, realm, new["client_id"], new["client_secret"])
    settled = run_cli(env)
    assert settled.code == 0, settled.last
    assert admin.count_clients(realm) == before
    assert old["client_id"] not in {c["clientId"] for c in admin.clients(realm)}
