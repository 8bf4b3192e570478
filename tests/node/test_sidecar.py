"""deploy/k8s/sidecar.yaml on a real node: the kubelet's /readyz startup probe orders the containers, SIGTERM deletes.

One Deployment for the module (1 replica); the tests run in file order on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.keycloak import Admin
from tests.node.conftest import Cluster
from tests.node.workloads import (
    Workload,
    check_deleting_the_pod_deletes_its_client,
    check_server_waited_for_readyz,
    client_name,
)

GRACE_SECONDS = 30  # the Pod's terminationGracePeriodSeconds (the default; the manifest keeps it)


@pytest.fixture(scope="module")
def sidecar(cluster: Cluster, admin: Admin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workload]:
    """sidecar.yaml applied in a restricted namespace, with a token for ten registrations."""
    with cluster.workload(admin, Path(tmp_path_factory.mktemp("sidecar")), registrations=10) as workload:
        workload.apply("sidecar.yaml")
        yield workload


def test_the_server_starts_only_after_readyz_answers(sidecar: Workload, admin: Admin) -> None:
    """startupProbe GET /readyz: the server's first line follows the sidecar's first proven round; /readyz
    answers 200; no restarts; the server uses the Pod's client."""
    check_server_waited_for_readyz(sidecar, admin)


def test_deleting_the_pod_deletes_its_client_within_the_grace_period(sidecar: Workload, admin: Admin) -> None:
    """kubectl delete pod: the sidecar's SIGTERM deletes the Pod's client before the grace period ends."""
    new = check_deleting_the_pod_deletes_its_client(sidecar, admin, GRACE_SECONDS)
    assert [client_name(c) for c in sidecar.clients(admin)] == [f"mcp-server-{new}"]
