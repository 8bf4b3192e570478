"""A real Kubernetes API server for tests: etcd + kube-apiserver on loopback, like envtest.

* ``ensure_binaries()`` returns etcd, kube-apiserver and kubectl, building them the first time into
  ``${XDG_CACHE_HOME:-~/.cache}/dcr-bootstrap/kube/v<version>/`` (``KUBE_CACHE`` overrides the
  ``kube`` folder): outside the checkout, so every clone on the machine (CI's fresh one too) reuses
  them, like Go's own module and build caches. ``k8s.io/kubernetes`` cannot be ``go install``ed
  (its go.mod replaces the staging modules with local folders), so a scratch module in
  ``<cache>/build/v<version>`` requires it plus every ``k8s.io/*`` staging module at the matching
  ``v0.x.y``, each pinned by a ``replace``, and builds ``cmd/kube-apiserver`` and ``cmd/kubectl``
  with the version stamped by ``-ldflags -X``. etcd is Debian's ``etcd-server`` when it is 3.5 or
  later, otherwise built from ``go.etcd.io/etcd/server/v3`` (a main calling ``etcdmain.Main``).
* ``KubeServer`` starts etcd and kube-apiserver on free loopback ports with a self-made CA and
  serving certificate, a static admin token (``system:masters``), RBAC, service-account signing
  keys (so ``TokenRequest`` issues real tokens) and Pod Security admission; it polls ``/readyz``.
  No controller-manager runs: create namespaces and ServiceAccounts yourself.
  Both processes run in one process group beside a watchdog reading a pipe held by this process;
  when the pipe closes (``stop()``, exit, crash, SIGKILL of the owner) the group is terminated.

Usage: ``python -m harness.kube build`` (build or reuse), ``python -m harness.kube start`` (smoke).
Only loopback addresses are ever used.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import fcntl
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.cli import printing, run_command
from harness.keycloak import LOOPBACK, free_port
from harness.process import HarnessError, answers_200, apt_get, await_ready, log_tail, spawn, stop_group

KUBE_VERSION = os.environ.get("KUBE_VERSION", "1.37.2")
ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(
    os.environ.get("KUBE_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dcr-bootstrap" / "kube"
)
ETCD_MODULE_VERSION = os.environ.get("KUBE_ETCD_VERSION", "v3.6.16")

ADMIN_GROUP = "system:masters"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"


def _log(message: str) -> None:
    print(f"[kube-harness] {message}", file=sys.stderr, flush=True)


def _run(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise HarnessError(f"{' '.join(args[:3])} ... failed ({proc.returncode}):\n{tail}")
    return proc.stdout


def bin_dir(version: str = KUBE_VERSION) -> Path:
    return CACHE / f"v{version}"


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GOFLAGS", "-mod=mod")
    env["CGO_ENABLED"] = "0"
    return env


def _staging_modules(version: str) -> list[str]:
    """The k8s.io/* modules k8s.io/kubernetes@v<version> replaces with local staging folders."""
    info = json.loads(_run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@v{version}"], env=_go_env()))
    gomod = Path(info["GoMod"]).read_text()
    names = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/", gomod, flags=re.MULTILINE)
    if not names:
        raise HarnessError("no staging replaces found in k8s.io/kubernetes go.mod")
    return sorted(set(names))


def _write_scratch_module(build: Path, version: str) -> None:
    staging = "v0." + version.split(".", 1)[1]
    modules = _staging_modules(version)
    lines = ["module dcrbootstrap.local/kubebuild", "", "go 1.25", "", "require ("]
    lines.append(f"\tk8s.io/kubernetes v{version}")
    lines += [f"\t{m} {staging}" for m in modules]
    lines += [")", "", "replace ("]
    lines += [f"\t{m} => {m} {staging}" for m in modules]
    lines += [")", ""]
    build.mkdir(parents=True, exist_ok=True)
    (build / "go.mod").write_text("\n".join(lines))
    (build / "tools.go").write_text(
        "//go:build tools\n\npackage tools\n\nimport (\n"
        '\t_ "k8s.io/kubernetes/cmd/kube-apiserver"\n\t_ "k8s.io/kubernetes/cmd/kubectl"\n)\n'
    )


def _ldflags(version: str) -> str:
    major, minor, _ = version.split(".")
    pkg = "k8s.io/component-base/version"
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    flags = [
        f"-X {pkg}.gitVersion=v{version}",
        f"-X {pkg}.gitMajor={major}",
        f"-X {pkg}.gitMinor={minor}",
        f"-X {pkg}.gitTreeState=clean",
        f"-X {pkg}.buildDate={now}",
        "-s -w",
    ]
    # client-go carries its own copy of the version for the User-Agent.
    flags += [f.replace(pkg, "k8s.io/client-go/pkg/version") for f in flags[:3]]
    return " ".join(flags)


def _build_kube(version: str, out: Path) -> None:
    build = CACHE / "build" / f"v{version}"
    _write_scratch_module(build, version)
    env = _go_env()
    _log(f"building kube-apiserver and kubectl v{version} (cold: ~10 min, ~3 GB go cache)")
    _run(["go", "mod", "tidy", "-e"], cwd=build, env=env)
    for cmd in ("kube-apiserver", "kubectl"):
        tmp = out / f".{cmd}.tmp"
        _run(
            [
                "go",
                "build",
                "-p",
                os.environ.get("KUBE_BUILD_JOBS", "2"),
                "-trimpath",
                "-ldflags",
                _ldflags(version),
                "-o",
                str(tmp),
                f"k8s.io/kubernetes/cmd/{cmd}",
            ],
            cwd=build,
            env=env,
        )
        tmp.rename(out / cmd)


def _etcd_supported(etcd: Path) -> bool:
    """kube-apiserver 1.37 needs etcd 3.5 or later (Debian bookworm ships 3.4)."""
    try:
        out = subprocess.run([str(etcd), "--version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return False
    found = re.search(r"etcd Version: (\d+)\.(\d+)", out)
    return found is not None and (int(found[1]), int(found[2])) >= (3, 5)


def _build_etcd(out: Path) -> None:
    system = shutil.which("etcd")
    if system is None and os.geteuid() == 0 and shutil.which("apt-get"):
        with contextlib.suppress(HarnessError):
            apt_get("update", "-qq")
            apt_get("install", "-y", "-qq", "--no-install-recommends", "etcd-server")
            system = shutil.which("etcd")
    if system is not None and _etcd_supported(Path(system)):
        (out / "etcd").symlink_to(system)
        return
    build = CACHE / "build" / "etcd"
    build.mkdir(parents=True, exist_ok=True)
    (build / "go.mod").write_text(
        f"module dcrbootstrap.local/etcd\n\ngo 1.25\n\nrequire go.etcd.io/etcd/server/v3 {ETCD_MODULE_VERSION}\n"
    )
    (build / "main.go").write_text(
        'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\n'
        "func main() { etcdmain.Main(os.Args) }\n"
    )
    env = _go_env()
    _log(f"building etcd {ETCD_MODULE_VERSION}")
    _run(["go", "mod", "tidy", "-e"], cwd=build, env=env)
    _run(["go", "build", "-p", "2", "-trimpath", "-o", str(out / ".etcd.tmp"), "."], cwd=build, env=env)
    (out / ".etcd.tmp").rename(out / "etcd")


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    apiserver: Path
    kubectl: Path


def ensure_binaries(version: str = KUBE_VERSION) -> Binaries:
    """Return the cached binaries, building the missing ones first."""
    out = bin_dir(version)
    out.mkdir(parents=True, exist_ok=True)
    # Two checkouts (a developer's and CI's) may test at once: one builds, the other waits and reuses.
    with (CACHE / ".build.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_binaries_locked(version, out)


def _ensure_binaries_locked(version: str, out: Path) -> Binaries:
    started = time.monotonic()
    built = False
    if not (out / "etcd").exists() or not _etcd_supported(out / "etcd"):
        (out / "etcd").unlink(missing_ok=True)
        _build_etcd(out)
        built = True
    if not ((out / "kube-apiserver").exists() and (out / "kubectl").exists()):
        if shutil.which("go") is None:
            raise HarnessError("Go 1.24+ is needed to build etcd and kube-apiserver once; install it and run again")
        _build_kube(version, out)
        built = True
    if built:
        _log(f"binaries built in {time.monotonic() - started:.0f}s into {out}")
    return Binaries(out / "etcd", out / "kube-apiserver", out / "kubectl")


def _write_pki(pki: Path, host: str = LOOPBACK) -> None:
    """A CA, a serving certificate for ``host``, a client CA (for kubeconfigs with certificates), and a
    service-account signing key."""
    from harness.tls import write_ca, write_ca_and_server_cert, write_rsa_key_pair

    pki.mkdir(parents=True, exist_ok=True)
    write_ca_and_server_cert(
        pki / "ca.crt",
        pki / "server.crt",
        pki / "server.key",
        hosts=tuple(dict.fromkeys(("localhost", "kubernetes.default.svc", "kubernetes.default", LOOPBACK, host))),
        common_name="kube-apiserver",
    )
    write_ca(pki / "client-ca.crt", pki / "client-ca.key", "dcr-bootstrap test client CA")
    write_rsa_key_pair(pki / "sa.key", pki / "sa.pub")
    for path in pki.iterdir():
        path.chmod(0o600)


def _command(binary: Path, **flags: object) -> list[str]:
    """``binary --flag=value ...`` in the order given; a keyword's underscores become dashes."""
    return [str(binary), *(f"--{name.replace('_', '-')}={value}" for name, value in flags.items())]


@dataclass
class KubeServer:
    """etcd + kube-apiserver in one process group on loopback ports."""

    binaries: Binaries = field(default_factory=ensure_binaries)
    port: int = field(default_factory=free_port)
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    admin_token: str = field(default_factory=lambda: uuid.uuid4().hex, repr=False)
    workdir: Path | None = None
    # Where the API server listens, and a command prefix for both processes (``nsenter --net=...`` puts them
    # in a network namespace of the caller's; a real node's Pods reach the server there).
    host: str = LOOPBACK
    launcher: tuple[str, ...] = ()
    extra_flags: dict[str, str] = field(default_factory=dict)
    startup_seconds: float | None = None
    rss_mib: float | None = None
    _proc: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ca_file(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "pki" / "ca.crt"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "apiserver.log"

    @property
    def pgid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def spawn(self) -> KubeServer:
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="dcr-kube-")
            self.workdir = Path(self._tmp.name)
        pki = self.workdir / "pki"
        _write_pki(pki, self.host)
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(f'{self.admin_token},test-admin,test-admin,"{ADMIN_GROUP}"\n')
        tokens.chmod(0o600)
        etcd_url = f"http://{LOOPBACK}:{self.etcd_port}"
        peer_url = f"http://{LOOPBACK}:{self.etcd_peer_port}"
        etcd = _command(
            self.binaries.etcd,
            data_dir=self.workdir / "etcd",
            listen_client_urls=etcd_url,
            advertise_client_urls=etcd_url,
            listen_peer_urls=peer_url,
            initial_advertise_peer_urls=peer_url,
            initial_cluster=f"default={peer_url}",
            log_level="warn",
        )
        apiserver = _command(
            self.binaries.apiserver,
            etcd_servers=etcd_url,
            bind_address=self.host,
            advertise_address=self.host,
            secure_port=self.port,
            cert_dir=pki,
            tls_cert_file=pki / "server.crt",
            tls_private_key_file=pki / "server.key",
            token_auth_file=tokens,
            client_ca_file=pki / "client-ca.crt",
            authorization_mode="RBAC",
            service_account_issuer=SA_ISSUER,
            service_account_key_file=pki / "sa.pub",
            service_account_signing_key_file=pki / "sa.key",
            service_cluster_ip_range="10.96.0.0/24",
            enable_admission_plugins="NamespaceLifecycle,ServiceAccount,PodSecurity,ResourceQuota",
            allow_privileged="true",
            enable_priority_and_fairness="false",
            # The kubernetes Service's endpoint may not be a loopback address; nothing here needs it.
            endpoint_reconciler_type="none",
            v=1,
        ) + [f"--{name}={value}" for name, value in self.extra_flags.items()]
        import shlex

        # Either process exiting ends the group at once (wait_ready then shows the log), as does EOF on stdin.
        # SIGKILL, not SIGTERM: a terminating kube-apiserver whose etcd already left hangs for minutes, and
        # nothing here is worth a graceful shutdown (etcd's data is a temporary folder).
        script = (
            f"{{ {shlex.join([*self.launcher, *etcd])} </dev/null; kill -KILL 0; }} & "
            f"{{ {shlex.join([*self.launcher, *apiserver])} </dev/null; kill -KILL 0; }} & "
            "read -r _ || true; kill -KILL 0"
        )
        self._started_at = time.monotonic()
        self._proc = spawn(["sh", "-c", script], self.log_path)
        return self

    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def wait_ready(self, timeout: float = 60.0) -> KubeServer:
        assert self._proc is not None
        self.startup_seconds, self.rss_mib = await_ready(
            self._proc, self._started_at, self._ready, timeout, "kube-apiserver", self.log_tail, self.stop
        )
        _log(
            f"kube-apiserver v{KUBE_VERSION} ready at {self.url} in {self.startup_seconds:.1f}s, "
            f"RSS {self.rss_mib:.0f} MiB (etcd + apiserver)"
        )
        return self

    def _ready(self) -> bool:
        request = urllib.request.Request(f"{self.url}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"})
        return answers_200(request, self._ssl())

    def start(self, timeout: float = 60.0) -> KubeServer:
        return self.spawn().wait_ready(timeout)

    def stop(self, timeout: float = 20.0) -> None:
        if self._proc is not None:
            stop_group(self._proc, timeout)
            self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def log_tail(self, lines: int = 25) -> str:
        return log_tail(self.log_path if self.workdir is not None else None, lines)

    # -- clients ----------------------------------------------------------------------------------

    def kubeconfig(self, path: Path, token: str | None = None, namespace: str = "default") -> Path:
        """A JSON kubeconfig (kubectl reads JSON too) for the admin or the given token; mode 0600."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": base64.b64encode(self.ca_file.read_bytes()).decode(),
                    },
                }
            ],
            "users": [{"name": "test", "user": {"token": token or self.admin_token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}],
            "current-context": "test",
        }
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path

    def client_certificate(self, folder: Path, user: str, groups: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """A client certificate (and its key) the API server authenticates as ``user`` in ``groups``; mode 0600."""
        from harness.tls import write_client_cert

        assert self.workdir is not None
        pki = self.workdir / "pki"
        cert, key = folder / f"{user}.crt", folder / f"{user}.key"
        write_client_cert(pki / "client-ca.crt", pki / "client-ca.key", cert, key, user=user, groups=groups)
        for path in (cert, key):
            path.chmod(0o600)
        return cert, key

    def kubectl(self, *args: str, token: str | None = None, check: bool = True) -> str:
        assert self.workdir is not None
        config = self.kubeconfig(self.workdir / f"kubeconfig-{uuid.uuid4().hex[:8]}.json", token)
        try:
            proc = subprocess.run(
                [str(self.binaries.kubectl), f"--kubeconfig={config}", *args],
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )
        finally:
            config.unlink()
        if check and proc.returncode != 0:
            raise HarnessError(f"kubectl {' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout + proc.stderr if not check else proc.stdout

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, token: str | None = None) -> Any:
        """An admin REST call; returns the decoded JSON (raises HarnessError on HTTP errors)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {token or self.admin_token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=15, context=self._ssl()) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise HarnessError(f"{method} {path}: HTTP {exc.code}") from None

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.request("POST", "/api/v1/namespaces", {"metadata": {"name": name, "labels": labels or {}}})

    def create_service_account(self, namespace: str, name: str) -> None:
        self.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": name}})

    def service_account_token(self, namespace: str, name: str, seconds: int = 3600) -> str:
        """A real, signed service-account token from the TokenRequest API."""
        answer = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": seconds}},
        )
        return str(answer["status"]["token"])


def _start(_args: list[str]) -> int:
    server = KubeServer().start()
    try:
        print(server.kubectl("version", "-o", "json"))
    finally:
        server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    commands = {"build": printing(ensure_binaries), "start": _start}
    return run_command("kube", commands, "[build|start]", argv, default="build")


if __name__ == "__main__":
    sys.exit(main())
