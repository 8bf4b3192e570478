"""A refused registration on a real node shows where operators look: the termination message and an Event.

deploy/k8s/initcontainer.yaml as shipped, with an initial access token Keycloak refuses: the init
container fails, and its last log line is both the container's termination message (what
``kubectl describe pod`` shows as Message) and a Warning Event on the Pod, read with kubectl.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.node.conftest import Cluster
from tests.node.workloads import Workload, eventually

BAD_TOKEN = "not-an-initial-access-token"


def _terminated_message(pod: dict[str, Any]) -> str | None:
    """The init container's termination message, from its current or its last state."""
    for status in pod["status"].get("initContainerStatuses", []):
        for state in (status.get("state", {}), status.get("lastState", {})):
            if message := state.get("terminated", {}).get("message"):
                return str(message)
    return None


def _failed_events(workload: Workload, pod: str) -> list[dict[str, Any]] | None:
    out = workload.kubectl("get", "events", f"--field-selector=involvedObject.name={pod}", "-o", "json")
    found = [
        e
        for e in json.loads(out)["items"]
        if e.get("reason") == "Failed" and e.get("source", {}).get("component") == "dcr-bootstrap"
    ]
    return found or None


def _error_lines(workload: Workload, pod: str) -> list[str]:
    """The error lines of the init container's current and previous instance."""
    logs = [workload.kubectl("logs", pod, "-c", "dcr-bootstrap", *previous, check=False) for previous in ([], ["-p"])]
    lines = [json.loads(line) for text in logs for line in text.splitlines() if line.startswith("{")]
    return [str(line["event"]) for line in lines if line.get("level") == "error"]


def test_a_refused_registration_shows_its_last_line_in_the_termination_message_and_an_event(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A bad initial access token: the Pod's termination message and a Warning Event both carry the last line."""
    admin = cluster.admin()
    with cluster.workload(admin, Path(tmp_path_factory.mktemp("failures")), registrations=1) as workload:
        workload.kubectl("delete", "secret", "dcr-initial-access-token")
        workload.kubectl("create", "secret", "generic", "dcr-initial-access-token", f"--from-literal=token={BAD_TOKEN}")
        workload.apply("initcontainer.yaml")

        def failed() -> tuple[str, str] | None:
            pods = workload.all_pods()
            message = _terminated_message(pods[0]) if pods else None
            return (pods[0]["metadata"]["name"], message) if message else None

        pod, message = eventually(failed, 240, "a termination message of the init container", workload.explain)
        # The container restarts (CrashLoopBackOff): its last line is in the current or the previous log.
        eventually(lambda: message in _error_lines(workload, pod), 60, "the message as a log line", workload.explain)
        events = eventually(lambda: _failed_events(workload, pod), 60, "a Failed Event", workload.explain)
        assert {(e["type"], e["message"]) for e in events} == {("Warning", message)}
        assert workload.clients(admin) == [] and BAD_TOKEN not in message
