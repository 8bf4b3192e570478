"""A real Kubernetes node for tests: containerd, kubelet, kube-controller-manager and kube-scheduler.

Next to ``harness.kube`` (etcd + kube-apiserver), this runs the rest of a one-node cluster, so real Pods
start from the project's manifests: the kubelet pulls nothing (the images are imported), mounts the
volumes, projects service-account tokens, runs probes and sends SIGTERM on deletion, as on any node.

**Binaries.** ``ensure_node_binaries()`` builds kubelet, kube-controller-manager and kube-scheduler from
``k8s.io/kubernetes`` the way ``harness.kube`` builds kube-apiserver (a scratch module replacing the
staging modules, the version stamped by ``-ldflags -X``, ``CGO_ENABLED=0``), one ``go build -p 1`` at a
time under harness.kube's build lock (two cores, and a whole-machine lock: one Kubernetes build at a
time), into ``${XDG_CACHE_HOME:-~/.cache}/dcr-bootstrap/kube-node/v<version>/`` (``KUBE_NODE_CACHE``
overrides it): not under ``.../kube/``, whose leak check in scripts/test.sh means etcd and kube-apiserver.
A ``pause`` binary (a static Go program that waits for SIGTERM) is the sandbox image's only file; it is
imported into Docker with ``docker import`` and named ``localhost/dcr-node-pause:1`` (no registry).
containerd, runc and the CNI plugins come from Debian (``containerd``, ``runc``,
``containernetworking-plugins``, installed with apt when missing).

**Processes.** :class:`Node` spawns a watchdog (``python -m harness.node watchdog``, the leader of a
process group of its own, reading a pipe held by the owner, as in ``harness.process``). The watchdog
owns every resource and frees it when the pipe closes (``stop()``, exit, crash, SIGKILL of the owner):

* a network namespace ``dcr-node-<id>`` and a veth pair to the root namespace on a private
  ``10.250.<n>.0/30`` (host end ``.1``, node end ``.2``: the node's InternalIP), a default route inside
  via the host end, and in the root namespace a route to the Pods' ``10.251.<n>.0/24`` via the node, so
  the tests reach Pod IPs. ``<n>`` is the first one no interface of the root namespace uses. The
  dedicated kube-apiserver and Keycloak of the stage listen on the node address inside that namespace
  (``launcher``), so the test process (through the veth) and the Pods (on the node's CNI bridge) both
  reach them. There is no kube-proxy (and harness.kube's serving certificate does not name the
  ``kubernetes`` Service's ClusterIP, so a proxied connection to it would fail verification anyway):
  the tests give the tool ``KUBERNETES_SERVICE_HOST``/``PORT`` of the API server explicitly, and check
  the kubelet's own values (the ClusterIP and 443) separately. No DNS either (Pods get a resolv.conf
  naming nothing). No dummy interface: a veth pair is the one device both sides can use.
  The node's kube-apiserver (:meth:`Node.apiserver`) keeps its keys and token file in the node's folder,
  so the watchdog removes them too.
* a cgroup ``/dcr-node-<id>`` in every cgroup hierarchy: the kubelet's ``cgroupRoot`` (its Pods go
  below it) with the daemons in ``/dcr-node-<id>/node``. Stopping kills every process in that tree
  (containerd's shims double-fork out of the process group, but not out of the cgroup; the watchdog is
  their child subreaper, so it reaps them), then removes the cgroups, the veth and the namespace.
* a private mount namespace (held by ``sleep``, entered with ``nsenter --mount``) for all four daemons:
  kubelet writes ``kernel.panic=10``, ``kernel.panic_on_oops=1``, ``vm.overcommit_memory=1`` (and
  checks the other kernel tunables it wants) at start, which would change the host's kernel; here a
  file with the value it wants is bind-mounted over each ``/proc/sys`` entry instead. tmpfs covers
  ``/run/containerd`` (shim sockets, whose path containerd 1.6 fixes there; Docker's containerd keeps
  its own in the real one), ``/var/lib/cni`` (CNI's result cache) and ``/var/lib/kubelet`` (the fixed
  device-plugin folder). Everything the kubelet and containerd mount (volumes, overlays, Pod network
  namespaces: ``netns_mounts_under_state_dir``) stays in that namespace and is gone with it. Daemons
  are started with ``nsenter --net`` rather than ``ip netns exec``, which remounts /sys and so hides
  the cgroup mounts the kubelet needs.

**Machine facts** (Debian bookworm, cgroup v1, no systemd as PID 1): ``failCgroupV1: false`` (kubelet
1.35+ refuses cgroup v1 unless told), ``cgroupDriver: cgroupfs`` (no systemd), a ``cgroupRoot`` of its
own (never the machine's root cgroup); containerd 1.6.20 needs ``restrict_oom_score_adj = true``
(without it runc fails "can't get final child's PID from pipe"), runc's state under the work folder
(not /run), the sandbox image named explicitly; containerd has its own root, state and socket under the
work folder. kube-apiserver needs ``--kubelet-preferred-address-types=InternalIP`` (the node's host
name resolves nowhere), and ``Node,RBAC`` authorization with NodeRestriction so the kubelet is a real
``system:node:<name>`` (client certificate), allowed the Secrets and tokens of its own Pods only.

Images: :meth:`Node.import_images` pipes ``docker save`` into ``ctr images import`` on the node's
containerd socket (namespace ``k8s.io``, unpacked for overlayfs); the manifests' ``IfNotPresent`` then
finds them, so no registry is involved.

Usage: ``python -m harness.node build`` (build or reuse), ``python -m harness.node up`` (a node with its
own apiserver until Enter or Ctrl-C; prints an admin kubeconfig path in the node's folder),
``python -m harness.node down`` (remove what a run whose watchdog was itself SIGKILLed left: its
processes, cgroups, namespace, veth and folder). Root only; addresses are loopback or inside the
namespaces the node creates (and the host end of its veth pair).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import kube
from harness.cli import printing, run_command
from harness.process import HarnessError, apt_get, log_tail, spawn, stop_group

KUBE_VERSION = kube.KUBE_VERSION
ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(
    os.environ.get("KUBE_NODE_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dcr-bootstrap" / "kube-node"
)
LOGS = Path(os.environ.get("DCR_NODE_LOGS", ROOT / ".cache" / "test-logs" / "node"))
COMMANDS = ("kubelet", "kube-controller-manager", "kube-scheduler")
PREFIX = "dcr-node-"
PAUSE_IMAGE = "localhost/dcr-node-pause:1"
CNI_BIN = Path("/usr/lib/cni")
CGROUPS = Path("/sys/fs/cgroup")
DEBIAN_PACKAGES = {"containerd": "containerd", "runc": "runc", "/usr/lib/cni/bridge": "containernetworking-plugins"}
# What the kubelet wants these kernel tunables to be (pkg/kubelet/cm setupKernelTunables); it writes them
# when they differ. Each is a file with that value bind-mounted over /proc/sys in the node's mount namespace.
KERNEL_TUNABLES = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}


def _log(message: str) -> None:
    print(f"[node-harness] {message}", file=sys.stderr, flush=True)


PAUSE_GO = """package main

import (
\t"os"
\t"os/signal"
\t"syscall"
)

// The sandbox's placeholder process: it holds the Pod's namespaces until it is told to stop.
func main() {
\tstop := make(chan os.Signal, 1)
\tsignal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
\t<-stop
}
"""


# --- binaries ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeBinaries:
    kubelet: Path
    controller_manager: Path
    scheduler: Path
    pause: Path


def bin_dir(version: str = KUBE_VERSION) -> Path:
    return CACHE / f"v{version}"


def _build(version: str, out: Path, missing: list[str]) -> None:
    build = CACHE / "build" / f"v{version}"
    kube._write_scratch_module(build, version)
    imports = "".join(f'\t_ "k8s.io/kubernetes/cmd/{cmd}"\n' for cmd in COMMANDS)
    (build / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports})\n")
    env = kube._go_env()
    jobs = os.environ.get("KUBE_NODE_BUILD_JOBS", "1")
    kube._run(["go", "mod", "tidy", "-e"], cwd=build, env=env)
    for cmd in missing:
        started = time.monotonic()
        _log(f"building {cmd} v{version} (go build -p {jobs}; minutes on a cold Go cache)")
        tmp = out / f".{cmd}.tmp"
        argv = ["go", "build", "-p", jobs, "-trimpath", "-ldflags", kube._ldflags(version), "-o", str(tmp)]
        kube._run([*argv, f"k8s.io/kubernetes/cmd/{cmd}"], cwd=build, env=env)
        tmp.rename(out / cmd)
        _log(f"built {cmd} in {time.monotonic() - started:.0f}s")


def _build_pause(out: Path) -> None:
    build = CACHE / "build" / "pause"
    build.mkdir(parents=True, exist_ok=True)
    (build / "go.mod").write_text("module dcrbootstrap.local/pause\n\ngo 1.25\n")
    (build / "main.go").write_text(PAUSE_GO)
    tmp = out / ".pause.tmp"
    kube._run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp), "."], cwd=build, env=kube._go_env())
    tmp.rename(out / "pause")


def ensure_node_binaries(version: str = KUBE_VERSION) -> NodeBinaries:
    """The cached kubelet, kube-controller-manager, kube-scheduler and pause, building the missing ones."""
    out = bin_dir(version)
    out.mkdir(parents=True, exist_ok=True)
    names = [*COMMANDS, "pause"]
    if any(not (out / name).exists() for name in names):
        if shutil.which("go") is None:
            raise HarnessError("Go 1.24+ is needed to build the kubelet once; install it and run again")
        kube.CACHE.mkdir(parents=True, exist_ok=True)
        # harness.kube's lock: one Go build of Kubernetes at a time on the machine (memory, two cores).
        with (kube.CACHE / ".build.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            missing = [cmd for cmd in COMMANDS if not (out / cmd).exists()]
            if missing:
                _build(version, out, missing)
            if not (out / "pause").exists():
                _build_pause(out)
    return NodeBinaries(out / "kubelet", out / "kube-controller-manager", out / "kube-scheduler", out / "pause")


def ensure_runtime() -> None:
    """containerd, runc and the CNI plugins from Debian, installed with apt when missing (root)."""
    missing = [pkg for path, pkg in DEBIAN_PACKAGES.items() if not (Path(path).exists() or shutil.which(path))]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise HarnessError(f"the node needs {', '.join(missing)} (Debian packages) and root to install them")
    apt_get("update", "-qq")
    apt_get("install", "-y", "-qq", "--no-install-recommends", *missing)


# --- the node's resources, as the watchdog sees them ------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Names and paths of one node; written as JSON for the watchdog."""

    name: str
    index: int
    workdir: Path
    logs: Path

    @property
    def netns(self) -> Path:
        return Path("/run/netns") / self.name

    @property
    def host_veth(self) -> str:
        return f"dn{self.name[len(PREFIX) :]}h"

    @property
    def node_veth(self) -> str:
        return f"dn{self.name[len(PREFIX) :]}n"

    @property
    def host_address(self) -> str:
        return f"10.250.{self.index}.1"

    @property
    def address(self) -> str:
        return f"10.250.{self.index}.2"

    @property
    def pod_subnet(self) -> str:
        return f"10.251.{self.index}.0/24"

    @property
    def socket(self) -> Path:
        return self.workdir / "containerd.sock"

    def to_json(self) -> str:
        return json.dumps(
            {"name": self.name, "index": self.index, "workdir": str(self.workdir), "logs": str(self.logs)}
        )

    @classmethod
    def from_json(cls, text: str) -> Layout:
        data = json.loads(text)
        return cls(str(data["name"]), int(data["index"]), Path(data["workdir"]), Path(data["logs"]))


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return proc


def _free_index() -> int:
    """The first third octet that no address of the root namespace uses in 10.250/16 or 10.251/16."""
    used = _sh("ip", "-o", "-4", "addr").stdout + _sh("ip", "-4", "route").stdout
    for index in range(1, 255):
        if f"10.250.{index}." not in used and f"10.251.{index}." not in used:
            return index
    raise HarnessError("no free 10.250.<n>.0/30 for the node's veth pair")


def cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers, the named systemd one, the hybrid v2 one)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        if after.split(" ", 1)[0] in ("cgroup", "cgroup2"):
            found.append(Path(before.split()[4]))
    return found


def _cgroup_tree(layout: Layout) -> list[Path]:
    return [h / layout.name for h in cgroup_hierarchies() if (h / layout.name).is_dir()]


def _cgroup_pids(layout: Layout) -> set[int]:
    pids: set[int] = set()
    for top in _cgroup_tree(layout):
        for folder, _, _ in os.walk(top):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in (Path(folder) / "cgroup.procs").read_text().split())
    return pids


def _make_cgroups(layout: Layout) -> None:
    for hierarchy in cgroup_hierarchies():
        for path in (hierarchy / layout.name, hierarchy / layout.name / "node"):
            path.mkdir(exist_ok=True)
            # A new cpuset cgroup has no CPUs and no memory nodes: nothing could join it.
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (path / name).exists() and not (path / name).read_text().strip():
                    (path / name).write_text((path.parent / name).read_text())


def _join_cgroups(layout: Layout) -> None:
    """preexec_fn: move this (forked) process into the node's daemon cgroup in every hierarchy."""
    pid = str(os.getpid())
    for hierarchy in cgroup_hierarchies():
        with contextlib.suppress(OSError):
            (hierarchy / layout.name / "node" / "cgroup.procs").write_text(pid)


def _remove_cgroups(layout: Layout) -> list[str]:
    left = []
    for top in _cgroup_tree(layout):
        for folder, _, _ in os.walk(top, topdown=False):
            for _ in range(50):
                try:
                    os.rmdir(folder)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                left.append(folder)
    return left


def _setup_network(layout: Layout) -> None:
    netns, host, node = str(layout.name), layout.host_veth, layout.node_veth
    if not os.path.ismount("/run/netns"):
        # `ip netns add` makes /run/netns a mount of its own the first time; the teardown undoes that.
        (layout.workdir / "made-run-netns").touch()
    _sh("ip", "netns", "add", netns)
    _sh("ip", "link", "add", host, "type", "veth", "peer", "name", node, "netns", netns)
    _sh("ip", "addr", "add", f"{layout.host_address}/30", "dev", host)
    _sh("ip", "link", "set", host, "up")
    inside = ("ip", "-n", netns)
    _sh(*inside, "link", "set", "lo", "up")
    _sh(*inside, "addr", "add", f"{layout.address}/30", "dev", node)
    _sh(*inside, "link", "set", node, "up")
    _sh(*inside, "route", "add", "default", "via", layout.host_address)
    # The tests reach Pod IPs through the node (the CNI bridge plugin turns forwarding on in its namespace).
    _sh("ip", "route", "add", layout.pod_subnet, "via", layout.address, "dev", host)


def _remove_network(layout: Layout) -> None:
    _sh("ip", "link", "del", layout.host_veth, check=False)
    _sh("ip", "netns", "del", layout.name, check=False)
    run_netns = Path("/run/netns")
    if (layout.workdir / "made-run-netns").exists() and run_netns.is_dir() and not any(run_netns.iterdir()):
        _sh("umount", str(run_netns), check=False)
        with contextlib.suppress(OSError):
            run_netns.rmdir()


def leftovers(layout: Layout) -> list[str]:
    """What of this node still exists: processes, cgroups, the namespace, the veth, mounts of its folder."""
    found = [f"process {pid}" for pid in sorted(_cgroup_pids(layout))]
    found += [f"cgroup {path}" for path in _cgroup_tree(layout)]
    if layout.netns.exists() or layout.name in _sh("ip", "netns", "list").stdout.split():
        found.append(f"network namespace {layout.name}")
    if _sh("ip", "link", "show", layout.host_veth, check=False).returncode == 0:
        found.append(f"veth {layout.host_veth}")
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {line.split()[4]}" for line in mounts.splitlines() if str(layout.workdir) in line]
    return found


# --- configuration files ----------------------------------------------------------------------------


def _containerd_config(layout: Layout) -> str:
    work = layout.workdir
    return f"""version = 2
root = "{work}/containerd/root"
state = "{work}/containerd/state"
oom_score = 0

[grpc]
  address = "{layout.socket}"

[ttrpc]
  address = "{work}/containerd-ttrpc.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "{work}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # containerd 1.6: without it, runc fails "can't get final child's PID from pipe" here.
  restrict_oom_score_adj = true
  # Pod network namespaces under the state folder (in the node's mount namespace), not in /run/netns.
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{shutil.which("runc") or "runc"}"
        Root = "{work}/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{work}/cni"
    max_conf_num = 1
"""


def _cni_config(layout: Layout) -> str:
    ipam = {
        "type": "host-local",
        "ranges": [[{"subnet": layout.pod_subnet}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": str(layout.workdir / "cni-ipam"),
    }
    bridge = {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True, "ipam": ipam}
    return json.dumps({"cniVersion": "0.4.0", "name": "dcr-node", "plugins": [bridge]}, indent=2)


def _kubelet_config(layout: Layout) -> str:
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # Kubelet 1.35+ refuses to start on cgroup v1 unless told; this host has only v1 controllers.
        "failCgroupV1": False,
        # No systemd here: cgroupfs, under a cgroup of the node's own (never the machine's root).
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{layout.name}",
        "cgroupsPerQOS": True,
        "containerRuntimeEndpoint": f"unix://{layout.socket}",
        "address": layout.address,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        # The API server reaches the kubelet (logs, exec) only inside the node's namespace.
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "failSwapOn": False,
        "protectKernelDefaults": False,
        "clusterDomain": "cluster.local",
        "resolvConf": str(layout.workdir / "resolv.conf"),
        # The machine's disk and memory are shared with everything else: never evict or collect images here.
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "shutdownGracePeriod": "0s",
        "maxPods": 20,
        "serializeImagePulls": False,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "registerNode": True,
        "staticPodPath": "",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
    }
    return json.dumps(config, indent=2)


def _kubeconfig(server: kube.KubeServer, cert: Path, key: Path) -> str:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "node", "cluster": {"server": server.url, "certificate-authority": str(server.ca_file)}}],
        "users": [{"name": "node", "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "node", "context": {"cluster": "node", "user": "node"}}],
        "current-context": "node",
    }
    return json.dumps(config)


def apiserver_flags() -> dict[str, str]:
    """What kube-apiserver needs beyond harness.kube's defaults to serve a real node."""
    # Both are list flags: a repeated one adds to harness.kube's RBAC and admission plugins.
    return {
        "kubelet-preferred-address-types": "InternalIP",
        "authorization-mode": "Node",
        "enable-admission-plugins": "NodeRestriction",
    }


def _daemon_commands(layout: Layout, binaries: NodeBinaries, server: kube.KubeServer) -> dict[str, list[str]]:
    work = layout.workdir
    pki = server.ca_file.parent
    return {
        "kubelet": [
            str(binaries.kubelet),
            f"--config={work / 'kubelet.json'}",
            f"--kubeconfig={work / 'kubelet.kubeconfig'}",
            f"--root-dir={work / 'kubelet'}",
            f"--cert-dir={work / 'kubelet' / 'pki'}",
            f"--node-ip={layout.address}",
            f"--hostname-override={layout.name}",
            "--v=1",
        ],
        "kube-controller-manager": [
            str(binaries.controller_manager),
            f"--kubeconfig={work / 'controller-manager.kubeconfig'}",
            f"--root-ca-file={server.ca_file}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            # Each controller as its own service account with its own bootstrap role, as kubeadm runs it: the
            # system:kube-controller-manager user alone may do little more than mint their tokens.
            "--use-service-account-credentials=true",
            "--v=1",
        ],
        "kube-scheduler": [
            str(binaries.scheduler),
            f"--kubeconfig={work / 'scheduler.kubeconfig'}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            "--v=1",
        ],
    }


# --- the watchdog -----------------------------------------------------------------------------------

# Holds the node's mount namespace: the mounts described in the module docstring, then sleep.
_HOLDER = """set -e
w="$1"
mkdir -p /run/containerd /var/lib/cni /var/lib/kubelet
mount -t tmpfs -o mode=0711 dcr-node /run/containerd
mount -t tmpfs -o mode=0755 dcr-node /var/lib/cni
mount -t tmpfs -o mode=0755 dcr-node /var/lib/kubelet
mkdir -p /var/lib/kubelet/device-plugins
for f in "$w"/sysctl/*; do
  mount --bind "$f" "/proc/sys/$(basename "$f" | tr . /)"
done
touch "$w/mounts.ready"
exec sleep infinity
"""


def _set_child_subreaper() -> None:
    """Orphans of the node (containerd's shims, Pods) become this process's children, so it reaps them."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _wait_for(predicate: Any, seconds: float, what: str, children: dict[str, subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        for name, child in children.items():
            if child.poll() is not None:
                raise HarnessError(f"{what}: {name} exited ({child.returncode})")
        if time.monotonic() > deadline:
            raise HarnessError(f"{what} did not happen within {seconds:.0f}s")
        time.sleep(0.1)


def _start_daemons(layout: Layout, commands: dict[str, list[str]]) -> dict[str, subprocess.Popen[bytes]]:
    sysctl = layout.workdir / "sysctl"
    sysctl.mkdir(exist_ok=True)
    for name, value in KERNEL_TUNABLES.items():
        (sysctl / name.replace("/", ".")).write_text(value + "\n")
    started: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (layout.logs / f"{name}.log").open("ab") as log:
            started[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: _join_cgroups(layout),
            )
        return started[name]

    holder_argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _HOLDER, "holder", str(layout.workdir)]
    holder = start("mounts", holder_argv)
    _wait_for((layout.workdir / "mounts.ready").exists, 15, "the node's mount namespace", started)
    enter = ["nsenter", f"--mount=/proc/{holder.pid}/ns/mnt", f"--net={layout.netns}", "--"]
    containerd = shutil.which("containerd") or "containerd"
    start("containerd", [*enter, containerd, "--config", str(layout.workdir / "containerd.toml")])
    _wait_for(layout.socket.exists, 30, "containerd's socket", started)
    for name, argv in commands.items():
        start(name, [*enter, *argv])
    return started


def _teardown(layout: Layout, children: dict[str, subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = _cgroup_pids(layout) - {os.getpid()}
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _reap()
        time.sleep(0.1)
    for child in children.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)
    _reap()
    left = _remove_cgroups(layout)
    _remove_network(layout)
    if left:
        print(f"[node-watchdog] cgroups left: {left}", flush=True)
    shutil.rmtree(layout.workdir, ignore_errors=True)


def watchdog(layout_file: Path) -> int:
    """The node's group leader: set up, start on "start", tear everything down on EOF or a daemon's exit."""
    layout = Layout.from_json(layout_file.read_text())
    (layout.workdir / "watchdog.pid").write_text(str(os.getpid()))
    _set_child_subreaper()
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        _make_cgroups(layout)
        _setup_network(layout)
        (layout.workdir / "network.ready").touch()
        line = sys.stdin.readline()
        if line.strip() != "start":
            return 0
        commands = json.loads((layout.workdir / "commands.json").read_text())
        children = _start_daemons(layout, commands)
        (layout.workdir / "daemons.started").touch()
        while True:
            readable, _, _ = select.select([sys.stdin], [], [], 0.5)
            if readable and not sys.stdin.readline():
                return 0
            _reap()
            ended = [(name, c.returncode) for name, c in children.items() if c.poll() is not None]
            if ended:
                print(f"[node-watchdog] {ended[0][0]} exited ({ended[0][1]}); stopping the node", flush=True)
                return 1
    except HarnessError as exc:
        print(f"[node-watchdog] {exc}", flush=True)
        return 1
    finally:
        _teardown(layout, children)


@dataclass(frozen=True)
class Process:
    """What /proc/<pid>/status says of a container process's privileges."""

    pid: int
    command: str
    uid: int
    gid: int
    capabilities: int
    no_new_privs: bool
    seccomp: int

    @classmethod
    def of(cls, pid: int) -> Process:
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        return cls(
            pid=pid,
            command=command,
            uid=int(status["Uid"].split()[1]),  # effective
            gid=int(status["Gid"].split()[1]),
            capabilities=int(status["CapEff"].strip(), 16),
            no_new_privs=status["NoNewPrivs"].strip() == "1",
            seccomp=int(status["Seccomp"].strip()),
        )


# --- the owner's side -------------------------------------------------------------------------------


@dataclass
class Node:
    """One node (containerd + kubelet + controller-manager + scheduler) in a network namespace of its own."""

    binaries: NodeBinaries = field(default_factory=ensure_node_binaries)
    layout: Layout = field(default_factory=lambda: new_layout())
    startup_seconds: float | None = None
    rss_mib: float | None = None
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return self.layout.name

    @property
    def address(self) -> str:
        return self.layout.address

    @property
    def launcher(self) -> tuple[str, ...]:
        """A command prefix that runs a server in the node's network namespace (kube-apiserver, Keycloak)."""
        return ("nsenter", f"--net={self.layout.netns}", "--")

    @property
    def pgid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path:
        return self.layout.logs / "watchdog.log"

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of the watchdog's log and of each daemon's."""
        parts = [f"--- {path.name}\n{log_tail(path, lines)}" for path in sorted(self.layout.logs.glob("*.log"))]
        return "\n".join(parts)

    def prepare(self, timeout: float = 30) -> Node:
        """Start the watchdog: namespace, veth and cgroups exist when this returns."""
        ensure_runtime()
        self.layout.workdir.mkdir(parents=True, exist_ok=True)
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        (self.layout.workdir / "layout.json").write_text(self.layout.to_json())
        argv = [sys.executable, "-m", "harness.node", "watchdog", str(self.layout.workdir / "layout.json")]
        self._started_at = time.monotonic()
        self._proc = spawn(argv, self.log_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
        self._wait((self.layout.workdir / "network.ready").exists, timeout, "the node's network")
        return self

    def _wait(self, predicate: Any, timeout: float, what: str) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while not predicate():
            if self._proc.poll() is not None:
                raise HarnessError(f"{what}: the node stopped; last log lines:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise HarnessError(f"{what} was not ready within {timeout:.0f}s; last log lines:\n{tail}")
            time.sleep(0.25)

    def start(self, server: kube.KubeServer, timeout: float = 120) -> Node:
        """Write the configurations for ``server``, start the daemons, and wait until the node is Ready."""
        assert self._proc is not None and self._proc.stdin is not None, "prepare() first"
        work = self.layout.workdir
        credentials = work / "credentials"
        credentials.mkdir(exist_ok=True)
        users = {
            "kubelet": (f"system:node:{self.name}", ("system:nodes",)),
            "controller-manager": ("system:kube-controller-manager", ()),
            "scheduler": ("system:kube-scheduler", ()),
        }
        for name, (user, groups) in users.items():
            cert, key = server.client_certificate(credentials, user, groups)
            path = work / f"{name}.kubeconfig"
            path.write_text(_kubeconfig(server, cert, key))
            path.chmod(0o600)
        (work / "cni").mkdir(exist_ok=True)
        (work / "cni" / "10-dcr-node.conflist").write_text(_cni_config(self.layout))
        (work / "containerd.toml").write_text(_containerd_config(self.layout))
        (work / "kubelet.json").write_text(_kubelet_config(self.layout))
        (work / "resolv.conf").write_text("nameserver 127.0.0.1\noptions ndots:1\n")
        (work / "commands.json").write_text(json.dumps(_daemon_commands(self.layout, self.binaries, server)))
        self._proc.stdin.write(b"start\n")
        self._proc.stdin.flush()
        started = time.monotonic()
        self._wait(lambda: self.is_ready(server), timeout, f"node {self.name}")
        self.startup_seconds = time.monotonic() - started
        self.rss_mib = self.daemons_rss_kib() / 1024
        _log(f"node {self.name} Ready at {self.address} in {self.startup_seconds:.1f}s, RSS {self.rss_mib:.0f} MiB")
        return self

    def apiserver(self, binaries: kube.Binaries) -> kube.KubeServer:
        """A kube-apiserver for this node: on the node's address in its namespace, its files in the node's folder
        (so the watchdog removes its keys and token file even when the owner is killed)."""
        return kube.KubeServer(
            binaries=binaries,
            host=self.address,
            launcher=self.launcher,
            extra_flags=apiserver_flags(),
            workdir=self.layout.workdir / "apiserver",
        )

    def is_ready(self, server: kube.KubeServer) -> bool:
        """Whether the API server has this node with condition Ready=True."""
        try:
            node = server.request("GET", f"/api/v1/nodes/{self.name}")
        except (HarnessError, OSError):
            return False
        conditions = node.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def daemons_rss_kib(self) -> int:
        """The resident memory of the node's daemons and containerd's shims (the Pods not counted)."""
        return self._rss_kib("node")

    def pods_rss_kib(self) -> int:
        """The resident memory of every process in the node's Pods."""
        return self._rss_kib("kubepods")

    def _rss_kib(self, subtree: str) -> int:
        pids: set[str] = set()
        for hierarchy in cgroup_hierarchies()[:1]:
            for folder, _, _ in os.walk(hierarchy / self.name / subtree):
                with contextlib.suppress(OSError):
                    pids.update((Path(folder) / "cgroup.procs").read_text().split())
        total = 0
        for pid in pids:
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
        return total

    def import_images(self, env: dict[str, str], *refs: str) -> None:
        """``docker save`` each image into the node's containerd (namespace k8s.io), unpacked for the CRI."""
        for ref in refs:
            save = subprocess.Popen(["docker", "save", ref], env=env, stdout=subprocess.PIPE)
            ctr = subprocess.run(
                ["ctr", "--address", str(self.layout.socket), "-n", "k8s.io", "images", "import", "-"],
                stdin=save.stdout,
                capture_output=True,
                text=True,
                check=False,
                timeout=600,
            )
            save.wait()
            if save.returncode != 0 or ctr.returncode != 0:
                raise HarnessError(f"importing {ref} into the node failed: {ctr.stderr.strip()[-400:]}")

    def leftovers(self) -> list[str]:
        return leftovers(self.layout)

    def pod_processes(self, pod_uid: str) -> list[Process]:
        """The processes of a Pod's containers (not its pause process), as the kernel sees them."""
        found: list[Process] = []
        for hierarchy in cgroup_hierarchies():
            for folder, _, _ in os.walk(hierarchy / self.name):
                if Path(folder).name != f"pod{pod_uid}":
                    continue
                for procs in Path(folder).glob("*/cgroup.procs"):
                    for pid in procs.read_text().split():
                        with contextlib.suppress(OSError, ValueError):
                            process = Process.of(int(pid))
                            if process.command != "/pause":
                                found.append(process)
                return found
        return found

    def stop(self, timeout: float = 90) -> None:
        """Close the watchdog's pipe: it kills every process of the node and removes what it made."""
        if self._proc is not None:
            stop_group(self._proc, timeout)
            self._proc = None


def ensure_pause_image(env: dict[str, str], pause: Path) -> str:
    """The sandbox image: the pause binary alone, imported into Docker (no registry needed)."""
    if (
        subprocess.run(
            ["docker", "image", "inspect", PAUSE_IMAGE], env=env, capture_output=True, check=False
        ).returncode
        == 0
    ):
        return PAUSE_IMAGE
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy2(pause, Path(folder) / "pause")
        tar = subprocess.Popen(["tar", "-C", folder, "-c", "pause"], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["docker", "import", "--change", 'ENTRYPOINT ["/pause"]', "-", PAUSE_IMAGE],
            env=env,
            stdin=tar.stdout,
            capture_output=True,
            check=False,
        )
        tar.wait()
    if imported.returncode != 0:
        raise HarnessError(
            f"docker import of the pause image failed: {imported.stderr.decode(errors='replace')[-300:]}"
        )
    return PAUSE_IMAGE


def new_layout() -> Layout:
    name = f"{PREFIX}{uuid.uuid4().hex[:6]}"
    return Layout(name, _free_index(), Path(tempfile.gettempdir()) / name, LOGS / name)


def orphans() -> list[Layout]:
    """Layouts of nodes whose watchdog is gone (a SIGKILLed watchdog frees nothing)."""
    found = []
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        layout_file, pid_file = folder / "layout.json", folder / "watchdog.pid"
        with contextlib.suppress(OSError, ValueError):
            cmdline = Path(f"/proc/{int(pid_file.read_text())}/cmdline").read_bytes()
            if b"harness.node" in cmdline:
                continue  # its watchdog still runs: not an orphan
        if layout_file.exists():
            found.append(Layout.from_json(layout_file.read_text()))
    return found


@contextlib.contextmanager
def running(keep: bool = False) -> Iterator[tuple[Node, kube.KubeServer]]:
    """A Ready node with its own kube-apiserver in the node's namespace; both stopped at the end."""
    node = Node().prepare()
    server: kube.KubeServer | None = None
    try:
        server = node.apiserver(kube.ensure_binaries()).start()
        node.start(server)
        yield node, server
    finally:
        node.stop()
        if server is not None:
            server.stop()


def _up(_args: list[str]) -> int:
    with running() as (node, server):
        # In the node's folder: the watchdog removes it with the rest, even after a SIGKILL of this process.
        config = server.kubeconfig(node.layout.workdir / "admin.kubeconfig")
        print(f"node {node.name} Ready; kubectl --kubeconfig={config} get nodes; Enter stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            sys.stdin.readline()
    return 0


def _down(_args: list[str]) -> int:
    for layout in orphans():
        _teardown(layout, {})
        print(f"removed {layout.name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    commands = {
        "watchdog": lambda args: watchdog(Path(args[0])),
        "build": printing(ensure_node_binaries),
        "up": _up,
        "down": _down,
    }
    return run_command("node", commands, "[build|up|down]", argv, default="build")


if __name__ == "__main__":
    sys.exit(main())
