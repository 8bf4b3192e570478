"""scripts/test.sh's leak check counts only the processes its own test session started."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TEST_SH = Path(__file__).resolve().parents[2] / "scripts" / "test.sh"


def found(session: str, pattern: str) -> set[int]:
    """The PIDs test.sh's ``session_processes`` reports for ``pattern`` in test session ``session``."""
    # The pattern goes in the environment, not the command line: pgrep -f would find this shell by it.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DCR_TEST_SESSION": session, "PATTERN": pattern}
    script = f'source "{TEST_SH}"; session_processes "$PATTERN"'
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    return {int(line.split()[0]) for line in out.splitlines()}


@dataclass
class Lookalikes:
    """Two processes with one command line: ``ours`` started in ``session``, ``theirs`` in another one."""

    session: str
    pattern: str
    ours: int
    theirs: int


@pytest.fixture
def lookalikes() -> Iterator[Lookalikes]:
    session, name = str(uuid.uuid4()), f"dcr-leak-probe-{uuid.uuid4().hex}"
    argv = [sys.executable, "-c", "import sys; sys.stdin.read()", name]  # lives until its stdin closes
    procs = [
        subprocess.Popen(argv, stdin=subprocess.PIPE, env={"DCR_TEST_SESSION": marker})
        for marker in (session, str(uuid.uuid4()))
    ]
    try:
        yield Lookalikes(session, f"{name}$", procs[0].pid, procs[1].pid)
    finally:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=30)


def test_the_leak_check_finds_a_server_its_session_started(lookalikes: Lookalikes) -> None:
    """A matching process that carries the session's DCR_TEST_SESSION is reported."""
    assert lookalikes.ours in found(lookalikes.session, lookalikes.pattern)


def test_the_leak_check_ignores_the_same_server_started_by_another_program(lookalikes: Lookalikes) -> None:
    """An identical command line without our session's mark (another checkout's tests, say) is not ours."""
    assert lookalikes.theirs not in found(lookalikes.session, lookalikes.pattern)
    assert found(str(uuid.uuid4()), lookalikes.pattern) == set()
