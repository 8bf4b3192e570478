"""Checks the rotation tests share: does a secret work on Keycloak, and did a regeneration keep its promises."""

from __future__ import annotations

import json
from pathlib import Path

from harness.keycloak import ADMIN_USER, Admin, KeycloakServer, client_credentials_token


def token_works(keycloak: KeycloakServer, realm: str, client_id: str, secret: str) -> bool:
    try:
        client_credentials_token(f"{keycloak.url}/realms/{realm}/protocol/openid-connect/token", client_id, secret)
    except Exception:  # any refusal means "does not work"
        return False
    return True


def admin_env(keycloak: KeycloakServer) -> dict[str, str]:
    return {"KEYCLOAK_ADMIN_USERNAME": ADMIN_USER, "KEYCLOAK_ADMIN_PASSWORD": keycloak.admin_password}


def check_regenerated(
    keycloak: KeycloakServer, admin: Admin, realm: str, creds_file: Path, old: dict[str, str], clients_before: int
) -> dict[str, str]:
    """The same client with a new secret that Keycloak holds and honours, and no client more; the new file."""
    new: dict[str, str] = json.loads(creds_file.read_text())
    assert new["client_id"] == old["client_id"] and new["client_secret"] != old["client_secret"]
    assert new["client_secret"] == admin.client_secret(realm, new["client_id"])
    assert token_works(keycloak, realm, new["client_id"], new["client_secret"])
    assert admin.count_clients(realm) == clients_before
    return new
