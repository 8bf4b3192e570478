"""deploy/k8s/shared-secret.yaml on a real node: three real Pods, one client on Keycloak, whatever happens.

One Deployment for the module, applied as the manifest says (a single-use initial access token, so a
second registration would fail); the tests run in file order on it: start, restart, scale.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.keycloak import Admin
from tests.node.conftest import FACTS, Cluster
from tests.node.workloads import RESTRICTED, Workload, eventually


@pytest.fixture(scope="module")
def shared(cluster: Cluster, admin: Admin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workload]:
    """shared-secret.yaml applied with 3 replicas in a restricted namespace; its Pods Running."""
    with cluster.workload(admin, Path(tmp_path_factory.mktemp("shared")), registrations=1) as workload:
        workload.apply("shared-secret.yaml")
        workload.wait_running(3)
        node = cluster.node
        FACTS.append(
            f"RSS with 3 Pods: node daemons and shims {node.daemons_rss_kib() / 1024:.0f} MiB, "
            f"the Pods {node.pods_rss_kib() / 1024:.0f} MiB"
        )
        yield workload


def _one_client(workload: Workload, admin: Admin) -> str:
    """The realm holds exactly one registered client, the one in the Secret; its id."""
    clients = [c["clientId"] for c in workload.clients(admin)]
    assert len(clients) == 1, f"clients on Keycloak: {clients}"
    assert workload.shared_client_id() == clients[0]
    return str(clients[0])


def test_three_pods_run_and_every_server_answers_with_the_one_client(shared: Workload, admin: Admin) -> None:
    """3 replicas reach Running; the unmodified server in each serves MCP with the one shared client."""
    pods = shared.wait_running(3)
    client_id = _one_client(shared, admin)
    assert [shared.serves(admin, pod) for pod in pods] == [client_id] * 3


def test_rollout_restart_keeps_the_one_client(shared: Workload, admin: Admin) -> None:
    """kubectl rollout restart: three new Pods reuse the client in the Secret; still one on Keycloak."""
    client_id = _one_client(shared, admin)
    before = {p["metadata"]["name"] for p in shared.pods()}
    shared.kubectl("rollout", "restart", "deployment/mcp-server")
    shared.kubectl("rollout", "status", "deployment/mcp-server", "--timeout=300s")

    def renewed() -> list[dict[str, Any]] | None:
        found = shared.running(3)
        return found if found and not before & {p["metadata"]["name"] for p in found} else None

    pods = eventually(renewed, 120, "three new Pods", shared.explain)
    assert _one_client(shared, admin) == client_id
    assert [shared.serves(admin, pod) for pod in pods] == [client_id] * 3


def test_scaling_to_five_and_back_keeps_the_one_client(shared: Workload, admin: Admin) -> None:
    """Scaled to 5 (two new Pods reuse the client) and back to 3: still exactly one client."""
    client_id = _one_client(shared, admin)
    shared.kubectl("scale", "deployment/mcp-server", "--replicas=5")
    pods = shared.wait_running(5)
    assert _one_client(shared, admin) == client_id
    assert {shared.serves(admin, pod) for pod in pods} == {client_id}
    shared.kubectl("scale", "deployment/mcp-server", "--replicas=3")
    shared.wait_running(3)
    assert _one_client(shared, admin) == client_id


def test_pods_run_as_the_manifest_says_in_a_restricted_namespace(shared: Workload, cluster: Cluster) -> None:
    """Namespace enforces 'restricted'; every app process: uid/gid 10001, no capabilities, no_new_privs, seccomp."""
    labels = cluster.kube.request("GET", f"/api/v1/namespaces/{shared.namespace}")["metadata"]["labels"]
    assert {k: labels.get(k) for k in RESTRICTED} == RESTRICTED
    for pod in shared.wait_running(3):
        processes = cluster.node.pod_processes(pod["metadata"]["uid"])
        assert processes, f"no process found for Pod {pod['metadata']['name']}"
        for process in processes:
            assert (process.uid, process.gid, process.capabilities) == (10001, 10001, 0), process
            assert (process.no_new_privs, process.seccomp) == (True, 2), process
