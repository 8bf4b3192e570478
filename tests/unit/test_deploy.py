"""Container and orchestration files: linted by the tools people use, and secure as shipped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "examples" / "mcp-server" / "Dockerfile"]
SHELL_SCRIPTS = [ROOT / "entrypoint.sh", *sorted((ROOT / "scripts").glob("*.sh")), ROOT / ".ci" / "run"]
MANIFESTS = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))


def tool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, check=False)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_is_clean_under_hadolint(dockerfile: Path) -> None:
    """hadolint reports nothing."""
    result = tool("hadolint", str(dockerfile))
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_scripts_are_clean_under_shellcheck() -> None:
    """shellcheck reports nothing for the entrypoint and the scripts."""
    result = tool("shellcheck", *map(str, SHELL_SCRIPTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_entrypoint_is_posix_sh() -> None:
    """The entrypoint runs under /bin/sh (slim images have no bash guarantee)."""
    assert (ROOT / "entrypoint.sh").read_text().startswith("#!/bin/sh\n")
    result = tool("shellcheck", "--shell=sh", str(ROOT / "entrypoint.sh"))
    assert result.returncode == 0, result.stdout


def test_compose_file_validates_against_the_compose_spec() -> None:
    """docker-compose.yml validates with check-jsonschema's vendored compose specification."""
    result = tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", ["1.33.0", "1.37.0"])
def test_manifests_validate_for_current_kubernetes(version: str) -> None:
    """Every manifest validates strictly with kubernetes-validate."""
    result = tool("kubernetes-validate", "--strict", "-k", version, *map(str, MANIFESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def final_stage(dockerfile: Path) -> list[str]:
    lines = [line.strip() for line in dockerfile.read_text().splitlines()]
    start = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return lines[start:]


def test_image_runs_as_numeric_non_root_user_with_the_entrypoint() -> None:
    """The final stage: numeric non-root USER, entrypoint.sh, OCI labels, no compilers installed."""
    stage = final_stage(ROOT / "Dockerfile")
    users = [line.split()[1] for line in stage if line.startswith("USER ")]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert 'ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]' in stage
    assert any("org.opencontainers.image.title" in line for line in stage)
    assert not any(word in " ".join(stage) for word in ("gcc", "build-essential", "apt-get install"))
    assert "requirements/runtime.txt" in (ROOT / "Dockerfile").read_text()


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def test_compose_orders_the_services_and_mounts_credentials_read_only() -> None:
    """The server waits for the bootstrap to complete and mounts the shared volume read-only."""
    services = compose()["services"]
    server = services["mcp-server"]
    assert server["depends_on"]["bootstrap"]["condition"] == "service_completed_successfully"
    assert any(v.startswith("dcr-credentials:") and v.endswith(":ro") for v in server["volumes"])


def test_admin_credentials_never_reach_the_server_or_the_bootstrap() -> None:
    """Only keycloak and initial-token see the admin password; the token comes from a file, not the env."""
    services = compose()["services"]
    for name in ("mcp-server", "bootstrap"):
        svc = services[name]
        assert not any("ADMIN" in key for key in svc.get("environment", {})), name
        assert not any(v.startswith("dcr-admin:") for v in svc.get("volumes", [])), name
    bootstrap_env = services["bootstrap"]["environment"]
    assert "DCR_INITIAL_ACCESS_TOKEN" not in bootstrap_env and "DCR_INITIAL_ACCESS_TOKEN_FILE" in bootstrap_env


def pod_specs() -> list[dict[str, Any]]:
    docs = [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]
    return [doc["spec"]["template"]["spec"] for doc in docs if doc["kind"] == "Deployment"]


def test_every_container_has_the_restricted_security_context() -> None:
    """runAsNonRoot, read-only root filesystem, no privilege escalation, all capabilities dropped."""
    specs = pod_specs()
    assert len(specs) == 3  # initcontainer.yaml, shared-secret.yaml, sidecar.yaml
    for spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in spec["containers"] + spec["initContainers"]:
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"]["drop"] == ["ALL"]


def test_credentials_share_an_in_memory_volume_and_the_token_comes_from_a_secret() -> None:
    """An emptyDir in memory is shared; the initial access token is a Secret volume."""
    for spec in pod_specs():
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["dcr-credentials"]["emptyDir"]["medium"] == "Memory"
        assert "secret" in volumes["dcr-initial-access-token"]


def test_sidecar_variant_is_a_native_sidecar() -> None:
    """The sidecar manifest uses restartPolicy: Always in initContainers, with a startup probe."""
    sidecar = yaml.safe_load_all((ROOT / "deploy" / "k8s" / "sidecar.yaml").read_text())
    spec = next(d for d in sidecar if d and d["kind"] == "Deployment")["spec"]["template"]["spec"]
    init = spec["initContainers"][0]
    assert init["restartPolicy"] == "Always" and "startupProbe" in init


def test_sidecar_app_starts_after_readyz_and_a_hung_loop_fails_healthz() -> None:
    """startupProbe GETs /readyz and livenessProbe /healthz, on the port DCR_METRICS_ADDR serves."""
    sidecar = yaml.safe_load_all((ROOT / "deploy" / "k8s" / "sidecar.yaml").read_text())
    init = next(d for d in sidecar if d and d["kind"] == "Deployment")["spec"]["template"]["spec"]["initContainers"][0]
    env = {e["name"]: e.get("value") for e in init["env"]}
    ports = {p["name"]: p["containerPort"] for p in init["ports"]}
    assert env["DCR_METRICS_ADDR"] == f"0.0.0.0:{ports['metrics']}"
    assert init["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert init["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def shared_store() -> dict[str, dict[str, Any]]:
    docs = yaml.safe_load_all((ROOT / "deploy" / "k8s" / "shared-secret.yaml").read_text())
    return {doc["kind"]: doc for doc in docs if doc}


def test_shared_store_role_is_limited_to_its_secret_and_lease() -> None:
    """The shared-store Role grants only get/update, each rule limited by resourceNames to the objects the pods name."""
    docs = shared_store()
    bootstrap = docs["Deployment"]["spec"]["template"]["spec"]["initContainers"][0]
    env = {e["name"]: e.get("value") for e in bootstrap["env"]}
    rules = [r for r in docs["Role"]["rules"] if r["resources"] != ["events"]]  # events: test below
    assert {(r["apiGroups"][0], r["resources"][0], r["resourceNames"][0]) for r in rules} == {
        ("", "secrets", env["DCR_K8S_SECRET"]),
        ("coordination.k8s.io", "leases", env["DCR_K8S_LEASE"]),
    }
    assert all(sorted(r["verbs"]) == ["get", "update"] and len(r["resourceNames"]) == 1 for r in rules)
    assert docs["Secret"]["metadata"]["name"] == env["DCR_K8S_SECRET"]
    assert docs["Lease"]["metadata"]["name"] == env["DCR_K8S_LEASE"]


def test_shared_store_mounts_a_service_account_token_only_into_the_bootstrap() -> None:
    """No automounted token: a projected one goes to dcr-bootstrap alone, never to the server."""
    spec = shared_store()["Deployment"]["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    token_mount = "/var/run/secrets/kubernetes.io/serviceaccount"
    assert any(m["mountPath"] == token_mount for m in spec["initContainers"][0]["volumeMounts"])
    assert not any(m["mountPath"] == token_mount for c in spec["containers"] for m in c["volumeMounts"])


def _documents(manifest: Path) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(manifest.read_text()) if doc}


@pytest.mark.parametrize("manifest", sorted((ROOT / "deploy" / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_each_manifest_names_the_pod_for_events_from_the_downward_api(manifest: Path) -> None:
    """DCR_K8S_POD_NAME/NAMESPACE come from the Pod's own metadata, so its Events are about it."""
    spec = _documents(manifest)["Deployment"]["spec"]["template"]["spec"]
    env = {e["name"]: e for e in spec["initContainers"][0]["env"]}
    assert env["DCR_K8S_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["DCR_K8S_POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


@pytest.mark.parametrize("manifest", sorted((ROOT / "deploy" / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_each_manifest_grants_create_on_events_and_a_token_to_the_bootstrap_alone(manifest: Path) -> None:
    """The Role bound to the Pod's account allows 'create' on events; only dcr-bootstrap mounts a token."""
    docs = _documents(manifest)
    events = [r for r in docs["Role"]["rules"] if r["resources"] == ["events"]]
    assert events == [{"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}]
    assert docs["RoleBinding"]["subjects"][0]["name"] == docs["ServiceAccount"]["metadata"]["name"]
    spec = docs["Deployment"]["spec"]["template"]["spec"]
    token_mount = "/var/run/secrets/kubernetes.io/serviceaccount"
    assert spec["automountServiceAccountToken"] is False
    assert any(m["mountPath"] == token_mount for m in spec["initContainers"][0]["volumeMounts"])
    assert not any(m["mountPath"] == token_mount for c in spec["containers"] for m in c["volumeMounts"])
