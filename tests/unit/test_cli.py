"""The CLI's contract: exit codes and the one last line."""

from __future__ import annotations

import json

import pytest

from bootstrap import cli
from bootstrap.errors import EXIT_CODE_MEANINGS, ExitCode


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
    """Every ExitCode has a meaning for the README table."""
    assert set(EXIT_CODE_MEANINGS) == set(ExitCode)


def test_readme_reference_matches_the_code() -> None:
    """README's configuration and exit-code tables are what the code generates (run python -m bootstrap._reference)."""
    from pathlib import Path

    from bootstrap._reference import render

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "<!-- BEGIN config -->" in readme and "<!-- BEGIN exit-codes -->" in readme
    assert render(readme) == readme, "README is stale: run '.venv/bin/python -m bootstrap._reference'"
