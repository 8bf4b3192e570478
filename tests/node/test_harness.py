"""The node harness's promise: a node whose owner is killed (SIGKILL) leaves nothing on the machine."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.node import Layout, leftovers
from tests.node.conftest import Cluster
from tests.node.workloads import eventually

ROOT = Path(__file__).resolve().parents[2]


def _ready_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The line ``python -m harness.node up`` prints once its node is Ready."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readable, _, _ = select.select([proc.stdout], [], [], 0.5)
        if readable:
            line = proc.stdout.readline()
            if " Ready" in line:
                return line
        assert proc.poll() is None, f"harness.node up exited ({proc.returncode})"
    raise AssertionError(f"harness.node up was not Ready within {timeout:.0f}s")


def test_a_killed_owner_leaves_no_process_cgroup_namespace_veth_mount_or_folder(
    cluster: Cluster, tmp_path: Path
) -> None:
    """SIGKILL of `python -m harness.node up` (a second node beside the session's): all of it goes."""
    with (tmp_path / "up.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.node", "up"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        name = _ready_line(proc, 180).split()[1]
        layout = Layout.from_json((Path("/tmp") / name / "layout.json").read_text())
        assert layout.index != cluster.node.layout.index
        assert leftovers(layout), "the node under test should exist before the kill"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    apiserver = f"--advertise-address={layout.address}".encode()

    def servers() -> list[int]:
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if apiserver in cmdline.read_bytes():
                    found.append(int(cmdline.parent.name))
            except OSError:
                continue
        return found

    eventually(lambda: not leftovers(layout) and not layout.workdir.exists() and not servers(), 60, "all gone")
    assert cluster.node.is_ready(cluster.kube), "the session's node went with it"
