"""deploy/k8s/initcontainer.yaml on a real node: the init container registers, then the server starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.node.conftest import Cluster


def test_the_init_container_registers_and_the_server_answers_with_its_client(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """One Pod (a single-use token): Running, one client on Keycloak, and the server serves MCP with it."""
    admin = cluster.admin()
    with cluster.workload(admin, Path(tmp_path_factory.mktemp("initcontainer")), registrations=1) as workload:
        workload.apply("initcontainer.yaml")
        [pod] = workload.wait_running(1)
        [client] = workload.clients(admin)
        assert workload.serves(admin, pod) == client["clientId"]
