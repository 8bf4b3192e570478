"""Against the real Keycloak: 'rotate' says the truth, a regenerated secret is checked, 'delete' keeps a live client."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bootstrap.errors import ExitCode
from harness.keycloak import Admin, KeycloakServer
from tests.conftest import run_cli
from tests.fakeadmin import REALM, AdminFake
from tests.fakeserver import serving_in_thread
from tests.integration.rotation import admin_env, check_regenerated, token_works

# A registration access token Keycloak never issued: RFC 7592 answers 401, the client itself lives on.
LOST = "lost-registration-access-token"


def _lose_management(creds_file: Path) -> dict[str, str]:
    """The file's registration access token stops working (as after an update whose answer was lost)."""
    saved = json.loads(creds_file.read_text())
    creds_file.write_text(json.dumps(saved | {"registration_access_token": LOST}))
    return dict(saved)


def test_rotate_with_rfc7592_management_lost_and_no_admin_credentials_exits_not_rotated(
    keycloak: KeycloakServer, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """Exit NOT_ROTATED and a last line saying it was NOT rotated and why; the working secret is kept."""
    assert run_cli(env).code == 0
    old = _lose_management(creds_file)
    rotated = run_cli(env, "rotate")
    assert rotated.code == ExitCode.NOT_ROTATED, rotated.last
    assert "was NOT rotated: its RFC 7592 management is lost (HTTP 401)" in str(rotated.last["event"])
    assert json.loads(creds_file.read_text())["client_secret"] == old["client_secret"]
    assert token_works(keycloak, realm, old["client_id"], old["client_secret"])


def test_rotate_with_admin_credentials_regenerates_the_secret_when_rfc7592_management_is_lost(
    keycloak: KeycloakServer, admin: Admin, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """Management lost: Keycloak's admin API regenerates the secret of the same client; exit 0, new one saved."""
    assert run_cli(env).code == 0
    old = _lose_management(creds_file)
    before = admin.count_clients(realm)
    rotated = run_cli(env | admin_env(keycloak), "rotate")
    assert rotated.code == 0, rotated.last
    new = check_regenerated(keycloak, admin, realm, creds_file, old, before)
    rotated.assert_clean(old["client_secret"], new["client_secret"], keycloak.admin_password)


def test_a_regenerated_secret_with_a_line_break_is_refused_and_the_working_secret_kept(
    keycloak: KeycloakServer, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """Keycloak for RFC 7591/7592 and tokens, a lying admin API: exit 7, the file keeps the secret that works."""
    assert run_cli(env).code == 0
    old = json.loads(creds_file.read_text())
    with serving_in_thread(AdminFake(any_client=True, regenerated="new\nKEYCLOAK_CLIENT_ID=evil")) as liar:
        lying_admin = {
            "DCR_ISSUER": f"{keycloak.url}/realms/{realm}",
            "KEYCLOAK_URL": liar.base,
            "KEYCLOAK_REALM": REALM,
            "DCR_TRUSTED_ORIGINS": liar.base,
            "KEYCLOAK_ADMIN_USERNAME": "admin",
            "KEYCLOAK_ADMIN_PASSWORD": "fake-admin-password",
        }
        rotated = run_cli(env | lying_admin, "rotate")
    assert rotated.code == ExitCode.SERVER_RESPONSE, rotated.last
    assert re.search(r"nothing was (saved|written)", str(rotated.last["event"]))
    kept = json.loads(creds_file.read_text())
    assert kept["client_id"] == old["client_id"] and kept["client_secret"] == old["client_secret"]
    assert token_works(keycloak, realm, kept["client_id"], kept["client_secret"])


def test_delete_keeps_a_client_whose_management_is_lost_but_whose_credentials_work(
    keycloak: KeycloakServer, admin: Admin, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """RFC 7592's 401 is no proof of 'gone': exit NOT_DELETED naming the client; file and client remain."""
    assert run_cli(env).code == 0
    old = _lose_management(creds_file)
    deleted = run_cli(env, "delete")
    assert deleted.code == ExitCode.NOT_DELETED, deleted.last
    assert f"client {old['client_id']} (RFC 7592 refused to delete it" in str(deleted.last["event"])
    assert creds_file.exists() and old["client_id"] in {c["clientId"] for c in admin.clients(realm)}


def test_delete_with_admin_credentials_deletes_a_live_client_whose_management_is_lost(
    keycloak: KeycloakServer, admin: Admin, realm: str, env: dict[str, str], creds_file: Path
) -> None:
    """RFC 7592 can no longer delete it, its credentials work: the admin capability deletes it; exit 0, file gone."""
    assert run_cli(env).code == 0
    old = _lose_management(creds_file)
    deleted = run_cli(env | admin_env(keycloak), "delete")
    assert deleted.code == 0, deleted.last
    assert not creds_file.exists() and old["client_id"] not in {c["clientId"] for c in admin.clients(realm)}
    assert not token_works(keycloak, realm, old["client_id"], old["client_secret"])
