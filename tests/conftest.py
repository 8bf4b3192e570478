"""Shared fixtures: the session's one real Keycloak, isolated realms, and a CLI runner.

Keycloak starts once per session; each test gets its own realm. If Keycloak cannot be fetched or
started, every test that needs it fails (never skips) with the harness's reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from harness import helm
from harness.keycloak import ROTATION_FEATURE, Admin, KeycloakServer, free_port
from harness.process import HarnessError, group_alive

ROOT = Path(__file__).resolve().parent.parent
CONTAINERS = ROOT / "tests" / "containers"
NODE = ROOT / "tests" / "node"


def _real(item: pytest.Item, name: str) -> bool:
    """Does the test use the real-server fixture ``name`` (defined in tests/conftest.py or tests/kube/)?"""
    definitions = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {}).get(name, ())
    return any(str(d.baseid) in ("tests", "tests/kube") for d in definitions)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers by cost, from what a test uses: `pytest -m "not docker and not kube"` is the fast loop."""
    for item in items:
        costs = [name for name in ("keycloak", "kube") if _real(item, name)]
        if CONTAINERS in Path(str(item.fspath)).parents:
            costs.append("docker")
        if NODE in Path(str(item.fspath)).parents:
            # A real node needs the Docker engine (images) and the kube binaries too: every existing
            # `-m "not docker"` or `-m "not kube"` leaves it out as well.
            costs += [c for c in ("node", "docker", "kube") if c not in costs]
        for cost in costs:
            item.add_marker(cost)
        if costs:
            item.add_marker("integration")


def unavailable(line: str) -> NoReturn:
    """A real part (an engine, a server, a tool) that cannot start: the test fails with ``line`` in CI
    (``CI=true``) and is skipped with it elsewhere, so a developer without Go or Docker runs the rest."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(line, pytrace=False)
    pytest.skip(line)


@pytest.fixture(scope="session")
def helm_binary() -> Path:
    """helm, built once per machine from its Go module (harness/helm.py)."""
    try:
        return helm.ensure_helm()
    except (HarnessError, OSError) as exc:
        unavailable(f"helm unavailable: {str(exc).splitlines()[0] if str(exc) else 'unknown'}")


def start_keycloak() -> KeycloakServer:
    """One Keycloak for the session, with the secret rotation policy available to the realms that want it.

    Started once more, on other ports, if a port was taken all the same (by a process outside this session).
    """

    def on_fresh_ports() -> KeycloakServer:
        return KeycloakServer(extra_args=(ROTATION_FEATURE,), http_port=free_port(), management_port=free_port())

    try:
        return on_fresh_ports().start()
    except HarnessError as exc:
        if "Port already bound" not in str(exc):
            raise
    return on_fresh_ports().start()


@pytest.fixture(scope="session")
def keycloak() -> Iterator[KeycloakServer]:
    try:
        server = start_keycloak()
    except HarnessError as exc:
        pytest.fail(f"Keycloak could not be started for the integration tests: {exc}", pytrace=False)
    yield server
    pgid = server.pgid
    server.stop()
    assert pgid is not None and not group_alive(pgid), "a Keycloak process outlived the test session"


@pytest.fixture(scope="session")
def admin(keycloak: KeycloakServer) -> Admin:
    return keycloak.admin()


@pytest.fixture
def realm(admin: Admin) -> Iterator[str]:
    name = admin.create_realm()
    yield name
    admin.delete_realm(name)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.stderr.splitlines() if line.startswith("{")]

    @property
    def last(self) -> dict[str, object]:
        return self.lines[-1]

    def assert_clean(self, *secrets: str | None) -> None:
        """No secret value appears anywhere in what the process printed."""
        for secret in secrets:
            # An explicit raise, not an assert: pytest would print the secret while explaining an assert.
            if secret and (secret in self.stdout or secret in self.stderr):
                raise AssertionError("a secret leaked into the tool's output")


def base_env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: nothing from the developer's shell leaks into the tool's settings."""
    return {
        # The venv's bin first: dcr-bootstrap and entrypoint.sh resolve as in the image.
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path),
        "DCR_LOG_FORMAT": "json",
        "DCR_RETRY_INITIAL_DELAY": "0.05",
        "DCR_RETRY_MAX_DELAY": "0.5",
        "DCR_WAIT_TIMEOUT": "30",
        "DCR_CLIENT_FILE": str(tmp_path / "creds" / ".dcr_client.json"),
    }


def run_cli(env: dict[str, str], *args: str, cwd: Path | None = None, timeout: float = 120) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "bootstrap", *args],
        env=env,
        cwd=cwd or env.get("HOME"),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
