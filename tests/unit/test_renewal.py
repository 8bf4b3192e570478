"""Renewal cannot storm: a window as long as the secret's life, a refused renewal, a client replaced each round."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from pydantic import SecretStr
from structlog.testing import capture_logs

from bootstrap import commands, flow, lifecycle
from bootstrap.models import SavedRegistration
from bootstrap.settings import Settings
from tests.fakeserver import FakeServer, settings_for
from tests.unit.conftest import Clock

T0 = 1_800_000_000


async def _watch_rounds(settings: Settings, clock: Clock, rounds: int) -> list[float]:
    """Run 'watch' for ``rounds`` rounds, its sleeps moving the clock; returns the waits it chose."""
    waits: list[float] = []

    async def sleep(wait: float) -> None:
        waits.append(wait)
        clock.at += wait
        if len(waits) == rounds:
            raise asyncio.CancelledError

    await commands._watch(settings, argparse.Namespace(), sleep)
    return waits


def _expiring(life: int) -> SavedRegistration:
    return SavedRegistration(
        client_id="c", client_secret=SecretStr("s"), client_secret_issued_at=T0, client_secret_expires_at=T0 + life
    )


def test_a_renewal_window_as_long_as_the_secrets_life_is_clamped_to_a_third_of_it(
    server: FakeServer, tmp_path: Path, clock: Clock
) -> None:
    """DCR_RENEW_BEFORE=2h for a 1h secret: renewed with 20 minutes left, not at once."""
    settings = settings_for(server, tmp_path, dcr_renew_before="2h")
    assert lifecycle.renew_at(settings, _expiring(3600)) == T0 + 3600 - 1200


def test_the_clamped_renewal_window_is_warned_about_once(server: FakeServer, tmp_path: Path, clock: Clock) -> None:
    """One warning naming DCR_RENEW_BEFORE, however often the renewal time is asked for."""
    settings = settings_for(server, tmp_path, dcr_renew_before="2h")
    with capture_logs() as logs:
        for _ in range(3):
            lifecycle.renew_at(settings, _expiring(3600))
    assert [entry["event"] for entry in logs if entry["log_level"] == "warning"] == [
        "DCR_RENEW_BEFORE is at least as long as the client secret's lifetime; renewing once a third of it is "
        "left instead"
    ]


async def test_watch_with_a_window_longer_than_the_secrets_life_registers_no_storm(
    server: FakeServer, tmp_path: Path, clock: Clock
) -> None:
    """A server that will not renew, DCR_RENEW_BEFORE past the life: at most one new client per interval."""
    server.secret_lifetime = 3600
    settings = settings_for(server, tmp_path, dcr_renew_before="2h", dcr_watch_interval=300)
    waits = await _watch_rounds(settings, clock, 20)
    assert server.registered <= 1 + sum(waits) // 300


async def test_watch_registers_at_most_one_new_client_per_interval(
    server: FakeServer, tmp_path: Path, clock: Clock
) -> None:
    """A rotation due every second (DCR_ROTATE_AFTER=1, no admin access): one replacement per interval."""
    settings = settings_for(server, tmp_path, dcr_rotate_after=1, dcr_watch_interval=300)
    waits = await _watch_rounds(settings, clock, 10)
    assert server.registered <= 1 + sum(waits) // 300


async def test_a_renewal_the_server_refuses_is_retried_with_an_exponential_backoff(
    server: FakeServer, tmp_path: Path, clock: Clock
) -> None:
    """An expiry in the past, management lost: renewal tried at once, then after 2, 4, 8... s, up to the interval."""
    server.secret_lifetime = 3600
    settings = settings_for(server, tmp_path, dcr_watch_interval=60)
    await flow.run(settings)
    server.tokens = {}  # RFC 7592 answers 401, the credentials still work: the renewal can never succeed
    clock.at += 7200
    waits = await _watch_rounds(settings, clock, 8)
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_a_window_is_not_clamped_when_the_secrets_issue_time_is_unknown(
    server: FakeServer, tmp_path: Path, clock: Clock
) -> None:
    """A file without client_secret_issued_at: DCR_RENEW_BEFORE applies as set (the remaining time is no life)."""
    settings = settings_for(server, tmp_path, dcr_renew_before="1h")
    legacy = _expiring(600).model_copy(update={"client_secret_issued_at": None})
    assert lifecycle.due(settings, legacy)
