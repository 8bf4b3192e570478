"""The retry policy: one deadline for the run, cheap probes while nothing listens, backoff otherwise.

What is retryable is decided once, where the answer is seen (``_http.retryable``, and discovery's
404 while the realm does not exist yet), and arrives here as ``Unavailable``. "Connection refused"
costs the server nothing, so it is probed every ``PROBE_INTERVAL`` and the run notices a server
within a beat of it coming up; a server that answers "not there yet" (404, 502-504) is polled a few
times a second; one that struggles (429, 500, timeouts) gets exponential backoff with full jitter,
and a Retry-After is obeyed exactly. A Retry-After beyond the deadline ends the run at once: waiting
could not help. ``no_backoff()`` is the test switch: every delay becomes zero (deadlines still apply).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_before_delay
from tenacity.wait import wait_random_exponential

from .errors import ServerNotReady, Unavailable
from .log import get_logger

T = TypeVar("T")
P = ParamSpec("P")
log = get_logger()
# A refused connection is answered by the kernel, not the server: probe it often.
PROBE_INTERVAL = 0.2
# A server (or its gateway) that answers "not there yet" while it starts: poll at under 4 requests a
# second on average, so the run notices it within a third of a second without pressing on it.
NOT_READY = frozenset({404, 502, 503, 504})
NOT_READY_INTERVAL = (0.2, 0.35)
# Polling for a lock another process holds is not a retry: even in tests it yields for a moment.
MIN_POLL = 0.01
_zero_delays = False


@contextlib.contextmanager
def no_backoff(active: bool = True) -> Iterator[None]:
    """Test switch: within this block every retry delay is zero (``active=False``: real delays again)."""
    global _zero_delays
    previous, _zero_delays = _zero_delays, active
    try:
        yield
    finally:
        _zero_delays = previous


@dataclass
class Deadline:
    """One total budget shared by every step of a run."""

    total: float
    started: float = field(default_factory=time.monotonic)

    def remaining(self) -> float:
        return max(0.0, self.total - (time.monotonic() - self.started))


@dataclass(frozen=True)
class RetryPolicy:
    deadline: Deadline
    initial: float = 0.5
    maximum: float = 10.0
    hint: str = "Check that the server runs and is reachable, or raise DCR_WAIT_TIMEOUT."
    _backoff: Callable[[RetryCallState], float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_backoff", wait_random_exponential(multiplier=self.initial, max=self.maximum))

    def pause(self, attempt: int, cap: float | None = None) -> float:
        """The wait before poll ``attempt`` + 1 of something another process holds: this policy's backoff
        (full jitter), at most ``cap``. Under ``no_backoff`` a token ``MIN_POLL``, so a poll never spins."""
        if _zero_delays:
            return MIN_POLL
        ceiling = min(self.maximum, cap if cap is not None else self.maximum, self.initial * 2**attempt)
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not crypto

    def delay(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if not isinstance(exc, Unavailable):
            return 0.0 if _zero_delays else float(self._backoff(state))
        if exc.retry_after is not None:
            # One beyond the deadline is returned even in tests: the stop condition then ends the run now.
            beyond = exc.retry_after >= self.deadline.remaining()
            return exc.retry_after if beyond or not _zero_delays else 0.0
        if _zero_delays:
            return 0.0
        if exc.connect:
            return PROBE_INTERVAL * random.uniform(0.75, 1.25)  # noqa: S311 - jitter, not crypto
        if exc.status in NOT_READY:
            return random.uniform(*NOT_READY_INTERVAL)  # noqa: S311
        return float(self._backoff(state))

    async def call(self, what: str, attempt: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``attempt`` until it succeeds, raises a non-retryable error, or the deadline passes."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Unavailable),
            wait=self.delay,
            stop=stop_before_delay(self.deadline.remaining()),
            before_sleep=self._before_sleep(what),
            reraise=True,
        )
        real: list[Unavailable] = []  # the last failure that was not just "out of time"
        try:
            async for try_ in retrying:
                with try_:
                    try:
                        return await attempt(*args, **kwargs)
                    except Unavailable as failed:
                        if not failed.out_of_time:
                            real[:] = [failed]
                        raise
        except Unavailable as last:
            exc = real[0] if real else last
            if exc.retry_after is not None and exc.retry_after >= self.deadline.remaining():
                raise ServerNotReady(
                    f"The server asked to retry {what} after {exc.retry_after:g}s ({exc.detail}), beyond the "
                    f"{self.deadline.remaining():.1f}s left of DCR_WAIT_TIMEOUT={self.deadline.total:g}; stopped "
                    "now instead of waiting in vain. Run again later, or raise DCR_WAIT_TIMEOUT.",
                    reason=exc.reason,
                ) from exc
            raise ServerNotReady(
                f"Server not ready after {self.deadline.total:g}s ({what}): {exc.detail}. {self.hint}",
                reason=exc.reason,
            ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _before_sleep(self, what: str) -> Callable[[RetryCallState], None]:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "Server not ready, retrying",
                step=what,
                attempt=state.attempt_number,
                reason=getattr(exc, "detail", str(exc)),
                next_delay=round(state.upcoming_sleep, 2),
            )

        return before_sleep
