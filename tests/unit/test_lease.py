"""Leader election on the Lease as client-go does it, and Pods that waited for it costing the server nothing."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any, Literal

import pytest
from aiohttp import web

from bootstrap import k8s
from bootstrap.errors import LeaseLost
from bootstrap.k8s import LeaseLock, _store, holder_identity
from bootstrap.wait import Deadline
from tests.fakeserver import FakeServer, serving
from tests.unit.test_k8s import LEASE, NS, FakeKube, Handler, kube, kube_store, outside_a_pod, shared_settings

__all__ = ["kube", "outside_a_pod"]  # fixtures


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def held_by(kube: FakeKube, holder: str, **spec: Any) -> None:
    base = {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": "2026-12-03T12:00:00.000000Z"}
    kube._store(("lease", NS, LEASE), {"metadata": {"name": LEASE}, "spec": base | spec})


def holder(kube: FakeKube) -> str | None:
    spec: dict[str, Any] = kube.objects[("lease", NS, LEASE)]["spec"]
    return spec.get("holderIdentity")


def test_holder_identities_are_unique_per_process_even_with_one_host_name() -> None:
    """Two runs on one host name get two holder identities, both starting with the Pod's name."""
    first, second = holder_identity("pod-a"), holder_identity("pod-a")
    assert first != second and first.startswith("pod-a_") and second.startswith("pod-a_")


def test_lease_timing_must_keep_client_gos_order() -> None:
    """lease duration > renew deadline > 1.2 x retry period, or the lock refuses to exist."""
    client: Any = None
    for duration, deadline, retry in ((10, 10, 2), (15, 10, 9), (15, 2, 2)):
        with pytest.raises(ValueError, match="renew deadline"):
            LeaseLock(client, LEASE, "me", duration=duration, renew_deadline=deadline, retry_period=retry)


async def test_a_second_process_with_the_same_host_name_does_not_share_the_lease(kube: FakeKube) -> None:
    """The second of two runs on one host name finds the Lease held, instead of renewing the first one's."""
    async with kube_store(kube, lease=LEASE) as first, kube_store(kube, lease=LEASE, timeout=5) as second:
        assert first.lock is not None and second.lock is not None
        await first.lock.acquire(Deadline(5))
        assert not await second.lock.try_acquire_or_renew()
        assert holder(kube) == first.lock.identity


async def test_a_holder_whose_clock_runs_an_hour_ahead_is_taken_over_after_the_duration_on_our_clock(
    kube: FakeKube,
) -> None:
    """Expiry counts from when we first saw the record unchanged: a renewTime an hour in the future blocks no one."""
    held_by(kube, "gone-pod", renewTime="2026-12-03T13:00:00.000000Z", leaseDurationSeconds=15)
    clock = Clock()
    async with kube_store(kube, lease=LEASE) as store:
        lock = LeaseLock(store.client, LEASE, "me", clock=clock)
        assert not await lock.try_acquire_or_renew()
        clock.now += 14.9
        assert not await lock.try_acquire_or_renew()
        clock.now += 0.2
        assert await lock.try_acquire_or_renew()
    assert holder(kube) == "me"


async def test_a_holder_that_keeps_renewing_is_never_expired_whatever_its_times_say(kube: FakeKube) -> None:
    """Each change of the record restarts our count, even when its renewTime looks an hour old."""
    clock = Clock()
    async with kube_store(kube, lease=LEASE) as store:
        lock = LeaseLock(store.client, LEASE, "me", clock=clock)
        for renewal in range(4):
            held_by(kube, "live-pod", renewTime=f"2026-12-03T11:00:0{renewal}.000000Z")
            assert not await lock.try_acquire_or_renew()
            clock.now += 10
    assert holder(kube) == "live-pod"


async def test_a_lease_not_renewed_within_the_renew_deadline_is_no_longer_ours(kube: FakeKube) -> None:
    """Past the renew deadline since our last renewal, the holder stops before writing (LeaseLost)."""
    clock = Clock()
    async with kube_store(kube, lease=LEASE) as store:
        lock = LeaseLock(store.client, LEASE, "me", clock=clock)
        assert await lock.try_acquire_or_renew()
        lock.check_held()
        clock.now += lock.renew_deadline
        with pytest.raises(LeaseLost, match="before writing"):
            lock.check_held()


async def test_work_under_a_lease_taken_by_another_holder_is_cancelled_with_lease_lost(kube: FakeKube) -> None:
    """The renewer sees another holder: the work is cancelled at once and LeaseLost raised, nothing after it runs."""
    async with kube_store(kube, lease=LEASE) as store:
        lock = LeaseLock(store.client, LEASE, "me", duration=3, renew_deadline=2, retry_period=0.05)
        assert await lock.try_acquire_or_renew()
        reached = asyncio.Event()
        wrote: list[str] = []

        async def work() -> None:
            held_by(kube, "usurper", leaseDurationSeconds=60)  # taken while we work
            reached.set()
            await asyncio.Event().wait()  # until cancelled
            wrote.append("written")

        with pytest.raises(LeaseLost):
            await asyncio.wait_for(lock.hold(work()), timeout=10)
    assert reached.is_set() and wrote == []


async def test_a_released_lease_is_free_at_once_for_the_next_holder(kube: FakeKube) -> None:
    """Release names no holder, so the next process takes it without waiting for any duration."""
    clock = Clock()
    async with kube_store(kube, lease=LEASE) as first, kube_store(kube, lease=LEASE) as second:
        assert first.lock is not None
        await first.lock.acquire(Deadline(5))
        await first.lock.release()
        assert await LeaseLock(second.client, LEASE, "next", clock=clock).try_acquire_or_renew()
    assert holder(kube) == "next"


async def test_a_pod_that_waited_for_the_lease_uses_the_registration_written_meanwhile_without_a_request(
    kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The holder we waited for stored a registration: the follower writes it to its file, asks the server nothing."""
    for pod in ("pod-a", "pod-b"):
        (tmp_path / pod).mkdir()
    waiting = asyncio.Event()

    async def passed(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await handler(request)

    async def polled_again(request: web.Request, handler: Handler) -> web.StreamResponse:
        waiting.set()
        return await handler(request)

    async with serving(FakeServer()) as server:
        first = await k8s.run_shared(shared_settings(server, kube, tmp_path / "pod-a", monkeypatch))
        stored = kube.shared()
        assert stored is not None
        held_by(kube, "pod-a_other-run")
        server.seen.clear()
        kube.trick("GET lease", passed, polled_again)
        follower = asyncio.create_task(k8s.run_shared(shared_settings(server, kube, tmp_path / "pod-b", monkeypatch)))
        await asyncio.wait_for(waiting.wait(), timeout=10)  # it found the Lease held, and polls again
        kube.put_secret(stored)  # the holder's write: a new resourceVersion
        kube.objects[("lease", NS, LEASE)]["spec"]["holderIdentity"] = None  # and its release
        outcome = await asyncio.wait_for(follower, timeout=10)
    assert outcome.action == "reloaded" and outcome.registration.client_id == first.registration.client_id
    assert server.seen == []
    assert (tmp_path / "pod-b" / "client.json").exists()


class Turnstile(asyncio.Event):
    """A server gate that also says when a request arrived at it (``reached``)."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = asyncio.Event()

    async def wait(self) -> Literal[True]:
        self.reached.set()
        return await super().wait()


async def test_a_run_that_loses_its_lease_mid_flow_writes_nothing_and_withdraws_its_new_client(
    kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Lease is taken while the run waits for its token: the run stops with LeaseLost, the Secret stays
    unwritten, and the client it had just registered is deleted again."""
    # A long renew deadline: however slow the machine, only the usurper below ends the lease, never the clock.
    monkeypatch.setattr(
        _store, "LeaseLock", functools.partial(LeaseLock, duration=120, renew_deadline=60, retry_period=0.05)
    )
    gate = Turnstile()

    async def passed(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await handler(request)

    async def usurped(request: web.Request, handler: Handler) -> web.StreamResponse:
        await gate.reached.wait()  # the renewer's read waits until the run has registered and asks for its token
        held_by(kube, "usurper", leaseDurationSeconds=60)
        return await handler(request)

    kube.trick("GET lease", passed, usurped)  # the acquiring read, then the renewer's first one
    async with serving(FakeServer()) as server:
        server.gates["POST /connect/token"] = gate  # the run is still proving its new client
        server.slow["POST /connect/register"] = 0.3  # a slow machine: registering outlasts the renewer's period
        try:
            with pytest.raises(LeaseLost):
                await asyncio.wait_for(k8s.run_shared(shared_settings(server, kube, tmp_path, monkeypatch)), 30)
        finally:
            gate.set()
    assert server.registered == 1 and server.clients == {}
    assert kube.shared() is None and kube.seen.count("PUT secret") == kube.seen.count("POST secret") == 0


async def test_taking_the_lease_keeps_its_labels_annotations_and_helms_ownership(kube: FakeKube) -> None:
    """A PUT sends the Lease back as read: Helm's managed-by and release annotations, and anyone's labels, stay."""
    metadata = {
        "name": LEASE,
        "labels": {"app.kubernetes.io/managed-by": "Helm", "team": "shop"},
        "annotations": {"meta.helm.sh/release-name": "mcp"},
    }
    kube._store(("lease", NS, LEASE), {"metadata": metadata, "spec": {}})
    async with kube_store(kube, lease=LEASE) as store:
        await store.acquire("pod-a", timeout=5)
        await store.release()
    kept = kube.objects[("lease", NS, LEASE)]["metadata"]
    assert kept["labels"] == metadata["labels"] and kept["annotations"] == metadata["annotations"]


async def test_a_new_lease_is_labelled_as_ours(kube: FakeKube) -> None:
    """The Lease the tool creates carries app.kubernetes.io/managed-by: dcr-bootstrap."""
    async with kube_store(kube, lease=LEASE) as store:
        await store.acquire("pod-a", timeout=5)
    assert kube.objects[("lease", NS, LEASE)]["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "dcr-bootstrap"}
