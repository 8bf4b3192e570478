"""Helpers for tests/kube: the shared-store manifest's RBAC applied for real, and "Pods" as processes.

A "Pod" is ``python -m bootstrap`` with its own HOSTNAME, its own folder (its ``emptyDir``) and a
kubeconfig holding a real service-account token of the manifest's ServiceAccount, so every API call
is authorized by the manifest's Role exactly as in a cluster.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.keycloak import KeycloakServer
from harness.kube import KubeServer
from tests.conftest import Result, base_env

ROOT = Path(__file__).resolve().parents[2]
SHARED_MANIFEST = ROOT / "deploy" / "k8s" / "shared-secret.yaml"
ACCOUNT = "mcp-server"
SECRET = "mcp-server-dcr-client"
LEASE = "mcp-server-dcr-lock"

POD_COMMAND = [sys.executable, "-m", "bootstrap"]


def shared_documents(*, without: tuple[str, ...] = ("Deployment",)) -> list[dict[str, Any]]:
    documents = yaml.safe_load_all(SHARED_MANIFEST.read_text())
    return [d for d in documents if d and d["kind"] not in without]


def apply_shared_rbac(kube: KubeServer, namespace: str, folder: Path) -> None:
    """Apply shared-secret.yaml's ServiceAccount, Secret, Lease, Role and RoleBinding (not the Deployment)."""
    path = folder / "shared-rbac.yaml"
    path.write_text(yaml.safe_dump_all(shared_documents()))
    kube.kubectl("apply", f"--namespace={namespace}", "-f", str(path))


def dry_run(kube: KubeServer, kubeconfig: Path, namespace: str, path: Path) -> subprocess.CompletedProcess[str]:
    """``kubectl apply --dry-run=server --warnings-as-errors`` of a manifest: Pod Security warnings fail it too."""
    return subprocess.run(
        [
            str(kube.binaries.kubectl),
            f"--kubeconfig={kubeconfig}",
            "apply",
            "--dry-run=server",
            "--warnings-as-errors",
            f"--namespace={namespace}",
            "-f",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def account_kubeconfig(kube: KubeServer, namespace: str, path: Path, account: str = ACCOUNT) -> Path:
    """A kubeconfig with a fresh TokenRequest token of ``account``."""
    token = kube.service_account_token(namespace, account)
    return kube.kubeconfig(path, token=token, namespace=namespace)


def read_shared(kube: KubeServer, namespace: str, secret: str = SECRET) -> dict[str, Any] | None:
    """The registration in the Secret (None while it has none)."""
    obj = kube.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{secret}")
    raw = (obj.get("data") or {}).get("dcr_client.json")
    return dict(json.loads(base64.b64decode(raw))) if raw else None


@dataclass
class Pod:
    name: str
    env: dict[str, str] = field(repr=False)

    @property
    def file(self) -> Path:
        return Path(self.env["DCR_CLIENT_FILE"])

    def registration(self) -> dict[str, Any]:
        return dict(json.loads(self.file.read_text()))


@dataclass
class Cluster:
    """One namespace with the manifest's RBAC, one Keycloak realm, and a way to start Pods."""

    kube: KubeServer
    namespace: str
    keycloak: KeycloakServer
    realm: str
    iat: str = field(repr=False)
    folder: Path

    def pod(self, prefix: str = "mcp-server", *, lease: bool = True, account: str = ACCOUNT, **extra: str) -> Pod:
        name = f"{prefix}-{uuid.uuid4().hex[:5]}"
        home = self.folder / name
        home.mkdir()
        env = base_env(home)
        env.update(
            {
                "KEYCLOAK_URL": self.keycloak.url,
                "KEYCLOAK_REALM": self.realm,
                "DCR_INITIAL_ACCESS_TOKEN": self.iat,
                "DCR_CLIENT_NAME": "mcp-server",
                "DCR_K8S_SECRET": SECRET,
                "DCR_WAIT_TIMEOUT": "90",
                "KUBECONFIG": str(account_kubeconfig(self.kube, self.namespace, home / "kubeconfig.json", account)),
                "HOSTNAME": name,
            }
        )
        if lease:
            env["DCR_K8S_LEASE"] = LEASE
        env.update(extra)
        return Pod(name, env)

    def pods(self, count: int, prefix: str = "mcp-server", **options: Any) -> list[Pod]:
        return [self.pod(prefix, **options) for _ in range(count)]

    def shared(self) -> dict[str, Any] | None:
        return read_shared(self.kube, self.namespace)


def run_at_once(pods: list[Pod], *args: str, timeout: float = 180) -> list[Result]:
    """Start every Pod's process together and wait for all of them."""
    procs = [
        subprocess.Popen(
            [*POD_COMMAND, *args],
            env=pod.env,
            cwd=pod.env["HOME"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pod in pods
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append(Result(proc.returncode, out, err))
    return results


def last_events(results: list[Result]) -> list[str]:
    """Each process's last log event (the tool redacts secrets in its logs), for assertion messages."""
    return [str(r.last.get("event")) if r.lines else r.stderr[-300:] for r in results]
