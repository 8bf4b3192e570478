"""The retry policy: exponential backoff with full jitter, a per-attempt timeout and a total deadline.

One predicate decides what is retryable: ``Unavailable`` (connection errors, timeouts, 5xx, 429,
404 while the realm does not exist yet). A Retry-After the server sends replaces the backoff.
``testing(True)`` turns every delay to zero so tests never sleep.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_before_delay
from tenacity.wait import wait_random_exponential

from .errors import ServerNotReady, Unavailable
from .log import get_logger

T = TypeVar("T")
log = get_logger()
_no_backoff = False


def testing(no_backoff: bool) -> None:
    """Test switch: with ``no_backoff`` every delay is zero (deadlines still apply)."""
    global _no_backoff
    _no_backoff = no_backoff


@dataclass
class Deadline:
    """One total budget shared by every step of a run."""

    total: float
    started: float = field(default_factory=time.monotonic)

    @property
    def remaining(self) -> float:
        return max(0.0, self.total - (time.monotonic() - self.started))


@dataclass(frozen=True)
class RetryPolicy:
    deadline: Deadline
    initial: float = 0.5
    maximum: float = 10.0

    def delay(self, state: RetryCallState) -> float:
        if _no_backoff:
            return 0.0
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Unavailable) and exc.retry_after is not None:
            return exc.retry_after
        return float(wait_random_exponential(multiplier=self.initial, max=self.maximum)(state))


async def call(policy: RetryPolicy, what: str, attempt: Callable[[], Awaitable[T]], *, hint: str = "") -> T:
    """Run ``attempt`` until it succeeds, raises a non-retryable error, or the deadline passes."""
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(Unavailable),
        wait=policy.delay,
        stop=stop_before_delay(policy.deadline.remaining),
        before_sleep=_log_attempt(what),
        reraise=True,
    )
    try:
        async for try_ in retrying:
            with try_:
                return await attempt()
    except Unavailable as exc:
        raise ServerNotReady(
            f"Server not ready after {policy.deadline.total:g}s ({what}): {exc.reason}. "
            + (hint or "Check that the server runs and is reachable, or raise DCR_WAIT_TIMEOUT.")
        ) from exc
    raise AssertionError("unreachable")  # pragma: no cover


def _log_attempt(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "Server not ready, retrying",
            step=what,
            attempt=state.attempt_number,
            reason=getattr(exc, "reason", str(exc)),
            next_delay=round(state.upcoming_sleep, 2),
        )

    return before_sleep
