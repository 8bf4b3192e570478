"""Shared mode never loses or orphans, against a real kube-apiserver: a newer Pod file is published, roll-outs
are level-triggered, a broken Secret is set aside.

The first runs "Pods" (dcr-bootstrap processes) against the real Keycloak with the manifest's real RBAC;
the roll-out and broken-Secret tests run ``run_shared`` in-process against the fake authorization server
(its clock can be moved) with the admin's kubeconfig.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from bootstrap import lifecycle
from bootstrap.commands import ROTATE_NOW
from bootstrap.k8s import DATA_KEY, ROLLOUT_ANNOTATION, credentials_digest, run_shared
from bootstrap.models import SavedRegistration
from harness.kube import KubeServer
from tests.fakeserver import FakeServer, serving, settings_for
from tests.kube.pods import ACCOUNT, SECRET, Cluster, Pod, last_events, run_at_once

ROLE = "mcp-server-dcr"  # deploy/k8s/shared-secret.yaml's


def _secret_verbs(kube: KubeServer, namespace: str, verbs: list[str]) -> None:
    """Give the manifest's Role these verbs on its Secret, and wait until the authorizer applies them."""
    path = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles/{ROLE}"
    role = kube.request("GET", path)
    role["rules"][0]["verbs"] = verbs
    kube.request("PUT", path, role)
    token = kube.service_account_token(namespace, ACCOUNT)
    wanted = "yes" if "update" in verbs else "no"
    for _ in range(100):  # the RBAC authorizer's cache follows within moments; bounded, not timed
        answer = kube.kubectl(
            "auth", "can-i", "update", f"secrets/{SECRET}", f"--namespace={namespace}", token=token, check=False
        )
        if answer.split()[0] == wanted:
            return
        time.sleep(0.1)
    raise AssertionError(f"RBAC did not apply {verbs}")


def _token_works(shared: dict[str, Any] | None) -> bool:
    """An RFC 7592 read with the Secret's registration access token is accepted by Keycloak."""
    assert shared is not None
    request = urllib.request.Request(
        shared["registration_client_uri"], headers={"Authorization": f"Bearer {shared['registration_access_token']}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return bool(answer.status == 200)
    except urllib.error.HTTPError:
        return False


def test_a_token_rotated_by_a_run_whose_secret_write_was_refused_is_published_by_the_pods_next_run(
    cluster: Cluster,
) -> None:
    """Keycloak rotates the registration token on an update; the Secret write is refused (403): the same Pod's
    next run publishes the rotated token, so the Secret's token keeps working (no 'management lost')."""
    pod = cluster.pod()
    [first] = run_at_once([pod])
    assert first.code == 0, last_events([first])
    renamed = Pod(pod.name, pod.env | {"DCR_CLIENT_NAME": "mcp-server-renamed"})  # an RFC 7592 update is due
    _secret_verbs(cluster.kube, cluster.namespace, ["get"])
    [refused] = run_at_once([renamed])
    assert refused.code == 6, last_events([refused])
    stale = not _token_works(cluster.shared())  # the Secret's token was rotated away by the update
    assert stale  # (a bool: a failing assert must not print the Secret)
    _secret_verbs(cluster.kube, cluster.namespace, ["get", "update"])
    [retry] = run_at_once([renamed])
    assert retry.code == 0, last_events([retry])
    works = _token_works(cluster.shared())
    assert works
    assert not any("management" in str(line.get("event")) for line in retry.lines)


def _deployment(kube: KubeServer, namespace: str) -> dict[str, Any]:
    return dict(kube.request("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/mcp-server"))


def _report(kube: KubeServer, namespace: str, **status: int) -> None:
    """Write the Deployment's status as its controller would (this API server runs no controllers)."""
    obj = _deployment(kube, namespace)
    obj["status"] = {"observedGeneration": obj["metadata"]["generation"]} | status
    kube.request("PUT", f"/apis/apps/v1/namespaces/{namespace}/deployments/mcp-server/status", obj)


def _create_deployment(kube: KubeServer, namespace: str) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "mcp-server", "namespace": namespace},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "mcp"}},
            "template": {
                "metadata": {"labels": {"app": "mcp"}},
                "spec": {"containers": [{"name": "server", "image": "mcp-server:dev"}]},
            },
        },
    }
    kube.request("POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment)


def _template_digest(kube: KubeServer, namespace: str) -> str | None:
    annotations = _deployment(kube, namespace)["spec"]["template"]["metadata"].get("annotations") or {}
    return annotations.get(ROLLOUT_ANNOTATION)


async def test_a_replaced_client_waits_for_the_completed_rollout_and_a_lost_annotation_is_restored(
    kube: KubeServer, admin_kubeconfig: Path, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DCR_K8S_ROLLOUT: an annotation overwritten by hand is patched back by the next run; past its grace the
    replaced client stays while old replicas run, and is deleted once the roll-out completed."""
    _create_deployment(kube, namespace)
    monkeypatch.setenv("KUBECONFIG", str(admin_kubeconfig))
    values: dict[str, Any] = {
        "dcr_k8s_secret": "dcr",
        "dcr_k8s_namespace": namespace,
        "dcr_k8s_rollout": "mcp-server",
        "dcr_rotate_grace": "10m",
        "dcr_client_name": "mcp-server",
    }
    for pod in ("pod-a", "pod-b", "pod-c"):
        (tmp_path / pod).mkdir()
    async with serving(FakeServer(secret_lifetime=3600)) as server:
        first = await run_shared(settings_for(server, tmp_path / "pod-a", **values))
        assert _template_digest(kube, namespace) is None  # the first registration rolls nothing
        replaced = await run_shared(settings_for(server, tmp_path / "pod-b", dcr_rotate_after=ROTATE_NOW, **values))
        assert replaced.action == "replaced"
        digest = credentials_digest(replaced.registration)
        assert _template_digest(kube, namespace) == digest
        overwritten = _deployment(kube, namespace)  # e.g. by a re-apply of the manifest
        overwritten["spec"]["template"]["metadata"]["annotations"] = {ROLLOUT_ANNOTATION: "overwritten"}
        kube.request("PUT", f"/apis/apps/v1/namespaces/{namespace}/deployments/mcp-server", overwritten)
        _report(kube, namespace, replicas=3, updatedReplicas=1, readyReplicas=1, availableReplicas=1)
        later = lifecycle.now() + 900  # past the grace
        monkeypatch.setattr(lifecycle, "now", lambda: later)
        settings = settings_for(server, tmp_path / "pod-c", **values)
        await run_shared(settings)
        assert _template_digest(kube, namespace) == digest
        assert first.registration.client_id in server.clients  # old replicas still run on it
        _report(kube, namespace, replicas=2, updatedReplicas=2, readyReplicas=2, availableReplicas=2)
        await run_shared(settings)
        assert set(server.clients) == {replaced.registration.client_id}


async def test_a_secret_with_a_line_break_in_its_token_is_set_aside_and_the_run_registers(
    kube: KubeServer, admin_kubeconfig: Path, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registration token with CR/LF in the real Secret: kept under a timestamped key, a new client is stored."""
    broken = {"client_id": "c-1", "client_secret": "s3cr3t-value", "registration_access_token": "t\r\nX-Injected: 1"}
    raw = base64.b64encode(json.dumps(broken).encode()).decode()
    kube.request(
        "POST", f"/api/v1/namespaces/{namespace}/secrets", {"metadata": {"name": "dcr"}, "data": {DATA_KEY: raw}}
    )
    monkeypatch.setenv("KUBECONFIG", str(admin_kubeconfig))
    async with serving(FakeServer()) as server:
        settings = settings_for(server, tmp_path, dcr_k8s_secret="dcr", dcr_k8s_namespace=namespace)
        outcome = await run_shared(settings)
        assert outcome.action == "registered"
        again = await run_shared(settings)  # the next Pod starts on it
        assert again.registration.client_id == outcome.registration.client_id
    data = kube.request("GET", f"/api/v1/namespaces/{namespace}/secrets/dcr")["data"]
    (kept,) = (key for key in data if key.startswith(f"{DATA_KEY}.broken-"))
    assert data[kept] == raw
    stored = SavedRegistration.model_validate(json.loads(base64.b64decode(data[DATA_KEY])))
    assert stored.client_id == outcome.registration.client_id
