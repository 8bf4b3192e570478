"""Pods share one client through the Kubernetes store: real Keycloak, real API server, real RBAC.

Each "Pod" is a ``dcr-bootstrap`` process with its own HOSTNAME, folder and service-account token of
the shared-secret manifest's ServiceAccount (see tests/kube/pods.py). Assertion messages show only
the tool's last log event, which the tool itself redacts.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

import pytest

from bootstrap import flow, k8s
from bootstrap.k8s import _publish
from bootstrap.settings import load_settings
from bootstrap.wait import Deadline
from harness.keycloak import Admin
from tests.conftest import Result
from tests.kube.pods import LEASE, SECRET, Cluster, last_events, run_at_once


def _digest(secret: str) -> str:
    """A secret's stand-in for assertions: pytest prints compared values when an assert fails."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


def _credentials(registration: dict[str, Any] | None) -> tuple[str, str, str]:
    """client_id, and digests of the client secret and of the registration access token."""
    assert registration is not None
    return (
        registration["client_id"],
        _digest(registration["client_secret"]),
        _digest(registration["registration_access_token"]),
    )


def _client(registration: dict[str, Any] | None) -> tuple[str, str]:
    """client_id and the client secret's digest: what the server in every Pod uses."""
    return _credentials(registration)[:2]


def _actions(results: list[Result]) -> list[str]:
    return [str(line.get("action")) for r in results for line in r.lines if line.get("event") == "Credentials written"]


def test_three_pods_starting_at_once_register_exactly_one_client(cluster: Cluster, admin: Admin) -> None:
    """Three Pods at once with a single-use initial token: one client, the same credentials in every file."""
    before = admin.count_clients(cluster.realm)
    pods = cluster.pods(3)
    results = run_at_once(pods)
    assert [r.code for r in results] == [0, 0, 0], last_events(results)
    assert sorted(_actions(results)) == ["registered", "reloaded", "reloaded"]
    shared = cluster.shared()
    assert {_credentials(pod.registration()) for pod in pods} == {_credentials(shared)}
    assert admin.count_clients(cluster.realm) == before + 1
    assert shared is not None
    for result in results:
        result.assert_clean(cluster.iat, shared["client_secret"], shared["registration_access_token"])


def test_two_runs_with_one_host_name_still_take_turns_on_the_lease(cluster: Cluster, admin: Admin) -> None:
    """Two processes with the same HOSTNAME are two holders: one registers, the other reuses it, both exit 0."""
    before = admin.count_clients(cluster.realm)
    first = cluster.pod()
    second = cluster.pod(HOSTNAME=first.name)
    results = run_at_once([first, second])
    assert [r.code for r in results] == [0, 0], last_events(results)
    assert sorted(_actions(results)) == ["registered", "reloaded"]
    assert admin.count_clients(cluster.realm) == before + 1
    assert first.registration()["client_id"] == second.registration()["client_id"]


def test_rolling_restart_keeps_the_one_client(cluster: Cluster, admin: Admin) -> None:
    """Three new Pods (new names, empty folders) after the first three reuse the client in the Secret."""
    first = run_at_once(cluster.pods(3, "mcp-server-a"))
    assert [r.code for r in first] == [0, 0, 0], last_events(first)
    count = admin.count_clients(cluster.realm)
    shared = cluster.shared()
    pods = cluster.pods(3, "mcp-server-b")
    results = run_at_once(pods)
    assert [r.code for r in results] == [0, 0, 0], last_events(results)
    assert _actions(results) == ["reloaded"] * 3
    assert {_client(pod.registration()) for pod in pods} == {_client(shared)}
    assert admin.count_clients(cluster.realm) == count


def test_rotated_registration_token_is_seen_by_the_next_pod(cluster: Cluster) -> None:
    """A Pod's update rotates the RFC 7592 token; the Secret follows, so the next Pod still manages the client."""
    [first] = run_at_once([cluster.pod()])
    assert first.code == 0, last_events([first])
    registered = _credentials(cluster.shared())
    # A rollout with new client metadata: the first new Pod updates the client (RFC 7592 PUT; Keycloak rotates
    # the registration access token), the next one reloads it with the token the Secret now holds.
    contacts = "ops@example.com"
    updater, follower = cluster.pod(DCR_CONTACTS=contacts), cluster.pod(DCR_CONTACTS=contacts)
    [updated] = run_at_once([updater])
    assert updated.code == 0 and _actions([updated]) == ["updated"], last_events([updated])
    rotated = _credentials(cluster.shared())
    assert rotated[:2] == registered[:2] and rotated[2] != registered[2]
    assert _credentials(updater.registration()) == rotated
    [reloaded] = run_at_once([follower])
    assert reloaded.code == 0 and _actions([reloaded]) == ["reloaded"], last_events([reloaded])
    events = [str(line.get("event")) for line in reloaded.lines]
    assert not any("management of the saved client is lost" in event for event in events)
    assert _credentials(follower.registration()) == _credentials(cluster.shared())


def test_client_secret_regenerated_by_an_admin_reaches_every_pod(cluster: Cluster, admin: Admin) -> None:
    """A secret regenerated on Keycloak is read back by the next Pod and stored in the Secret for all."""
    [first] = run_at_once([cluster.pod()])
    assert first.code == 0, last_events([first])
    client_id = _client(cluster.shared())[0]
    regenerated = _digest(admin.regenerate_secret(cluster.realm, client_id))
    pods = cluster.pods(2)
    results = run_at_once(pods)
    assert [r.code for r in results] == [0, 0], last_events(results)
    assert _client(cluster.shared()) == (client_id, regenerated)
    assert {_client(pod.registration()) for pod in pods} == {(client_id, regenerated)}


def test_pods_racing_without_a_lease_keep_one_client(cluster: Cluster, admin: Admin) -> None:
    """Without a Lease each Pod may register; the losers of the Secret write delete theirs and adopt the winner's."""
    before = admin.count_clients(cluster.realm)
    iat = admin.mint_initial_access_token(cluster.realm, count=3)
    pods = cluster.pods(3, lease=False, DCR_INITIAL_ACCESS_TOKEN=iat)
    results = run_at_once(pods)
    assert [r.code for r in results] == [0, 0, 0], last_events(results)
    assert {_client(pod.registration()) for pod in pods} == {_client(cluster.shared())}
    assert admin.count_clients(cluster.realm) == before + 1


def test_a_secret_that_cannot_be_written_leaves_no_new_client(cluster: Cluster, admin: Admin) -> None:
    """A Role without 'update': the new client is deleted again, exit 6 names the Secret and the verb."""
    kube, namespace = cluster.kube, cluster.namespace
    kube.create_service_account(namespace, "read-only")
    kube.request(
        "POST",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles",
        {
            "metadata": {"name": "read-only"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [SECRET], "verbs": ["get"]}],
        },
    )
    kube.request(
        "POST",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings",
        {
            "metadata": {"name": "read-only"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-only"},
            "subjects": [{"kind": "ServiceAccount", "name": "read-only", "namespace": namespace}],
        },
    )
    before = admin.count_clients(cluster.realm)
    pod = cluster.pod(lease=False, account="read-only")
    [result] = run_at_once([pod])
    assert result.code == 6, last_events([result])
    message = str(result.last["event"])
    assert f"{namespace}/{SECRET}" in message and "'update'" in message and "deleted again" in message
    assert admin.count_clients(cluster.realm) == before
    assert not pod.file.exists()
    assert cluster.shared() is None
    result.assert_clean(cluster.iat)


async def test_a_pod_losing_the_secret_write_deletes_its_new_client_and_adopts_the_winner(
    cluster: Cluster, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh registration whose Secret write meets another client (409) is deleted; the file gets the winner's."""
    empty_version = cluster.kube.request("GET", f"/api/v1/namespaces/{cluster.namespace}/secrets/{SECRET}")["metadata"][
        "resourceVersion"
    ]
    [winner] = run_at_once([cluster.pod()])
    assert winner.code == 0, last_events([winner])
    shared = cluster.shared()
    assert shared is not None
    before = admin.count_clients(cluster.realm)
    loser = cluster.pod(lease=False, DCR_INITIAL_ACCESS_TOKEN=admin.mint_initial_access_token(cluster.realm))
    for name, value in loser.env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    fresh = await flow.run(settings)  # the file store alone: registers a second client
    assert fresh.action == "registered" and admin.count_clients(cluster.realm) == before + 1
    kube = k8s.KubeStore.from_environment(SECRET, None)
    async with kube:
        # As if it had read the Secret while it was still empty, before the winner wrote it.
        outcome = await _publish.publish(settings, kube, fresh, None, empty_version, Deadline(30))
    assert outcome.registration.client_id == shared["client_id"]
    assert admin.count_clients(cluster.realm) == before
    assert fresh.registration.client_id not in {c["clientId"] for c in admin.clients(cluster.realm)}
    assert _credentials(loser.registration()) == _credentials(cluster.shared()) == _credentials(shared)


def test_a_lease_held_by_a_live_pod_until_the_deadline_fails_with_exit_6(cluster: Cluster, admin: Admin) -> None:
    """A Lease another Pod keeps renewing: the run gives up at DCR_WAIT_TIMEOUT, registers nothing, names the Lease."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    path = f"/apis/coordination.k8s.io/v1/namespaces/{cluster.namespace}/leases/{LEASE}"
    lease = cluster.kube.request("GET", path)
    lease["spec"] = {"holderIdentity": "busy-pod", "leaseDurationSeconds": 300, "renewTime": now, "acquireTime": now}
    cluster.kube.request("PUT", path, lease)
    before = admin.count_clients(cluster.realm)
    [result] = run_at_once([cluster.pod(DCR_WAIT_TIMEOUT="3")])
    assert result.code == 6, last_events([result])
    assert f"Lease {cluster.namespace}/{LEASE}" in str(result.last["event"])
    assert admin.count_clients(cluster.realm) == before
    assert cluster.shared() is None
