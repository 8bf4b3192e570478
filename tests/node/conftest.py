"""Session fixtures for the node stage: a real node, its own kube-apiserver and Keycloak, the images.

``harness.node`` runs containerd, kubelet, kube-controller-manager and kube-scheduler in a network
namespace of the run's own; kube-apiserver and Keycloak for this stage listen on the node's address in
that namespace, so the Pods and the test process both reach them (the session's other servers on
loopback are untouched). The images the manifests name are built with Docker (as the container stage
builds them) and imported into the node's containerd. If any of it cannot start, the tests fail in CI
(``CI=true``) with one line and are skipped with that line elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from harness.docker import Engine, EngineUnavailable, build_image, ensure_engine, ensure_python_base, timed
from harness.keycloak import Admin, KeycloakServer
from harness.kube import KubeServer, ensure_binaries
from harness.node import Node, ensure_node_binaries, ensure_pause_image
from harness.process import HarnessError, group_alive
from tests.conftest import unavailable
from tests.node.workloads import Workload, fresh_namespace, fresh_realm

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP_IMAGE = "dcr-bootstrap:0.1.0"
SERVER_IMAGE = "dcr-bootstrap-example-mcp-server:dev"
# Printed at the end of the run (pytest_terminal_summary).
FACTS: list[str] = []


def _unavailable(reason: str) -> NoReturn:
    lines = [line.strip() for line in reason.splitlines() if line.strip()] or ["unknown"]
    # One line: what failed, and the last line of the log that says why.
    unavailable(f"node stage unavailable: {lines[0]}{' ... ' + lines[-1] if len(lines) > 1 else ''}")


@dataclass
class Cluster:
    """The stage's node, API server, Keycloak and Docker engine."""

    node: Node
    kube: KubeServer
    keycloak: KeycloakServer
    engine: Engine

    def admin(self) -> Admin:
        return self.keycloak.admin()

    @contextmanager
    def workload(
        self, admin: Admin, folder: Path, registrations: int, realm: str = "mcp", kind: type[Workload] = Workload
    ) -> Iterator[Workload]:
        """A fresh restricted namespace and realm, with the initial access token Secret for ``registrations``."""
        with fresh_namespace(self.kube) as namespace, fresh_realm(admin, realm) as realm_name:
            workload = kind(self.kube, self.node, self.keycloak, namespace, realm_name, folder)
            workload.create_token_secret(admin, count=registrations)
            yield workload


def _images(engine: Engine, node: Node) -> list[str]:
    """The images the manifests name, built like the container stage builds them, and the pause image."""
    python = ensure_python_base(engine.env)
    pip = [f"--build-arg={name}" for name in ("PIP_INDEX_URL", "PIP_TRUSTED_HOST") if os.environ.get(name)]
    base = ["--build-arg", f"PYTHON_IMAGE={python}", *pip]
    build_image(engine.env, BOOTSTRAP_IMAGE, ROOT, ROOT / "Dockerfile", *base)
    server = ROOT / "examples" / "mcp-server"
    build_image(engine.env, SERVER_IMAGE, server, server / "Dockerfile", *base)
    return [ensure_pause_image(engine.env, node.binaries.pause), BOOTSTRAP_IMAGE, SERVER_IMAGE]


def _start(started: list[Node | KubeServer | KeycloakServer | Engine]) -> Cluster:
    with timed("node: binaries (build once)"):
        node_binaries = ensure_node_binaries()
        kube_binaries = ensure_binaries()
    engine = ensure_engine()
    started.append(engine)
    node = Node(binaries=node_binaries).prepare()
    started.append(node)
    keycloak = KeycloakServer(host=node.address, launcher=node.launcher, log_path=node.layout.logs / "keycloak.log")
    started.append(keycloak.spawn())
    kube = node.apiserver(kube_binaries)
    started.append(kube)
    with timed("node: kube-apiserver ready"):
        kube.start()
    with timed("node: node Ready (containerd, kubelet, controller-manager, scheduler)"):
        node.start(kube)
    with timed("node: images built and imported"):
        node.import_images(engine.env, *_images(engine, node))
    with timed("node: Keycloak ready"):
        keycloak.wait_ready()
    return Cluster(node, kube, keycloak, engine)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """One node with its own API server and Keycloak for the session; nothing of them is left after it."""
    started: list[Node | KubeServer | KeycloakServer | Engine] = []
    problem = ""
    try:
        found = _start(started)
    except (HarnessError, EngineUnavailable, OSError) as exc:
        problem = str(exc)
        for server in reversed(started):
            server.stop()
    if problem:
        _unavailable(problem)
    groups = [found.node.pgid, found.kube.pgid, found.keycloak.pgid]
    FACTS.append(f"node {found.node.name} at {found.node.address}; logs in {found.node.layout.logs}")
    FACTS.append(
        f"RSS at start: node daemons {found.node.rss_mib:.0f} MiB, apiserver+etcd {found.kube.rss_mib:.0f} MiB"
    )
    try:
        yield found
    finally:
        FACTS.append(f"RSS at the end: node daemons and shims {found.node.daemons_rss_kib() / 1024:.0f} MiB")
        for what, server in (("Keycloak", found.keycloak), ("kube-apiserver", found.kube), ("node", found.node)):
            with timed(f"node: stop {what}"):
                server.stop()
        with timed("node: stop dockerd (when the stage started it)"):
            found.engine.stop()
    assert all(g is not None and not group_alive(g) for g in groups), "a node-stage process outlived the session"
    assert not found.node.leftovers(), f"the node left {found.node.leftovers()}"


@pytest.fixture(scope="module")
def admin(cluster: Cluster) -> Admin:
    """The stage's Keycloak admin API."""
    return cluster.admin()


def pytest_terminal_summary(terminalreporter: object) -> None:
    from harness.docker import TIMINGS as STEPS

    rows = [(step, seconds) for step, seconds in STEPS if step.startswith("node:")]
    if not rows:
        return
    write = terminalreporter.write_line  # type: ignore[attr-defined]
    terminalreporter.section("node stage")  # type: ignore[attr-defined]
    for line in FACTS:
        write(line)
    for step, seconds in rows:
        write(f"time {seconds:6.1f} s  {step}")
