"""The project's manifests on the real node: applied with explicit, minimal substitutions, and observed.

The substitutions (nothing else of a manifest changes, its securityContext never):

* ``KEYCLOAK_URL``, ``DCR_INTERNAL_URL`` and ``MCP_ISSUER_URL``: the stage's Keycloak (there is no DNS,
  so no ``keycloak.example.com``);
* for the ``dcr-bootstrap`` container only, ``KUBERNETES_SERVICE_HOST``/``PORT``: the API server's own
  address (there is no kube-proxy; the kubelet's values, the ``kubernetes`` Service's ClusterIP, are
  checked by tests/node/test_in_cluster.py);
* ``spec.replicas`` when a test asks for another count.

The initial access token Secret is created as the manifests' comments say (``kubectl create secret``).
"""

from __future__ import annotations

import base64
import datetime
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from prometheus_client.parser import text_string_to_metric_families

from harness.keycloak import Admin, KeycloakServer
from harness.kube import KubeServer
from harness.node import Node
from tests.containers.test_compose_stack import mcp_whoami

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "k8s"
RESTRICTED = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")} | {
    f"pod-security.kubernetes.io/{mode}-version": "latest" for mode in ("enforce", "warn", "audit")
}
APP = "app.kubernetes.io/name=mcp-server"
CALLER = "mcp-caller"
T = TypeVar("T")


def eventually(probe: Callable[[], T | None], timeout: float, what: str, explain: Callable[[], str] = str) -> T:
    """Poll ``probe`` until it returns something other than None or False, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s. {explain()}")
        time.sleep(0.5)


def log_time(line: str) -> datetime.datetime:
    """The timestamp ``kubectl logs --timestamps`` puts before a line (nanoseconds cut to microseconds)."""
    stamp = line.split(" ", 1)[0]
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.datetime.fromisoformat(f"{whole}.{(fraction + '000000')[:6]}+00:00")


@contextmanager
def fresh_namespace(kube: KubeServer) -> Iterator[str]:
    """A namespace enforcing Pod Security 'restricted'; deleted afterwards (its Pods get SIGTERM)."""
    name = f"t-{int(time.time() * 1000) % 10**9}"
    kube.create_namespace(name, RESTRICTED)
    try:
        yield name
    finally:
        kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


@contextmanager
def fresh_realm(admin: Admin, name: str = "mcp") -> Iterator[str]:
    """The realm the manifests name (``mcp``), fresh, deleted afterwards."""
    admin.create_realm(name)
    try:
        yield name
    finally:
        admin.delete_realm(name)


@dataclass
class Workload:
    """One manifest of deploy/k8s applied in one namespace against one realm of the stage's Keycloak."""

    kube: KubeServer
    node: Node
    keycloak: KeycloakServer
    namespace: str
    realm: str
    folder: Path
    documents: list[dict[str, Any]] = field(default_factory=list)
    # What the deploy/k8s manifests name; the Helm chart's release names its own (tests/node/test_helm.py).
    selector: str = APP
    client_prefix: str = "mcp-server"
    secret_name: str = "mcp-server-dcr-client"

    def kubectl(self, *args: str, check: bool = True) -> str:
        return self.kube.kubectl(f"--namespace={self.namespace}", *args, check=check)

    def create_token_secret(self, admin: Admin, count: int) -> None:
        """The initial access token Secret, as the manifests' comments create it (the file is removed)."""
        path = self.folder / "iat"
        path.write_text(admin.mint_initial_access_token(self.realm, count=count, expiration=3600))
        path.chmod(0o600)
        try:
            self.kubectl("create", "secret", "generic", "dcr-initial-access-token", f"--from-file=token={path}")
        finally:
            path.unlink()

    def apply(self, manifest: str, replicas: int | None = None) -> None:
        documents = [d for d in yaml.safe_load_all((MANIFESTS / manifest).read_text()) if d]
        for document in documents:
            if document["kind"] == "Deployment":
                substitute(document, self.keycloak.url, self.kube, replicas)
        self.documents = documents
        path = self.folder / manifest
        path.write_text(yaml.safe_dump_all(documents))
        self.kubectl("apply", "-f", str(path))

    # -- observing --------------------------------------------------------------------------------

    def pods(self) -> list[dict[str, Any]]:
        """The workload's Pods that are not being deleted."""
        found = json.loads(self.kubectl("get", "pods", "-l", self.selector, "-o", "json"))["items"]
        return [p for p in found if not p["metadata"].get("deletionTimestamp")]

    def all_pods(self) -> list[dict[str, Any]]:
        return list(json.loads(self.kubectl("get", "pods", "-l", self.selector, "-o", "json"))["items"])

    def running(self, count: int) -> list[dict[str, Any]] | None:
        """The Pods when exactly ``count`` exist, none terminating, all Running and Ready; else None."""
        everything = self.all_pods()
        if len(everything) != count or any(p["metadata"].get("deletionTimestamp") for p in everything):
            return None
        ready = [p for p in everything if p["status"].get("phase") == "Running" and _ready(p)]
        return everything if len(ready) == count else None

    def wait_running(self, count: int, timeout: float = 240) -> list[dict[str, Any]]:
        return eventually(lambda: self.running(count), timeout, f"{count} Pods Running and Ready", self.explain)

    def explain(self) -> str:
        """Each Pod's phase and container states (no logs: they are the tool's, but keep output small)."""
        rows = []
        for pod in self.all_pods():
            states = [
                f"{s['name']}={next(iter(s.get('state', {})), '?')}"
                f"{'(' + str(s['state']['waiting'].get('reason')) + ')' if 'waiting' in s.get('state', {}) else ''}"
                f"/r{s.get('restartCount', 0)}"
                for s in pod["status"].get("initContainerStatuses", []) + pod["status"].get("containerStatuses", [])
            ]
            rows.append(f"{pod['metadata']['name']} {pod['status'].get('phase')} {' '.join(states)}")
        events = self.kubectl("get", "events", "--sort-by=.lastTimestamp", check=False).splitlines()[-8:]
        return "Pods: " + "; ".join(rows) + " | events: " + " / ".join(events)

    def logs(self, pod: str, container: str) -> list[str]:
        return self.kubectl("logs", pod, "-c", container, "--timestamps").splitlines()

    def clients(self, admin: Admin) -> list[dict[str, Any]]:
        """The realm's clients the workload registered (named ``client_prefix``, or that and ``-<pod>``)."""
        return [c for c in admin.clients(self.realm) if str(c.get("name", "")).startswith(self.client_prefix)]

    def clients_of(self, admin: Admin, pod: str) -> list[str]:
        """The ids of the clients named after ``pod`` (``<client_prefix>-<pod>``; the tool adds " (dcr <id>)")."""
        named = f"{self.client_prefix}-{pod}"
        return [c["clientId"] for c in admin.clients(self.realm) if client_name(c) == named]

    def serves(self, admin: Admin, pod: dict[str, Any]) -> str:
        """The client id the unmodified server in ``pod`` reports over MCP, called with a caller's token."""
        client_id = self.server_client_id(pod)
        url = f"http://{pod['status']['podIP']}:8000/mcp"
        return mcp_whoami(url, admin.caller_token(self.realm, CALLER, client_id))

    def server_client_id(self, pod: dict[str, Any], timeout: float = 60) -> str:
        """The client id the server logs Keycloak accepting at its start (a Running Pod may not be there yet)."""
        marker = "Keycloak accepted the credentials of client "
        name = pod["metadata"]["name"]

        def logged() -> str | None:
            lines = [line for line in self.logs(name, "mcp-server") if marker in line]
            return lines[-1].split(marker, 1)[1].strip() if lines else None

        return eventually(logged, timeout, f"{name}: the server logging that Keycloak accepted its credentials")

    def shared_client_id(self) -> str | None:
        """The client id in the shared mode's Secret, ``secret_name`` (None while it is empty)."""
        secret = self.kube.request("GET", f"/api/v1/namespaces/{self.namespace}/secrets/{self.secret_name}")
        raw = (secret.get("data") or {}).get("dcr_client.json")
        return str(json.loads(base64.b64decode(raw))["client_id"]) if raw else None


def client_name(client: dict[str, Any]) -> str:
    """DCR_CLIENT_NAME as configured: the tool appends " (dcr <id>)" to the client_name it registers."""
    return str(client.get("name", "")).split(" (dcr ", 1)[0]


def metrics_port(pod: dict[str, Any]) -> int:
    """The sidecar's container port named ``metrics`` (DCR_METRICS_ADDR's)."""
    [sidecar] = pod["spec"]["initContainers"]
    return int(next(p["containerPort"] for p in sidecar["ports"] if p["name"] == "metrics"))


def sidecar_get(pod: dict[str, Any], path: str) -> tuple[int, str]:
    """GET ``path`` on the sidecar's metrics port at the Pod's IP: (status, body)."""
    url = f"http://{pod['status']['podIP']}:{metrics_port(pod)}{path}"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a Pod IP: never through a proxy
    try:
        with direct.open(url, timeout=10) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def sample(exposition: str, name: str) -> float:
    """The one sample ``name`` of a Prometheus exposition, read with prometheus_client's own parser."""
    values = [s.value for f in text_string_to_metric_families(exposition) for s in f.samples if s.name == name]
    assert len(values) == 1, f"{name}: {values}"
    return float(values[0])


def check_server_waited_for_readyz(sidecar: Workload, admin: Admin) -> dict[str, Any]:
    """The one Pod of a sidecar workload: the sidecar's startupProbe is GET /readyz on its metrics port, which
    answers 200; the server's first line follows the end of the sidecar's first proven round (its
    "Credentials written" line and the last_success gauge, both before /readyz turned 200); neither container
    restarted; the server uses the Pod's own client. Returns the Pod."""
    [pod] = sidecar.wait_running(1)
    name = pod["metadata"]["name"]
    [spec] = pod["spec"]["initContainers"]
    assert spec["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics", "scheme": "HTTP"}
    assert spec["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics", "scheme": "HTTP"}
    [sidecar_status] = pod["status"]["initContainerStatuses"]
    [server_status] = pod["status"]["containerStatuses"]
    assert sidecar_status["started"] and sidecar_status["restartCount"] == 0
    assert server_status["restartCount"] == 0
    client_id = sidecar.server_client_id(pod)  # waits for the server's start-up line
    assert sidecar_get(pod, "/readyz")[0] == 200 and sidecar_get(pod, "/healthz")[0] == 200
    status, exposition = sidecar_get(pod, "/metrics")
    assert status == 200 and sample(exposition, "dcr_bootstrap_credentials_valid") == 1
    server_started = log_time(sidecar.logs(name, "mcp-server")[0])
    written = [log_time(line) for line in sidecar.logs(name, "dcr-bootstrap") if "Credentials written" in line]
    assert written, sidecar.explain()
    assert written[0] < server_started
    # One round so far (a registration is followed by a full DCR_WATCH_INTERVAL): its success is the first.
    proven = sample(exposition, "dcr_bootstrap_last_success_timestamp_seconds")
    assert datetime.datetime.fromtimestamp(proven, datetime.UTC) < server_started
    assert sidecar.clients_of(admin, name) == [client_id]
    return pod


def check_deleting_the_pod_deletes_its_client(sidecar: Workload, admin: Admin, grace: float) -> str:
    """``kubectl delete pod`` of a sidecar workload's Pod ends within ``grace`` seconds (SIGTERM, not SIGKILL)
    and deletes its client; the replacement Pod gets one of its own. Returns the replacement's name."""
    [pod] = sidecar.wait_running(1)
    name = pod["metadata"]["name"]
    assert len(sidecar.clients_of(admin, name)) == 1
    started = time.monotonic()
    sidecar.kubectl("delete", "pod", name, "--wait=true", "--timeout=90s")
    elapsed = time.monotonic() - started
    assert elapsed < grace, f"the Pod took {elapsed:.0f}s to stop: its sidecar was killed, not stopped"
    assert sidecar.clients_of(admin, name) == []
    [replacement] = sidecar.wait_running(1)
    new = str(replacement["metadata"]["name"])
    eventually(lambda: len(sidecar.clients_of(admin, new)) == 1, 60, "the replacement's own client")
    return new


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def api_server_env(kube: KubeServer) -> list[dict[str, str]]:
    """KUBERNETES_SERVICE_HOST/PORT naming the API server itself (no kube-proxy on the node), as EnvVars."""
    api = urllib.parse.urlsplit(kube.url)
    return [
        {"name": "KUBERNETES_SERVICE_HOST", "value": str(api.hostname)},
        {"name": "KUBERNETES_SERVICE_PORT", "value": str(api.port)},
    ]


def substitute(deployment: dict[str, Any], keycloak_url: str, kube: KubeServer, replicas: int | None) -> None:
    """The test-time substitutions of the module docstring, in place."""
    issuer = f"{keycloak_url}/realms/mcp"
    values = {"KEYCLOAK_URL": keycloak_url, "DCR_INTERNAL_URL": keycloak_url, "MCP_ISSUER_URL": issuer}
    spec = deployment["spec"]["template"]["spec"]
    for container in spec.get("initContainers", []) + spec["containers"]:
        for variable in container.get("env", []):
            if variable["name"] in values:
                variable["value"] = values[variable["name"]]
        if container["name"] == "dcr-bootstrap":
            container["env"] += api_server_env(kube)
    if replicas is not None:
        deployment["spec"]["replicas"] = replicas
