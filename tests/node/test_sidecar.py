"""deploy/k8s/sidecar.yaml on a real node: the kubelet's startup probe orders the containers, SIGTERM deletes.

One Deployment for the module (1 replica); the tests run in file order on it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.keycloak import Admin
from tests.node.conftest import Cluster
from tests.node.workloads import Workload, eventually, fresh_namespace, fresh_realm, log_time

GRACE_SECONDS = 30  # the Pod's terminationGracePeriodSeconds (the default; the manifest keeps it)


@pytest.fixture(scope="module")
def admin(cluster: Cluster) -> Admin:
    return cluster.admin()


@pytest.fixture(scope="module")
def sidecar(cluster: Cluster, admin: Admin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workload]:
    """sidecar.yaml applied in a restricted namespace, with a token for ten registrations."""
    with fresh_namespace(cluster.kube) as namespace, fresh_realm(admin) as realm:
        folder = Path(tmp_path_factory.mktemp("sidecar"))
        workload = Workload(cluster.kube, cluster.node, cluster.keycloak, namespace, realm, folder)
        workload.create_token_secret(admin, count=10)
        workload.apply("sidecar.yaml")
        yield workload


def _client_name(client: dict[str, Any]) -> str:
    """DCR_CLIENT_NAME as configured: the tool appends " (dcr <id>)" to the client_name it registers."""
    return str(client.get("name", "")).split(" (dcr ", 1)[0]


def _client_of(workload: Workload, admin: Admin, pod: str) -> list[str]:
    """The ids of the clients named after ``pod`` (mcp-server-{hostname}, the Pod's name)."""
    return [c["clientId"] for c in workload.clients(admin) if _client_name(c) == f"mcp-server-{pod}"]


def test_the_server_starts_only_after_the_startup_probe_sees_the_file(sidecar: Workload, admin: Admin) -> None:
    """The server's first line comes after the sidecar wrote the file; it never restarted; it uses that client."""
    [pod] = sidecar.wait_running(1)
    name = pod["metadata"]["name"]
    [sidecar_status] = pod["status"]["initContainerStatuses"]
    [server_status] = pod["status"]["containerStatuses"]
    assert sidecar_status["started"] and sidecar_status["restartCount"] == 0
    assert server_status["restartCount"] == 0
    client_id = sidecar.server_client_id(pod)  # waits for the server's start-up line
    written = [log_time(line) for line in sidecar.logs(name, "dcr-bootstrap") if "Credentials written" in line]
    assert written, sidecar.explain()
    assert written[0] < log_time(sidecar.logs(name, "mcp-server")[0])
    assert _client_of(sidecar, admin, name) == [client_id]


def test_deleting_the_pod_deletes_its_client_within_the_grace_period(sidecar: Workload, admin: Admin) -> None:
    """kubectl delete pod: the sidecar's SIGTERM deletes the Pod's client before the grace period ends."""
    [pod] = sidecar.wait_running(1)
    name = pod["metadata"]["name"]
    assert len(_client_of(sidecar, admin, name)) == 1
    started = time.monotonic()
    sidecar.kubectl("delete", "pod", name, "--wait=true", "--timeout=90s")
    elapsed = time.monotonic() - started
    assert elapsed < GRACE_SECONDS, f"the Pod took {elapsed:.0f}s to stop: its sidecar was killed, not stopped"
    assert _client_of(sidecar, admin, name) == []
    [replacement] = sidecar.wait_running(1)
    new = replacement["metadata"]["name"]
    eventually(lambda: len(_client_of(sidecar, admin, new)) == 1, 60, "the replacement's own client")
    assert [_client_name(c) for c in sidecar.clients(admin)] == [f"mcp-server-{new}"]
