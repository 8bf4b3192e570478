"""Every manifest under deploy/k8s/ is accepted by a real API server under Pod Security 'restricted'."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.kube import KubeServer
from tests.kube.pods import dry_run

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))


def test_every_manifest_is_checked() -> None:
    """The three manifests (init container, sidecar, shared store) are all found."""
    assert [m.name for m in MANIFESTS] == ["initcontainer.yaml", "shared-secret.yaml", "sidecar.yaml"]


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[m.name for m in MANIFESTS])
def test_manifest_applies_under_restricted_pod_security_without_warnings(
    kube: KubeServer, namespace: str, admin_kubeconfig: Path, manifest: Path
) -> None:
    """kubectl apply --dry-run=server --warnings-as-errors accepts it in a 'restricted' namespace."""
    result = dry_run(kube, admin_kubeconfig, namespace, manifest)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr


def test_weakened_manifest_is_refused(kube: KubeServer, namespace: str, admin_kubeconfig: Path, tmp_path: Path) -> None:
    """A copy with a privileged, possibly-root container is refused: the check above can fail."""
    documents = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "initcontainer.yaml").read_text()))
    for document in documents:
        if document and document.get("kind") == "Deployment":
            pod = document["spec"]["template"]["spec"]
            del pod["securityContext"]["runAsNonRoot"]
            container = pod["containers"][0]
            container["securityContext"] = {"privileged": True}
    weakened = tmp_path / "weakened.yaml"
    weakened.write_text(yaml.safe_dump_all(documents))
    result = dry_run(kube, admin_kubeconfig, namespace, weakened)
    assert result.returncode != 0
    assert "PodSecurity" in result.stderr or "violate" in result.stderr
