"""Session fixtures: one real kube-apiserver (etcd + apiserver on loopback) for tests/kube.

Built or reused by ``harness.kube`` (binaries cached outside the checkout). If it cannot be built or
started, the tests fail in CI (``CI=true``) with one line, and are skipped elsewhere with that line
(a developer without Go still runs the rest of the suite).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from harness.keycloak import Admin, KeycloakServer
from harness.kube import KubeServer, ensure_binaries
from harness.process import HarnessError, group_alive
from tests.conftest import unavailable
from tests.kube.pods import Cluster, apply_shared_rbac

RESTRICTED = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")} | {
    f"pod-security.kubernetes.io/{mode}-version": "latest" for mode in ("enforce", "warn", "audit")
}


def _unavailable(reason: str) -> NoReturn:
    unavailable(f"kube-apiserver harness unavailable: {reason.splitlines()[0] if reason else 'unknown'}")


@pytest.fixture(scope="session")
def kube() -> Iterator[KubeServer]:
    try:
        server = KubeServer(binaries=ensure_binaries()).start()
    except (HarnessError, OSError) as exc:
        _unavailable(str(exc))
        raise AssertionError("unreachable") from exc
    pgid = server.pgid
    try:
        yield server
    finally:
        server.stop()
    assert pgid is not None and not group_alive(pgid), "an etcd/kube-apiserver process outlived the test session"


@pytest.fixture
def namespace(kube: KubeServer) -> str:
    """A fresh namespace enforcing Pod Security 'restricted' (enforce, warn and audit)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube.create_namespace(name, RESTRICTED)
    return name


@pytest.fixture
def admin_kubeconfig(kube: KubeServer, namespace: str, tmp_path: Path) -> Path:
    return kube.kubeconfig(tmp_path / "admin.kubeconfig", namespace=namespace)


@pytest.fixture
def cluster(
    kube: KubeServer, namespace: str, keycloak: KeycloakServer, admin: Admin, realm: str, tmp_path: Path
) -> Cluster:
    """The shared-store manifest's RBAC in a fresh namespace, a fresh realm and a single-use initial token."""
    apply_shared_rbac(kube, namespace, tmp_path)
    iat = admin.mint_initial_access_token(realm, count=1)
    return Cluster(kube, namespace, keycloak, realm, iat, tmp_path)
