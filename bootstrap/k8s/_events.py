"""Kubernetes Events on the Pod (core/v1), one per run's outcome, where ``kubectl describe pod`` shows them.

Best effort by design: an Event is news for the operator, never part of the run. Every failure to write
one (no RBAC, no API server, a refusal) is logged as a warning, once per process, and swallowed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .. import log
from ..errors import BootstrapError
from ..wait import Deadline, RetryPolicy
from ._client import KubeClient
from ._config import KubeApi, check_name

logger = log.get_logger()
COMPONENT = "dcr-bootstrap"
# The API server refuses a longer message of an events.k8s.io Event; core/v1 ones are kept as short.
MESSAGE_LIMIT = 1024
# An Event is not worth holding up a run (or a watch round) for: one short attempt budget.
EVENT_BUDGET = 5.0
_warned: list[bool] = []  # a refused Event is said once per process, not every round


def capped(text: str, limit: int) -> str:
    """``text`` within ``limit`` UTF-8 bytes, cut on a character boundary."""
    raw = text.encode()
    return text if len(raw) <= limit else raw[: limit - 3].decode(errors="ignore") + "..."


def event_body(pod: str, namespace: str, reason: str, message: str, *, warning: bool) -> dict[str, Any]:
    """A core/v1 Event about the Pod, named as kubelet names its own (``<pod>.<random>``)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{pod}.", "namespace": namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod, "namespace": namespace},
        "reason": reason,
        "message": capped(message, MESSAGE_LIMIT),
        "type": "Warning" if warning else "Normal",
        "count": 1,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": pod,
    }


async def record_event(
    pod: str,
    namespace: str,
    reason: str,
    message: str,
    *,
    warning: bool = False,
    allow_http: bool = False,
    context: str | None = None,
    api: KubeApi | None = None,
) -> bool:
    """Post one Event on the Pod; False (and one warning per process) when it could not be written."""
    try:
        api = api or KubeApi.from_environment(context=context).check(allow_http=allow_http)
        body = event_body(check_name("Pod", pod), namespace, reason, message, warning=warning)
        policy = RetryPolicy(Deadline(EVENT_BUDGET))
        async with KubeClient(api, namespace, policy=policy, attempt_timeout=EVENT_BUDGET) as client:
            await client.call("POST", "event", pod, "create", body)
    except BootstrapError as exc:
        if not _warned:
            _warned.append(True)
            logger.warning(
                f"Could not record a Kubernetes Event on Pod {namespace}/{pod}; the run goes on without "
                f"Events. {exc.line()} (RBAC: 'create' on events in namespace {namespace}, docs/kubernetes.md)"
            )
        return False
    return True
