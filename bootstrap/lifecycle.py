"""When a saved secret is due for renewal or rotation, and when a replaced registration may go.

Pure functions of the saved registration, the settings and the time, so the flow can ask and the
tests can set the clock. A secret's lifetime is measured from ``client_secret_issued_at``: the time
this tool first saw that secret value (servers do not say when they issued it).
"""

from __future__ import annotations

import time

from .models import SavedRegistration
from .settings import Settings

# Without DCR_RENEW_BEFORE, renew once a third of the secret's lifetime is left (Keycloak's rotation
# policy: 29 days of life, rotation on update in the last 10 days).
DEFAULT_RENEW_FRACTION = 1 / 3
# A watch loop whose renewal is due (a server that will not renew, say) still waits this long between rounds.
MIN_RECHECK = 1.0


def now() -> int:
    return int(time.time())


def renew_at(settings: Settings, saved: SavedRegistration) -> int | None:
    """The time from which ``saved``'s secret should be renewed, or None (it never expires)."""
    expires = saved.client_secret_expires_at
    if not expires or saved.client_secret is None:
        return None
    before = settings.dcr_renew_before
    if before is None:
        issued = saved.client_secret_issued_at or now()
        before = max(0, expires - issued) * DEFAULT_RENEW_FRACTION
    return int(expires - before)


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


def next_check(settings: Settings, saved: SavedRegistration, interval: float) -> float:
    """Seconds a 'watch' loop may sleep: its interval, or less if a renewal or rotation falls due first."""
    times = [t for t in (renew_at(settings, saved), rotate_at(settings, saved)) if t is not None]
    if not times:
        return interval
    return max(MIN_RECHECK, min(interval, min(times) - now()))
