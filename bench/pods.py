"""Figure 7: Pods on one Secret. ``replicas`` "Pods" started at once in Kubernetes shared mode.

A real etcd and kube-apiserver (``harness.kube``) holds, in a namespace of its own per run, the
ServiceAccount, Secret, Lease, Role and RoleBinding of ``deploy/k8s/shared-secret.yaml`` (applied
with kubectl, the Deployment left out). Each "Pod" is a ``python -m bootstrap`` process (through
``lockprobe.py``, which times its wait for the Lease) with its own HOSTNAME, its own folder (its
``emptyDir``), ``DCR_K8S_SECRET`` and ``DCR_K8S_LEASE``, and a kubeconfig holding a real
TokenRequest token of that ServiceAccount, so every API call is authorized by the manifest's Role as
in a cluster. All Pods reach Keycloak through one counting proxy (split horizon). Exactly one client
must come out, every Pod must exit 0 with the Secret's client in its file.

The Pods wait at the fleet's start barrier and are released together; completion = the moment a
process exited, from the release.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from pathlib import Path

import yaml

from harness.kube import KubeServer, ensure_binaries

from .common import BENCH, PYTHON, ROOT, Tree, log
from .fleet import Fleet, Job, Target, fresh_realm, read_lock_times, release_and_wait, request_kinds, run_env, tally
from .proxy import Proxy

SHARED_MANIFEST = ROOT / "deploy" / "k8s" / "shared-secret.yaml"
ACCOUNT = "mcp-server"
SECRET = "mcp-server-dcr-client"
LEASE = "mcp-server-dcr-lock"
DATA_KEY = "dcr_client.json"


def start_kube() -> KubeServer:
    """etcd and kube-apiserver on loopback (the binaries built once per machine, then cached)."""
    return KubeServer(binaries=ensure_binaries()).start()


def _apply_manifest(kube: KubeServer, namespace: str, folder: Path) -> None:
    """shared-secret.yaml's ServiceAccount, Secret, Lease, Role and RoleBinding, as an operator applies them."""
    documents = [d for d in yaml.safe_load_all(SHARED_MANIFEST.read_text()) if d and d["kind"] != "Deployment"]
    path = folder / "shared-rbac.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    kube.kubectl("apply", f"--namespace={namespace}", "-f", str(path))


def _secret_client_id(kube: KubeServer, namespace: str) -> str | None:
    obj = kube.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{SECRET}")
    raw = (obj.get("data") or {}).get(DATA_KEY)
    return str(json.loads(base64.b64decode(raw))["client_id"]) if raw else None


async def run(tree: Tree, replicas: int, kube: KubeServer, target: Target) -> Fleet:
    result = Fleet(tree.label, shared=True, replicas=replicas)
    root = target.work / f"pods-{tree.label}"
    root.mkdir(parents=True)
    namespace = f"bench-{tree.label}-{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(kube.create_namespace, namespace)
    await asyncio.to_thread(_apply_manifest, kube, namespace, root)
    async with fresh_realm(target.admin, replicas) as realm:
        proxy = await Proxy(target.keycloak_port, rewrite_host=True).start()
        lock_log = root / "locks.jsonl"
        env = run_env(tree, target, realm, lock_log) | {
            "DCR_INTERNAL_URL": proxy.url,
            "DCR_CLIENT_NAME": "mcp-server",
            "DCR_K8S_SECRET": SECRET,
            "DCR_K8S_LEASE": LEASE,
        }
        jobs = [await asyncio.to_thread(_pod, kube, namespace, root, env, i) for i in range(replicas)]
        await release_and_wait(result, jobs, target.wait_timeout + 60)
        await proxy.close()
        result.requests = [len(proxy.requests)]
        result.what = request_kinds(proxy.requests)
        in_files = await tally(result, jobs, target, realm)
        in_secret = await asyncio.to_thread(_secret_client_id, kube, namespace)
        if in_secret is None or in_files != {in_secret}:
            result.failures.append("the Pods' files do not all hold the Secret's client")
        if lock_log.exists():
            read_lock_times(result, lock_log, "lease")
    await asyncio.to_thread(kube.request, "DELETE", f"/api/v1/namespaces/{namespace}")
    log(
        f"pods {tree.label}: {result.ok}/{replicas} ok, {result.clients_created} clients, "
        f"{result.total_requests} requests, total {result.total:.1f}s"
    )
    return result


def _pod(kube: KubeServer, namespace: str, root: Path, env: dict[str, str], i: int) -> Job:
    """One Pod: its name as HOSTNAME, its folder, a kubeconfig with its own service-account token."""
    name = f"mcp-server-{uuid.uuid4().hex[:5]}"
    home = root / name
    home.mkdir()
    token = kube.service_account_token(namespace, ACCOUNT)
    kubeconfig = kube.kubeconfig(home / "kubeconfig.json", token=token, namespace=namespace)
    pod_env = env | {
        "HOME": str(home),
        "HOSTNAME": name,
        "KUBECONFIG": str(kubeconfig),
        "DCR_CLIENT_FILE": str(home / ".dcr_client.json"),
    }
    return Job([PYTHON, str(BENCH / "lockprobe.py")], pod_env, home, root / f"p{i:03d}.log")
