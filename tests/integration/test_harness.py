"""The harness itself: a real Keycloak, its discovery document, initial access tokens, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from harness.keycloak import ROOT, Admin, KeycloakServer, free_port
from harness.process import group_alive


def _register(url: str, token: str) -> int:
    request = urllib.request.Request(
        url,
        data=json.dumps({"client_name": "harness-check", "grant_types": ["client_credentials"]}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_realm_discovery_names_registration_endpoint(keycloak: KeycloakServer, realm: str) -> None:
    """The realm's OpenID discovery document advertises a registration_endpoint."""
    with urllib.request.urlopen(f"{keycloak.url}/realms/{realm}/.well-known/openid-configuration") as resp:
        metadata = json.loads(resp.read())
    assert metadata["registration_endpoint"] == f"{keycloak.url}/realms/{realm}/clients-registrations/openid-connect"


def test_initial_access_token_registers_exactly_once(keycloak: KeycloakServer, admin: Admin, realm: str) -> None:
    """A single-use initial access token registers one client; its second use is refused."""
    token = admin.mint_initial_access_token(realm, count=1)
    endpoint = f"{keycloak.url}/realms/{realm}/clients-registrations/openid-connect"
    first, second = _register(endpoint, token), _register(endpoint, token)
    assert (first, second) == (201, 401)


@pytest.mark.keycloak  # starts a Keycloak of its own
def test_keycloak_dies_with_its_owner_even_on_sigkill(tmp_path: object) -> None:
    """SIGKILL of the process that started Keycloak still ends every Keycloak process."""
    script = (
        "import sys; from harness.keycloak import KeycloakServer; "
        f"kc = KeycloakServer(http_port={free_port()}, management_port={free_port()}).spawn(); "
        "print(kc.pgid, flush=True); sys.stdin.read()"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    pgid = int(owner.stdout.readline())
    assert group_alive(pgid)
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 60
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not group_alive(pgid)
