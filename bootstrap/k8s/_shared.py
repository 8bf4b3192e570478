"""The shared run: ``flow.run`` with the workload's one registration in a Secret, under a Lease.

Uses the flow's public seams only: ``flow.run``, ``flow.withdraw_on_failure`` and
``flow.withdraw_client`` (RFC 7592 DELETE of a client this run created and could not keep).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any

from .. import flow, log, store
from ..errors import AmbiguousWrite, BootstrapError, InvalidSecret, StorageError, StoreConflict
from ..models import Retired, SavedRegistration
from ..settings import Settings
from ..wait import Deadline
from ._store import DATA_KEY, RETIRED_KEY, KubeStore

# Rewrites of the Secret after 409s before giving up (each one re-reads and reconciles first).
SECRET_WRITE_ATTEMPTS = 5
UNKNOWN = "?"  # a Secret version that matches none: the Secret could not be read before the wait

logger = log.get_logger()


async def run_shared(settings: Settings) -> flow.Outcome:
    """``flow.run`` with the workload's one registration kept in a Secret (``DCR_K8S_SECRET``).

    Under the Lease (if configured, taken within DCR_WAIT_TIMEOUT): read the Secret, put its
    registration into the credentials file so that ``flow.run`` reloads and checks it instead of
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


def _parse(kube: KubeStore, data: dict[str, Any] | None) -> SavedRegistration | None:
    if data is None:
        return None
    try:
        shared = SavedRegistration.model_validate(data)
    except ValueError:
        raise InvalidSecret(
            f"Secret {kube.name} key {DATA_KEY} is not a valid registration; fix or remove that key "
            "(a new client is then registered) and run again."
        ) from None
    return shared  # its secrets are registered for masking by the model


async def _write_local(
    settings: Settings,
    kube: KubeStore,
    registration_: SavedRegistration,
    deadline: Deadline,
    retired: list[Retired] | None = None,
) -> None:
    """Put a registration (and the replaced ones still in their grace) into the Pod's files: atomic, private."""
    path, env_file = settings.dcr_client_file, settings.dcr_env_file
    async with store.locked(path, deadline.remaining):
        _fence(kube)
        store.probe_writable(path, env_file)
        store.save(path, registration_, env_file, settings.file_mode)
        if retired is not None:
            store.save_retired(path, retired)


async def _shared_run(
    settings: Settings, kube: KubeStore, deadline: Deadline, before: _Before | None = None
) -> flow.Outcome:
    for attempt in (1, 2):
        data, version = await kube.load()
        shared = _parse(kube, data)
        if shared is not None and _written_meanwhile(settings, before, version, shared):
            # The holder we waited for wrote it moments ago, after checking it with the server.
            await _write_local(settings, kube, shared, deadline, _retired_in(data))
            logger.info("Loaded registration from Secret", client_id=shared.client_id, secret=kube.name, waited=True)
            return flow.Outcome("reloaded", shared)
        if shared is not None:
            # The Secret is the workload's truth: its registration replaces whatever this Pod's file holds.
            await _write_local(settings, kube, shared, deadline, _retired_in(data))
            logger.info("Loaded registration from Secret", client_id=shared.client_id, secret=kube.name)
        try:
            outcome = await _run_flow(settings, kube, deadline)
        except BootstrapError:
            # Without a Lease (or with a single-use initial access token) another Pod may have stored its
            # registration while ours failed: use it rather than fail.
            if attempt == 1 and shared is None and await _filled_meanwhile(kube):
                logger.warning("Our run failed but another Pod has stored a registration; using it")
                continue
            raise
        published = await _publish(settings, kube, outcome, data, version, deadline)
        await _roll_out(settings, kube, shared, published.registration)
        return published
    raise AssertionError("unreachable")


def _retired_in(data: dict[str, Any] | None) -> list[Retired]:
    """The replaced registrations the Secret keeps for their grace (see flow.retire); none if unreadable."""
    try:
        return [Retired.model_validate(item) for item in (data or {}).get(RETIRED_KEY) or []]
    except (ValueError, TypeError):
        logger.warning("The Secret's list of replaced registrations is unreadable; ignored")
        return []


def credentials_digest(registration: SavedRegistration) -> str:
    """A short hash of what the app uses (client id and secret): it changes with them and reveals neither."""
    secret = registration.client_secret.get_secret_value() if registration.client_secret else ""
    return hashlib.sha256(f"{registration.client_id}\0{secret}".encode()).hexdigest()[:16]


async def _roll_out(
    settings: Settings, kube: KubeStore, before: SavedRegistration | None, after: SavedRegistration
) -> None:
    """DCR_K8S_ROLLOUT: a Deployment whose Pods read the credentials at start is rolled when they change."""
    deployment = settings.dcr_k8s_rollout
    if deployment is None or before is None or credentials_digest(before) == credentials_digest(after):
        return  # the first registration: the Pods starting now read it anyway
    await kube.roll_out(deployment, credentials_digest(after))
    logger.info("Rolled out the Deployment for the new credentials", deployment=f"{kube.namespace}/{deployment}")


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
) -> flow.Outcome:
    """Write the run's registration to the Secret (create, or replace at ``version``); reconcile on 409.

    A write whose answer was lost (``AmbiguousWrite``) is reconciled the same way: the re-read shows
    our client (it landed), another one (theirs wins), or none (write again).
    """
    mine = outcome.registration
    retired = store.load_retired(settings.dcr_client_file)
    wanted = mine.to_file() | ({RETIRED_KEY: [r.to_file() for r in retired]} if retired else {})
    fresh = outcome.action in ("registered", "replaced")  # a client this run created
    undo = (
        flow.withdraw_on_failure(lambda: _withdraw_unshared(settings, kube, mine), mine.client_id)
        if fresh
        else contextlib.nullcontext()
    )
    async with undo:
        for _ in range(SECRET_WRITE_ATTEMPTS):
            if wanted == data:
                return outcome
            _fence(kube)
            try:
                await kube.save(wanted, version)
            except (StoreConflict, AmbiguousWrite) as exc:
                if isinstance(exc, AmbiguousWrite):
                    logger.warning("The Secret write may not have landed; re-reading it", reason=str(exc))
                data, version = await kube.load()
                theirs = _parse(kube, data)
                if theirs is None or theirs.client_id == mine.client_id:
                    # Emptied, or the same client: ours is the latest read of it, write it over the new version.
                    continue
                return await _adopt(settings, kube, mine, theirs, fresh, deadline)
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
        stored = _parse(kube, (await asyncio.shield(kube.load(budget=flow.CLEANUP_TIMEOUT)))[0])
    except InvalidSecret:
        return False  # what it holds is unusable, so not the client we wrote
    except BootstrapError:
        return None
    return stored is not None and stored.client_id == new.client_id
