"""The Kubernetes side of the watch listener's metrics: roll-out PATCHes by result, API requests by endpoint role."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from bootstrap import k8s, metrics
from bootstrap.errors import StorageError
from bootstrap.k8s import _rollout
from tests.fakeserver import FakeServer
from tests.unit import test_k8s
from tests.unit.test_k8s import FakeKube, answer, shared_settings
from tests.unit.test_metrics import samples

ROLLOUTS = "dcr_bootstrap_rollouts_total"
kube = test_k8s.kube  # the fake API server, and no Pod environment
outside_a_pod = test_k8s.outside_a_pod


async def test_a_refused_and_then_a_made_rollout_patch_are_each_counted(
    server: FakeServer, kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal whose PATCH is refused counts a failure; the next run's PATCH of the same digest a success."""
    server.secret_lifetime, server.rotate_on_update = 3600, True
    kube.put_deployment()
    settings = shared_settings(
        server, kube, tmp_path, monkeypatch, dcr_k8s_rollout="app", dcr_metrics_addr="127.0.0.1:0"
    )
    await k8s.run_shared(settings)
    monitor, listener = await metrics.start(settings)
    assert listener is not None
    try:
        kube.trick("PATCH deployment", answer(403, b'{"kind": "Status", "message": "forbidden"}'))
        with contextlib.suppress(StorageError):
            await k8s.run_shared(settings.model_copy(update={"dcr_rotate_after": 1e-9}))
        await k8s.run_shared(settings)
        found = samples(generate_latest(monitor.registry).decode())
    finally:
        await listener.stop()
    assert found[(ROLLOUTS, (("result", "failure"),))] == 1 and found[(ROLLOUTS, (("result", "success"),))] == 1
    assert monitor.rollout_ran not in _rollout.observers  # a stopped listener is told nothing more


async def test_the_kubernetes_apis_requests_are_counted_under_their_own_endpoint_role(
    server: FakeServer, kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared run's Secret and Lease calls appear as endpoint="kubernetes", never by URL or object name."""
    settings = shared_settings(server, kube, tmp_path, monkeypatch, dcr_metrics_addr="127.0.0.1:0")
    monitor, listener = await metrics.start(settings)
    assert listener is not None
    try:
        await k8s.run_shared(settings)
        found = samples(generate_latest(monitor.registry).decode())
    finally:
        await listener.stop()
    kubernetes = {
        dict(labels)["code"]
        for name, labels in found
        if name == "dcr_bootstrap_http_requests_total" and dict(labels)["endpoint"] == "kubernetes"
    }
    assert kubernetes and kubernetes <= {"200", "201", "404", "409"}
