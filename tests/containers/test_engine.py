"""The engine the container tests run on."""

from __future__ import annotations

from harness.docker import Engine, docker


def test_engine_runs_compose_v2(engine: Engine) -> None:
    """`docker compose` is Compose v2 (v1 rejects the compose file's top-level `name:`)."""
    proc = docker(engine.env, "compose", "version", "--short")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().lstrip("v").startswith("2."), proc.stdout
