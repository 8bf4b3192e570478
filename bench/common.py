"""What every figure shares: the trees under test, the peers, measured processes and the Keycloak realm.

* ``Tree``: one version of dcr-bootstrap, run with this venv's interpreter and ``PYTHONPATH`` set to the
  tree, so "before" (a commit, unpacked with ``git archive``) and "after" (the working tree) use the
  same dependencies.
* ``measure``: one whole process, with wall time, CPU (user + sys) and peak RSS from ``os.wait4``
  (a process's usage includes the children it waited for).
* ``Peers``: node ``openid-client`` (pinned in ``peers/package.json``, installed with ``npm ci``),
  ``kcreg.sh`` from the same Keycloak distribution, curl.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PEERS = BENCH / "peers"
PYTHON = sys.executable
# What "before" means in docs/PERFORMANCE.md: a commit from before the performance changes (983a7cc on).
BEFORE_REV = "5575cf1"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Tree:
    """One version of dcr-bootstrap."""

    label: str
    path: Path

    def env(self, base: dict[str, str]) -> dict[str, str]:
        return base | {"PYTHONPATH": str(self.path)}

    def argv(self, *args: str) -> list[str]:
        return [PYTHON, "-m", "bootstrap", *args]

    def script(self, *args: str) -> list[str]:
        """The installed console script (``dcr-bootstrap``), which imports ``bootstrap.cli`` from PYTHONPATH."""
        return [str(Path(PYTHON).with_name("dcr-bootstrap")), *args]


def after_tree() -> Tree:
    return Tree("after", ROOT)


def before_tree(rev: str, into: Path) -> Tree:
    """``git archive REV`` unpacked into ``into`` (read-only for the repository)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "bootstrap"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return Tree("before", into)


def git_describe() -> str:
    def git(*args: str) -> str:
        result = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
        return result.stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "bootstrap"))
    return f"{head} + uncommitted changes in bootstrap/" if dirty else head


@dataclass(frozen=True)
class Run:
    wall: float
    user: float
    sys: float
    rss_mib: float
    code: int

    @property
    def cpu(self) -> float:
        return self.user + self.sys


def measure(
    argv: Sequence[str],
    env: dict[str, str],
    cwd: Path,
    *,
    output: Path | None = None,
    check: bool = True,
) -> Run:
    """Run one process to its end; its stdout and stderr go to ``output`` (or nowhere)."""
    sink = output.open("ab") if output is not None else subprocess.DEVNULL
    try:
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    finally:
        if output is not None and not isinstance(sink, int):
            sink.close()
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    if check and code != 0:
        tail = output.read_text(errors="replace")[-800:] if output is not None else ""
        raise RuntimeError(f"{argv[0]} {' '.join(argv[1:3])} exited {code}: {tail}")
    return Run(wall, usage.ru_utime, usage.ru_stime, usage.ru_maxrss / 1024, code)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def base_env(home: Path) -> dict[str, str]:
    """A small, fixed environment: nothing from the caller's shell leaks into a measured run."""
    return {
        "PATH": f"{Path(PYTHON).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        "LANG": "C.UTF-8",
    }


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="dcr-bench-"))


@dataclass
class Peers:
    kcreg: Path
    node: str | None = None
    curl: str | None = shutil.which("curl")
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def register_mjs(self) -> Path:
        return PEERS / "register.mjs"

    @property
    def poller(self) -> Path:
        return PEERS / "poll1s.sh"


def install_node_peers() -> str | None:
    """``npm ci`` into bench/peers/node_modules when it is missing or stale; the node binary, or None."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        log("node/npm not found: the openid-client peer is skipped")
        return None
    marker = PEERS / "node_modules" / ".package-lock.json"
    lock = PEERS / "package-lock.json"
    if not marker.exists() or marker.stat().st_mtime < lock.stat().st_mtime:
        log("npm ci in bench/peers")
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=PEERS,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            log(f"npm ci failed ({result.returncode}); the openid-client peer is skipped: {result.stderr[-400:]}")
            return None
    return node


def package_version(package_json: Path) -> str:
    try:
        return str(json.loads(package_json.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "?"


def command_version(argv: Sequence[str]) -> str:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (result.stdout or result.stderr).strip().splitlines()
    return text[0] if text else "?"


def spawn(
    argv: Sequence[str], env: dict[str, str], cwd: Path, output: Path, stdin: int = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """Start a process (stdout and stderr to ``output``) without waiting for it."""
    with output.open("wb") as sink:
        return subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=stdin, stdout=sink, stderr=sink)


def reap(proc: subprocess.Popen[bytes], *, block: bool = False) -> Run | None:
    """The process's exit code and usage if it has ended (or, with ``block``, once it has); else None.

    ``os.wait4`` with WNOHANG never blocks, so the asyncio loop may call this every few milliseconds.
    """
    pid, status, usage = os.wait4(proc.pid, 0 if block else os.WNOHANG)
    if not pid:
        return None
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    return Run(0.0, usage.ru_utime, usage.ru_stime, usage.ru_maxrss / 1024, code)


def kill(proc: subprocess.Popen[bytes]) -> Run:
    proc.kill()
    ended = reap(proc, block=True)
    assert ended is not None
    return ended
