"""deploy/k8s/initcontainer.yaml on a real node: the init container registers, then the server starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.node.conftest import Cluster
from tests.node.workloads import Workload, fresh_namespace, fresh_realm


def test_the_init_container_registers_and_the_server_answers_with_its_client(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """One Pod (a single-use token): Running, one client on Keycloak, and the server serves MCP with it."""
    admin = cluster.admin()
    with fresh_namespace(cluster.kube) as namespace, fresh_realm(admin) as realm:
        folder = Path(tmp_path_factory.mktemp("initcontainer"))
        workload = Workload(cluster.kube, cluster.node, cluster.keycloak, namespace, realm, folder)
        workload.create_token_secret(admin, count=1)
        workload.apply("initcontainer.yaml")
        [pod] = workload.wait_running(1)
        [client] = workload.clients(admin)
        assert workload.serves(admin, pod) == client["clientId"]
