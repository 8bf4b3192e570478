"""The container stage: a real Docker engine, Compose v2, the images, and the compose stack.

An engine that runs is used as it is; otherwise, as root on Linux, ``docker.io`` is installed and
``dockerd`` started for the session and stopped by its PID at the end. Without an engine the tests fail
with one line in CI (``CI=true``) and skip with it elsewhere. The step timings, the image facts and the
folder with every service's log are printed at the end of the run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.docker import (
    LOGS,
    TIMINGS,
    ComposeStack,
    Engine,
    EngineUnavailable,
    compose_images,
    docker,
    ensure_compose,
    ensure_engine,
    ensure_keycloak_image,
    ensure_python_base,
    image_facts,
    timed,
)
from harness.keycloak import free_port
from tests.conftest import unavailable

# Printed at the end of the run (pytest_terminal_summary): image facts and where the logs are.
FACTS: list[str] = []
_LOG_FOLDERS: list[str] = []


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """The Docker engine (and Compose v2) of this session."""
    found: Engine | None = None
    problem = ""
    try:
        found = ensure_engine()
        with timed("compose: ensure v2 (build when missing)"):
            version = ensure_compose(found.env)
    except EngineUnavailable as exc:
        problem = f"no Docker engine for the container tests: {exc}"
        if found is not None:
            found.stop()
    if problem or found is None:
        unavailable(problem)  # outside the except block: one line, no exception chain
    FACTS.append(f"engine: {'started by the tests' if found.pid else 'found running'}; compose {version}")
    try:
        yield found
    finally:
        found.stop()


@pytest.fixture(scope="session")
def base_images(engine: Engine) -> dict[str, str]:
    """The stack's base images: pulled, found, or built as local stand-ins."""
    try:
        python = ensure_python_base(engine.env)
        pulled = {name: ensure_keycloak_image(engine.env, ref) for name, ref in compose_images().items()}
    except EngineUnavailable as exc:
        pytest.fail(f"the base images could not be had: {exc}", pytrace=False)
    return {"python": python, **pulled}


@pytest.fixture(scope="session")
def stack(engine: Engine, base_images: dict[str, str]) -> Iterator[ComposeStack]:
    """A compose project of its own (unique name, free loopback ports); ``down -v`` at the end."""
    project = f"dcrtest-{uuid.uuid4().hex[:8]}"
    compose = ComposeStack(engine.env, project, free_port(), free_port(), LOGS / project)
    _LOG_FOLDERS.append(str(compose.logs))
    try:
        yield compose
    finally:
        compose.teardown()
        label = f"label=com.docker.compose.project={project}"
        left = [
            *docker(engine.env, "ps", "--all", "--quiet", "--filter", label).stdout.split(),
            *docker(engine.env, "volume", "ls", "--quiet", "--filter", label).stdout.split(),
        ]
        assert not left, f"containers or volumes left after down -v: {left}"


# Images the project builds (their base may be a stand-in); the others are base images.
BUILT_HERE = ("bootstrap", "mcp-server")


def record_image_facts(engine: Engine, refs: dict[str, str]) -> list[dict[str, Any]]:
    """Each image's size, user and origin, for the summary."""
    facts = [image_facts(engine.env, ref) for ref in refs.values()]
    for role, fact in zip(refs, facts, strict=True):
        built = role in BUILT_HERE
        if fact["standin"]:
            origin = "built here on a local stand-in base" if built else "local stand-in (no registry)"
        else:
            origin = "built here" if built else "as found or pulled"
        FACTS.append(f"image {role}: {fact['image']} {fact['size_mb']} MB, user {fact['user']}, {origin}")
    return facts


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int) -> None:
    if not (TIMINGS or FACTS or _LOG_FOLDERS):
        return
    write = terminalreporter.write_line
    terminalreporter.section("container stage")
    for line in FACTS:
        write(line)
    for step, seconds in TIMINGS:
        write(f"time {seconds / 60:5.1f} min ({seconds:6.1f} s)  {step}")
    for folder in _LOG_FOLDERS:
        failed = exitstatus != 0
        write(f"{'FAILED: ' if failed else ''}logs of every service: {folder}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The container stage needs an engine and Keycloak: `pytest -m "not integration"` skips it too."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
