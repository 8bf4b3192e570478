from __future__ import annotations

from pathlib import Path

import pytest

from harness.keycloak import Admin, KeycloakServer
from tests.conftest import base_env

HERE = Path(__file__).parent


@pytest.fixture
def env(keycloak: KeycloakServer, admin: Admin, realm: str, tmp_path: Path) -> dict[str, str]:
    """Settings for one run against the test's realm, with a fresh single-use initial access token."""
    (tmp_path / "creds").mkdir()
    return base_env(tmp_path) | {
        "KEYCLOAK_URL": keycloak.url,
        "KEYCLOAK_REALM": realm,
        "DCR_INITIAL_ACCESS_TOKEN": admin.mint_initial_access_token(realm, count=1),
        "DCR_CLIENT_NAME": "it-{hostname}",
    }


@pytest.fixture
def creds_file(env: dict[str, str]) -> Path:
    return Path(env["DCR_CLIENT_FILE"])
