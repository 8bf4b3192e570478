"""The DCR_ON_CHANGE recipe of docs/rotation.md in the real image: a server container records its PID in a shared
folder, and hooks.on_change runs the documented hook in a second container of the same image; both join
the process namespace of a third, a pause process (as ``shareProcessNamespace: true`` makes a Pod's),
all as user 10001.

The image is built from this checkout under a tag of its own (the stack's ``dcr-bootstrap:dev`` may be
another checkout's), and removed at the end."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.docker import Engine, EngineUnavailable, build_image, docker, ensure_python_base
from tests.unit.test_hooks import as_kubernetes_passes_it, readme_recipe

ROOT = Path(__file__).resolve().parents[2]

# The server: on SIGHUP says so and exits 0; once its handler is in place, it creates the file "ready".
SERVER = """
import signal, sys
def reload(*_):
    print("reloaded on SIGHUP", flush=True)
    sys.exit(0)
signal.signal(signal.SIGHUP, reload)
open("/run/app/ready", "w").close()
while True:
    signal.pause()
"""

# Runs hooks.on_change(argv[1]) as watch does; exits 0 only when the hook ran and exited 0.
ON_CHANGE = (
    "import asyncio, sys; from bootstrap import hooks; sys.exit(asyncio.run(hooks.on_change(sys.argv[1], 30)) != 0)"
)


@pytest.fixture(scope="module")
def image(engine: Engine) -> Iterator[str]:
    """The bootstrap image of this checkout (on the base the stack uses: pulled, or a local stand-in)."""
    tag = f"dcr-bootstrap:hook-recipe-{uuid.uuid4().hex[:8]}"
    try:
        ensure_python_base(engine.env)
        build_image(
            engine.env,
            tag,
            ROOT,
            ROOT / "Dockerfile",
            "--build-arg",
            "PIP_INDEX_URL",
            "--build-arg",
            "PIP_TRUSTED_HOST",
        )
    except EngineUnavailable as exc:
        pytest.fail(f"the bootstrap image could not be built: {exc}", pytrace=False)
    try:
        yield tag
    finally:
        docker(engine.env, "image", "rm", "--force", tag)


def wait_for(path: Path, seconds: float) -> bool:
    """Whether ``path`` appears within ``seconds`` (a bound against a hang, not a timing)."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_the_readme_hook_recipe_signals_the_server_in_the_image(engine: Engine, image: str, tmp_path: Path) -> None:
    """The documented server command and DCR_ON_CHANGE, as the kubelet passes them: the server gets SIGHUP."""
    spec = readme_recipe()
    hook = as_kubernetes_passes_it(
        next(e["value"] for e in spec["initContainers"][0]["env"] if e["name"] == "DCR_ON_CHANGE")
    )
    shell, *command = (as_kubernetes_passes_it(part) for part in spec["containers"][0]["command"])
    command = [part.replace("python /app/server.py", "python /run/app/server.py") for part in command]
    shared = tmp_path / "run-app"
    shared.mkdir()
    shared.chmod(0o777)  # user 10001 of the containers writes the PID file and "ready" here
    (shared / "server.py").write_text(SERVER)
    name = f"dcrtest-hook-{uuid.uuid4().hex[:8]}"
    pause, server = f"{name}-pause", f"{name}-server"
    user = ["--user", "10001:10001"]
    try:
        # The Pod's process namespace: its PID 1 is a pause process, as in a Pod, not the server.
        started = docker(engine.env, "run", "-d", "--name", pause, *user, "--entrypoint", "sleep", image, "infinity")
        assert started.returncode == 0, started.stderr[-2000:]
        started = docker(
            engine.env, "run", "-d", "--name", server, "--pid", f"container:{pause}", *user,
            "-v", f"{shared}:/run/app", "--entrypoint", shell, image, *command,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr[-2000:]
        assert wait_for(shared / "ready", 120), docker(engine.env, "logs", server).stderr[-2000:]
        sidecar = docker(
            engine.env, "run", "--rm", "--pid", f"container:{pause}", *user, "-v", f"{shared}:/run/app:ro",
            "--entrypoint", "python", image, "-c", ON_CHANGE, hook,
        )  # fmt: skip
        assert sidecar.returncode == 0, sidecar.stdout[-2000:] + sidecar.stderr[-2000:]
        assert docker(engine.env, "wait", server, timeout=60).stdout.strip() == "0"
        assert "reloaded on SIGHUP" in docker(engine.env, "logs", server).stdout
    finally:
        docker(engine.env, "rm", "--force", server, pause)


def test_a_hook_without_a_shell_finds_no_kill_program_in_the_image(engine: Engine, image: str) -> None:
    """Why the old recipe (`kill -HUP 1`, run without a shell) reached nothing: the image has no kill program."""
    proc = docker(engine.env, "run", "--rm", "--entrypoint", "python", image, "-c", ON_CHANGE, "kill -HUP 1")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "DCR_ON_CHANGE could not be started" in proc.stdout + proc.stderr
