"""The CLI's contract: exit codes and the one last line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from bootstrap import cli, quick
from bootstrap.errors import ExitCode
from bootstrap.models import SavedRegistration
from bootstrap.settings import Settings


def test_configuration_error_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """No server configured: exit 2, and the last line says what to set."""
    assert cli.run([]) == ExitCode.CONFIG
    last = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert "KEYCLOAK_URL" in last["event"] and last["exit_code"] == 2


def test_show_without_a_file_says_to_run_first(capsys: pytest.CaptureFixture[str]) -> None:
    """'show' with nothing saved: exit 6 (like env and delete) and the advice to run the bootstrap."""
    assert cli.run(["show"]) == ExitCode.STORAGE
    assert "run 'dcr-bootstrap' first" in capsys.readouterr().err


def test_every_exit_code_is_documented() -> None:
    """Every ExitCode has a meaning for the generated table."""
    assert all(code.meaning for code in ExitCode)


def test_the_reference_tables_match_the_code() -> None:
    """The configuration and exit-code tables in docs/ are what the code generates (python -m bootstrap._reference)."""
    from bootstrap._reference import PAGES, render

    root = Path(__file__).resolve().parents[2]
    pages = {path: (root / path).read_text() for path in PAGES}
    assert "<!-- BEGIN config -->" in "".join(pages.values()) and "<!-- BEGIN exit-codes -->" in "".join(pages.values())
    for path, text in pages.items():
        assert render(text) == text, f"{path} is stale: run '.venv/bin/python -m bootstrap._reference'"


def _saved_file(tmp_path: Path) -> dict[str, object]:
    """A file as the bootstrap writes it."""
    data = SavedRegistration(
        client_id="svc",
        client_secret=SecretStr("s3cret-value"),
        registration_access_token=SecretStr("rat-value"),
        registration_client_uri="https://as.example.test/reg/svc",
        issuer="https://as.example.test",
    ).to_file()
    (tmp_path / ".dcr_client.json").write_text(json.dumps(data))
    return data


def test_quick_default_file_is_the_settings_default() -> None:
    assert Path(quick.DEFAULT_FILE) == Settings.model_fields["dcr_client_file"].default


@pytest.mark.parametrize("command", ["env", "show"])
def test_quick_and_full_paths_print_the_same(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """'env' and 'show' without pydantic print what the settings-based path prints."""
    monkeypatch.chdir(tmp_path)
    _saved_file(tmp_path)
    assert cli.run([command]) == ExitCode.OK
    fast = capsys.readouterr().out
    (tmp_path / ".env").write_text("DCR_LOG_LEVEL=info\n")  # a .env file sends the CLI the full way
    assert cli.run([command]) == ExitCode.OK
    assert capsys.readouterr().out == fast


def test_show_masks_every_value_it_does_not_know(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = _saved_file(tmp_path) | {"x_vendor_credential": "vendor-secret"}
    (tmp_path / ".dcr_client.json").write_text(json.dumps(data))
    text = quick.show()
    assert text is not None
    shown = json.loads(text)
    assert shown["client_id"] == "svc" and shown["registration_client_uri"] == data["registration_client_uri"]
    assert "s3cret-value" not in text and "rat-value" not in text and "vendor-secret" not in text


def test_env_and_show_import_neither_pydantic_nor_aiohttp(tmp_path: Path) -> None:
    """entrypoint.sh runs 'env' on every start: it must not load the heavy libraries."""
    _saved_file(tmp_path)
    probe = (
        "import sys; from bootstrap import cli; code = cli.run(['env']); "
        "heavy = [m for m in ('pydantic', 'aiohttp', 'structlog', 'tenacity') if m in sys.modules]; "
        "print(code, heavy, file=sys.stderr)"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.stderr.strip() == "0 []"
    assert result.stdout.startswith("export KEYCLOAK_CLIENT_ID=svc")


def test_version_is_written_once_in_pyproject(capsys: pytest.CaptureFixture[str]) -> None:
    """--version, the image label and the manifests' image tags all follow pyproject.toml."""
    import re
    import tomllib

    root = Path(__file__).resolve().parents[2]
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    with pytest.raises(SystemExit):
        cli.run(["--version"])
    assert capsys.readouterr().out == f"dcr-bootstrap {version}\n"
    assert f"ARG VERSION={version}\n" in (root / "Dockerfile").read_text()
    for manifest in (root / "deploy" / "k8s").glob("*.yaml"):
        tags = re.findall(r"image: dcr-bootstrap:(\S+)", manifest.read_text())
        assert tags and set(tags) == {version}, manifest.name
