"""The shared run: ``flow.run`` with the workload's one registration in a Secret, under a Lease.

Uses the flow's public seams only: ``flow.run``, ``flow.withdraw_on_failure`` and
``flow.withdraw_client`` (RFC 7592 DELETE of a client this run created and could not keep).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from .. import flow, lifecycle, log, store
from ..admin import AdminFor
from ..errors import AmbiguousWrite, BootstrapError, StorageError, StoreConflict
from ..models import Retired, SavedRegistration
from ..settings import Settings
from ..wait import Deadline
from . import _aside, _reconcile, _rollout
from ._publish import SECRET_WRITE_ATTEMPTS, document, fence, publish, withdraw_unshared, write_local
from ._store import RETIRED_KEY, BrokenEntry, KubeStore

UNKNOWN = "?"  # a Secret version that matches none: the Secret could not be read before the wait

logger = log.get_logger()


async def run_shared(settings: Settings, admin: AdminFor | None = None) -> flow.Outcome:
    """``flow.run`` with the workload's one registration kept in a Secret (``DCR_K8S_SECRET``).

    Under the Lease (if configured, taken within DCR_WAIT_TIMEOUT): read the Secret (a registration
    that fails validation is set aside under a timestamped key: ``_aside``), reconcile it with the
    Pod's file (``_reconcile``: the newer side wins, and the file's newer state is written to the
    Secret before anything is loaded from it), so that ``flow.run`` reloads and checks it instead of
    registering, run the flow, and write what it produced back to the Secret with the
    ``resourceVersion`` read whenever it changed (RFC 7592 lets the server rotate the registration
    access token on any call; Keycloak does on every update). On a 409, or a write whose answer was
    lost, the Secret is re-read: the same client (or none) is written again over the new version;
    another client stored first wins, and a client this run registered is deleted again (RFC 7592).
    If the Secret cannot be written after a registration, the new client is deleted, unless a
    re-read shows the Secret holds it (or cannot tell): no Secret names a deleted client.

    A Pod that waited for the Lease and finds the Secret written meanwhile (by the holder it waited
    for) uses that registration without a request of its own, when it is what its settings ask for.
    """
    settings.check()
    assert settings.dcr_k8s_secret is not None
    if "{hostname}" in settings.dcr_client_name:
        logger.warning(
            "DCR_CLIENT_NAME contains {hostname} but the client is shared by every Pod: each Pod would rename "
            "it (an RFC 7592 update per run). Set DCR_CLIENT_NAME to the workload's name, e.g. mcp-server.",
            client_name=settings.dcr_client_name,
        )
    deadline = Deadline(settings.dcr_wait_timeout)
    kube = KubeStore.from_environment(
        settings.dcr_k8s_secret,
        settings.dcr_k8s_lease,
        settings.dcr_k8s_namespace,
        allow_http=settings.dcr_k8s_allow_http,
        policy=flow.policy_for(settings, deadline),
        attempt_timeout=settings.dcr_attempt_timeout,
        context=settings.dcr_k8s_context or None,
    )
    async with kube:
        if kube.lock is None:
            return await _shared_run(settings, kube, deadline, admin)
        before = _Before()
        waited = await kube.lock.acquire(deadline, on_wait=lambda: before.read(kube))
        logger.info("Acquired the Lease", lease=f"{kube.namespace}/{kube.lease}", holder=kube.lock.identity)
        try:
            return await kube.lock.hold(_shared_run(settings, kube, deadline, admin, before if waited else None))
        finally:
            await _release(kube)


@dataclass
class _Before:
    """The Secret's version when we began to wait for the Lease (None: none; ``UNKNOWN``: unreadable)."""

    version: str | None = UNKNOWN

    async def read(self, kube: KubeStore) -> None:
        try:
            self.version = (await kube.load())[1]
        except BootstrapError:
            self.version = UNKNOWN


def _written_meanwhile(
    settings: Settings, before: _Before | None, version: str | None, shared: SavedRegistration | None
) -> bool:
    """The Secret changed while we waited for the Lease, to a registration these settings can use as it is."""
    if before is None or before.version in (UNKNOWN, version) or shared is None:
        return False
    return flow.usable_as_is(settings, shared)


async def _release(kube: KubeStore) -> None:
    try:
        await kube.release()  # on its own short budget
    except BootstrapError as exc:  # it expires by itself; the next Pod waits at most leaseDurationSeconds
        logger.warning("Could not release the Lease", error=str(exc))


async def _shared_run(
    settings: Settings, kube: KubeStore, deadline: Deadline, admin: AdminFor | None, before: _Before | None = None
) -> flow.Outcome:
    for attempt in range(1, SECRET_WRITE_ATTEMPTS + 1):
        state = await _synced(settings, kube, deadline, before)
        if state is None:
            continue  # the Secret changed while we wrote it: read and reconcile again
        if isinstance(state, flow.Outcome):
            return state
        try:
            outcome = await _run_flow(settings, kube, deadline, admin)
        except BootstrapError:
            # Without a Lease (or with a single-use initial access token) another Pod may have stored its
            # registration while ours failed: use it rather than fail.
            if attempt == 1 and state.shared is None and await _filled_meanwhile(kube):
                logger.warning("Our run failed but another Pod has stored a registration; using it")
                continue
            raise
        published = await publish(settings, kube, outcome, state.data, state.version, deadline, state.held)
        if settings.dcr_k8s_rollout is not None:
            await _roll_out(settings.dcr_k8s_rollout, kube, state, published.registration)
        return published
    raise StorageError(
        f"Secret {kube.name} kept changing while we wrote it ({SECRET_WRITE_ATTEMPTS} attempts); "
        "check what else writes it, then run again."
    )


@dataclass
class _State:
    """The Secret as read (and reconciled with the Pod's file) before the flow."""

    data: dict[str, Any] | None
    version: str | None
    shared: SavedRegistration | None
    held: list[Retired]  # replaced registrations kept out of the Pod's file until the roll-out completed
    set_aside: bool = False  # a broken registration was set aside: Pods may still run on its client


async def _roll_out(deployment: str, kube: KubeStore, state: _State, current: SavedRegistration) -> None:
    before = state.shared
    first = before is None and not state.set_aside
    changed = before is not None and _rollout.credentials_digest(before) != _rollout.credentials_digest(current)
    await _rollout.roll_out(kube, deployment, current, first=first, changed=changed)


async def _read(settings: Settings, kube: KubeStore) -> tuple[dict[str, Any] | None, str | None, list[Retired], bool]:
    """The Secret's document, version and retired list, and whether a broken registration in it was set aside
    first (see _aside)."""
    for _ in range(SECRET_WRITE_ATTEMPTS):
        try:
            data, version = await kube.load()
            _aside.parse(kube, data)
            return data, version, _retired_in(data), False
        except BrokenEntry as broken:
            try:
                retired, version = await _aside.set_aside(settings, kube, broken)
            except StoreConflict:
                continue
            return None, version, retired, True
    raise StorageError(f"Secret {kube.name} kept changing while we set its broken registration aside; run again.")


async def _synced(
    settings: Settings, kube: KubeStore, deadline: Deadline, before: _Before | None
) -> _State | flow.Outcome | None:
    """Reconcile the Pod's file with the Secret (see _reconcile): the newer side wins, and the Secret gets
    the file's newer state before anything is loaded from it. None: the Secret changed meanwhile."""
    data, version, theirs, aside = await _read(settings, kube)
    shared = _aside.parse(kube, data)
    path = settings.dcr_client_file
    local = _reconcile.check_readable(path)
    grace_end = lifecycle.now() + int(settings.dcr_rotate_grace)
    plan = _reconcile.decide(local, shared, _reconcile.load_base(path), (store.load_retired(path), theirs), grace_end)
    if plan.candidate is not None:
        plan.registration = await _reconcile.settle_secret(settings, deadline, plan.registration, plan.candidate)
    held, handed = await _rollout.hold(settings, kube, plan.registration, plan.retired)
    if shared is not None and not plan.publish and _written_meanwhile(settings, before, version, shared):
        # The holder we waited for wrote it moments ago, after checking it with the server.
        await write_local(settings, kube, shared, deadline, handed)
        _reconcile.save_base(path, shared)
        logger.info("Loaded registration from Secret", client_id=shared.client_id, secret=kube.name, waited=True)
        return flow.Outcome("reloaded", shared)
    _explain(kube, plan, local)
    await write_local(settings, kube, plan.registration, deadline, handed)
    if plan.publish and plan.registration is not None:
        try:
            version = await _push(kube, plan.registration, [*handed, *held], version)
        except StoreConflict:
            return None
        data = document(plan.registration, [*handed, *held])
    if plan.registration is not None and (plan.publish or shared is not None):
        _reconcile.save_base(path, plan.registration)
    return _State(data, version, shared if not plan.publish else plan.registration, held, aside)


def _explain(kube: KubeStore, plan: _reconcile.Plan, local: SavedRegistration | None) -> None:
    if plan.orphan is not None:
        logger.warning(
            "This Pod's file holds a client the Secret does not; it joins the replaced registrations and is "
            "deleted after DCR_ROTATE_GRACE",
            client_id=plan.orphan.client_id,
            secret=kube.name,
        )
    elif plan.local_newer and plan.publish and local is not None:
        logger.warning(
            "This Pod's file is newer than the Secret (an earlier run could not write it); writing it to the "
            "Secret before anything is loaded from it",
            client_id=local.client_id,
            secret=kube.name,
        )
    elif plan.registration is not None and plan.registration is not local:
        logger.info("Loaded registration from Secret", client_id=plan.registration.client_id, secret=kube.name)


async def _push(kube: KubeStore, registration: SavedRegistration, retired: list[Retired], version: str | None) -> str:
    """Write the Pod's newer registration to the Secret before the flow; a 409 re-reads (StoreConflict)."""
    fence(kube)
    try:
        return await kube.save(document(registration, retired), version)
    except AmbiguousWrite:
        raise StoreConflict(f"Secret {kube.name}: the write may not have landed") from None


def _retired_in(data: dict[str, Any] | None) -> list[Retired]:
    """The replaced registrations the Secret keeps for their grace (see flow.retire); none if unreadable."""
    try:
        return [Retired.model_validate(item) for item in (data or {}).get(RETIRED_KEY) or []]
    except (ValueError, TypeError):
        logger.warning("The Secret's list of replaced registrations is unreadable; ignored")
        return []


async def _run_flow(settings: Settings, kube: KubeStore, deadline: Deadline, admin: AdminFor | None) -> flow.Outcome:
    """``flow.run``; if it fails after saving a client it registered (closing its session, say), delete it.

    The flow's own clean-up covers a failure before its file is written; after that, only this run
    knows the client is new and not yet in the Secret.
    """
    before = _saved_id(settings)
    try:
        return await flow.run(settings, deadline, admin)
    except (Exception, asyncio.CancelledError) as exc:
        new = _saved(settings)
        if new is not None and new.client_id != before:
            note = await withdraw_unshared(settings, kube, new)
            if isinstance(exc, asyncio.CancelledError):
                logger.warning(note, client_id=new.client_id)
            else:
                exc.add_note(note)
        raise


def _saved(settings: Settings) -> SavedRegistration | None:
    try:
        return store.load(settings.dcr_client_file)
    except StorageError:
        return None


def _saved_id(settings: Settings) -> str | None:
    saved = _saved(settings)
    return saved.client_id if saved is not None else None


async def _filled_meanwhile(kube: KubeStore) -> bool:
    try:
        data, _ = await kube.load()
    except BootstrapError:
        return False
    return data is not None
