"""A ``coordination.k8s.io/v1`` Lease as client-go's leader election uses it: one holder at a time.

* The holder identity is unique per process (``<pod name>_<uuid>``, as client-go advises): two runs
  with one host name never both believe they hold it.
* Expiry is judged on our own clock: a Lease whose record has not changed for its
  ``leaseDurationSeconds``, counted from the moment *this process* first saw that record, is free.
  The holder's ``renewTime`` is written for people (``kubectl get lease``) and never compared with
  our clock, so a holder whose clock runs an hour ahead (or behind) neither blocks nor loses it.
* Timing is client-go's: lease duration 15 s > renew deadline 10 s > 1.2 x retry period 2 s (its own
  validation). The holder renews every retry period; a holder that has not renewed within the renew
  deadline, or sees another holder, has lost it and stops before it writes (``LeaseLost``).
* Polls and API retries go through the run's ``RetryPolicy``: a waiter backs off as every request of
  the tool does (full jitter), capped at the retry period.

Leader election does not fence: a holder paused past its lease may still send a write. The Secret's
``resourceVersion`` is the fence; the Lease only keeps the Pods from racing in the common case.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .. import log
from .._parse import hostname
from ..errors import BootstrapError, LeaseLost, LockTimeout, printable
from ..wait import Deadline
from ._client import MANAGED_BY, KubeClient, kept_metadata
from ._values import dict_or_empty, int_or_none, text_or_none

T = TypeVar("T")
LEASE_DURATION = 15
RENEW_DEADLINE = 10.0
RETRY_PERIOD = 2.0
JITTER_FACTOR = 1.2  # client-go's: the retry period is stretched by up to this much
# Releasing the Lease must not depend on the time the (possibly failed) run has left.
RELEASE_TIMEOUT = 5.0

logger = log.get_logger()


def holder_identity(name: str | None = None) -> str:
    """A holder name unique to this process: the Pod's name (``HOSTNAME`` in a Pod) and a random suffix."""
    return f"{name or os.environ.get('HOSTNAME') or hostname()}_{uuid.uuid4()}"


def _micro_time(at: datetime.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseLock:
    """One process's view of one Lease: acquire, renew while working, release."""

    def __init__(
        self,
        client: KubeClient,
        name: str,
        identity: str,
        *,
        duration: int = LEASE_DURATION,
        renew_deadline: float = RENEW_DEADLINE,
        retry_period: float = RETRY_PERIOD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not duration > renew_deadline > JITTER_FACTOR * retry_period > 0:
            raise ValueError("lease duration > renew deadline > 1.2 x retry period > 0 must hold")
        self.client, self.name, self.identity = client, name, identity
        self.duration, self.renew_deadline, self.retry_period = duration, renew_deadline, retry_period
        self._clock = clock
        self._observed: str | None = None  # the last record seen, and when (our clock) it changed
        self._observed_at = 0.0
        self._observed_holder: str | None = None
        self._renewed_at: float | None = None  # our last successful acquire or renew
        self._lost = False

    @property
    def held(self) -> bool:
        """Ours, by our own clock: renewed within the renew deadline and not seen taken."""
        return (
            not self._lost and self._renewed_at is not None and self._clock() - self._renewed_at < self.renew_deadline
        )

    def check_held(self) -> None:
        """Raise ``LeaseLost`` unless the Lease is still ours: called before every write."""
        if self._renewed_at is not None and not self.held:
            self._lost = True
            raise LeaseLost(
                f"Lost the Lease {self.client.namespace}/{self.name} (taken by another holder, or not renewed "
                f"within {self.renew_deadline:g}s) before writing; nothing more was written. Run again; check the "
                "API server's health if this repeats."
            )

    def _observe(self, spec: dict[str, Any]) -> None:
        raw = json.dumps(spec, sort_keys=True, default=str)
        if raw != self._observed:
            self._observed, self._observed_at = raw, self._clock()
            self._observed_holder = text_or_none(spec.get("holderIdentity"))

    def _expired(self, spec: dict[str, Any]) -> bool:
        duration = int_or_none(spec.get("leaseDurationSeconds"))
        duration = duration if duration is not None and duration > 0 else self.duration
        return self._clock() - self._observed_at >= duration

    def _body(self, spec: dict[str, Any], read: dict[str, Any] | None = None) -> dict[str, Any]:
        """A new Lease (``read`` None), or the one read with our ``spec``: its other metadata stays."""
        if read is None:
            metadata: dict[str, Any] = {"name": self.name, "namespace": self.client.namespace}
            metadata["labels"] = dict(MANAGED_BY)
        else:
            rv = self.client.resource_version(read, "lease", self.name)
            metadata = kept_metadata(read, self.name, self.client.namespace, rv)
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def _spec(self, previous: dict[str, Any] | None) -> dict[str, Any]:
        """Our record: a renewal keeps acquireTime and the transition count; a takeover counts one more."""
        now = _micro_time(datetime.datetime.now(datetime.UTC))
        previous = previous or {}
        ours = previous.get("holderIdentity") == self.identity
        transitions = int_or_none(previous.get("leaseTransitions")) or 0
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.duration,
            "acquireTime": (text_or_none(previous.get("acquireTime")) if ours else None) or now,
            "renewTime": now,
            "leaseTransitions": transitions + (0 if ours or not previous else 1),
        }

    async def try_acquire_or_renew(self, budget: float | None = None) -> bool:
        """One round: take the Lease if it is free or expired (or renew it if ours); False if another holds it."""
        status, obj = await self.client.call("GET", "lease", self.name, "get", accept=(404,), budget=budget)
        if status == 404:
            body = self._body(self._spec(None))
            status, obj = await self.client.call(
                "POST", "lease", self.name, "create", body, accept=(409,), budget=budget
            )
            return status != 409 and self._won(obj)
        spec = dict_or_empty(obj.get("spec"))
        self._observe(spec)
        current = text_or_none(spec.get("holderIdentity"))
        if current is not None and current != self.identity and not self._expired(spec):
            return False
        body = self._body(self._spec(spec), obj)
        status, obj = await self.client.call(
            "PUT", "lease", self.name, "update", body, accept=(404, 409), budget=budget
        )
        return status not in (404, 409) and self._won(obj)

    def _won(self, obj: dict[str, Any]) -> bool:
        self.client.resource_version(obj, "lease", self.name)  # an answer that is no Lease is refused here
        self._observe(dict_or_empty(obj.get("spec")))
        self._renewed_at, self._lost = self._clock(), False
        return True

    async def acquire(self, deadline: Deadline, on_wait: Callable[[], Awaitable[None]] | None = None) -> bool:
        """Hold the Lease within ``deadline``; True if another holder made us wait. ``on_wait`` runs once, then."""
        attempt = 0
        while not await self.try_acquire_or_renew():
            if attempt == 0 and on_wait is not None:
                await on_wait()
            remaining = deadline.remaining()
            if remaining <= 0:
                holder = printable(self._observed_holder or "another Pod", 80)
                raise LockTimeout(
                    f"Lease {self.client.namespace}/{self.name} stayed held by {holder} until DCR_WAIT_TIMEOUT "
                    "ran out; check for a stuck replica (kubectl get lease -o yaml shows the holder), or raise "
                    "DCR_WAIT_TIMEOUT."
                )
            await asyncio.sleep(min(remaining, self.client.policy.pause(attempt, cap=self.retry_period)))
            attempt += 1
        return attempt > 0

    async def hold(self, work: Awaitable[T]) -> T:
        """Await ``work`` while renewing the Lease; if it is lost, ``work`` is cancelled and ``LeaseLost`` raised."""
        current = asyncio.current_task()
        assert current is not None
        renewer = asyncio.create_task(self._keep(current))
        try:
            return await work
        except asyncio.CancelledError:
            if self._lost and renewer.done() and not renewer.cancelled():  # our renewer cancelled it
                current.uncancel()
                self.check_held()
            raise
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _keep(self, task: asyncio.Task[Any]) -> None:
        while True:
            await asyncio.sleep(self.retry_period)
            assert self._renewed_at is not None
            left = self._renewed_at + self.renew_deadline - self._clock()
            try:
                renewed = left > 0 and await self.try_acquire_or_renew(budget=left)
            except BootstrapError as exc:
                logger.warning(
                    "Could not renew the Lease", lease=f"{self.client.namespace}/{self.name}", error=exc.line()
                )
                renewed = False
            taken = self._observed_holder not in (None, self.identity)
            if not renewed and (taken or not self.held):
                self._lost = True
                logger.warning("Lost the Lease; stopping before anything more is written", holder=self._observed_holder)
                task.cancel()
                return

    async def release(self) -> None:
        """Give the Lease up (if ours) so the next Pod need not wait for expiry; on its own short budget."""
        if self._renewed_at is None:
            return
        self._renewed_at = None
        status, obj = await self.client.call("GET", "lease", self.name, "get", accept=(404,), budget=RELEASE_TIMEOUT)
        spec = obj.get("spec")
        if status == 404 or not isinstance(spec, dict) or spec.get("holderIdentity") != self.identity:
            return
        now = _micro_time(datetime.datetime.now(datetime.UTC))
        spec.update(holderIdentity=None, leaseDurationSeconds=1, renewTime=now, acquireTime=now)
        # 404/409: someone took or removed it, fine.
        await self.client.call(
            "PUT", "lease", self.name, "update", self._body(spec, obj), accept=(404, 409), budget=RELEASE_TIMEOUT
        )
