"""The Pod's file against the Secret: newer state is never replaced by older (a three-way merge).

Beside the credentials file the Pod keeps ``.NAME.synced`` (0600 and atomic, like the side files of
``store``): the registration as it last agreed with the Secret, written whenever the file was loaded
from the Secret or the Secret was written from the file. Against that base, as a merge does:

* the Secret unchanged since, the file changed: an earlier run of this Pod changed the client on the
  server (a rotated registration access token, a renewal, a new client) and could not write the
  Secret (403, an outage, a lost Lease, the deadline). The file is newer: it is written to the Secret
  before anything is loaded from it;
* the file unchanged, the Secret changed: another Pod's run; the Secret is loaded;
* both changed, one client (or no base): merged per group of fields (the secret with its times; the
  registration token; each other field). A group changed on both sides takes the Secret's: under the
  Lease its run came after ours. A secret is only taken after the server said which one works;
* two clients: the Secret's stays; the file's (a client this Pod registered and could not publish)
  joins the retired list, unless listed already, and is deleted after its grace: never orphaned.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import flow, log, quick, store, tokens
from ..errors import BootstrapError, CredentialsRejected, StorageError
from ..models import Retired, SavedRegistration
from ..settings import Settings
from ..wait import Deadline

SECRET_GROUP = ("client_secret", "client_secret_expires_at", "client_secret_issued_at")
_GROUPS = (SECRET_GROUP, ("registration_access_token",))

logger = log.get_logger()


def base_path(path: Path) -> Path:
    return quick.beside(path, "synced")


def load_base(path: Path) -> dict[str, Any] | None:
    """The registration the file last agreed with the Secret on; None if never (or unreadable: no base)."""
    raw = store.read(base_path(path))
    if raw is None:
        return None
    try:
        return SavedRegistration.model_validate(json.loads(raw)).to_file()
    except ValueError:
        logger.warning("Unreadable record of the last sync with the Secret ignored", path=str(base_path(path)))
        return None


def save_base(path: Path, registration: SavedRegistration | None) -> None:
    """Record that the file and the Secret agree on ``registration`` (None: they hold none)."""
    if registration is None:
        store.remove(base_path(path))
    else:
        store.write_private(base_path(path), store.file_bytes(registration))


@dataclass
class Plan:
    """What the Pod's file holds before the flow, and whether the Secret must get it first."""

    registration: SavedRegistration | None
    retired: list[Retired]
    publish: bool = False  # the Secret lacks something of it: written before anything is loaded
    orphan: SavedRegistration | None = None  # the file's own client, retired now
    candidate: SavedRegistration | None = None  # the file's secret: taken if the server rejects the Secret's
    local_newer: bool = False
    notes: list[str] = field(default_factory=list)


def _ids(retired: Iterable[Retired]) -> set[str]:
    return {r.registration.client_id for r in retired}


def union(first: Sequence[Retired], *more: Sequence[Retired], without: str | None = None) -> list[Retired]:
    """Retired entries of every list, each client once (the first list's entry wins), never ``without``."""
    out: dict[str, Retired] = {}
    for entry in itertools.chain(first, *more):
        out.setdefault(entry.registration.client_id, entry)
    return [entry for client_id, entry in out.items() if client_id != without]


def _pick(document: dict[str, Any] | None, group: tuple[str, ...]) -> tuple[Any, ...] | None:
    return None if document is None else tuple(document.get(key) for key in group)


def _groups(keys: set[str]) -> list[tuple[str, ...]]:
    grouped = set(itertools.chain(*_GROUPS))
    return [*_GROUPS, *((key,) for key in sorted(keys - grouped))]


def merge(local: dict[str, Any], shared: dict[str, Any], base: dict[str, Any] | None) -> tuple[dict[str, Any], bool]:
    """One client's two documents merged against ``base``; True if both changed the secret differently."""
    merged, secret_conflict = dict(shared), False
    for group in _groups(set(local) | set(shared)):
        mine, theirs, was = _pick(local, group), _pick(shared, group), _pick(base, group)
        if mine in (theirs, was):
            continue  # the same, or only the Secret changed it
        if theirs == was:
            merged.update(zip(group, mine or (), strict=True))  # only the file changed it: newer
        elif group == SECRET_GROUP:
            secret_conflict = True
    return merged, secret_conflict


def decide(
    local: SavedRegistration | None,
    shared: SavedRegistration | None,
    base: dict[str, Any] | None,
    retired: tuple[list[Retired], list[Retired]],
    grace_end: int,
) -> Plan:
    """The plan for the Pod's file (``local``) and the Secret (``shared``); ``retired``: (file's, Secret's)."""
    mine, theirs = retired
    if shared is None:  # an empty Secret: the file's client (checked by the flow) is published after it
        return Plan(local, union(mine, theirs, without=local.client_id if local else None))
    s_doc = shared.to_file()
    if local is None:
        return Plan(shared, union(theirs, without=shared.client_id))
    l_doc = local.to_file()
    if l_doc in (s_doc, base):  # in step, or only the Secret changed: load it
        return _adopting(Plan(shared, union(theirs, without=shared.client_id)), local, grace_end)
    if s_doc == base:  # only the file changed: it is newer, the Secret gets it first
        return Plan(local, union(mine, theirs, without=local.client_id), publish=True, local_newer=True)
    if local.client_id == shared.client_id:
        return _merged(local, shared, base, union(mine, theirs, without=shared.client_id))
    return _adopting(Plan(shared, union(theirs, mine, without=shared.client_id)), local, grace_end)


def _merged(
    local: SavedRegistration, shared: SavedRegistration, base: dict[str, Any] | None, retired: list[Retired]
) -> Plan:
    same_client = base is not None and base.get("client_id") == shared.client_id
    document, conflict = merge(local.to_file(), shared.to_file(), base if same_client else None)
    merged = SavedRegistration.model_validate(document)
    plan = Plan(merged, retired, publish=document != shared.to_file(), local_newer=True)
    if conflict:
        plan.candidate = local
    return plan


def _adopting(plan: Plan, local: SavedRegistration, grace_end: int) -> Plan:
    """The Secret's client is used: the file's other one is retired (after its grace), unless listed."""
    assert plan.registration is not None
    if local.client_id == plan.registration.client_id or local.mode != "dcr":
        return plan
    if local.client_id not in _ids(plan.retired):
        plan.retired.append(Retired(registration=local, retire_at=grace_end))
        plan.orphan, plan.publish = local, True
    return plan


def secret_group(source: SavedRegistration, into: SavedRegistration) -> SavedRegistration:
    """``into`` with the secret (and its times) of ``source``."""
    return into.model_copy(update={key: getattr(source, key) for key in SECRET_GROUP})


def check_readable(path: Path) -> SavedRegistration | None:
    """The Pod's file, or None when it is unreadable (the Secret then decides, as before)."""
    try:
        return store.load(path)
    except StorageError as exc:
        logger.warning("The Pod's credentials file is unreadable; the Secret decides", error=exc.line())
        return None


async def settle_secret(
    settings: Settings, deadline: Deadline, merged: SavedRegistration | None, local: SavedRegistration
) -> SavedRegistration | None:
    """Both sides changed the secret: the Secret's unless the server rejects it and accepts the file's."""
    assert merged is not None
    kept = store.backup(settings.dcr_client_file)  # neither secret is dropped: the file's stays beside it
    if await _accepted(settings, deadline, merged) is False and await _accepted(settings, deadline, local):
        merged = secret_group(local, merged)
    logger.warning(
        "This Pod's file and the Secret hold different secrets for the client; kept the one the server accepts",
        client_id=merged.client_id,
        backup=str(kept),
    )
    return merged


async def _accepted(settings: Settings, deadline: Deadline, creds: SavedRegistration) -> bool | None:
    """A client_credentials token request with these credentials (None: cannot be asked)."""
    if creds.client_secret is None or not creds.token_endpoint or "client_credentials" not in settings.dcr_grant_types:
        return None
    try:
        # Only to the configured server: the Secret's (or the file's) own issuer is not trusted with a secret.
        async with flow.transport_for(settings, deadline) as transport:
            await tokens.client_credentials(
                transport,
                creds.token_endpoint,
                creds.client_id,
                creds.client_secret.get_secret_value(),
                auth_method=creds.token_endpoint_auth_method or settings.dcr_token_endpoint_auth_method,
                scope=settings.dcr_scope,
            )
    except CredentialsRejected as exc:
        return not exc.bad_credentials
    except BootstrapError:
        return None
    return True
