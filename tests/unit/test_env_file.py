"""--env-file: settings from a file the operator names, under the same ownership rules as any .env."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bootstrap import cli
from bootstrap.errors import ConfigError, ExitCode
from bootstrap.settings import load_settings
from tests.fakeserver import IAT, FakeServer, serving_in_thread


def _env_file(folder: Path, text: str, mode: int = 0o600) -> Path:
    env = folder / ".env"
    env.write_text(text)
    env.chmod(mode)
    return env


def _last(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    line: dict[str, object] = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    return line


def test_a_named_env_file_beside_the_credentials_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The .env the migration commands write beside the credentials file is read when --env-file names it."""
    monkeypatch.setenv("DCR_CLIENT_FILE", str(tmp_path / ".dcr_client.json"))
    env = _env_file(tmp_path, "DCR_ISSUER=https://as.example.test\n")
    assert load_settings().dcr_issuer is None  # implicit: ignored, as before
    assert load_settings(env_file=env).dcr_issuer == "https://as.example.test"


def test_the_environment_wins_over_the_named_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable set in the environment is not overridden by the file."""
    monkeypatch.setenv("DCR_ISSUER", "https://from-env.example.test")
    env = _env_file(tmp_path, "DCR_ISSUER=https://from-file.example.test\n")
    assert load_settings(env_file=env).dcr_issuer == "https://from-env.example.test"


@pytest.mark.parametrize("problem", ["missing", "writable by others", "a symbolic link"])
def test_a_named_env_file_that_fails_the_safety_checks_is_a_configuration_error(tmp_path: Path, problem: str) -> None:
    """A named file is never silently skipped: missing, shared-writable or a link is exit 2 naming it."""
    env = tmp_path / ".env"
    if problem == "writable by others":
        _env_file(tmp_path, "DCR_ISSUER=https://as.example.test\n", 0o666)
    elif problem == "a symbolic link":
        (tmp_path / "real").mkdir()
        env.symlink_to(_env_file(tmp_path / "real", "DCR_ISSUER=https://as.example.test\n"))
    with pytest.raises(ConfigError, match=rf"--env-file {env} was not read"):
        load_settings(env_file=env)


def test_an_ignored_env_file_is_named_in_the_last_line_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """'KEYCLOAK_URL and KEYCLOAK_REALM not set' says which .env was ignored and names --env-file."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DCR_CLIENT_FILE", str(tmp_path / ".dcr_client.json"))
    _env_file(tmp_path, "KEYCLOAK_URL=http://127.0.0.1:1\nKEYCLOAK_REALM=demo\n")
    assert cli.run(["run"]) == ExitCode.CONFIG
    event = str(_last(capsys)["event"])
    assert "KEYCLOAK_URL" in event
    assert ".env was ignored" in event and "pass --env-file .env to read it" in event


def test_a_run_with_a_named_env_file_registers_and_writes_where_it_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole flow from one file: the issuer and the credentials file both come from --env-file."""
    monkeypatch.chdir(tmp_path)
    creds = tmp_path / "creds" / ".dcr_client.json"
    with serving_in_thread(FakeServer()) as fake:
        env = _env_file(
            tmp_path,
            f"DCR_ISSUER={fake.base}\nDCR_INITIAL_ACCESS_TOKEN={IAT}\nDCR_CLIENT_FILE={creds}\nDCR_WAIT_TIMEOUT=10\n",
        )
        assert cli.run(["--env-file", str(env), "run"]) == ExitCode.OK
    saved = json.loads(creds.read_text())
    assert saved["issuer"] == fake.base and saved["client_id"] in fake.clients
    assert not os.path.lexists(tmp_path / ".dcr_client.json")
