"""The shared run: ``flow.run`` with the workload's one registration in a Secret, under a Lease.

Uses the flow's public seams only: ``flow.run``, ``flow.withdraw_on_failure`` and
``flow.withdraw_client`` (RFC 7592 DELETE of a client this run created and could not keep).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import flow, lifecycle, log, store
from ..errors import AmbiguousWrite, BootstrapError, InvalidSecret, StorageError, StoreConflict
from ..models import Retired, SavedRegistration
from ..settings import Settings
from ..wait import Deadline
from . import _aside, _reconcile, _rollout
from ._store import RETIRED_KEY, BrokenEntry, KubeStore

# Rewrites of the Secret after 409s before giving up (each one re-reads and reconciles first).
SECRET_WRITE_ATTEMPTS = 5
UNKNOWN = "?"  # a Secret version that matches none: the Secret could not be read before the wait

logger = log.get_logger()


async def run_shared(settings: Settings) -> flow.Outcome:
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
            return await _shared_run(settings, kube, deadline)
        before = _Before()
        waited = await kube.lock.acquire(deadline, on_wait=lambda: before.read(kube))
        logger.info("Acquired the Lease", lease=f"{kube.namespace}/{kube.lease}", holder=kube.lock.identity)
        try:
            return await kube.lock.hold(_shared_run(settings, kube, deadline, before if waited else None))
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


def _fence(kube: KubeStore) -> None:
    """Before every write: stop if the Lease is no longer ours (leader election does not fence by itself)."""
    if kube.lock is not None:
        kube.lock.check_held()


async def _release(kube: KubeStore) -> None:
    try:
        await kube.release()  # on its own short budget
    except BootstrapError as exc:  # it expires by itself; the next Pod waits at most leaseDurationSeconds
        logger.warning("Could not release the Lease", error=str(exc))


async def _write_local(
    settings: Settings,
    kube: KubeStore,
    registration_: SavedRegistration | None,
    deadline: Deadline,
    retired: list[Retired] | None = None,
) -> None:
    """Put a registration (and the replaced ones still in their grace) into the Pod's files: atomic, private."""
    path, env_file = settings.dcr_client_file, settings.dcr_env_file
    async with store.locked(path, deadline.remaining):
        _fence(kube)
        store.probe_writable(path, env_file)
        if registration_ is not None:
            store.save(path, registration_, env_file, settings.file_mode)
        if retired is not None:
            store.save_retired(path, retired)


async def _shared_run(
    settings: Settings, kube: KubeStore, deadline: Deadline, before: _Before | None = None
) -> flow.Outcome:
    for attempt in range(1, SECRET_WRITE_ATTEMPTS + 1):
        state = await _synced(settings, kube, deadline, before)
        if state is None:
            continue  # the Secret changed while we wrote it: read and reconcile again
        if isinstance(state, flow.Outcome):
            return state
        try:
            outcome = await _run_flow(settings, kube, deadline)
        except BootstrapError:
            # Without a Lease (or with a single-use initial access token) another Pod may have stored its
            # registration while ours failed: use it rather than fail.
            if attempt == 1 and state.shared is None and await _filled_meanwhile(kube):
                logger.warning("Our run failed but another Pod has stored a registration; using it")
                continue
            raise
        published = await _publish(settings, kube, outcome, state.data, state.version, deadline, state.held)
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
        await _write_local(settings, kube, shared, deadline, handed)
        _reconcile.save_base(path, shared)
        logger.info("Loaded registration from Secret", client_id=shared.client_id, secret=kube.name, waited=True)
        return flow.Outcome("reloaded", shared)
    _explain(kube, plan, local)
    await _write_local(settings, kube, plan.registration, deadline, handed)
    if plan.publish and plan.registration is not None:
        try:
            version = await _push(kube, plan.registration, [*handed, *held], version)
        except StoreConflict:
            return None
        data = _document(plan.registration, [*handed, *held])
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


def _document(registration: SavedRegistration, retired: list[Retired]) -> dict[str, Any]:
    kept = _reconcile.union(retired, without=registration.client_id)
    return registration.to_file() | ({RETIRED_KEY: [r.to_file() for r in kept]} if kept else {})


async def _push(kube: KubeStore, registration: SavedRegistration, retired: list[Retired], version: str | None) -> str:
    """Write the Pod's newer registration to the Secret before the flow; a 409 re-reads (StoreConflict)."""
    _fence(kube)
    try:
        return await kube.save(_document(registration, retired), version)
    except AmbiguousWrite:
        raise StoreConflict(f"Secret {kube.name}: the write may not have landed") from None


def _retired_in(data: dict[str, Any] | None) -> list[Retired]:
    """The replaced registrations the Secret keeps for their grace (see flow.retire); none if unreadable."""
    try:
        return [Retired.model_validate(item) for item in (data or {}).get(RETIRED_KEY) or []]
    except (ValueError, TypeError):
        logger.warning("The Secret's list of replaced registrations is unreadable; ignored")
        return []


async def _run_flow(settings: Settings, kube: KubeStore, deadline: Deadline) -> flow.Outcome:
    """``flow.run``; if it fails after saving a client it registered (closing its session, say), delete it.

    The flow's own clean-up covers a failure before its file is written; after that, only this run
    knows the client is new and not yet in the Secret.
    """
    before = _saved_id(settings)
    try:
        return await flow.run(settings, deadline)
    except (Exception, asyncio.CancelledError) as exc:
        new = _saved(settings)
        if new is not None and new.client_id != before:
            note = await _withdraw_unshared(settings, kube, new)
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


async def _publish(
    settings: Settings,
    kube: KubeStore,
    outcome: flow.Outcome,
    data: dict[str, Any] | None,
    version: str | None,
    deadline: Deadline,
    held: Sequence[Retired] = (),
) -> flow.Outcome:
    """Write the run's registration to the Secret (create, or replace at ``version``); reconcile on 409.

    A write whose answer was lost (``AmbiguousWrite``) is reconciled the same way: the re-read shows
    our client (it landed), another one (theirs wins), or none (write again).
    """
    mine = outcome.registration
    # The replaced registrations held for the roll-out (``held``) go back in as they were read.
    wanted = _document(mine, [*store.load_retired(settings.dcr_client_file), *held])
    fresh = outcome.action in ("registered", "replaced")  # a client this run created
    undo = (
        flow.withdraw_on_failure(lambda: _withdraw_unshared(settings, kube, mine), mine.client_id)
        if fresh
        else contextlib.nullcontext()
    )
    async with undo:
        for _ in range(SECRET_WRITE_ATTEMPTS):
            if wanted == data:
                _reconcile.save_base(settings.dcr_client_file, mine)
                return outcome
            _fence(kube)
            try:
                await kube.save(wanted, version)
            except (StoreConflict, AmbiguousWrite) as exc:
                if isinstance(exc, AmbiguousWrite):
                    logger.warning("The Secret write may not have landed; re-reading it", reason=str(exc))
                data, version = await kube.load()
                theirs = _aside.parse(kube, data)
                if theirs is None or theirs.client_id == mine.client_id:
                    # Emptied, or the same client: ours is the latest read of it, write it over the new version.
                    continue
                return await _adopt(settings, kube, mine, theirs, fresh, deadline)
            _reconcile.save_base(settings.dcr_client_file, mine)
            logger.info("Saved registration to Secret", client_id=mine.client_id, secret=kube.name)
            return outcome
        raise StorageError(
            f"Secret {kube.name} kept changing while we wrote it ({SECRET_WRITE_ATTEMPTS} attempts); "
            "check what else writes it, then run again."
        )


async def _adopt(
    settings: Settings,
    kube: KubeStore,
    mine: SavedRegistration,
    theirs: SavedRegistration,
    fresh: bool,
    deadline: Deadline,
) -> flow.Outcome:
    """Another Pod stored a different client first: the Secret decides, and ours (if new) is deleted."""
    if fresh:
        _, note = await flow.withdraw_client(settings, mine)
        logger.warning(
            f"Another Pod stored its registration first; using it. {note}",
            client_id=theirs.client_id,
            ours=mine.client_id,
            secret=kube.name,
        )
    else:
        logger.warning(
            "The Secret now holds another client; using it",
            client_id=theirs.client_id,
            ours=mine.client_id,
            secret=kube.name,
        )
    await _write_local(settings, kube, theirs, deadline)
    _reconcile.save_base(settings.dcr_client_file, theirs)
    return flow.Outcome("reloaded", theirs)


async def _withdraw_unshared(settings: Settings, kube: KubeStore, new: SavedRegistration) -> str:
    """The Secret could not take a client this run registered: delete it (and its file), unless it is stored.

    A write whose answer was lost (or a failure anywhere after sending it) may have landed: the
    Secret is re-read first, so no Secret ever names a deleted client.
    """
    stored = await _secret_holds(kube, new)
    if stored is None:
        return (
            f"Client {new.client_id} was kept: a write of Secret {kube.name} was sent and the Secret could "
            f"not be read back, so it may hold it. {settings.dcr_client_file} keeps it for the next run."
        )
    if stored:
        return f"Secret {kube.name} holds client {new.client_id} after all (the write landed); it was kept."
    deleted, note = await flow.withdraw_client(settings, new)
    if deleted:
        try:
            store.remove(settings.dcr_client_file, settings.dcr_env_file)
        except StorageError:
            return note + f" Remove {settings.dcr_client_file} by hand."
    else:
        # Kept: with the Secret still empty, the next run reloads this file and stores it, adopting the client.
        note += f" {settings.dcr_client_file} keeps it for the next run."
    return note


async def _secret_holds(kube: KubeStore, new: SavedRegistration) -> bool | None:
    """Whether the Secret names ``new`` (None: a write was sent, and the Secret cannot be read to tell)."""
    if not kube.secret_written:
        return False
    try:
        stored = _aside.parse(kube, (await asyncio.shield(kube.load(budget=flow.CLEANUP_TIMEOUT)))[0])
    except InvalidSecret:
        return False  # what it holds is unusable, so not the client we wrote
    except BootstrapError:
        return None
    return stored is not None and stored.client_id == new.client_id
