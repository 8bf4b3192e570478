"""kill -9 at random moments of a first registration against the real Keycloak: what is left behind.

After every kill the next run must exit 0 and the file must be absent or valid 0600 before it. Each
run records an intent (a nonce carried in ``client_name``) before its POST. With Keycloak admin
credentials the next run finds what a killed POST created and deletes it, so no orphan is left;
without them it can only log the name. The orphan counts (clients created minus clients in use) are
printed for both, and asserted to be zero with admin credentials (docs/SECURITY.md).
"""

from __future__ import annotations

import json
import random
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.keycloak import ADMIN_USER, Admin, KeycloakServer
from tests.conftest import base_env, run_cli

TRIALS = 25


def _state_is_safe(path: Path) -> bool:
    if not path.exists():
        return True
    return stat.S_IMODE(path.stat().st_mode) == 0o600 and bool(json.loads(path.read_text())["client_id"])


@pytest.mark.parametrize("with_admin", [False, True], ids=["without-admin", "with-admin"])
def test_kill_9_during_first_registration_never_breaks_the_next_run(
    keycloak: KeycloakServer, admin: Admin, realm: str, tmp_path: Path, with_admin: bool
) -> None:
    """A run killed at a random moment around its POST never breaks the next; admin access leaves no orphan."""
    token = admin.mint_initial_access_token(realm, count=3 * TRIALS, expiration=3600)
    before = admin.count_clients(realm)
    rng = random.Random(7)  # noqa: S311 - reproducible kill points, not crypto
    in_use: set[str] = set()
    for trial in range(TRIALS):
        home = tmp_path / f"t{trial}"
        home.mkdir()
        env = base_env(home) | {
            "KEYCLOAK_URL": keycloak.url,
            "KEYCLOAK_REALM": realm,
            "DCR_INITIAL_ACCESS_TOKEN": token,
            "DCR_LOG_LEVEL": "debug",
        }
        if with_admin:
            env |= {"KEYCLOAK_ADMIN_USERNAME": ADMIN_USER, "KEYCLOAK_ADMIN_PASSWORD": keycloak.admin_password}
        proc = subprocess.Popen(
            [sys.executable, "-m", "bootstrap"], env=env, cwd=home, stderr=subprocess.PIPE, text=True
        )
        assert proc.stderr is not None
        # Aim at the registration: kill at a random moment after discovery, within the rest of the run.
        for line in proc.stderr:
            if "Discovered DCR endpoint" in line:
                break
        time.sleep(rng.uniform(0, 0.25))
        proc.kill()
        proc.wait()
        path = Path(env["DCR_CLIENT_FILE"])
        assert _state_is_safe(path), f"trial {trial}: unsafe file after kill -9"
        result = run_cli(env)
        assert result.code == 0, f"trial {trial}: next run exited {result.code}: {result.last}"
        in_use.add(str(json.loads(path.read_text())["client_id"]))
    created = admin.count_clients(realm) - before
    orphans = created - len(in_use)
    mode = "with admin credentials" if with_admin else "without admin credentials"
    print(f"\ncrash test {mode}: {TRIALS} kills, {created} clients left, {len(in_use)} in use, {orphans} orphans")
    assert len(in_use) == TRIALS
    if with_admin:
        assert orphans == 0, f"{orphans} orphans left although the runs had admin credentials"
