"""What the real kubelet gives a Pod for in-cluster access: the projected token, CA, namespace, service env.

A probe Pod with exactly the shared-secret manifest's service account, projected volume and restricted
securityContext prints what it finds (never the token itself: its claims, and the status of one API
call made with it).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.node.conftest import BOOTSTRAP_IMAGE, Cluster
from tests.node.workloads import MANIFESTS, eventually, fresh_namespace

PROBE = """
import base64, hashlib, json, os, ssl, urllib.error, urllib.request
d = "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(d + "/token").read().strip()
part = token.split(".")[1]
claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
namespace = open(d + "/namespace").read()
url = os.environ["API_URL"] + "/api/v1/namespaces/" + namespace + "/secrets/mcp-server-dcr-client"
request = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
context = ssl.create_default_context(cafile=d + "/ca.crt")
try:
    status = urllib.request.urlopen(request, context=context, timeout=10).status
except urllib.error.HTTPError as exc:
    status = exc.code
print(json.dumps({
    "files": sorted(f for f in os.listdir(d) if not f.startswith("..")),
    "namespace": namespace,
    "ca_sha256": hashlib.sha256(open(d + "/ca.crt", "rb").read()).hexdigest(),
    "sub": claims["sub"],
    "pod": claims["kubernetes.io"]["pod"]["name"],
    "lifetime": claims["exp"] - claims["iat"],
    "host": os.environ.get("KUBERNETES_SERVICE_HOST"),
    "port": os.environ.get("KUBERNETES_SERVICE_PORT"),
    "api_status": status,
}))
"""


def _probe_pod(cluster: Cluster) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """shared-secret.yaml's objects but the Deployment, and a Pod built from its template's security parts."""
    documents = [d for d in yaml.safe_load_all((MANIFESTS / "shared-secret.yaml").read_text()) if d]
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    template = deployment["spec"]["template"]["spec"]
    tool = template["initContainers"][0]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe"},
        "spec": {
            "serviceAccountName": template["serviceAccountName"],
            "automountServiceAccountToken": template["automountServiceAccountToken"],
            "securityContext": copy.deepcopy(template["securityContext"]),
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "probe",
                    "image": BOOTSTRAP_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-c", PROBE],
                    "env": [{"name": "API_URL", "value": cluster.kube.url}],
                    "securityContext": copy.deepcopy(tool["securityContext"]),
                    "volumeMounts": [m for m in tool["volumeMounts"] if m["name"] == "kube-api-access"],
                }
            ],
            "volumes": [v for v in template["volumes"] if v["name"] == "kube-api-access"],
        },
    }
    return [d for d in documents if d["kind"] != "Deployment"], pod


@pytest.fixture(scope="module")
def probe(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """What the probe Pod found, and the namespace it ran in."""
    with fresh_namespace(cluster.kube) as namespace:
        objects, pod = _probe_pod(cluster)
        path = Path(tmp_path_factory.mktemp("probe")) / "probe.yaml"
        path.write_text(yaml.safe_dump_all([*objects, pod]))
        cluster.kube.kubectl(f"--namespace={namespace}", "apply", "-f", str(path))

        def finished() -> str | None:
            found = cluster.kube.request("GET", f"/api/v1/namespaces/{namespace}/pods/probe")
            phase = found["status"].get("phase")
            return str(phase) if phase in ("Succeeded", "Failed") else None

        def describe() -> str:
            return cluster.kube.kubectl(f"--namespace={namespace}", "describe", "pod", "probe", check=False)[-1500:]

        phase = eventually(finished, 180, "the probe Pod to finish", describe)
        output = cluster.kube.kubectl(f"--namespace={namespace}", "logs", "probe")
        assert phase == "Succeeded", output[-600:]
        yield {"namespace": namespace, **json.loads(output.strip().splitlines()[-1])}


def test_the_kubelet_projects_a_working_token_the_cluster_ca_and_the_namespace(
    probe: dict[str, Any], cluster: Cluster
) -> None:
    """token, ca.crt and namespace are there; the token is the Pod's, lives 3600 s and the API accepts it."""
    namespace = probe["namespace"]
    assert probe["files"] == ["ca.crt", "namespace", "token"]
    assert probe["namespace"] == namespace
    assert probe["ca_sha256"] == hashlib.sha256(cluster.kube.ca_file.read_bytes()).hexdigest()
    assert (probe["sub"], probe["pod"]) == (f"system:serviceaccount:{namespace}:mcp-server", "probe")
    assert probe["lifetime"] == 3600
    assert probe["api_status"] == 200


def test_the_kubelet_sets_the_kubernetes_service_host_and_port(probe: dict[str, Any], cluster: Cluster) -> None:
    """KUBERNETES_SERVICE_HOST/PORT are the default/kubernetes Service's ClusterIP and port."""
    service = cluster.kube.request("GET", "/api/v1/namespaces/default/services/kubernetes")
    assert (probe["host"], probe["port"]) == (service["spec"]["clusterIP"], str(service["spec"]["ports"][0]["port"]))
