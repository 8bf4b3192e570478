"""What a DCR_ON_CHANGE hook gets (no bootstrap secrets) and how it ends (with its process group when
``watch`` stops). Real child processes; a FIFO is the gate that says the hook has started."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from bootstrap import hooks

ROOT = Path(__file__).resolve().parents[2]

# Prints the names of its environment as JSON into argv[1].
DUMP_ENV = 'import json, os, sys; open(sys.argv[1], "w").write(json.dumps(sorted(os.environ)))'


def set_bootstrap_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every name of BOOTSTRAP_ONLY set (one in lower case, as the settings also read it), and one ordinary name."""
    for name in hooks.BOOTSTRAP_ONLY:
        monkeypatch.setenv(name, "bootstrap-only-value")
    monkeypatch.delenv("DCR_INITIAL_ACCESS_TOKEN")
    monkeypatch.setenv("dcr_initial_access_token", "bootstrap-only-value")
    monkeypatch.setenv("KEYCLOAK_URL", "http://127.0.0.1:1")


async def test_a_hook_runs_without_the_bootstrap_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The initial access token, the admin credentials and their *_FILE names never reach DCR_ON_CHANGE."""
    set_bootstrap_secrets(monkeypatch)
    out = tmp_path / "env.json"
    assert await hooks.on_change(f"{sys.executable} -c '{DUMP_ENV}' {out}", 30) == 0
    names = set(json.loads(out.read_text()))
    assert {name.upper() for name in names} & set(hooks.BOOTSTRAP_ONLY) == set()
    assert "KEYCLOAK_URL" in names


def test_entrypoint_strips_the_same_names_as_the_hooks() -> None:
    """wrap mode's bootstrap_only in entrypoint.sh is hooks.BOOTSTRAP_ONLY: one list, kept equal."""
    found = re.search(r'^bootstrap_only="([^"]*)"', (ROOT / "entrypoint.sh").read_text(), re.MULTILINE)
    assert found is not None
    assert sorted(found.group(1).split()) == sorted(hooks.BOOTSTRAP_ONLY)


async def read_gate(fifo: Path) -> str:
    """What the hook writes into ``fifo``: blocks (in a thread) until the hook has opened and closed it."""
    return await asyncio.get_running_loop().run_in_executor(None, fifo.read_text)


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (one killed but not yet reaped by its new parent)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


async def gone(*pids: int) -> bool:
    """Whether the processes are gone (SIGKILL takes effect at once, the kernel's clean-up a moment later)."""
    for _ in range(1000):
        if not any(map(running, pids)):
            return True
        await asyncio.sleep(0.01)
    return False


def kill(*pids: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_a_hook_still_running_when_watch_stops_is_killed_with_its_process_group(tmp_path: Path) -> None:
    """Cancelling on_change kills the hook and what it started (a background sleep), then re-raises."""
    fifo = tmp_path / "started"
    os.mkfifo(fifo)
    task = asyncio.create_task(hooks.on_change(f"""sh -c 'sleep 600 & echo "$$ $!" > {fifo}; wait'""", 600))
    pids = [int(pid) for pid in (await read_gate(fifo)).split()]
    try:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await gone(*pids), "the hook or the process it started outlived watch"
    finally:
        kill(*pids)


async def test_a_hook_killed_at_its_timeout_takes_its_process_group_along(tmp_path: Path) -> None:
    """DCR_ON_CHANGE_TIMEOUT kills what the hook started too, not only the hook."""
    started = tmp_path / "started"
    assert await hooks.on_change(f"""sh -c 'sleep 600 & echo "$!" > {started}; wait'""", 1) is None
    child = int(started.read_text())  # written at once; the timeout is long for a shell to start
    try:
        assert await gone(child), "a process the hook started outlived its timeout"
    finally:
        kill(child)


# --- the documented recipe (docs/rotation.md): signal the server in a Pod ---

# The server: answers SIGHUP by writing its PID into argv[2] and exiting; says it is ready through the FIFO argv[1].
SERVER = """
import os, signal, sys
def reload(*_):
    open(sys.argv[2], "w").write(str(os.getpid()))
    sys.exit(0)
signal.signal(signal.SIGHUP, reload)
open(sys.argv[1], "w").write("ready")
while True:
    signal.pause()
"""


def readme_recipe() -> dict[str, Any]:
    """The Pod of the documented DCR_ON_CHANGE recipe (its yaml block in docs/rotation.md)."""
    text = (ROOT / "docs" / "rotation.md").read_text()
    found = re.search(r"To signal the server.*?```yaml\n(.*?)```", text, re.DOTALL)
    assert found is not None, "docs/rotation.md shows no DCR_ON_CHANGE recipe"
    return dict(yaml.safe_load(textwrap.dedent(found.group(1)))["spec"])


def as_kubernetes_passes_it(text: str) -> str:
    """A command or env value as the kubelet hands it on when no variable it names is defined: ``$$`` becomes
    ``$`` and ``$(anything)`` stays as written."""
    return text.replace("$$", "$")


async def test_the_readme_hook_recipe_signals_the_server(tmp_path: Path) -> None:
    """The documented server command records the server's PID; its DCR_ON_CHANGE, run by on_change, signals it."""
    spec = readme_recipe()
    assert spec["shareProcessNamespace"] is True
    env = {e["name"]: e["value"] for e in spec["initContainers"][0]["env"]}
    hook = as_kubernetes_passes_it(env["DCR_ON_CHANGE"]).replace("/run/app/pid", str(tmp_path / "pid"))
    (tmp_path / "server.py").write_text(SERVER)
    ready, got = tmp_path / "ready", tmp_path / "got"
    os.mkfifo(ready)
    server = f"{sys.executable} {tmp_path / 'server.py'} {ready} {got}"
    command = [
        as_kubernetes_passes_it(part)
        .replace("/run/app/pid", str(tmp_path / "pid"))
        .replace("python /app/server.py", server)
        for part in spec["containers"][0]["command"]
    ]
    app = await asyncio.create_subprocess_exec(*command)
    try:
        assert await read_gate(ready) == "ready"
        assert (tmp_path / "pid").read_text().strip() == str(app.pid)  # exec kept the PID the shell wrote
        assert await hooks.on_change(hook, 30) == 0
        assert await asyncio.wait_for(app.wait(), 60) == 0  # a bound against a hang, not a timing
        assert got.read_text() == str(app.pid)
    finally:
        if app.returncode is None:
            app.kill()
            await app.wait()
