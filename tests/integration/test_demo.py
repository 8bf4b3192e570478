"""The README's first command (the local bring-up), run against the session's Keycloak."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.demo import bring_up
from harness.keycloak import KeycloakServer


def test_bring_up_registers_proves_and_reuses_without_printing_secrets(
    keycloak: KeycloakServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The bring-up exits 0 and prints no secret value (file, token, initial access token)."""
    assert bring_up(keycloak, "demo", tmp_path) == 0
    out, err = capfd.readouterr()
    data = json.loads((tmp_path / "shared" / ".dcr_client.json").read_text())
    secrets = (
        data["client_secret"],
        data["registration_access_token"],
        (tmp_path / "initial_access_token").read_text(),
    )
    if any(secret in out + err for secret in secrets):
        raise AssertionError("the bring-up printed a secret")
    assert "registered, proven, and reused" in out
