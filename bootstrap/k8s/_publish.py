"""Publishing a run's registration to the Secret, and the Pod's own copy of it.

``publish`` writes what the flow produced with the ``resourceVersion`` it read, reconciling on a 409 or a
write whose answer was lost; a client this run created and could not store is withdrawn
(``withdraw_unshared``), unless a re-read shows the Secret holds it. Every write is fenced by the Lease.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from .. import flow, log, store
from ..errors import AmbiguousWrite, BootstrapError, InvalidSecret, StorageError, StoreConflict
from ..models import Retired, SavedRegistration
from ..settings import Settings
from ..wait import Deadline
from . import _aside, _reconcile
from ._store import RETIRED_KEY, KubeStore

# Rewrites of the Secret after 409s before giving up (each one re-reads and reconciles first).
SECRET_WRITE_ATTEMPTS = 5

logger = log.get_logger()


def fence(kube: KubeStore) -> None:
    """Before every write: stop if the Lease is no longer ours (leader election does not fence by itself)."""
    if kube.lock is not None:
        kube.lock.check_held()


async def write_local(
    settings: Settings,
    kube: KubeStore,
    registration_: SavedRegistration | None,
    deadline: Deadline,
    retired: list[Retired] | None = None,
) -> None:
    """Put a registration (and the replaced ones still in their grace) into the Pod's files: atomic, private."""
    path, env_file = settings.dcr_client_file, settings.dcr_env_file
    async with store.locked(path, deadline.remaining):
        fence(kube)
        store.probe_writable(path, env_file)
        if registration_ is not None:
            store.save(path, registration_, env_file, settings.file_mode, settings.env_names)
        if retired is not None:
            store.save_retired(path, retired)


def document(registration: SavedRegistration, retired: list[Retired]) -> dict[str, Any]:
    kept = _reconcile.union(retired, without=registration.client_id)
    return registration.to_file() | ({RETIRED_KEY: [r.to_file() for r in kept]} if kept else {})


async def publish(
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
    wanted = document(mine, [*store.load_retired(settings.dcr_client_file), *held])
    fresh = outcome.action in ("registered", "replaced")  # a client this run created
    undo = (
        flow.withdraw_on_failure(lambda: withdraw_unshared(settings, kube, mine), mine.client_id)
        if fresh
        else contextlib.nullcontext()
    )
    async with undo:
        for _ in range(SECRET_WRITE_ATTEMPTS):
            if wanted == data:
                _reconcile.save_base(settings.dcr_client_file, mine)
                return outcome
            fence(kube)
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
    await write_local(settings, kube, theirs, deadline)
    _reconcile.save_base(settings.dcr_client_file, theirs)
    return flow.Outcome("reloaded", theirs)


async def withdraw_unshared(settings: Settings, kube: KubeStore, new: SavedRegistration) -> str:
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
