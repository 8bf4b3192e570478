"""A Docker engine, Compose v2 and the images for the container tests, without a container registry.

- **Engine**: one that answers is used as it is. Otherwise, as root on Linux, ``docker.io`` is installed from
  apt when missing and ``dockerd`` is started in the background with its default data root
  (``/var/lib/docker``, so images outlive a fresh clone of the repository), falling back to
  ``--iptables=false`` and then ``--storage-driver=vfs``; the caller stops it by its PID.
- **Compose v2**, when ``docker compose`` is missing, is built once from its Go module and cached outside the
  checkout, at ``${XDG_CACHE_HOME:-~/.cache}/dcr-bootstrap/compose/<version>/docker-compose``; the tests
  use it as a CLI plugin through ``DOCKER_CONFIG``.
- **Base images**: the official ones when a registry answers; otherwise local stand-ins, built and tagged
  with the official names (and the label ``dcr-bootstrap.standin``): Debian bookworm from
  ``debootstrap --variant=minbase``, Python on it, and Keycloak from its official distribution zip.
- **The compose stack** (:class:`ComposeStack`): ``docker compose up --build`` in the background under a
  deadline, with every service's log kept in a folder.

Nothing here prints a secret.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from harness.keycloak import KEYCLOAK_VERSION, ROOT, ensure_distribution
from harness.process import apt_get

CACHE = Path(
    os.environ.get("DCR_DOCKER_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dcr-bootstrap"
)
LOGS = Path(os.environ.get("DCR_CONTAINER_LOGS", ROOT / ".cache" / "test-logs" / "containers"))
IMAGES = ROOT / "harness" / "images"
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_MODULE = "github.com/docker/compose/v2"
COMPOSE_VERSION = os.environ.get("DCR_COMPOSE_VERSION", "v2.40.3")
STANDIN_DEBIAN = "dcr-standin/debian:bookworm"
STANDIN_LABEL = "dcr-bootstrap.standin"
PYTHON_IMAGE = "python:3.12-slim-bookworm"

# (step, seconds), in the order they ran; the tests print them.
TIMINGS: list[tuple[str, float]] = []


class EngineUnavailable(RuntimeError):
    """No Docker engine (or Compose v2) could be used or started here; the message says why."""


def _log(message: str) -> None:
    print(f"[docker] {message}", flush=True)


@contextlib.contextmanager
def timed(step: str) -> Iterator[None]:
    """Record how long ``step`` took in :data:`TIMINGS`."""
    start = time.monotonic()
    try:
        yield
    finally:
        TIMINGS.append((step, time.monotonic() - start))


def _run(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise EngineUnavailable(f"{' '.join(argv[:3])} did not finish within {timeout:.0f}s") from None
    if proc.returncode != 0:
        raise EngineUnavailable(f"{' '.join(argv[:3])} failed ({proc.returncode}): {proc.stderr.strip()[-600:]}")
    return proc.stdout


def docker(env: dict[str, str], *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI; the caller checks the result."""
    return subprocess.run(["docker", *argv], env=env, capture_output=True, text=True, timeout=timeout, check=False)


# --- the engine


def _engine_answers(env: dict[str, str]) -> bool:
    if shutil.which("docker", path=env.get("PATH")) is None:
        return False
    try:
        return docker(env, "info", "--format", "{{.ServerVersion}}", timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@dataclass
class Engine:
    """A usable engine: the environment for the docker CLI, and the daemon we started (if any)."""

    env: dict[str, str]
    pid: int | None = None
    notes: list[str] = field(default_factory=list)

    def stop(self) -> None:
        """Stop the daemon we started, by its PID; leave an engine we found alone."""
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
                os.kill(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                return
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


def _start_dockerd(extra: list[str], env: dict[str, str], deadline_s: float = 90) -> int:
    CACHE.mkdir(parents=True, exist_ok=True)
    log_path = CACHE / "dockerd.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(["dockerd", *extra], stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EngineUnavailable(f"dockerd {' '.join(extra)} exited {proc.returncode} (log: {log_path})")
        if _engine_answers(env):
            return proc.pid
        time.sleep(0.2)
    proc.terminate()
    proc.wait(timeout=30)
    raise EngineUnavailable(f"dockerd {' '.join(extra)} did not answer within {deadline_s:.0f}s (log: {log_path})")


def ensure_engine() -> Engine:
    """A running engine: the one found, or ``docker.io`` installed and ``dockerd`` started (root on Linux)."""
    env = dict(os.environ)
    if _engine_answers(env):
        return Engine(env)
    if platform.system() != "Linux" or os.geteuid() != 0:
        raise EngineUnavailable("no Docker engine answers, and starting one here needs root on Linux")
    with timed("engine: install and start"):
        if shutil.which("dockerd") is None or shutil.which("docker") is None:
            _log("installing docker.io from apt")
            apt_get("update", timeout=900)
            apt_get("install", "-y", "--no-install-recommends", "docker.io", timeout=900)
        errors: list[str] = []
        for extra in ([], ["--iptables=false"], ["--storage-driver=vfs", "--iptables=false"]):
            try:
                pid = _start_dockerd(extra, env)
            except EngineUnavailable as exc:
                errors.append(str(exc))
                continue
            driver = docker(env, "info", "--format", "{{.Driver}}").stdout.strip()
            _log(f"started dockerd (pid {pid}, storage {driver}, {' '.join(extra) or 'default options'})")
            return Engine(env, pid, errors)
    raise EngineUnavailable("dockerd did not start: " + "; ".join(errors))


# --- Compose v2


def compose_version(env: dict[str, str]) -> str | None:
    """The version of ``docker compose`` when it is v2, else None."""
    try:
        proc = docker(env, "compose", "version", "--short", timeout=30)
    except subprocess.TimeoutExpired:
        return None
    version = proc.stdout.strip().lstrip("v")
    return version if proc.returncode == 0 and version.startswith("2.") else None


def build_compose(env: dict[str, str], version: str = COMPOSE_VERSION) -> Path:
    """The Compose binary of ``version``, built from its Go module the first time (minutes on a cold Go cache)."""
    binary = CACHE / "compose" / version / "docker-compose"
    if binary.exists():
        return binary
    if shutil.which("go", path=env.get("PATH")) is None:
        raise EngineUnavailable("docker compose v2 is missing and Go (to build it) is not installed")
    _log(f"building Compose {version} from its Go module (minutes on a cold Go cache)")
    with timed(f"compose {version}: go build"):
        info = json.loads(
            _run(["go", "mod", "download", "-json", f"{COMPOSE_MODULE}@{version}"], env=env, timeout=1800)
        )
        binary.parent.mkdir(parents=True, exist_ok=True)
        partial = binary.with_suffix(".partial")
        ldflags = f"-s -w -X {COMPOSE_MODULE}/internal.Version={version}"
        # `go install` refuses the module (its go.mod has exclude directives), so build it where it lies.
        goflags = f"{env.get('GOFLAGS', '')} -mod=mod".strip()
        _run(
            ["nice", "-n", "10", "go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(partial), "./cmd"],
            env={**env, "CGO_ENABLED": "0", "GOFLAGS": goflags},
            cwd=Path(info["Dir"]),
            timeout=3600,
        )
        partial.replace(binary)
    return binary


def ensure_compose(env: dict[str, str]) -> str:
    """Make ``docker compose`` (v2) work in ``env``: the installed one, else ours as a CLI plugin."""
    found = compose_version(env)
    if found:
        return found
    binary = build_compose(env)
    plugins = CACHE / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / "docker-compose"
    if not link.exists() or link.resolve() != binary.resolve():
        link.unlink(missing_ok=True)
        link.symlink_to(binary)
    env["DOCKER_CONFIG"] = str(CACHE / "docker-config")
    found = compose_version(env)
    if not found:
        raise EngineUnavailable(f"the Compose binary {binary} does not work as a docker CLI plugin")
    return found


# --- base images: the official ones when a registry answers, local stand-ins otherwise


def has_image(env: dict[str, str], ref: str) -> bool:
    return docker(env, "image", "inspect", ref).returncode == 0


def is_standin(env: dict[str, str], ref: str) -> bool:
    proc = docker(env, "image", "inspect", "--format", f'{{{{index .Config.Labels "{STANDIN_LABEL}"}}}}', ref)
    return proc.stdout.strip() == "true"


def _pulled(env: dict[str, str], ref: str) -> bool:
    if os.environ.get("DCR_DOCKER_PULL", "1") == "0":
        return False
    try:
        with timed(f"pull {ref}"):
            return docker(env, "pull", "-q", ref, timeout=90).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in path.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    sources = Path("/etc/apt/sources.list")
    for line in sources.read_text().splitlines() if sources.exists() else []:
        parts = line.split()
        if parts[:1] == ["deb"] and "security" not in line:
            return parts[-3] if parts[1].startswith("[") else parts[1]
    raise EngineUnavailable("no Debian mirror in this machine's apt sources for debootstrap")


def build_image(env: dict[str, str], tag: str, context: Path, dockerfile: Path, *args: str) -> None:
    argv = ["docker", "build", "--network", "host", "-q", "-t", tag, "-f", str(dockerfile), *args, str(context)]
    with timed(f"build {tag}"):
        _run(argv, env=env, timeout=1800)


def ensure_debian_base(env: dict[str, str]) -> str:
    """A bookworm image from ``debootstrap --variant=minbase`` (the root file system is cached too)."""
    if has_image(env, STANDIN_DEBIAN):
        return STANDIN_DEBIAN
    rootfs = CACHE / "rootfs-bookworm"
    # debootstrap removes its own work folder last: its absence with a debian_version means it finished.
    if not (rootfs / "etc" / "debian_version").exists() or (rootfs / "debootstrap").exists():
        if shutil.which("debootstrap") is None:
            apt_get("install", "-y", "--no-install-recommends", "debootstrap", timeout=900)
        shutil.rmtree(rootfs, ignore_errors=True)
        _log("no registry: building a Debian bookworm stand-in with debootstrap (minutes)")
        with timed("debootstrap bookworm"):
            _run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), _debian_mirror()], env=env, timeout=1800)
    with timed(f"import {STANDIN_DEBIAN}"):
        # Package archives and lists are of no use in a base image (the official one has none either).
        excludes = ["--exclude=./var/cache/apt/*.bin", "--exclude=./var/cache/apt/archives/*.deb"]
        excludes += ["--exclude=./var/lib/apt/lists/*"]
        tar = subprocess.Popen(
            ["tar", "-C", str(rootfs), *excludes, "-c", "."],
            stdout=subprocess.PIPE,
        )
        imported = subprocess.run(
            ["docker", "import", "--change", f"LABEL {STANDIN_LABEL}=true", "-", STANDIN_DEBIAN],
            env=env,
            stdin=tar.stdout,
            capture_output=True,
            check=False,
        )
        tar.wait()
    if imported.returncode != 0 or tar.returncode != 0:
        raise EngineUnavailable(f"docker import failed: {imported.stderr.decode(errors='replace')[-400:]}")
    return STANDIN_DEBIAN


def ensure_python_base(env: dict[str, str], tag: str = PYTHON_IMAGE) -> str:
    """``tag`` as found or pulled, or a stand-in built and tagged with that name (and said so)."""
    if has_image(env, tag) or _pulled(env, tag):
        return tag
    debian = ensure_debian_base(env)
    context = CACHE / "python-context"
    shutil.rmtree(context, ignore_errors=True)
    (context / "ca").mkdir(parents=True)
    for cert in Path("/usr/local/share/ca-certificates").glob("**/*.crt"):
        shutil.copy2(cert, context / "ca" / cert.name)
    _log(f"no registry: building a stand-in for {tag} (Debian's Python in a venv on PATH)")
    build_image(env, tag, context, IMAGES / "python" / "Dockerfile", "--build-arg", f"DEBIAN_IMAGE={debian}")
    return tag


def _link_or_copy(src: str, dst: str) -> object:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def ensure_keycloak_image(env: dict[str, str], tag: str) -> str:
    """``tag`` as found or pulled, or a stand-in from the official distribution zip (the harness's cache)."""
    if has_image(env, tag) or _pulled(env, tag):
        return tag
    debian = ensure_debian_base(env)
    home = ensure_distribution(tag.rsplit(":", 1)[-1] if ":" in tag else KEYCLOAK_VERSION)
    context = CACHE / "keycloak-context"
    shutil.rmtree(context, ignore_errors=True)
    # Without the harness's runtime data: the image starts with an empty data folder, as the official one.
    shutil.copytree(
        home, context, ignore=lambda d, names: ["data"] if Path(d) == home else [], copy_function=_link_or_copy
    )
    (context / "data").mkdir()
    _log(f"no registry: building a stand-in for {tag} from the official distribution")
    build_image(env, tag, context, IMAGES / "keycloak" / "Dockerfile", "--build-arg", f"DEBIAN_IMAGE={debian}")
    shutil.rmtree(context, ignore_errors=True)
    return tag


def compose_images(compose_file: Path = COMPOSE_FILE) -> dict[str, str]:
    """``service -> image`` for the services that are pulled rather than built."""
    import yaml

    services: dict[str, Any] = yaml.safe_load(compose_file.read_text())["services"]
    return {name: str(svc["image"]) for name, svc in services.items() if "build" not in svc and "image" in svc}


def image_facts(env: dict[str, str], ref: str) -> dict[str, Any]:
    """Size (MB), user and whether it is a local stand-in."""
    info = json.loads(docker(env, "image", "inspect", ref).stdout)[0]
    labels = info["Config"].get("Labels") or {}
    return {
        "image": ref,
        "size_mb": round(info["Size"] / 1e6),
        "user": info["Config"].get("User") or "root",
        "standin": labels.get(STANDIN_LABEL) == "true",
    }


# --- the compose stack


def _http_status(url: str, headers: dict[str, str] | None = None, timeout: float = 5) -> int | None:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def _timestamp(value: str) -> datetime:
    """Docker's RFC 3339 time with nanoseconds, as an aware datetime (microseconds)."""
    value = re.sub(r"(\.\d{6})\d*", r"\1", value.replace("Z", "+00:00"))
    return datetime.fromisoformat(value)


@dataclass
class ComposeStack:
    """One compose project of ``docker-compose.yml`` with its own name and loopback ports."""

    env: dict[str, str]
    project: str
    keycloak_port: int
    mcp_port: int
    logs: Path
    compose_file: Path = COMPOSE_FILE
    services: tuple[str, ...] = ("dev-secrets", "keycloak", "initial-token", "bootstrap", "mcp-server")
    _up: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _up_log: IO[bytes] | None = field(default=None, repr=False)
    _up_log_path: Path | None = field(default=None, repr=False)
    phase_start: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        self.env = {
            **self.env,
            "DCR_KEYCLOAK_PORT": str(self.keycloak_port),
            "DCR_MCP_PORT": str(self.mcp_port),
            "COMPOSE_PROJECT_NAME": self.project,
        }
        self.logs.mkdir(parents=True, exist_ok=True)

    @property
    def keycloak_url(self) -> str:
        return f"http://127.0.0.1:{self.keycloak_port}"

    @property
    def mcp_url(self) -> str:
        return f"http://127.0.0.1:{self.mcp_port}/mcp"

    def volume(self, name: str) -> str:
        return f"{self.project}_{name}"

    @property
    def network(self) -> str:
        return f"{self.project}_default"

    def compose(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return docker(self.env, "compose", "-p", self.project, "-f", str(self.compose_file), *argv, timeout=timeout)

    def up(self, phase: str, deadline_s: float = 600) -> None:
        """``docker compose up --build`` in the background; return once the MCP server answers on its port.

        Raises AssertionError (naming the logs folder) when a one-shot service fails, ``up`` ends, or the
        deadline passes first.
        """
        self.phase_start = datetime.now(UTC)
        self._up_log_path = self.logs / f"{phase}.up.log"
        self._up_log = self._up_log_path.open("wb")
        argv = ["docker", "compose", "-p", self.project, "-f", str(self.compose_file), "up", "--build"]
        self._up = subprocess.Popen(argv, env=self.env, stdout=self._up_log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + deadline_s
        with timed(f"stack {phase}: up until the MCP server answers"):
            while True:
                failed = self.failed_services()
                if failed:
                    self.save_logs(phase)
                    raise AssertionError(f"{phase}: {', '.join(failed)} failed; logs in {self.logs}")
                if self._up.poll() is not None:
                    self.save_logs(phase)
                    raise AssertionError(f"{phase}: compose up ended ({self._up.returncode}); logs in {self.logs}")
                if self.mcp_accepted() and _http_status(self.mcp_url, timeout=2) is not None:
                    return
                if time.monotonic() > deadline:
                    self.save_logs(phase)
                    raise AssertionError(f"{phase}: the stack was not up within {deadline_s:.0f}s; logs in {self.logs}")
                time.sleep(1)

    def mcp_accepted(self) -> bool:
        """The MCP server logged, since this phase began, that Keycloak accepted its credentials."""
        return "Keycloak accepted the credentials" in self.logs_of("mcp-server", since=self.phase_start)

    def states(self) -> dict[str, dict[str, Any]]:
        """``service -> {status, exit, started, finished}`` of the project's containers."""
        ids = self.compose("ps", "--all", "--quiet", timeout=60).stdout.split()
        if not ids:
            return {}
        inspected = json.loads(docker(self.env, "inspect", *ids, timeout=60).stdout or "[]")
        return {
            str(c["Config"]["Labels"]["com.docker.compose.service"]): {
                "status": c["State"]["Status"],
                "exit": int(c["State"]["ExitCode"]),
                "started": _timestamp(c["State"]["StartedAt"]),
                "finished": _timestamp(c["State"]["FinishedAt"]),
            }
            for c in inspected
        }

    def failed_services(self) -> list[str]:
        """Services whose container ended with a non-zero status since this phase began."""
        return [
            f"{name} (exit {row['exit']})"
            for name, row in self.states().items()
            if row["status"] == "exited" and row["exit"] != 0 and row["finished"] > self.phase_start
        ]

    def exit_code(self, service: str) -> int | None:
        """The exit status of ``service``'s container when it ended in this phase, else None."""
        row = self.states().get(service)
        if row is None or row["status"] != "exited" or row["finished"] <= self.phase_start:
            return None
        return int(row["exit"])

    def logs_of(self, service: str, since: datetime | None = None) -> str:
        extra = ["--since", since.isoformat()] if since else []
        return self.compose("logs", "--no-color", "--no-log-prefix", *extra, service, timeout=60).stdout

    def save_logs(self, phase: str) -> Path:
        """Every service's log (and the states) under ``logs/<phase>/``; returns that folder."""
        folder = self.logs / phase
        folder.mkdir(parents=True, exist_ok=True)
        for service in self.services:
            proc = self.compose("logs", "--no-color", "--timestamps", service, timeout=60)
            (folder / f"{service}.log").write_text(proc.stdout + proc.stderr)
        (folder / "ps.json").write_text(json.dumps(self.states(), indent=2, default=str))
        return folder

    def _wait_up_ended(self, timeout: float = 120) -> None:
        if self._up is not None:
            try:
                self._up.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._up.terminate()
                self._up.wait(timeout=30)
            self._up = None
        if self._up_log is not None:
            self._up_log.close()
            self._up_log = None

    def transition(self, phase: str, *argv: str) -> None:
        """Save the logs of ``phase``, then run ``docker compose ARGV`` (stop, down, down -v)."""
        self.save_logs(phase)
        with timed(f"stack {phase}: compose {' '.join(argv)}"):
            proc = self.compose(*argv, timeout=300)
            self._wait_up_ended()
        if proc.returncode != 0:
            raise AssertionError(f"compose {' '.join(argv)} failed: {proc.stderr[-800:]}")

    def run_in_volume(self, volume: str, script: str, image: str = "dcr-bootstrap:dev") -> str:
        """Run a Python ``script`` as root with ``volume`` at /v; return its stdout (it must print no secret)."""
        proc = docker(
            self.env,
            "run",
            "--rm",
            "--user",
            "0",
            "-v",
            f"{self.volume(volume)}:/v:ro",
            "--entrypoint",
            "python",
            image,
            "-c",
            script,
        )
        if proc.returncode != 0:
            raise AssertionError(f"reading volume {volume} failed: {proc.stderr[-800:]}")
        return proc.stdout

    def teardown(self) -> None:
        """``down -v``: no container, network or volume of the project is left."""
        with contextlib.suppress(Exception):
            self.save_logs("final")
        with timed("stack: down -v (cleanup)"):
            self.compose("down", "-v", "--remove-orphans", "--timeout", "20", timeout=300)
            self._wait_up_ended()
