"""Events on the Pod and the termination message, against the real kube-apiserver and the real Keycloak.

Each "Pod" is a process holding a service-account token of shared-secret.yaml's ServiceAccount, so the
Event is created under the manifest's Role ('create' on events) exactly as in a cluster.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.kube.pods import Cluster, Pod, last_events, run_at_once


def _pod(cluster: Cluster, **extra: str) -> Pod:
    pod = cluster.pod(lease=False, **extra)
    pod.env.update(
        {
            "DCR_K8S_POD_NAME": pod.name,
            "DCR_K8S_POD_NAMESPACE": cluster.namespace,
            "DCR_TERMINATION_LOG": str(Path(pod.env["HOME"]) / "termination-log"),
        }
    )
    return pod


def _events_of(cluster: Cluster, pod: str) -> list[dict[str, Any]]:
    """The Pod's Events as kubectl lists them (by the field selector operators use)."""
    out = cluster.kube.kubectl(
        f"--namespace={cluster.namespace}",
        "get",
        "events",
        f"--field-selector=involvedObject.name={pod}",
        "-o",
        "json",
    )
    return list(json.loads(out)["items"])


def test_a_run_records_a_registered_event_on_its_pod(cluster: Cluster) -> None:
    """A first run: one Normal Event 'Registered' on the Pod, by dcr-bootstrap, naming the client."""
    pod = _pod(cluster)
    [result] = run_at_once([pod], "run")
    assert result.code == 0, last_events([result])
    [event] = _events_of(cluster, pod.name)
    assert (event["reason"], event["type"], event["reportingComponent"]) == ("Registered", "Normal", "dcr-bootstrap")
    assert event["involvedObject"]["kind"] == "Pod" and event["involvedObject"]["namespace"] == cluster.namespace
    assert pod.registration()["client_id"] in event["message"]
    assert not Path(pod.env["DCR_TERMINATION_LOG"]).exists()


def test_a_refused_registration_records_a_warning_event_and_the_termination_message(cluster: Cluster) -> None:
    """A bad initial access token: its last line is the termination message and a Warning Event 'Failed'."""
    pod = _pod(cluster, DCR_INITIAL_ACCESS_TOKEN="not-an-initial-access-token")
    [result] = run_at_once([pod], "run")
    assert result.code != 0
    last = str(result.last["event"])
    assert Path(pod.env["DCR_TERMINATION_LOG"]).read_text() == last
    [event] = _events_of(cluster, pod.name)
    assert (event["reason"], event["type"], event["message"]) == ("Failed", "Warning", last)
    result.assert_clean("not-an-initial-access-token")
