"""The unmodified example MCP server (``examples/mcp-server``) as a local process, and an MCP client for it.

The server runs from an environment of its own, created once from its pinned ``requirements.txt``
(cached in ``.cache/example-mcp-server``, rebuilt when the file changes), so that nothing of
dcr-bootstrap is importable by it: it reads the credentials file as any other server would. The
client side uses the MCP SDK's own client (streamable HTTP) from the project's environment.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from harness.keycloak import LOOPBACK, ROOT, free_port
from harness.process import HarnessError, await_ready, log_tail, spawn, stop_group

EXAMPLE = ROOT / "examples" / "mcp-server"
ENV_HOME = ROOT / ".cache" / "example-mcp-server"
# The same watchdog as Keycloak's: the server dies with the pipe this process holds.
_WATCHDOG = '"$@" </dev/null & read -r _ || true; kill -TERM 0'
ACCEPTED = "Keycloak accepted the credentials"


def _requirements_digest() -> str:
    return hashlib.sha256((EXAMPLE / "requirements.txt").read_bytes()).hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One creator at a time (the demo and a test session may both need the environment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _create_env(venv: Path) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    result = subprocess.run([*pip, "-r", str(EXAMPLE / "requirements.txt")], check=False)
    if result.returncode != 0:
        raise HarnessError(f"could not install {EXAMPLE / 'requirements.txt'} (pip exited {result.returncode})")


def ensure_env() -> Path:
    """The example server's interpreter, in its own environment from its pinned requirements (created once)."""
    venv, stamp = ENV_HOME / "venv", ENV_HOME / "installed"
    with _locked(ENV_HOME.with_suffix(".lock")):
        digest = _requirements_digest()
        if not stamp.exists() or stamp.read_text() != digest:
            print("[example-server] creating its environment from its pinned requirements", file=sys.stderr)
            _create_env(venv)
            stamp.write_text(digest)
    return venv / "bin" / "python"


def _refuses_without_token(url: str) -> bool:
    """Whether the MCP endpoint is up and answers an unauthenticated call with 401."""
    request = urllib.request.Request(url, data=b"{}", method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=2):
            return False
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class ExampleServer:
    """One example MCP server process (group) on a loopback port, reading ``client_file``."""

    python: Path
    client_file: Path
    keycloak_url: str
    realm: str
    log_path: Path
    port: int = field(default_factory=free_port)
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/mcp"

    def start(self, timeout: float = 180.0) -> ExampleServer:
        """Start it and wait until it has proven its credentials and refuses a call without a token."""
        env = {
            "PATH": "/usr/bin:/bin",
            "KEYCLOAK_URL": self.keycloak_url,
            "KEYCLOAK_REALM": self.realm,
            "DCR_CLIENT_FILE": str(self.client_file),
            "MCP_HOST": LOOPBACK,
            "MCP_PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
        }
        args = [str(self.python), str(EXAMPLE / "server.py")]
        self._proc = spawn(["sh", "-c", _WATCHDOG, "example-server-watchdog", *args], self.log_path, env)
        await_ready(
            self._proc, time.monotonic(), self._ready, timeout, "the example MCP server", self.log_tail, self.stop
        )
        return self

    def _ready(self) -> bool:
        return _refuses_without_token(self.url)

    def accepted_line(self) -> str:
        """The server's own log line saying Keycloak accepted its credentials."""
        lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if ACCEPTED in line]
        return lines[-1][lines[-1].index(ACCEPTED) :] if lines else "(not logged)"

    def stop(self, timeout: float = 15.0) -> None:
        if self._proc is not None:
            stop_group(self._proc, timeout)
            self._proc = None

    def log_tail(self, lines: int = 25) -> str:
        return log_tail(self.log_path, lines)


async def _tool_names(url: str, token: str) -> list[str]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        listed = await session.list_tools()
    return [tool.name for tool in listed.tools]


def list_tools(url: str, token: str) -> list[str]:
    """An MCP call through the SDK's client: initialize, then ``tools/list``; the tools' names."""
    return anyio.run(_tool_names, url, token)
