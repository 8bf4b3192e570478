"""Every way to authenticate, against the real kube-apiserver with RBAC: client certificates (files and
-data), exec plugins (token, certificate, re-run on expiry), tokenFile, KUBECONFIG=a:b, DCR_K8S_CONTEXT, and
a Pod's service-account token rotated under a long-running store (the real path, in a mount namespace).

Each identity gets a Role on the Secret (and Lease) only, so a request that went out as anyone else (the
admin, or anonymous) would be refused."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from bootstrap.errors import StorageError
from bootstrap.k8s import SERVICE_ACCOUNT_DIR, KubeStore, run_shared
from harness.kube import KubeServer
from harness.process import HarnessError
from tests.conftest import unavailable
from tests.fakeserver import FakeServer, serving, settings_for
from tests.unit.test_kubeconfig import exec_plugin, plugin_runs, rotate, write_config

ROOT = Path(__file__).resolve().parents[2]
REGISTRATION = {"client_id": "c-1", "client_secret": "s3cr3t-value", "issuer": "http://127.0.0.1/realms/x"}


def grant(kube: KubeServer, namespace: str, *subject: str) -> None:
    """A Role on Secrets and Leases (get, create, update) for ``--user=...``, ``--group=...`` or
    ``--serviceaccount=...``: nothing else in the namespace."""
    role = f"dcr-{uuid.uuid4().hex[:6]}"
    ns = f"--namespace={namespace}"
    kube.kubectl("create", "role", role, "--verb=get,create,update", "--resource=secrets,leases", ns)
    kube.kubectl("create", "rolebinding", role, f"--role={role}", *subject, ns)


def cluster(kube: KubeServer) -> dict[str, Any]:
    return {"server": kube.url, "certificate-authority-data": base64.b64encode(kube.ca_file.read_bytes()).decode()}


def config_for(kube: KubeServer, path: Path, namespace: str, user: dict[str, Any]) -> Path:
    """A kubeconfig for ``user`` (no admin token anywhere in it)."""
    return write_config(
        path,
        clusters={"test": cluster(kube)},
        users={"me": user},
        contexts={"test": {"cluster": "test", "user": "me", "namespace": namespace}},
        current="test",
    )


async def round_trip(config: Path | None, namespace: str | None = None) -> None:
    """Create the Secret, read it back, update it: three requests, each authorized by the Role alone."""
    async with KubeStore.from_environment("dcr", None, namespace=namespace, kubeconfig=config) as store:
        rv = await store.save(REGISTRATION, None)
        assert await store.load() == (REGISTRATION, rv)
        await store.save({**REGISTRATION, "client_id": "c-2"}, rv)


def account_token(kube: KubeServer, namespace: str, account: str, bound_to: str | None = None) -> str:
    """A TokenRequest token of ``account``; ``bound_to``: a Secret whose deletion invalidates the token."""
    spec: dict[str, Any] = {"expirationSeconds": 3600}
    if bound_to is not None:
        secret = kube.request("POST", f"/api/v1/namespaces/{namespace}/secrets", {"metadata": {"name": bound_to}})
        spec["boundObjectRef"] = {
            "kind": "Secret",
            "apiVersion": "v1",
            "name": bound_to,
            "uid": secret["metadata"]["uid"],
        }
    answer = kube.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
    )
    return str(answer["status"]["token"])


def account(kube: KubeServer, namespace: str) -> str:
    name = "dcr-client"
    kube.create_service_account(namespace, name)
    grant(kube, namespace, f"--serviceaccount={namespace}:{name}")
    return name


async def test_a_client_certificate_from_files_reads_and_writes_the_secret(
    kube: KubeServer, namespace: str, tmp_path: Path
) -> None:
    """client-certificate and client-key, relative to the kubeconfig's folder; RBAC for its group."""
    kube.client_certificate(tmp_path, "alice", ("dcr-writers",))
    grant(kube, namespace, "--group=dcr-writers")
    config = config_for(
        kube, tmp_path / "config.json", namespace, {"client-certificate": "alice.crt", "client-key": "alice.key"}
    )
    await round_trip(config)


async def test_client_certificate_data_reads_and_writes_the_secret(
    kube: KubeServer, namespace: str, tmp_path: Path
) -> None:
    """client-certificate-data and client-key-data (base64 PEM) inline; RBAC for its user."""
    (tmp_path / "pki").mkdir()
    cert, key = kube.client_certificate(tmp_path / "pki", "bob")
    grant(kube, namespace, "--user=bob")
    user = {
        "client-certificate-data": base64.b64encode(cert.read_bytes()).decode(),
        "client-key-data": base64.b64encode(key.read_bytes()).decode(),
    }
    shutil.rmtree(tmp_path / "pki")
    await round_trip(config_for(kube, tmp_path / "config.json", namespace, user))


async def test_an_exec_plugin_token_reads_and_writes_the_secret(
    kube: KubeServer, namespace: str, tmp_path: Path
) -> None:
    """An exec plugin printing a real service-account token."""
    token = account_token(kube, namespace, account(kube, namespace))
    plugin = exec_plugin(tmp_path / "plugin", tokens=[token], expires_in=3600)
    await round_trip(config_for(kube, tmp_path / "config.json", namespace, {"exec": plugin}))
    assert len(plugin_runs(tmp_path / "plugin")) == 1


async def test_an_expired_exec_credential_is_fetched_again_from_the_plugin(
    kube: KubeServer, namespace: str, tmp_path: Path
) -> None:
    """Each credential already past its expirationTimestamp: the plugin runs before every request."""
    name = account(kube, namespace)
    tokens = [account_token(kube, namespace, name) for _ in range(3)]
    plugin = exec_plugin(tmp_path / "plugin", tokens=tokens, expires_in=-60)
    await round_trip(config_for(kube, tmp_path / "config.json", namespace, {"exec": plugin}))
    assert len(plugin_runs(tmp_path / "plugin")) == 3


async def test_an_exec_plugin_certificate_reads_and_writes_the_secret(
    kube: KubeServer, namespace: str, tmp_path: Path
) -> None:
    """An exec plugin printing clientCertificateData and clientKeyData (PEM)."""
    cert, key = kube.client_certificate(tmp_path, "carol")
    grant(kube, namespace, "--user=carol")
    plugin = exec_plugin(tmp_path / "plugin", cert=str(cert), key=str(key))
    await round_trip(config_for(kube, tmp_path / "config.json", namespace, {"exec": plugin}))


async def test_a_token_file_reads_and_writes_the_secret(kube: KubeServer, namespace: str, tmp_path: Path) -> None:
    """tokenFile (relative to the kubeconfig) holding a real service-account token."""
    (tmp_path / "token").write_text(account_token(kube, namespace, account(kube, namespace)))
    await round_trip(config_for(kube, tmp_path / "config.json", namespace, {"tokenFile": "token"}))


async def test_kubeconfig_a_b_merges_the_cluster_of_a_with_the_user_of_b(
    kube: KubeServer, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KUBECONFIG=a:b, the context and cluster in a, the user (with paths relative to b's folder) in b."""
    (tmp_path / "b").mkdir()
    kube.client_certificate(tmp_path / "b", "dave")
    grant(kube, namespace, "--user=dave")
    a = write_config(
        tmp_path / "a" / "config.json",
        clusters={"test": cluster(kube)},
        contexts={"dev": {"cluster": "test", "user": "dave", "namespace": namespace}},
        current="dev",
    )
    b = write_config(
        tmp_path / "b" / "config.json",
        users={"dave": {"client-certificate": "dave.crt", "client-key": "dave.key"}},
        current="unused",
    )
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(a), str(b)]))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.chdir(tmp_path)
    await round_trip(None)


async def test_dcr_k8s_context_picks_the_context_for_run_shared(
    kube: KubeServer, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_shared with DCR_K8S_CONTEXT=dev: the current context's user has no access, dev's does."""
    kube.client_certificate(tmp_path, "erin")
    grant(kube, namespace, "--user=erin")
    config = write_config(
        tmp_path / "config.json",
        clusters={"test": cluster(kube)},
        users={
            "nobody": {"token": "not-a-valid-token-at-all"},
            "erin": {"client-certificate": "erin.crt", "client-key": "erin.key"},
        },
        contexts={
            "default": {"cluster": "test", "user": "nobody", "namespace": namespace},
            "dev": {"cluster": "test", "user": "erin", "namespace": namespace},
        },
        current="default",
    )
    monkeypatch.setenv("KUBECONFIG", str(config))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    async with serving(FakeServer()) as server:
        settings = settings_for(server, tmp_path, dcr_k8s_secret="dcr", dcr_k8s_lease="dcr-lock", dcr_k8s_context="dev")
        outcome = await run_shared(settings)
    secret = kube.request("GET", f"/api/v1/namespaces/{namespace}/secrets/dcr")
    assert (
        json.loads(base64.b64decode(secret["data"]["dcr_client.json"]))["client_id"] == outcome.registration.client_id
    )


# --- a Pod's service-account token, rotated under a long-running store ---

# Holds the Lease (renewed in the background) across the rotation: round 1, wait for the test to rotate the
# token and invalidate the old one, round 2, release.
POD_SCRIPT = """
import asyncio, sys
from bootstrap.k8s import KubeStore

async def main():
    async with KubeStore.from_environment("dcr", "dcr-lock") as store:
        await store.acquire("rotating-pod", timeout=20)
        async def rounds():
            for round in (1, 2):
                _, rv = await store.load()
                await store.save({"client_id": f"round-{round}", "issuer": "http://127.0.0.1/x"}, rv)
                print(f"round {round} done", flush=True)
                if round == 1:
                    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await store.lock.hold(rounds())
        await store.release()
    print("released", flush=True)

asyncio.run(main())
"""


def in_a_pod(sa_dir: Path, *command: str) -> list[str]:
    """``command`` in a private mount namespace where SERVICE_ACCOUNT_DIR is ``sa_dir`` (on a fresh tmpfs over
    /var/run, so nothing is created on the host)."""
    prefix = ["unshare", "--mount", "--propagation", "private"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    base = SERVICE_ACCOUNT_DIR.parents[2]
    script = f'mount -t tmpfs tmpfs "{base}" && mkdir -p "$0" && mount --bind "$1" "$0" && shift && exec "$@"'
    return [*prefix, "sh", "-c", script, str(SERVICE_ACCOUNT_DIR), str(sa_dir), *command]


def mount_namespaces_work(tmp_path: Path) -> bool:
    probe = subprocess.run(
        in_a_pod(tmp_path, "true"), capture_output=True, timeout=30, check=False, stdin=subprocess.DEVNULL
    )
    return shutil.which("unshare") is not None and probe.returncode == 0


def until_rejected(kube: KubeServer, token: str, timeout: float = 30.0) -> None:
    """Poll (with a deadline) until the API server refuses ``token``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            kube.request("GET", "/api", token=token)
        except HarnessError as exc:
            if "HTTP 401" in str(exc):
                return
        time.sleep(0.05)  # a poll interval, not a wait for something to happen
    raise AssertionError("the old token was still accepted after its bound Secret was deleted")


async def test_a_long_running_store_survives_a_service_account_token_rotation(
    kube: KubeServer, namespace: str, tmp_path: Path
) -> None:
    """In-cluster: the token file is replaced by a new token and the old one invalidated; the store keeps
    working (Lease renewals, Secret writes, the release) on the new one."""
    if not mount_namespaces_work(tmp_path):
        unavailable("unshare --mount is not permitted here")
    name = account(kube, namespace)
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "ca.crt").write_bytes(kube.ca_file.read_bytes())
    (sa / "namespace").write_text(namespace)
    rotate(sa / "token", account_token(kube, namespace, name, bound_to="pod-one"))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "KUBERNETES_SERVICE_HOST": kube.host,
        "KUBERNETES_SERVICE_PORT": str(kube.port),
        "DCR_LOG_FORMAT": "json",
    }
    proc = await asyncio.create_subprocess_exec(
        *in_a_pod(sa, sys.executable, "-c", POD_SCRIPT),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"round 1 done\n"
        old = (sa / "token").read_text()
        rotate(sa / "token", account_token(kube, namespace, name, bound_to="pod-two"))
        kube.request("DELETE", f"/api/v1/namespaces/{namespace}/secrets/pod-one")
        await asyncio.to_thread(until_rejected, kube, old)
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        rest = await asyncio.wait_for(proc.stdout.read(), 60)
        code = await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stderr is not None
    errors = (await proc.stderr.read()).decode()
    assert code == 0 and rest == b"round 2 done\nreleased\n", errors[-2000:]
    secret = kube.request("GET", f"/api/v1/namespaces/{namespace}/secrets/dcr")
    assert json.loads(base64.b64decode(secret["data"]["dcr_client.json"]))["client_id"] == "round-2"


# --- the kubeconfig's CA is the only trust root ---


def system_trusts_the_api_server(kube: KubeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenSSL's default trust store, for this test: the API server's own CA."""
    monkeypatch.setenv("SSL_CERT_FILE", str(kube.ca_file))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def secret_exists(kube: KubeServer, namespace: str) -> bool:
    try:
        kube.request("GET", f"/api/v1/namespaces/{namespace}/secrets/dcr")
    except HarnessError:
        return False
    return True


async def test_certificate_authority_data_pins_the_trust_even_when_the_system_store_trusts_the_server(
    kube: KubeServer, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real API server's CA is system-trusted, the kubeconfig names another: refused, the Secret never written."""
    from harness.tls import write_ca

    write_ca(tmp_path / "other-ca.crt", tmp_path / "other-ca.key", "another CA")
    system_trusts_the_api_server(kube, monkeypatch)
    token = account_token(kube, namespace, account(kube, namespace))
    other_ca = base64.b64encode((tmp_path / "other-ca.crt").read_bytes()).decode()
    other = {"server": kube.url, "certificate-authority-data": other_ca}
    config = write_config(
        tmp_path / "config.json",
        clusters={"test": other},
        users={"me": {"token": token}},
        contexts={"test": {"cluster": "test", "user": "me", "namespace": namespace}},
        current="test",
    )
    with pytest.raises(StorageError, match="TLS with the Kubernetes API"):
        await round_trip(config)
    assert not secret_exists(kube, namespace)


async def test_a_kubeconfig_without_a_ca_trusts_the_system_store(
    kube: KubeServer, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No CA in the kubeconfig: the system store decides, as in client-go (the store above is in effect)."""
    system_trusts_the_api_server(kube, monkeypatch)
    token = account_token(kube, namespace, account(kube, namespace))
    config = write_config(
        tmp_path / "config.json",
        clusters={"test": {"server": kube.url}},
        users={"me": {"token": token}},
        contexts={"test": {"cluster": "test", "user": "me", "namespace": namespace}},
        current="test",
    )
    await round_trip(config)
    assert secret_exists(kube, namespace)
