"""KubeStore against a real API server: Secret round trip, optimistic concurrency, Lease lock, RBAC."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import uuid
from pathlib import Path

import pytest

from bootstrap.commands import ROTATE_NOW
from bootstrap.errors import StorageError
from bootstrap.k8s import (
    DATA_KEY,
    ROLLOUT_ANNOTATION,
    KubeApi,
    KubeStore,
    LockTimeout,
    StoreConflict,
    credentials_digest,
    run_shared,
)
from harness.kube import KubeServer
from tests.conftest import base_env, run_cli
from tests.fakeserver import FakeServer, serving, settings_for
from tests.kube.pods import ACCOUNT, LEASE, SECRET, account_kubeconfig, apply_shared_rbac

REGISTRATION = {"client_id": "c-1", "client_secret": "s3cr3t-value", "issuer": "http://127.0.0.1/realms/x"}


def _store(
    kubeconfig: Path,
    namespace: str,
    secret: str = "dcr",  # noqa: S107 (a name)
    lease: str | None = "dcr-lock",
) -> KubeStore:
    return KubeStore.from_environment(secret, lease, namespace=namespace, kubeconfig=kubeconfig)


async def test_load_of_missing_secret_is_none(admin_kubeconfig: Path, namespace: str) -> None:
    """A Secret that does not exist reads as no registration and no resourceVersion."""
    async with _store(admin_kubeconfig, namespace) as store:
        assert await store.load() == (None, None)


async def test_save_creates_secret_in_file_format_and_load_reads_it(
    kube: KubeServer, admin_kubeconfig: Path, namespace: str
) -> None:
    """save() creates the Secret with one key in the file's format; load() reads it back."""
    async with _store(admin_kubeconfig, namespace) as store:
        rv = await store.save(REGISTRATION, None)
        data, loaded_rv = await store.load()
    assert data == REGISTRATION
    assert loaded_rv == rv
    secret = kube.request("GET", f"/api/v1/namespaces/{namespace}/secrets/dcr")
    assert list(secret["data"]) == [DATA_KEY]
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "dcr-bootstrap"


async def test_create_when_secret_exists_raises_conflict(admin_kubeconfig: Path, namespace: str) -> None:
    """Creating a Secret that exists is a StoreConflict (AlreadyExists), not an error."""
    async with _store(admin_kubeconfig, namespace) as store:
        await store.save(REGISTRATION, None)
        with pytest.raises(StoreConflict):
            await store.save(REGISTRATION, None)


async def test_save_with_stale_resource_version_raises_conflict(admin_kubeconfig: Path, namespace: str) -> None:
    """A write at a stale resourceVersion is a StoreConflict and loses nothing."""
    async with _store(admin_kubeconfig, namespace) as store:
        stale = await store.save(REGISTRATION, None)
        await store.save({**REGISTRATION, "client_secret": "rotated"}, stale)
        with pytest.raises(StoreConflict):
            await store.save({**REGISTRATION, "client_secret": "lost-update"}, stale)
        data, _ = await store.load()
    assert data is not None and data["client_secret"] == "rotated"


async def test_lease_excludes_second_holder_until_release(admin_kubeconfig: Path, namespace: str) -> None:
    """A second holder waits for the Lease until the first releases it."""
    async with _store(admin_kubeconfig, namespace) as first, _store(admin_kubeconfig, namespace) as second:
        await first.acquire("pod-a", timeout=5)
        waiter = asyncio.create_task(second.acquire("pod-b", timeout=30))
        done, _ = await asyncio.wait({waiter}, timeout=1.0)
        assert not done, "second holder got the lease while the first held it"
        await first.release()
        await asyncio.wait_for(waiter, timeout=10)
        await second.release()


async def test_lease_acquire_times_out(admin_kubeconfig: Path, namespace: str) -> None:
    """acquire() gives up with LockTimeout when the Lease stays held."""
    async with _store(admin_kubeconfig, namespace) as first, _store(admin_kubeconfig, namespace) as second:
        await first.acquire("pod-a", timeout=5)
        with pytest.raises(LockTimeout):
            await second.acquire("pod-b", timeout=0.5)


@pytest.mark.parametrize("skew", [datetime.timedelta(minutes=-5), datetime.timedelta(hours=1)], ids=["behind", "ahead"])
async def test_a_lease_its_holder_stopped_renewing_is_taken_over_after_its_duration_on_our_clock(
    kube: KubeServer, admin_kubeconfig: Path, namespace: str, skew: datetime.timedelta
) -> None:
    """A gone holder's Lease is taken over once unchanged for its duration on our clock, whatever its clock wrote."""
    stamp = (datetime.datetime.now(datetime.UTC) + skew).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    kube.request(
        "POST",
        f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases",
        {
            "metadata": {"name": "dcr-lock"},
            "spec": {"holderIdentity": "gone-pod", "leaseDurationSeconds": 1, "renewTime": stamp, "acquireTime": stamp},
        },
    )
    async with _store(admin_kubeconfig, namespace) as store:
        await store.acquire("pod-b", timeout=10)
    lease = kube.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/dcr-lock")
    assert lease["spec"]["holderIdentity"] == "pod-b"
    assert lease["spec"]["leaseTransitions"] == 1


async def test_a_write_keeps_what_others_put_on_the_secret(
    kube: KubeServer, admin_kubeconfig: Path, namespace: str
) -> None:
    """Other data keys, labels, annotations, ownerReferences and finalizers survive our write."""
    path = f"/api/v1/namespaces/{namespace}/secrets/dcr"
    owner = kube.request("POST", f"/api/v1/namespaces/{namespace}/configmaps", {"metadata": {"name": "owner"}})
    theirs = {
        "labels": {"app": "shop"},
        "annotations": {"example.com/note": "keep"},
        "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
        ],
        "finalizers": ["example.com/keep"],
    }
    other = base64.b64encode(b"theirs").decode()
    kube.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/secrets",
        {"metadata": {"name": "dcr"} | theirs, "data": {"other": other}},
    )
    try:
        async with _store(admin_kubeconfig, namespace) as store:
            _, rv = await store.load()
            await store.save(REGISTRATION, rv)
            assert (await store.load())[0] == REGISTRATION
        secret = kube.request("GET", path)
        assert secret["data"]["other"] == other
        metadata = secret["metadata"]
        assert metadata["labels"] == {"app": "shop", "app.kubernetes.io/managed-by": "dcr-bootstrap"}
        for key in ("annotations", "ownerReferences", "finalizers"):
            assert metadata[key] == theirs[key], key
    finally:  # let the namespace go
        secret = kube.request("GET", path)
        secret["metadata"]["finalizers"] = []
        kube.request("PUT", path, secret)


async def test_a_kubeconfig_with_a_relative_certificate_authority_path_works(
    kube: KubeServer, namespace: str, tmp_path: Path
) -> None:
    """certificate-authority relative to the kubeconfig's folder (as kubectl reads it), from another cwd."""
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "ca.crt").write_bytes(kube.ca_file.read_bytes())
    config = json.loads(kube.kubeconfig(folder / "admin.kubeconfig", namespace=namespace).read_text())
    cluster = config["clusters"][0]["cluster"]
    del cluster["certificate-authority-data"]
    cluster["certificate-authority"] = "ca.crt"
    (folder / "admin.kubeconfig").write_text(json.dumps(config))
    assert not (Path.cwd() / "ca.crt").exists()
    async with _store(folder / "admin.kubeconfig", namespace) as store:
        assert await store.load() == (None, None)


def _account_store(kube: KubeServer, namespace: str, tmp_path: Path, secret: str, lease: str | None) -> KubeStore:
    """A store authenticated as the shared-secret manifest's ServiceAccount, with its Role applied for real."""
    apply_shared_rbac(kube, namespace, tmp_path)
    config = account_kubeconfig(kube, namespace, tmp_path / "sa.kubeconfig")
    return _store(config, namespace, secret, lease)


async def test_manifest_role_is_enough_for_the_store(kube: KubeServer, namespace: str, tmp_path: Path) -> None:
    """With the manifest's Role: take the Lease, read the pre-created empty Secret, write it, release."""
    async with _account_store(kube, namespace, tmp_path, SECRET, LEASE) as store:
        await store.acquire(f"pod-{uuid.uuid4().hex[:6]}", timeout=5)
        data, rv = await store.load()
        assert data is None and rv is not None  # pre-created, empty
        new_rv = await store.save(REGISTRATION, rv)
        assert (await store.load()) == (REGISTRATION, new_rv)
        await store.release()


async def test_update_keeps_the_labels_and_annotations_of_the_applied_secret(
    kube: KubeServer, namespace: str, tmp_path: Path
) -> None:
    """Writing the registration keeps kubectl's last-applied annotation and the manifest's labels."""
    async with _account_store(kube, namespace, tmp_path, SECRET, None) as store:
        _, rv = await store.load()
        await store.save(REGISTRATION, rv)
    metadata = kube.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{SECRET}")["metadata"]
    assert "kubectl.kubernetes.io/last-applied-configuration" in metadata["annotations"]
    assert metadata["labels"]["app.kubernetes.io/name"] == "mcp-server"


async def test_manifest_role_cannot_read_another_secret(kube: KubeServer, namespace: str, tmp_path: Path) -> None:
    """Another Secret in the namespace is 403, and the error names the object, namespace and verb."""
    kube.request("POST", f"/api/v1/namespaces/{namespace}/secrets", {"metadata": {"name": "someone-elses"}})
    async with _account_store(kube, namespace, tmp_path, "someone-elses", None) as store:
        with pytest.raises(StorageError) as caught:
            await store.load()
        assert store.api.token is not None and store.api.token not in str(caught.value)
    message = str(caught.value)
    assert "HTTP 403" in message and "'get'" in message and f"{namespace}/someone-elses" in message


@pytest.mark.parametrize(
    ("verb", "resource"),
    [
        ("list", "secrets"),
        ("watch", "secrets"),
        ("create", "secrets"),
        ("delete", f"secrets/{SECRET}"),
        ("create", "leases.coordination.k8s.io"),
        ("get", "configmaps"),
        ("create", "pods"),
    ],
)
def test_manifest_role_grants_nothing_more(
    kube: KubeServer, namespace: str, tmp_path: Path, verb: str, resource: str
) -> None:
    """The service account cannot list, watch, create or delete Secrets, nor touch anything else."""
    apply_shared_rbac(kube, namespace, tmp_path)
    token = kube.service_account_token(namespace, ACCOUNT)
    answer = kube.kubectl("auth", "can-i", verb, resource, f"--namespace={namespace}", token=token, check=False)
    assert answer.split()[0] == "no"


def test_kube_api_repr_hides_token() -> None:
    """KubeApi's repr never shows the token."""
    api = KubeApi("https://127.0.0.1:1", token="very-secret-token")
    assert "very-secret-token" not in repr(api)


def test_no_kubernetes_api_is_a_configuration_error(tmp_path: Path) -> None:
    """DCR_K8S_SECRET outside a Pod and without KUBECONFIG: exit 2, saying what to set."""
    env = base_env(tmp_path) | {
        "KEYCLOAK_URL": "http://127.0.0.1:9",
        "KEYCLOAK_REALM": "mcp",
        "DCR_K8S_SECRET": SECRET,
    }
    result = run_cli(env)
    assert result.code == 2, result.stderr
    assert "KUBECONFIG" in str(result.last["event"])


async def test_a_renewed_secret_rolls_out_the_named_deployment_and_a_first_registration_does_not(
    kube: KubeServer, admin_kubeconfig: Path, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DCR_K8S_ROLLOUT: the pod template gets the credentials' hash when they change (a rollout), not before."""
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "mcp-server", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": "mcp"}},
            "template": {
                "metadata": {"labels": {"app": "mcp"}},
                "spec": {"containers": [{"name": "server", "image": "mcp-server:dev"}]},
            },
        },
    }
    kube.request("POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment)
    monkeypatch.setenv("KUBECONFIG", str(admin_kubeconfig))

    def annotation() -> str | None:
        obj = kube.request("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/mcp-server")
        return (obj["spec"]["template"]["metadata"].get("annotations") or {}).get(ROLLOUT_ANNOTATION)

    async with serving(FakeServer(secret_lifetime=3600, rotate_on_update=True)) as server:
        values = {"dcr_k8s_secret": "dcr", "dcr_k8s_namespace": namespace, "dcr_k8s_rollout": "mcp-server"}
        settings = settings_for(server, tmp_path, dcr_client_name="mcp-server", **values)
        await run_shared(settings)
        assert annotation() is None  # the Pods starting now read the first registration anyway
        renewed = await run_shared(settings_for(server, tmp_path, dcr_rotate_after=ROTATE_NOW, **values))
        assert renewed.action == "renewed"
        assert annotation() == credentials_digest(renewed.registration)
