"""'rotate' says the truth, and a secret from Keycloak's admin API is held to the rules of every answer."""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bootstrap import commands, flow
from bootstrap.errors import AdminRejected, NotRotated, UnsafeValue
from bootstrap.settings import Settings
from tests.fakeadmin import REALM, AdminFake
from tests.fakeserver import FakeServer, saved, serving, settings_for


@pytest.fixture
async def admin_server() -> AsyncIterator[AdminFake]:
    fake = AdminFake()
    async with serving(fake):
        yield fake


def _with_admin(server: FakeServer, tmp_path: Path, **overrides: object) -> Settings:
    return settings_for(
        server,
        tmp_path,
        keycloak_url=server.base,
        keycloak_realm=REALM,
        keycloak_admin_username="admin",
        keycloak_admin_password="admin-password",
        **overrides,
    )


def _lose_management(server: FakeServer) -> None:
    server.tokens = {}  # every RFC 7592 call answers 401; the clients and their secrets live on


async def _rotate(settings: Settings) -> None:
    await commands._rotate(settings, argparse.Namespace())


async def test_rotate_without_management_or_admin_credentials_fails_saying_not_rotated_and_why(
    server: FakeServer, tmp_path: Path
) -> None:
    """RFC 7592 lost, no admin access: NotRotated (not exit 0), naming the cause; the file is untouched."""
    settings = settings_for(server, tmp_path)
    await flow.run(settings)
    before = saved(tmp_path)
    _lose_management(server)
    with pytest.raises(NotRotated, match=r"was NOT rotated: its RFC 7592 management is lost \(HTTP 401\)"):
        await _rotate(settings)
    assert saved(tmp_path)["client_secret"] == before["client_secret"]


async def test_rotate_with_admin_credentials_regenerates_even_when_rfc7592_management_is_lost(
    admin_server: AdminFake, tmp_path: Path
) -> None:
    """Management lost, admin access set: Keycloak's admin API rotates the secret; the new one is saved."""
    settings = _with_admin(admin_server, tmp_path)
    await flow.run(settings)
    before = saved(tmp_path)
    _lose_management(admin_server)
    await _rotate(settings)
    after = saved(tmp_path)
    assert after["client_id"] == before["client_id"] and after["client_secret"] != before["client_secret"]
    assert after["client_secret"] == admin_server.clients[after["client_id"]]["client_secret"]


async def test_a_failed_rotation_says_the_secret_was_not_rotated(admin_server: AdminFake, tmp_path: Path) -> None:
    """An error during 'rotate' keeps its own exit code and adds that nothing was rotated."""
    settings = _with_admin(admin_server, tmp_path)
    await flow.run(settings)
    admin_server.admin_refuses = True
    with pytest.raises(AdminRejected) as raised:
        await _rotate(settings)
    assert raised.value.line().endswith("The client secret was not rotated.")


@pytest.mark.parametrize("value", ["new\nKEYCLOAK_CLIENT_ID=evil", "tab\there", "ctl\x7f", "é-not-ascii"])
async def test_a_regenerated_secret_outside_vschar_is_refused_and_the_old_secret_kept(
    admin_server: AdminFake, tmp_path: Path, value: str
) -> None:
    """The admin API's secret outside VSCHAR: UnsafeValue (exit 7), the old secret stays saved."""
    settings = _with_admin(admin_server, tmp_path)
    await flow.run(settings)
    before = saved(tmp_path)["client_secret"]
    admin_server.regenerated = value
    with pytest.raises(UnsafeValue, match=r"nothing was (saved|written)"):
        await _rotate(settings)
    assert saved(tmp_path)["client_secret"] == before


async def test_a_regenerated_secret_an_env_file_cannot_carry_is_refused(
    admin_server: AdminFake, tmp_path: Path
) -> None:
    """With DCR_ENV_FILE, a secret with shell syntax is refused before anything is written."""
    settings = _with_admin(admin_server, tmp_path, dcr_env_file=tmp_path / "client.env")
    await flow.run(settings)
    before = (tmp_path / "client.env").read_bytes()
    admin_server.regenerated = "$(id)`x`"
    with pytest.raises(UnsafeValue):
        await _rotate(settings)
    assert (tmp_path / "client.env").read_bytes() == before
    assert json.loads((tmp_path / "client.json").read_text())["client_secret"] != "$(id)`x`"
