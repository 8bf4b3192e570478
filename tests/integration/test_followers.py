"""Runs that share one folder and start together: the first registers, the ones that waited cost nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import base_env
from tests.fakeserver import IAT, FakeServer, serving_in_thread

RUNS = 30


def test_thirty_runs_at_once_on_one_folder_make_at_most_ten_requests_and_one_client(tmp_path: Path) -> None:
    """30 processes on one credentials folder: all succeed, one client exists, the server sees at most 10 requests."""
    with serving_in_thread(FakeServer()) as server:
        env = base_env(tmp_path) | {"DCR_ISSUER": server.base, "DCR_INITIAL_ACCESS_TOKEN": IAT}
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bootstrap"],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(RUNS)
        ]
        codes = [proc.wait(timeout=180) for proc in procs]
        requests = [f"{seen.method} {seen.path}" for seen in server.seen]
    assert codes == [0] * RUNS, [proc.stderr.read()[-300:] for proc in procs if proc.returncode and proc.stderr]
    assert len(server.clients) == 1
    assert len(requests) <= 10, requests
