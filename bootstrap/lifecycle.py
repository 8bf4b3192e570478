"""When a saved secret is due for renewal or rotation, and when a replaced registration may go.

Pure functions of the saved registration, the settings and the time, so the flow can ask and the
tests can set the clock. A secret's lifetime is measured from ``client_secret_issued_at``: the time
this tool first saw that secret value (servers do not say when they issued it).
"""

from __future__ import annotations

import time

from . import log
from .models import SavedRegistration
from .settings import Settings

logger = log.get_logger()

# Without DCR_RENEW_BEFORE, renew once a third of the secret's lifetime is left (Keycloak's rotation
# policy: 29 days of life, rotation on update in the last 10 days).
DEFAULT_RENEW_FRACTION = 1 / 3
# A watch loop whose renewal is due (a server that will not renew, say) still waits this long between rounds,
# doubled after each round that left it due (Vault Agent's backoff), up to DCR_WATCH_INTERVAL.
MIN_RECHECK = 1.0
# Secret lifetimes whose DCR_RENEW_BEFORE was clamped already: one warning each, not one per round.
_clamped: set[tuple[float, int]] = set()


def now() -> int:
    return int(time.time())


def renew_at(settings: Settings, saved: SavedRegistration) -> int | None:
    """The time from which ``saved``'s secret should be renewed, or None (it never expires)."""
    expires = saved.client_secret_expires_at
    if not expires or saved.client_secret is None:
        return None
    issued = saved.client_secret_issued_at
    life = max(0, expires - (issued or now()))
    if settings.dcr_renew_before is not None and not issued:
        return int(expires - settings.dcr_renew_before)  # the life is unknown: nothing to measure the window by
    return int(expires - _window(settings.dcr_renew_before, life))


def _window(before: float | None, life: int) -> float:
    """DCR_RENEW_BEFORE, or a third of the secret's life when unset or at least as long as that life.

    A window as long as the life makes every new secret due at once: each run would renew (or register)
    again, a storm. Clamped with one warning rather than refused: the life is only known from the server's
    answer, long after the settings were loaded, and a sidecar that stops renewing is worse than one warning.
    """
    if before is None:
        return life * DEFAULT_RENEW_FRACTION
    if life and before >= life:
        if (before, life) not in _clamped:
            _clamped.add((before, life))
            logger.warning(
                "DCR_RENEW_BEFORE is at least as long as the client secret's lifetime; renewing once a third of "
                "it is left instead",
                renew_before=before,
                lifetime=life,
                remedy="set DCR_RENEW_BEFORE below the lifetime the server gives secrets, or unset it",
            )
        return life * DEFAULT_RENEW_FRACTION
    return before


def rotate_at(settings: Settings, saved: SavedRegistration) -> int | None:
    """The time from which ``saved`` is old enough for DCR_ROTATE_AFTER, or None (rotation is off)."""
    if settings.dcr_rotate_after is None or saved.client_secret is None:
        return None
    return int((saved.client_secret_issued_at or now()) + settings.dcr_rotate_after)


def due(settings: Settings, saved: SavedRegistration, at: int | None = None) -> bool:
    """Whether ``saved`` needs new credentials now: its secret expires soon, or it is due for rotation."""
    when = at if at is not None else now()
    return any(t is not None and when >= t for t in (renew_at(settings, saved), rotate_at(settings, saved)))


def rotation_due(settings: Settings, saved: SavedRegistration) -> bool:
    at = rotate_at(settings, saved)
    return at is not None and now() >= at


def expired(saved: SavedRegistration, at: int | None = None) -> bool:
    expires = saved.client_secret_expires_at
    return bool(expires) and (at if at is not None else now()) >= int(expires or 0)


def next_check(settings: Settings, saved: SavedRegistration, interval: float, behind: int = 0) -> float:
    """Seconds a 'watch' loop may sleep: its interval, or less if a renewal or rotation falls due first.

    ``behind``: how many rounds in a row ended with the renewal still due (the server would not renew):
    the retries back off exponentially from MIN_RECHECK, never faster, up to the interval.
    """
    times = [t for t in (renew_at(settings, saved), rotate_at(settings, saved)) if t is not None]
    if not times:
        return interval
    backoff = MIN_RECHECK * 2.0 ** min(behind, 32)
    return max(min(backoff, interval), min(interval, min(times) - now()))
