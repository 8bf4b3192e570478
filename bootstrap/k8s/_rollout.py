"""DCR_K8S_ROLLOUT, level-triggered as Reloader does it, and the roll-out that a retirement waits for.

Every run compares the Deployment's credentials annotation with the digest of the credentials the
Secret holds and patches the pod template when they differ, so a PATCH that failed is made by the next
run. A replaced client is deleted only once the Deployment carries the current digest and its
roll-out has completed as ``kubectl rollout status`` judges it: never while old replicas still run on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from .. import log
from ..errors import StorageError
from ..models import Retired, SavedRegistration
from ..settings import Settings
from ._store import ROLLOUT_ANNOTATION, KubeStore
from ._values import dict_or_empty, int_or_none, text_or_none

logger = log.get_logger()


def credentials_digest(registration: SavedRegistration) -> str:
    """A short hash of what the app uses (client id and secret): it changes with them and reveals neither."""
    secret = registration.client_secret.get_secret_value() if registration.client_secret else ""
    return hashlib.sha256(f"{registration.client_id}\0{secret}".encode()).hexdigest()[:16]


def _annotations(obj: dict[str, Any], *path: str) -> dict[str, Any]:
    for key in path:
        obj = dict_or_empty(obj.get(key))
    return dict_or_empty(obj.get("annotations"))


def carried(deployment: dict[str, Any]) -> str | None:
    """The credentials the Deployment's Pods started with: the pod template's annotation (our roll-out), else
    the Deployment's own (noted at the first registration, which they read as they started)."""
    template = text_or_none(_annotations(deployment, "spec", "template", "metadata").get(ROLLOUT_ANNOTATION))
    return template or text_or_none(_annotations(deployment, "metadata").get(ROLLOUT_ANNOTATION))


def rolled_out(deployment: dict[str, Any], digest: str) -> bool:
    """The Deployment carries ``digest`` and its roll-out completed (``kubectl rollout status``'s checks:
    the controller saw this generation, every replica is updated and available, no old one is left)."""
    if carried(deployment) != digest:
        return False
    metadata, spec = dict_or_empty(deployment.get("metadata")), dict_or_empty(deployment.get("spec"))
    status = dict_or_empty(deployment.get("status"))
    wanted = int_or_none(spec.get("replicas"))
    updated = int_or_none(status.get("updatedReplicas")) or 0
    return (
        (int_or_none(status.get("observedGeneration")) or 0) >= (int_or_none(metadata.get("generation")) or 0)
        and updated >= (1 if wanted is None else wanted)
        and (int_or_none(status.get("replicas")) or 0) <= updated
        and (int_or_none(status.get("availableReplicas")) or 0) >= updated
    )


async def completed(kube: KubeStore, deployment: str, current: SavedRegistration) -> bool:
    """Whether the Deployment has rolled out ``current``; False (and a warning) when it cannot be read."""
    try:
        return rolled_out(await kube.deployment(deployment), credentials_digest(current))
    except StorageError as exc:
        logger.warning(
            "Cannot read the Deployment to see its roll-out; replaced registrations are kept until it can be read",
            deployment=f"{kube.namespace}/{deployment}",
            error=exc.line(),
        )
        return False


async def _carried_now(kube: KubeStore, deployment: str, changed: bool) -> tuple[bool, str | None]:
    """(readable, the digest its Pods carry); unreadable (no RBAC 'get'), a change this run made still rolls."""
    try:
        return True, carried(await kube.deployment(deployment))
    except StorageError as exc:
        logger.warning(
            "Cannot read the Deployment to compare its credentials annotation"
            + ("; patching it for the credentials this run changed" if changed else ""),
            deployment=f"{kube.namespace}/{deployment}",
            error=exc.line(),
        )
        return False, None


# Told of each roll-out PATCH's result ("success" or "failure"): the watch listener counts them (metrics).
observers: list[Callable[[str], None]] = []


def _told(result: str) -> None:
    for observer in observers:
        observer(result)


async def roll_out(kube: KubeStore, deployment: str, current: SavedRegistration, *, first: bool, changed: bool) -> None:
    """Patch the pod template when its credentials annotation differs from ``current``'s digest.

    ``first``: the Secret held no registration when this run began; Pods starting now read this one, so
    it is only noted on the Deployment (no roll-out). ``changed``: this run changed the credentials.
    A failure is logged: the next run compares and patches again.
    """
    digest, where = credentials_digest(current), f"{kube.namespace}/{deployment}"
    readable, now = await _carried_now(kube, deployment, changed)
    if now == digest or not (readable or changed):
        return
    try:
        if now is None and first:
            await kube.mark(deployment, digest)
            return
        await kube.roll_out(deployment, digest)
    except StorageError as exc:
        _told("failure")
        logger.warning(
            "Could not roll out the Deployment for the current credentials; the next run tries again",
            deployment=where,
            error=exc.line(),
        )
        return
    _told("success")
    logger.info("Rolled out the Deployment for the new credentials", deployment=where)


async def hold(
    settings: Settings, kube: KubeStore, current: SavedRegistration | None, retired: list[Retired]
) -> tuple[list[Retired], list[Retired]]:
    """(held, handed): with DCR_K8S_ROLLOUT, replaced registrations stay out of the Pod's file (so the flow
    cannot delete them) until the Deployment has rolled out the current credentials."""
    deployment = settings.dcr_k8s_rollout
    if deployment is None or current is None or not retired:
        return [], retired
    if await completed(kube, deployment, current):
        return [], retired
    logger.info(
        "Replaced registrations are kept until the Deployment has rolled out the current credentials",
        deployment=f"{kube.namespace}/{deployment}",
        clients=[r.registration.client_id for r in retired],
    )
    return retired, []
