"""Fault injection at every await: drive a coroutine by hand and throw into it at its n-th suspension.

A run is tried again and again with the fault moved one suspension point further each time, until a
run finishes before the fault fires. That covers every ``await`` on the path (ours, aiohttp's,
asyncio's) without listing cases: whatever a future change adds is covered too.

    fault = FaultAt(n, armed=lambda: server.registered > 0)
    with pytest.raises(Injected): await fault.run(flow.run(settings))
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


class Killed(Exception):  # what happened to the run, not an error of its own
    """Raised by ``FaultAt.run`` with ``kill=True``: the run stopped dead at the fault, as under kill -9."""


class Injected(Exception):
    """The fault thrown in: not a BootstrapError, as a bug or an odd library error would not be."""


def _always() -> bool:
    return True


@dataclass
class FaultAt:
    """Throw ``error`` into the coroutine at its ``n``-th suspension counted once ``armed()`` is true."""

    n: int
    armed: Callable[[], bool] = _always
    error: Callable[[str], BaseException] = Injected
    fired: bool = False
    # kill: at the fault the run simply stops, as under kill -9: no except or finally of it runs before
    # its files are judged (its socket is released and the coroutine closed afterwards, as the kernel would).
    kill: bool = False

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            result: T = await _Driver(coro, self)
        except Killed:
            for _ in range(3):  # let the loop run what the cancelled future scheduled (releasing its socket)
                await asyncio.sleep(0)
            raise
        return result


class _Driver:
    def __init__(self, coro: Coroutine[Any, Any, Any], fault: FaultAt) -> None:
        self._coro = coro
        self._fault = fault

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, fault = self._coro, self._fault
        value: Any = None
        throw: BaseException | None = None
        seen = 0
        while True:
            try:
                yielded = coro.throw(throw) if throw is not None else coro.send(value)
            except StopIteration as stop:
                return stop.value
            throw, value = None, None
            if not fault.fired and fault.armed():
                seen += 1
                if seen == fault.n:
                    fault.fired = True
                    # The coroutine never resumes from what it awaited: the fault arrives there instead. The
                    # awaited future is cancelled first, as a real cancellation would, so that what it holds
                    # (a socket registered with the selector, say) is released.
                    if isinstance(yielded, asyncio.Future):
                        yielded.cancel()
                    if fault.kill:
                        _bury(coro)
                        raise Killed(f"killed at await {seen} after arming")
                    throw = fault.error(f"fault injected at await {seen} after arming")
                    continue
            try:
                value = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation of the task, passed on to the coroutine
                throw = exc


def _bury(coro: Coroutine[Any, Any, Any]) -> None:
    """Close a killed run without letting it act: its finally blocks may release locks, never await."""
    with contextlib.suppress(RuntimeError):  # a finally block tried to await: a killed process would not
        coro.close()
