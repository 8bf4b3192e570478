"""entrypoint.sh in both modes: exit codes preserved, credentials exported, signals delivered."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bootstrap.hooks import BOOTSTRAP_ONLY  # wrap mode keeps the same names from the command
from harness.keycloak import ROOT, free_port
from tests.conftest import base_env

ENTRYPOINT = str(ROOT / "entrypoint.sh")

# Exits 0 only if the environment holds exactly the credentials in the file; prints no secret.
CHECK_ENV = (
    "import json, os, sys; d = json.load(open(os.environ['DCR_CLIENT_FILE'])); "
    "sys.exit(0 if (os.environ['KEYCLOAK_CLIENT_ID'], os.environ['KEYCLOAK_CLIENT_SECRET']) "
    "== (d['client_id'], d['client_secret']) else 9)"
)


# Exits 8 naming (never showing) any of them that is still set, else checks the credentials as CHECK_ENV does.
CHECK_STRIPPED = f"""
import os, sys
leaked = [name for name in {BOOTSTRAP_ONLY!r} if name in os.environ]
if leaked:
    print("still set:", *leaked, file=sys.stderr)
    sys.exit(8)
{CHECK_ENV}
"""


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENTRYPOINT, *args], env=env, capture_output=True, text=True, timeout=120, check=False, cwd=env["HOME"]
    )


def test_without_arguments_runs_the_bootstrap_and_exits_0(env: dict[str, str], creds_file: Path) -> None:
    """Init-container mode: the bootstrap runs, the file is written, exit 0."""
    result = run(env)
    assert result.returncode == 0, result.stderr
    assert json.loads(creds_file.read_text())["client_id"]


def test_without_arguments_a_failing_bootstrap_keeps_its_exit_code(tmp_path: Path) -> None:
    """A configuration error (2) comes out of the entrypoint unchanged."""
    result = run(base_env(tmp_path))
    assert result.returncode == 2


def test_with_arguments_exports_credentials_and_execs_the_command(env: dict[str, str], creds_file: Path) -> None:
    """Wrapper mode: the command sees KEYCLOAK_CLIENT_ID/SECRET equal to the written file."""
    result = run(env, sys.executable, "-c", CHECK_ENV)
    assert result.returncode == 0, result.stderr
    secret = json.loads(creds_file.read_text())["client_secret"]
    if secret in result.stdout + result.stderr:
        raise AssertionError("the client secret leaked into the output")


@pytest.mark.parametrize("form", ["values", "files"])
def test_with_arguments_the_command_gets_none_of_the_bootstrap_secrets(
    env: dict[str, str], tmp_path: Path, form: str
) -> None:
    """Wrapper mode: the command gets the client's credentials but no token, admin credential or *_FILE name."""
    # A variable and its *_FILE cannot both be set (ConfigError), so the value and file forms are two runs.
    token_file, password_file, secret_file = (tmp_path / name for name in ("iat", "admin-password", "client-secret"))
    token_file.write_text(env["DCR_INITIAL_ACCESS_TOKEN"])
    password_file.write_text("not-the-admin-password")
    secret_file.write_text("not-the-client-secret")
    env |= {"KEYCLOAK_ADMIN_USERNAME": "admin", "KEYCLOAK_CLIENT_SECRET_FILE": str(secret_file)}
    if form == "values":
        env["KEYCLOAK_ADMIN_PASSWORD"] = "not-the-admin-password"
    else:
        del env["DCR_INITIAL_ACCESS_TOKEN"]
        env |= {"DCR_INITIAL_ACCESS_TOKEN_FILE": str(token_file), "KEYCLOAK_ADMIN_PASSWORD_FILE": str(password_file)}
    result = run(env, sys.executable, "-c", CHECK_STRIPPED)
    assert result.returncode == 0, result.stderr


def test_with_arguments_a_failing_bootstrap_stops_before_the_command(tmp_path: Path) -> None:
    """Wrapper mode: a failing bootstrap's code is returned and the command never runs."""
    marker = tmp_path / "ran"
    result = run(base_env(tmp_path), "touch", str(marker))
    assert result.returncode == 2
    assert not marker.exists()


def test_sigterm_during_the_bootstrap_reaches_it(tmp_path: Path) -> None:
    """SIGTERM to the entrypoint is forwarded to the waiting bootstrap, which exits 130 at once."""
    env = base_env(tmp_path) | {
        "KEYCLOAK_URL": f"http://127.0.0.1:{free_port()}",
        "KEYCLOAK_REALM": "never",
        "DCR_WAIT_TIMEOUT": "120",
    }
    proc = subprocess.Popen(
        [ENTRYPOINT, "touch", str(tmp_path / "ran")], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # the bootstrap is running once it logs its first retry
        if "Server not ready, retrying" in line:
            break
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 130
    assert not (tmp_path / "ran").exists()


def test_after_exec_signals_reach_the_command_directly(env: dict[str, str]) -> None:
    """After exec the command is the process: SIGTERM reaches it and its exit code is the container's."""
    command = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(42)); "
        "print('ready', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [ENTRYPOINT, sys.executable, "-c", command],
        env=env,
        cwd=env["HOME"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 42
