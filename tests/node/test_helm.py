"""deploy/helm/dcr-bootstrap installed with ``helm install`` on a real node: both modes, and ``helm uninstall``.

Each release gets a fresh namespace enforcing Pod Security 'restricted' (so a Pod the chart renders that
broke it would never be created) and a fresh realm; the initial access token Secret is created as the
chart's README says. The values are the chart's defaults (its images, already on the node) except what the
stage needs, the substitutions tests/node/workloads.py makes to the plain manifests:

* ``issuer.keycloakUrl`` and ``issuer.internalUrl``: the stage's Keycloak (there is no DNS);
* ``bootstrap.env``: ``KUBERNETES_SERVICE_HOST``/``PORT`` naming the API server itself (no kube-proxy);
* ``server.env``: ``KEYCLOAK_URL``/``KEYCLOAK_REALM`` for the example server, which reads them (the chart
  gives the server ``DCR_CLIENT_FILE`` only; an operator passes the server's own settings this way).

The tests run in file order: the shared release (kept for the module), the sidecar release, then the
shared release's uninstall.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness import helm
from harness.docker import timed
from harness.keycloak import Admin
from tests.node.conftest import ROOT, Cluster
from tests.node.workloads import (
    Workload,
    api_server_env,
    check_deleting_the_pod_deletes_its_client,
    check_server_waited_for_readyz,
    eventually,
)

CHART = ROOT / "deploy" / "helm" / "dcr-bootstrap"
RELEASE = "shop"
FULLNAME = f"{RELEASE}-dcr-bootstrap"  # the chart's full name for this release
SELECTOR = f"app.kubernetes.io/name=dcr-bootstrap,app.kubernetes.io/instance={RELEASE}"
SECRET = f"{FULLNAME}-dcr-client"
GRACE_SECONDS = 30  # the chart's default terminationGracePeriodSeconds
pytestmark = pytest.mark.usefixtures("helm_binary")


def chart_values(cluster: Cluster, mode: str, realm: str, replicas: int) -> dict[str, Any]:
    """The chart's defaults plus the stage's substitutions of the module docstring."""
    url = cluster.keycloak.url
    return {
        "mode": mode,
        "replicaCount": replicas,
        "issuer": {"keycloakUrl": url, "realm": realm, "internalUrl": url},
        "bootstrap": {"env": api_server_env(cluster.kube)},
        "server": {"env": [{"name": "KEYCLOAK_URL", "value": url}, {"name": "KEYCLOAK_REALM", "value": realm}]},
    }


@dataclass
class Release(Workload):
    """The chart's release: its selector, client prefix and Secret name, not the manifests'."""

    selector: str = SELECTOR
    client_prefix: str = FULLNAME
    secret_name: str = SECRET


def kubeconfig(workload: Workload) -> Path:
    """The admin kubeconfig helm uses for the workload's release (written by :func:`release`)."""
    return workload.folder / "admin.kubeconfig"


@contextmanager
def release(cluster: Cluster, admin: Admin, folder: Path, mode: str, replicas: int, tokens: int) -> Iterator[Workload]:
    """``helm install`` of the chart in ``mode`` in a fresh restricted namespace and realm; its Pods Running."""
    with cluster.workload(admin, folder, tokens, f"helm-{mode}", Release) as workload:
        namespace, realm = workload.namespace, workload.realm
        config = cluster.kube.kubeconfig(kubeconfig(workload), namespace=namespace)
        try:
            with timed(f"node: helm install ({mode}) -> {replicas} Pods Running and Ready"):
                helm.install(config, CHART, RELEASE, namespace, chart_values(cluster, mode, realm, replicas))
                workload.wait_running(replicas)
            yield workload
        finally:
            helm.run("uninstall", RELEASE, "--namespace", namespace, check=False, kubeconfig=config)
            config.unlink()


@pytest.fixture(scope="module")
def shared(cluster: Cluster, admin: Admin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workload]:
    """The chart in mode=shared with 3 replicas, from a single-use initial access token."""
    with release(cluster, admin, Path(tmp_path_factory.mktemp("helm-shared")), "shared", 3, tokens=1) as workload:
        yield workload


@pytest.fixture(scope="module")
def sidecar(cluster: Cluster, admin: Admin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workload]:
    """The chart in mode=sidecar with 1 replica, from a token for ten registrations."""
    with release(cluster, admin, Path(tmp_path_factory.mktemp("helm-sidecar")), "sidecar", 1, tokens=10) as workload:
        yield workload


def _client_ids(workload: Workload, admin: Admin) -> list[str]:
    return [str(c["clientId"]) for c in workload.clients(admin)]


# -- mode=shared ----------------------------------------------------------------------------------


def test_shared_release_runs_three_pods_and_every_server_answers_with_the_one_client(
    shared: Workload, admin: Admin
) -> None:
    """helm install, mode=shared, 3 replicas: Running; one client on Keycloak, the Secret's; each server uses it."""
    pods = shared.wait_running(3)
    clients = _client_ids(shared, admin)
    assert len(clients) == 1, f"clients on Keycloak: {clients}"
    assert shared.shared_client_id() == clients[0]
    assert [shared.serves(admin, pod) for pod in pods] == clients * 3


# -- mode=sidecar ---------------------------------------------------------------------------------


def test_sidecar_release_starts_the_server_only_after_readyz_answers(sidecar: Workload, admin: Admin) -> None:
    """The chart's startupProbe GET /readyz gates the server: its first line follows the sidecar's first proven
    round; /readyz answers 200; no restarts; and the Pod carries its own name for Events (downward API)."""
    pod = check_server_waited_for_readyz(sidecar, admin)
    [probed] = pod["spec"]["initContainers"]
    env = {e["name"]: e.get("valueFrom") for e in probed["env"]}
    assert env["DCR_K8S_POD_NAME"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}


def test_sidecar_release_deleting_a_pod_deletes_its_client(sidecar: Workload, admin: Admin) -> None:
    """kubectl delete pod: on SIGTERM its sidecar deletes its client within the grace period; the new Pod has one."""
    check_deleting_the_pod_deletes_its_client(sidecar, admin, GRACE_SECONDS)
    assert len(sidecar.clients(admin)) == 1, f"clients on Keycloak: {_client_ids(sidecar, admin)}"


# -- helm uninstall -------------------------------------------------------------------------------


def test_uninstalling_the_shared_release_keeps_the_secret_and_its_one_client(
    shared: Workload, admin: Admin, cluster: Cluster
) -> None:
    """helm uninstall: the workload goes; the kept Secret still names the one client, which stays on Keycloak."""
    [client_id] = _client_ids(shared, admin)
    with timed("node: helm uninstall (shared) -> its Pods gone"):
        output = helm.uninstall(kubeconfig(shared), RELEASE, shared.namespace)
        eventually(lambda: not shared.all_pods(), 90, "the release's Pods gone", shared.explain)
    assert f"[Secret] {SECRET}" in output, output
    assert json.loads(shared.kubectl("get", "deployments,roles,leases", "-o", "json"))["items"] == []
    # Only the metadata: an assertion must never print the Secret's data.
    kept = cluster.kube.request("GET", f"/api/v1/namespaces/{shared.namespace}/secrets/{SECRET}")["metadata"]
    assert kept.get("annotations", {}).get("helm.sh/resource-policy") == "keep"
    assert shared.shared_client_id() == client_id
    assert _client_ids(shared, admin) == [client_id]
