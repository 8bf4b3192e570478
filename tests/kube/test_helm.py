"""The Helm chart (deploy/helm/dcr-bootstrap) keeps the plain manifests' promises in both modes.

Rendering and linting need the helm binary (built once per machine by ``harness.helm``), so every test
here is marked ``kube`` explicitly; the dry-runs and installs also use the real kube-apiserver.
"""

from __future__ import annotations

import asyncio
import base64
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bootstrap.k8s import KubeStore
from harness import helm
from harness.kube import KubeServer
from harness.process import HarnessError
from tests.kube.pods import dry_run

pytestmark = [pytest.mark.kube, pytest.mark.integration, pytest.mark.usefixtures("helm_binary")]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "dcr-bootstrap"
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
RELEASE = "shop"
FULLNAME = "shop-dcr-bootstrap"

# Value combinations the dry-run proves; each one changes what the Pod or the RBAC looks like.
COMBINATIONS: dict[str, dict[str, Any]] = {
    "shared-defaults": {"mode": "shared"},
    "shared-watch-rollout-named": {
        "mode": "shared",
        "replicaCount": 3,
        "shared": {"secretName": "mcp-creds", "leaseName": "mcp-lock", "rollout": True, "watch": True},
        "clientName": "mcp-server",
        "issuer": {"internalUrl": "http://keycloak.keycloak.svc.cluster.local:8080"},
    },
    "shared-existing-account": {"mode": "shared", "serviceAccount": {"create": False, "name": "workload"}},
    "sidecar-defaults": {"mode": "sidecar"},
    "sidecar-no-events": {"mode": "sidecar", "events": {"enabled": False}, "metrics": {"port": 9100}},
    "sidecar-any-issuer": {
        "mode": "sidecar",
        "issuer": {"keycloakUrl": "", "realm": "", "url": "https://auth.example.com", "caBundle": {"configMap": "ca"}},
        "initialAccessToken": {"existingSecret": ""},
        "credentials": {"fileMode": "0640", "envFileName": ".dcr_client.env"},
        "server": {"port": None, "args": ["--transport", "stdio"], "env": [{"name": "LOG_LEVEL", "value": "info"}]},
        "bootstrap": {"env": [{"name": "DCR_SCOPE", "value": "mcp:tools"}], "watchInterval": "5m"},
    },
}


def render(values: dict[str, Any], namespace: str = "shop-ns") -> list[dict[str, Any]]:
    return helm.template(CHART, RELEASE, namespace, values)


def kinds(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in documents}


def pod_spec(documents: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(kinds(documents)["Deployment"]["spec"]["template"]["spec"])


def bootstrapper(documents: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(pod_spec(documents)["initContainers"][0])


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def named_rules(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Role's rules limited to named objects (all but the Events rule)."""
    return [r for r in kinds(documents)["Role"]["rules"] if "resourceNames" in r]


EVENTS_RULE = {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}


def refused(values: dict[str, Any]) -> str:
    """helm's message for values it refuses (and an error if it accepts them)."""
    try:
        helm.template_text(CHART, RELEASE, "shop-ns", values)
    except HarnessError as exc:
        return str(exc)
    raise AssertionError(f"helm template accepted {values}")


# -- lint and metadata ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["shared", "sidecar"])
def test_chart_lints_clean_in_each_mode(mode: str) -> None:
    """helm lint --strict reports no warning or error."""
    result = helm.lint(CHART, {"mode": mode}, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_app_version_is_the_project_version_and_the_default_image_tag() -> None:
    """Chart.yaml's appVersion is pyproject's version, and the bootstrapper's image defaults to it."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version
    assert chart["kubeVersion"] == ">=1.29.0-0"
    assert bootstrapper(render({}))["image"] == f"dcr-bootstrap:{version}"


def test_every_object_carries_the_standard_labels() -> None:
    """app.kubernetes.io/name, instance, version, managed-by and helm.sh/chart on every object and the Pods."""
    documents = render({})
    wanted = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version"}
    wanted |= {"app.kubernetes.io/managed-by", "helm.sh/chart"}
    for doc in documents:
        assert wanted <= set(doc["metadata"]["labels"]), doc["kind"]
    assert wanted <= set(kinds(documents)["Deployment"]["spec"]["template"]["metadata"]["labels"])


def test_every_object_names_the_release_namespace() -> None:
    """`helm template | kubectl apply` lands every object in the release's namespace, not the context's."""
    assert {doc["metadata"].get("namespace") for doc in render({}, namespace="shop-ns")} == {"shop-ns"}


# -- shared mode ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shared", [{}, {"secretName": "mcp-creds", "leaseName": "mcp-lock"}], ids=["derived-names", "given-names"]
)
def test_shared_role_grants_get_and_update_on_exactly_the_secret_and_lease_the_pod_names(
    shared: dict[str, str],
) -> None:
    """The Role's only rules: get/update on the one Secret and one Lease that DCR_K8S_SECRET/LEASE name."""
    documents = render({"mode": "shared", "shared": shared})
    env = env_of(bootstrapper(documents))
    objects = kinds(documents)
    rules = named_rules(documents)
    assert sorted((r["apiGroups"], r["resources"], r["resourceNames"]) for r in rules) == [
        ([""], ["secrets"], [env["DCR_K8S_SECRET"]]),
        (["coordination.k8s.io"], ["leases"], [env["DCR_K8S_LEASE"]]),
    ]
    assert all(r["verbs"] == ["get", "update"] for r in rules)
    assert (
        objects["Secret"]["metadata"]["name"]
        == env["DCR_K8S_SECRET"]
        == shared.get("secretName", f"{FULLNAME}-dcr-client")
    )
    assert (
        objects["Lease"]["metadata"]["name"] == env["DCR_K8S_LEASE"] == shared.get("leaseName", f"{FULLNAME}-dcr-lock")
    )


def test_shared_role_is_bound_to_the_pods_service_account_only() -> None:
    """The RoleBinding binds that Role to the Deployment's ServiceAccount in the release namespace."""
    documents = render({"mode": "shared"})
    binding = kinds(documents)["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": kinds(documents)["Role"]["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod_spec(documents)["serviceAccountName"], "namespace": "shop-ns"}
    ]


def test_rollout_adds_get_and_patch_on_the_release_deployment_alone() -> None:
    """shared.rollout=true sets DCR_K8S_ROLLOUT to the Deployment and grants get and patch on that one name
    (get: a replaced client is deleted only once the Deployment's roll-out completed)."""
    documents = render({"mode": "shared", "shared": {"rollout": True}})
    deployment = kinds(documents)["Deployment"]["metadata"]["name"]
    assert env_of(bootstrapper(documents))["DCR_K8S_ROLLOUT"] == deployment
    extra = [r for r in kinds(documents)["Role"]["rules"] if r["apiGroups"] == ["apps"]]
    assert extra == [
        {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": [deployment], "verbs": ["get", "patch"]}
    ]


def test_shared_secret_is_rendered_empty_and_kept_on_uninstall() -> None:
    """The Secret has no data (an upgrade never touches the tool's) and helm.sh/resource-policy: keep."""
    secret = kinds(render({"mode": "shared"}))["Secret"]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert "data" not in secret and "stringData" not in secret


@pytest.mark.parametrize("mode", ["shared", "sidecar"])
def test_only_the_bootstrapper_gets_a_service_account_token(mode: str) -> None:
    """No automount anywhere; the projected token is mounted into dcr-bootstrap and into no server container."""
    documents = render({"mode": mode})
    spec = pod_spec(documents)
    assert spec["automountServiceAccountToken"] is False
    assert kinds(documents)["ServiceAccount"]["automountServiceAccountToken"] is False
    assert any(m["mountPath"] == TOKEN_PATH for m in spec["initContainers"][0]["volumeMounts"])
    token_volumes = {
        v["name"]
        for v in spec["volumes"]
        if any("serviceAccountToken" in s for s in v.get("projected", {}).get("sources", []))
    }
    assert token_volumes == {"kube-api-access"}
    for container in spec["containers"]:
        mounts = container.get("volumeMounts", [])
        assert not any(m["mountPath"] == TOKEN_PATH or m["name"] in token_volumes for m in mounts), container["name"]


def test_shared_mode_runs_once_per_pod_start_unless_asked_to_watch() -> None:
    """By default an init container (no restartPolicy, no watch); shared.watch=true makes it a watch sidecar."""
    once = bootstrapper(render({"mode": "shared"}))
    assert "restartPolicy" not in once and "command" not in once
    watching = bootstrapper(render({"mode": "shared", "shared": {"watch": True}}))
    assert watching["restartPolicy"] == "Always" and watching["command"] == ["dcr-bootstrap", "watch"]
    assert "DCR_DELETE_ON_EXIT" not in env_of(watching)


# -- sidecar mode ---------------------------------------------------------------------------------


def test_sidecar_is_native_with_a_startup_probe_on_readyz_and_liveness_on_healthz() -> None:
    """restartPolicy Always, `dcr-bootstrap watch`, startupProbe GET /readyz (credentials proven) and
    livenessProbe GET /healthz, both on the named port DCR_METRICS_ADDR listens on."""
    container = bootstrapper(render({"mode": "sidecar"}))
    assert container["restartPolicy"] == "Always"
    assert container["command"] == ["dcr-bootstrap", "watch"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
    assert env_of(container)["DCR_METRICS_ADDR"] == "0.0.0.0:9464"
    assert container["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert "exec" not in container["startupProbe"]


def test_metrics_port_value_moves_the_listener_and_the_named_port_together() -> None:
    """metrics.port sets both DCR_METRICS_ADDR and the container port the probes name."""
    container = bootstrapper(render({"mode": "sidecar", "metrics": {"port": 9100}}))
    assert env_of(container)["DCR_METRICS_ADDR"] == "0.0.0.0:9100"
    assert container["ports"][0]["containerPort"] == 9100


def test_shared_mode_serves_metrics_only_when_it_watches() -> None:
    """The one-shot init container exits (no listener, no probes); shared.watch gets both."""
    once = bootstrapper(render({"mode": "shared"}))
    assert "DCR_METRICS_ADDR" not in env_of(once) and "ports" not in once and "startupProbe" not in once
    watching = bootstrapper(render({"mode": "shared", "shared": {"watch": True}}))
    assert env_of(watching)["DCR_METRICS_ADDR"] == "0.0.0.0:9464"
    assert watching["startupProbe"]["httpGet"]["path"] == "/readyz"


def test_pod_monitor_is_off_by_default() -> None:
    """No PodMonitor unless metrics.podMonitor.enabled (its CRD may not exist in the cluster)."""
    assert "PodMonitor" not in kinds(render({"mode": "sidecar"}))


def test_pod_monitor_scrapes_the_release_pods_on_the_metrics_port() -> None:
    """metrics.podMonitor.enabled renders a PodMonitor selecting this release's Pods, port metrics, /metrics."""
    values = {"mode": "sidecar", "metrics": {"podMonitor": {"enabled": True, "interval": "30s"}}}
    documents = render(values)
    monitor = kinds(documents)["PodMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = kinds(documents)["Deployment"]["spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["selector"]["matchLabels"] == selector
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]


def test_pod_monitor_without_a_listener_stops_with_what_to_change() -> None:
    """A PodMonitor for shared mode's one-shot init container (nothing to scrape) is refused."""
    message = refused({"mode": "shared", "metrics": {"podMonitor": {"enabled": True}}})
    assert "metrics.podMonitor" in message and "shared.watch" in message


@pytest.mark.parametrize("mode", ["shared", "sidecar"])
def test_bootstrapper_requests_its_measured_peak_memory_with_headroom(mode: str) -> None:
    """Requests cover docs/PERFORMANCE.md's peak RSS of a run (50 MiB) with headroom; a memory limit above."""
    resources = bootstrapper(render({"mode": mode}))["resources"]
    assert resources["requests"] == {"cpu": "10m", "memory": "64Mi"}
    assert resources["limits"] == {"memory": "128Mi"}


@pytest.mark.parametrize("mode", ["shared", "sidecar"])
def test_pod_name_and_namespace_reach_the_bootstrapper_through_the_downward_api(mode: str) -> None:
    """DCR_K8S_POD_NAME/_NAMESPACE come from metadata.name/namespace, so Events land on the Pod itself."""
    env = {e["name"]: e for e in bootstrapper(render({"mode": mode}))["env"]}
    assert env["DCR_K8S_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["DCR_K8S_POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


@pytest.mark.parametrize("mode", ["shared", "sidecar"])
def test_role_grants_create_on_events_and_nothing_else_about_them(mode: str) -> None:
    """One rule for Events: create, in the release namespace (a Role), bound to the Pod's account."""
    documents = render({"mode": mode})
    role = kinds(documents)["Role"]
    assert role["metadata"]["namespace"] == "shop-ns"
    assert [r for r in role["rules"] if "events" in r["resources"]] == [EVENTS_RULE]
    assert kinds(documents)["RoleBinding"]["roleRef"]["name"] == role["metadata"]["name"]


def test_sidecar_registers_a_client_per_pod_and_deletes_it_on_exit() -> None:
    """DCR_DELETE_ON_EXIT=true, a client name with {hostname}, no shared Secret, Lease or roll-out settings."""
    env = env_of(bootstrapper(render({"mode": "sidecar"})))
    assert env["DCR_DELETE_ON_EXIT"] == "true"
    assert env["DCR_CLIENT_NAME"] == f"{FULLNAME}-{{hostname}}"
    assert not {"DCR_K8S_SECRET", "DCR_K8S_LEASE", "DCR_K8S_ROLLOUT"} & set(env)


def test_sidecar_mode_grants_only_creating_events() -> None:
    """No Secret or Lease; the Role's one rule is create on events."""
    documents = render({"mode": "sidecar"})
    assert {doc["kind"] for doc in documents} == {"ServiceAccount", "Service", "Deployment", "Role", "RoleBinding"}
    assert kinds(documents)["Role"]["rules"] == [EVENTS_RULE]


def test_sidecar_mode_without_events_grants_no_api_access_and_mounts_no_token() -> None:
    """events.enabled=false: no Role or RoleBinding, no token volume, no downward-API Pod name."""
    documents = render({"mode": "sidecar", "events": {"enabled": False}})
    assert {doc["kind"] for doc in documents} == {"ServiceAccount", "Service", "Deployment"}
    assert not any("projected" in v for v in pod_spec(documents)["volumes"])
    assert not {"DCR_K8S_POD_NAME", "DCR_K8S_POD_NAMESPACE"} & set(env_of(bootstrapper(documents)))


# -- both modes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["shared", "sidecar"])
def test_initial_access_token_is_a_mounted_file_never_an_environment_value(mode: str) -> None:
    """DCR_INITIAL_ACCESS_TOKEN_FILE points into the read-only Secret volume; no env var carries the token."""
    spec = pod_spec(render({"mode": mode}))
    container = spec["initContainers"][0]
    env = env_of(container)
    assert "DCR_INITIAL_ACCESS_TOKEN" not in env
    mount = next(m for m in container["volumeMounts"] if m["name"] == "dcr-initial-access-token")
    assert mount["readOnly"] is True
    assert env["DCR_INITIAL_ACCESS_TOKEN_FILE"] == f"{mount['mountPath']}/token"
    volume = next(v for v in spec["volumes"] if v["name"] == "dcr-initial-access-token")
    assert volume["secret"]["secretName"] == "dcr-initial-access-token"
    for each in spec["initContainers"] + spec["containers"]:
        sources = [e["valueFrom"] for e in each.get("env", []) if "valueFrom" in e]
        assert all(list(source) == ["fieldRef"] for source in sources), each["name"]


@pytest.mark.parametrize("mode", ["shared", "sidecar"])
def test_server_reads_the_credentials_from_the_shared_in_memory_volume_read_only(mode: str) -> None:
    """Both containers mount the Memory emptyDir (the server read-only) and get the same DCR_CLIENT_FILE."""
    spec = pod_spec(render({"mode": mode}))
    server, boot = spec["containers"][0], spec["initContainers"][0]
    assert env_of(server)["DCR_CLIENT_FILE"] == env_of(boot)["DCR_CLIENT_FILE"] == "/var/lib/dcr/.dcr_client.json"
    volume = next(v for v in spec["volumes"] if v["name"] == "dcr-credentials")
    assert volume["emptyDir"]["medium"] == "Memory"
    assert next(m for m in server["volumeMounts"] if m["name"] == "dcr-credentials")["readOnly"] is True


@pytest.mark.parametrize("name", sorted(COMBINATIONS))
def test_every_container_has_the_restricted_security_context(name: str) -> None:
    """runAsNonRoot, seccomp RuntimeDefault, read-only root filesystem, no escalation, all capabilities dropped."""
    spec = pod_spec(render(COMBINATIONS[name]))
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in spec["initContainers"] + spec["containers"]:
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]


def test_settings_map_to_the_tools_environment_names() -> None:
    """issuer.*, credentials.* and bootstrap.* reach the bootstrapper as the DCR_*/KEYCLOAK_* settings."""
    env = env_of(bootstrapper(render(COMBINATIONS["sidecar-any-issuer"])))
    assert env["DCR_ISSUER"] == "https://auth.example.com"
    assert env["DCR_CA_BUNDLE"] == "/etc/dcr-ca/ca.crt"
    assert env["DCR_FILE_MODE"] == "0640"
    assert env["DCR_ENV_FILE"] == "/var/lib/dcr/.dcr_client.env"
    assert env["DCR_WATCH_INTERVAL"] == "5m" and env["DCR_SCOPE"] == "mcp:tools"
    assert not {"KEYCLOAK_URL", "KEYCLOAK_REALM", "DCR_INITIAL_ACCESS_TOKEN_FILE"} & set(env)


# -- values refused -------------------------------------------------------------------------------


def test_schema_refuses_an_unknown_mode_naming_the_allowed_ones() -> None:
    """mode: both fails at /mode with the two allowed values."""
    message = refused({"mode": "both"})
    assert "/mode" in message and "'shared', 'sidecar'" in message


def test_schema_refuses_an_unknown_key() -> None:
    """A misspelt value (shared.secretname) is an error, not silently ignored."""
    assert "secretname" in refused({"shared": {"secretname": "x"}})


def test_shared_only_values_with_sidecar_mode_stop_with_what_to_change() -> None:
    """shared.rollout with mode: sidecar is refused with a message naming both."""
    message = refused({"mode": "sidecar", "shared": {"rollout": True}})
    assert "shared.rollout" in message and "mode: shared" in message


def test_no_issuer_stops_with_what_to_set() -> None:
    """Neither issuer.url nor keycloakUrl+realm is refused, naming the values to set."""
    message = refused({"issuer": {"keycloakUrl": "", "realm": ""}})
    assert "issuer.url" in message and "issuer.keycloakUrl" in message


def test_extra_environment_cannot_override_what_the_chart_derives() -> None:
    """bootstrap.env may not set DCR_DELETE_ON_EXIT (it would undo the mode's choice)."""
    assert "DCR_DELETE_ON_EXIT" in refused({"bootstrap": {"env": [{"name": "DCR_DELETE_ON_EXIT", "value": "true"}]}})
    assert "DCR_METRICS_ADDR" in refused({"bootstrap": {"env": [{"name": "DCR_METRICS_ADDR", "value": ":1"}]}})


# -- a real API server ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(COMBINATIONS))
def test_rendered_chart_applies_under_restricted_pod_security_without_warnings(
    kube: KubeServer, namespace: str, admin_kubeconfig: Path, tmp_path: Path, name: str
) -> None:
    """kubectl apply --dry-run=server --warnings-as-errors accepts the output in a 'restricted' namespace."""
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(helm.template_text(CHART, RELEASE, namespace, COMBINATIONS[name]))
    result = dry_run(kube, admin_kubeconfig, namespace, manifest)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr


def test_weakened_security_values_are_refused_by_the_api_server(
    kube: KubeServer, namespace: str, admin_kubeconfig: Path, tmp_path: Path
) -> None:
    """A root-capable, privileged Pod from overridden values is refused: the dry-run above can fail."""
    values = {
        "podSecurityContext": {"runAsNonRoot": False},
        "securityContext": {"privileged": True, "allowPrivilegeEscalation": True},
    }
    manifest = tmp_path / "weakened.yaml"
    manifest.write_text(helm.template_text(CHART, RELEASE, namespace, values))
    result = dry_run(kube, admin_kubeconfig, namespace, manifest)
    assert result.returncode != 0
    assert "PodSecurity" in result.stderr or "violate" in result.stderr


@pytest.fixture
def installed(kube: KubeServer, namespace: str, admin_kubeconfig: Path) -> Iterator[str]:
    """The chart installed (shared mode) into the namespace; yields the Secret's name."""
    helm.install(admin_kubeconfig, CHART, RELEASE, namespace, {"mode": "shared"})
    yield f"{FULLNAME}-dcr-client"
    helm.run("uninstall", RELEASE, "--namespace", namespace, check=False, kubeconfig=admin_kubeconfig)


def _fill_secret(admin_kubeconfig: Path, namespace: str, secret: str, document: dict[str, Any]) -> None:
    """Write the registration into the Secret through the tool's own store, as a Pod does."""

    async def write() -> None:
        async with KubeStore.from_environment(secret, None, namespace, kubeconfig=admin_kubeconfig) as store:
            _, version = await store.load()
            await store.save(document, version)

    asyncio.run(write())


def _stored(kube: KubeServer, namespace: str, secret: str) -> dict[str, Any] | None:
    data = kube.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{secret}").get("data") or {}
    return dict(json.loads(base64.b64decode(data["dcr_client.json"]))) if "dcr_client.json" in data else None


def test_installed_role_lets_the_account_reach_its_two_objects_and_nothing_more(
    kube: KubeServer, namespace: str, installed: str
) -> None:
    """kubectl auth can-i as the chart's ServiceAccount: get/update its Secret and Lease, create Events; no other
    verb or Secret."""
    account = f"--as=system:serviceaccount:{namespace}:{FULLNAME}"

    def can(verb: str, resource: str) -> bool:
        answer = kube.kubectl("auth", "can-i", verb, resource, account, f"--namespace={namespace}", check=False)
        return answer.strip().splitlines()[0] == "yes"

    allowed = [
        (verb, obj) for verb in ("get", "update") for obj in (f"secret/{installed}", f"lease/{FULLNAME}-dcr-lock")
    ]
    allowed += [("create", "events")]
    denied = [("delete", f"secret/{installed}"), ("get", "secret/dcr-initial-access-token"), ("list", "secrets")]
    denied += [("create", "secrets"), ("watch", "secrets"), ("patch", f"deployment/{FULLNAME}")]
    denied += [("list", "events"), ("delete", "events"), ("create", "events.events.k8s.io")]
    assert [(v, o) for v, o in allowed if not can(v, o)] == []
    assert [(v, o) for v, o in denied if can(v, o)] == []


def test_upgrade_leaves_the_registration_in_the_secret(
    kube: KubeServer, namespace: str, admin_kubeconfig: Path, installed: str
) -> None:
    """helm upgrade after the tool wrote the Secret keeps its dcr_client.json."""
    document = {"client_id": "test-client"}
    _fill_secret(admin_kubeconfig, namespace, installed, document)
    helm.install(admin_kubeconfig, CHART, RELEASE, namespace, {"mode": "shared", "replicaCount": 2})
    if _stored(kube, namespace, installed) != document:
        raise AssertionError("helm upgrade changed the registration in the shared Secret")


def test_uninstall_keeps_the_secret_and_a_plain_reinstall_takes_it_over(
    kube: KubeServer, namespace: str, admin_kubeconfig: Path, installed: str
) -> None:
    """helm uninstall leaves the filled Secret; a plain install adopts it (the tool kept Helm's ownership labels)
    with the registration intact."""
    document = {"client_id": "test-client"}
    _fill_secret(admin_kubeconfig, namespace, installed, document)
    helm.run("uninstall", RELEASE, "--namespace", namespace, kubeconfig=admin_kubeconfig)
    if _stored(kube, namespace, installed) != document:
        raise AssertionError("helm uninstall removed or changed the shared Secret")
    helm.install(admin_kubeconfig, CHART, RELEASE, namespace, {"mode": "shared"})
    if _stored(kube, namespace, installed) != document:
        raise AssertionError("the reinstall changed the registration in the shared Secret")
