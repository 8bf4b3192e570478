"""The README's first command (the local bring-up), run against the session's Keycloak."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from harness.demo import bring_up
from harness.keycloak import KeycloakServer

if TYPE_CHECKING:
    from harness.demo import Shown


@dataclass
class DemoRun:
    shown: Shown
    printed: str


@pytest.fixture(scope="module")
def demo(keycloak: KeycloakServer, tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """One bring-up (with the example MCP server's own environment), and everything it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        shown = bring_up(keycloak, "demo", tmp_path_factory.mktemp("demo"))
    return DemoRun(shown, printed.getvalue())


def test_the_example_server_lists_its_tools_over_mcp_before_and_after_the_restart(demo: DemoRun) -> None:
    """Both MCP calls (initialize + tools/list with a caller's token) return the example's tool, and it is printed."""
    assert demo.shown.tools == ["whoami", "whoami"]
    assert demo.printed.count("tools=['whoami']") == 2


def test_the_restart_reloads_the_saved_registration_with_one_request(demo: DemoRun) -> None:
    """The bootstrap's second run makes one request and reuses the client."""
    assert "the restart made 1 request(s): method=GET" in demo.printed
    assert "Loaded registration for client" in demo.printed


def test_the_bring_up_prints_no_secret(demo: DemoRun) -> None:
    """No secret it handled (file secrets, initial access token, caller's secret, tokens) is printed."""
    assert len(demo.shown.secrets) == 6
    assert not [n for n, secret in enumerate(demo.shown.secrets) if secret in demo.printed]
