"""How the Kubernetes client authenticates: kubeconfig files merged as kubectl merges them, contexts, token
files read again when they rotate, exec credential plugins (a small Python script written by each test),
client certificates, and one retry after a 401 with renewed credentials. Against tests/unit/test_k8s.py's
FakeKube on loopback."""

from __future__ import annotations

import base64
import json
import os
import ssl
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bootstrap import hooks, k8s, log
from bootstrap.errors import ConfigError, StorageError
from bootstrap.k8s import KubeApi, KubeStore
from bootstrap.k8s import _exec as config_module
from tests.fakeserver import FakeServer
from tests.unit.test_k8s import (
    KUBE_TOKEN,
    NS,
    SECRET,
    FakeKube,
    Handler,
    answer,
    kubeconfig,
    no_secret_in,
    registration,
    serving_kube,
    shared_settings,
)

V1 = "client.authentication.k8s.io/v1"
V1BETA1 = "client.authentication.k8s.io/v1beta1"

# The exec credential plugin of these tests: argv[1] is its spec (JSON); each run appends a line to runs.jsonl
# beside it, and prints the spec's next token (or certificate) as an ExecCredential.
PLUGIN = r"""
import datetime, json, os, signal, sys
spec_path = sys.argv[1]
spec = json.load(open(spec_path))
runs = os.path.join(os.path.dirname(spec_path), "runs.jsonl")
seen = {"info": os.environ.get("KUBERNETES_EXEC_INFO"), "args": sys.argv[2:], "env": os.environ.get("PLUGIN_ENV"),
        "stdin_tty": sys.stdin.isatty() if sys.stdin else None, "names": sorted(os.environ)}
with open(runs, "a") as f:
    f.write(json.dumps(seen) + "\n")
n = sum(1 for _ in open(runs)) - 1
if spec.get("hang"):
    open(os.path.join(os.path.dirname(spec_path), "pid"), "w").write(str(os.getpid()))
    signal.pause()
tokens = spec.get("tokens") or [None]
token = tokens[min(n, len(tokens) - 1)]
status = {"token": token} if token else {}
if spec.get("cert"):
    status["clientCertificateData"] = open(spec["cert"]).read()
    status["clientKeyData"] = open(spec["key"]).read()
if "expires_in" in spec:
    at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=spec["expires_in"])
    status["expirationTimestamp"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
body = spec.get("raw") or json.dumps({"apiVersion": spec.get("answer_version", spec.get("version")),
                                     "kind": "ExecCredential", "status": status})
print(body)
if spec.get("exit"):
    print("plugin stderr with", token, file=sys.stderr)
    sys.exit(spec["exit"])
"""


def exec_plugin(folder: Path, version: str = V1, **spec: Any) -> dict[str, Any]:
    """A kubeconfig user's ``exec`` running the test plugin with ``spec`` (tokens, expires_in, exit, hang...)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plugin.py").write_text(PLUGIN)
    (folder / "spec.json").write_text(json.dumps({"version": version} | spec))
    user: dict[str, Any] = {
        "apiVersion": version,
        "command": sys.executable,
        "args": [str(folder / "plugin.py"), str(folder / "spec.json"), "--extra-arg"],
        "env": [{"name": "PLUGIN_ENV", "value": "from-kubeconfig"}],
    }
    if version == V1:
        user["interactiveMode"] = "Never"
    return user


def plugin_runs(folder: Path) -> list[dict[str, Any]]:
    path = folder / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def write_config(path: Path, **parts: Any) -> Path:
    """A kubeconfig of ``clusters``, ``users``, ``contexts`` (name -> entry) and ``current``."""
    config: dict[str, Any] = {"apiVersion": "v1", "kind": "Config"}
    for section, key in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
        if section in parts:
            config[section] = [{"name": name, key: entry} for name, entry in parts[section].items()]
    if "current" in parts:
        config["current-context"] = parts["current"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return path


def with_user(config: Path, user: dict[str, Any]) -> Path:
    data = json.loads(config.read_text())
    data["users"][0]["user"] = user
    config.write_text(json.dumps(data))
    return config


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[FakeKube]:
    async with serving_kube(FakeKube()) as fake:
        fake.config = kubeconfig(tmp_path / "fake-kube.json", fake.base)
        fake.put_secret(registration())
        yield fake


@pytest.fixture(autouse=True)
def outside_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOSTNAME", "pod-a")


async def load_twice(config: Path) -> None:
    async with KubeStore.from_environment(SECRET, kubeconfig=config) as store:
        await store.load()
        await store.load()


def rotate(path: Path, token: str) -> None:
    """Replace a token file as the kubelet does: a new file renamed over the old one."""
    new = path.with_name(path.name + ".new")
    new.write_text(token)
    new.replace(path)


# --- several files in KUBECONFIG, contexts ---


def test_the_current_context_is_the_first_files_that_sets_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KUBECONFIG=a:b: a's current-context wins over b's, and b's entries serve it."""
    a = write_config(tmp_path / "a.json", current="from-a")
    b = write_config(
        tmp_path / "b.json",
        clusters={"cb": {"server": "https://127.0.0.2:6443"}, "other": {"server": "https://127.0.0.3:6443"}},
        users={"ub": {"token": "token-of-b-user"}},
        contexts={"from-a": {"cluster": "cb", "user": "ub", "namespace": "ns-a"}, "from-b": {"cluster": "other"}},
        current="from-b",
    )
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(a), str(b)]))
    api = KubeApi.from_environment()
    assert (api.server, api.default_namespace, api.token) == ("https://127.0.0.2:6443", "ns-a", "token-of-b-user")


def test_a_name_defined_in_two_files_is_taken_from_the_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first file defining a cluster, user or context name wins, whole (no field-by-field merge)."""
    a = write_config(tmp_path / "a.json", users={"u": {"token": "first-token-value"}})
    b = write_config(
        tmp_path / "b.json",
        clusters={"c": {"server": "https://127.0.0.2:6443"}},
        users={"u": {"token": "second-token-value", "client-certificate": "b.crt", "client-key": "b.key"}},
        contexts={"x": {"cluster": "c", "user": "u"}},
        current="x",
    )
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(a), str(b)]))
    api = KubeApi.from_environment()
    assert api.token == "first-token-value" and api.client_certificate is None


def test_relative_paths_are_relative_to_the_file_that_defined_the_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cluster from a/ and a user from b/: each one's relative paths resolve in its own file's folder."""
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "token").write_text("token-in-b-folder")
    a = write_config(
        tmp_path / "a" / "config.json",
        clusters={"c": {"server": "https://127.0.0.2:6443", "certificate-authority": "ca.pem"}},
        contexts={"x": {"cluster": "c", "user": "u"}},
        current="x",
    )
    b = write_config(
        tmp_path / "b" / "config.json",
        users={"u": {"tokenFile": "token", "client-certificate": "u.crt", "client-key": "keys/u.key"}},
    )
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(a), str(b)]))
    api = KubeApi.from_environment()
    assert api.ca_file == tmp_path / "a" / "ca.pem" and api.token_file == tmp_path / "b" / "token"
    assert (api.client_certificate, api.client_key) == (tmp_path / "b" / "u.crt", tmp_path / "b" / "keys" / "u.key")


def test_a_missing_file_in_the_kubeconfig_list_is_skipped(
    kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KUBECONFIG entry that does not exist (or is empty) is skipped, as kubectl skips it."""
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(tmp_path / "absent.json"), "", str(kube.config)]))
    assert KubeApi.from_environment().server == kube.base


def test_a_kubeconfig_list_of_only_missing_files_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No file of KUBECONFIG exists: one StorageError naming them."""
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    with pytest.raises(StorageError, match="None of the kubeconfig files"):
        KubeApi.from_environment()


def two_contexts(path: Path, good: str) -> Path:
    """``current-context`` points at a dead server; the context ``good`` at ``good``."""
    return write_config(
        path,
        clusters={"dead": {"server": "https://127.0.0.1:9"}, "live": {"server": good}},
        users={"u": {"token": KUBE_TOKEN}},
        contexts={"dead": {"cluster": "dead", "user": "u"}, "good": {"cluster": "live", "user": "u", "namespace": NS}},
        current="dead",
    )


def test_a_named_context_is_used_instead_of_the_current_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """from_environment(context=...) reads that context, not current-context."""
    monkeypatch.setenv("KUBECONFIG", str(two_contexts(tmp_path / "k.json", "https://127.0.0.2:6443")))
    api = KubeApi.from_environment(context="good")
    assert (api.server, api.default_namespace) == ("https://127.0.0.2:6443", NS)


def test_an_unknown_context_is_a_config_error_listing_the_known_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DCR_K8S_CONTEXT naming no context: ConfigError with the contexts there are."""
    monkeypatch.setenv("KUBECONFIG", str(two_contexts(tmp_path / "k.json", "https://127.0.0.2:6443")))
    with pytest.raises(ConfigError, match=r"DCR_K8S_CONTEXT='nope'.*contexts: dead, good"):
        KubeApi.from_environment(context="nope")


def test_a_context_naming_a_missing_user_is_a_storage_error(tmp_path: Path) -> None:
    """A context's user that no file defines is an error, not an anonymous request."""
    config = write_config(
        tmp_path / "k.json",
        clusters={"c": {"server": "https://127.0.0.2:6443"}},
        contexts={"x": {"cluster": "c", "user": "gone"}},
        current="x",
    )
    with pytest.raises(StorageError, match="names user 'gone'"):
        KubeApi.from_kubeconfig(config)


def test_a_context_without_kubeconfig_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """DCR_K8S_CONTEXT with no KUBECONFIG (a Pod's service account has no contexts) is a ConfigError."""
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    with pytest.raises(ConfigError, match="KUBECONFIG is not set"):
        KubeApi.from_environment(context="good")


def test_a_context_makes_the_kubeconfig_win_inside_a_pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a Pod, KUBECONFIG plus a context is used instead of the service account."""
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBECONFIG", str(two_contexts(tmp_path / "k.json", "https://127.0.0.2:6443")))
    assert KubeApi.from_environment(context="good").server == "https://127.0.0.2:6443"


async def test_dcr_k8s_context_reaches_run_shared(
    server: FakeServer, kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DCR_K8S_CONTEXT picks the context run_shared talks to (current-context is a dead server)."""
    settings = shared_settings(server, kube, tmp_path, monkeypatch, dcr_k8s_context="good", dcr_wait_timeout=5)
    monkeypatch.setenv("KUBECONFIG", str(two_contexts(tmp_path / "two.json", kube.base)))
    kube.objects.clear()
    outcome = await k8s.run_shared(settings)
    shared = kube.shared()
    assert shared is not None and shared["client_id"] == outcome.registration.client_id


def test_dcr_k8s_context_is_a_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """DCR_K8S_CONTEXT is read from the environment like every DCR_K8S_* setting."""
    from bootstrap.settings import load_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DCR_K8S_CONTEXT", "kind-dev")
    monkeypatch.setenv("DCR_ISSUER", "https://issuer.test/realms/x")
    assert load_settings().dcr_k8s_context == "kind-dev"


def test_unsupported_user_fields_are_refused(tmp_path: Path) -> None:
    """auth-provider and impersonation are refused, never silently dropped (the run would be someone else)."""
    config = with_user(kubeconfig(tmp_path / "k.json", "https://127.0.0.2:6443"), {"auth-provider": {"name": "oidc"}})
    with pytest.raises(ConfigError, match="auth-provider is not supported"):
        KubeApi.from_kubeconfig(config)


def test_an_ipv6_service_host_is_bracketed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KUBERNETES_SERVICE_HOST=fd00::1 makes https://[fd00::1]:443."""
    (tmp_path / "token").write_text("sa-token-value-1")
    (tmp_path / "namespace").write_text(NS)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    api = KubeApi.in_cluster(tmp_path)
    assert (api.server, api.token_file) == ("https://[fd00::1]:443", tmp_path / "token")


# --- token files ---


async def test_a_rotated_token_file_is_read_again_for_the_next_request(kube: FakeKube, tmp_path: Path) -> None:
    """tokenFile replaced between two requests: the second request carries the new token."""
    rotate(tmp_path / "tok", "token-before-rotation")
    config = with_user(kube.config, {"tokenFile": "tok"})
    async with KubeStore.from_environment(SECRET, kubeconfig=config) as store:
        await store.load()
        rotate(tmp_path / "tok", "token-after-rotation")
        await store.load()
    assert kube.authorization == {"Bearer token-before-rotation", "Bearer token-after-rotation"}


def rotate_then(path: Path, token: str, status: int) -> Any:
    """The kubelet rotates the token just as the API server stops taking the old one."""

    async def trick(request: web.Request, handler: Handler) -> web.StreamResponse:
        rotate(path, token)
        return web.json_response({"kind": "Status", "code": status, "reason": "Unauthorized"}, status=status)

    return trick


async def test_a_401_after_a_rotation_is_retried_once_with_the_new_token(kube: FakeKube, tmp_path: Path) -> None:
    """A 401 whose token file changed meanwhile is retried once, with the new token, and succeeds."""
    rotate(tmp_path / "tok", "token-before-rotation")
    kube.trick("GET secret", rotate_then(tmp_path / "tok", "token-after-rotation", 401))
    async with KubeStore.from_environment(SECRET, kubeconfig=with_user(kube.config, {"tokenFile": "tok"})) as store:
        data, _ = await store.load()
    assert data == registration() and kube.seen == ["GET secret", "GET secret"]


async def test_a_401_with_an_unchanged_token_is_not_retried(kube: FakeKube, tmp_path: Path) -> None:
    """A 401 when no new credentials exist is one StorageError at once."""
    rotate(tmp_path / "tok", "token-never-rotated")
    kube.trick("GET secret", rotate_then(tmp_path / "tok", "token-never-rotated", 401))
    async with KubeStore.from_environment(SECRET, kubeconfig=with_user(kube.config, {"tokenFile": "tok"})) as store:
        with pytest.raises(StorageError, match="HTTP 401"):
            await store.load()
    assert kube.seen == ["GET secret"]


async def test_a_token_file_gone_mid_rotation_keeps_the_last_token(kube: FakeKube, tmp_path: Path) -> None:
    """The token file missing for a moment (a symlink swap) leaves the last token in use."""
    rotate(tmp_path / "tok", "token-last-read-ok")
    async with KubeStore.from_environment(SECRET, kubeconfig=with_user(kube.config, {"tokenFile": "tok"})) as store:
        await store.load()
        (tmp_path / "tok").unlink()
        await store.load()
    assert kube.authorization == {"Bearer token-last-read-ok"}


# --- exec credential plugins ---


async def test_an_exec_plugin_token_is_sent(kube: FakeKube, tmp_path: Path) -> None:
    """The plugin's status.token is the bearer token."""
    config = with_user(kube.config, {"exec": exec_plugin(tmp_path / "p", tokens=["exec-token-value-1"])})
    async with KubeStore.from_environment(SECRET, kubeconfig=config) as store:
        await store.load()
    assert kube.authorization == {"Bearer exec-token-value-1"}


async def test_an_exec_plugin_gets_its_args_env_and_kubernetes_exec_info(kube: FakeKube, tmp_path: Path) -> None:
    """args and env of the kubeconfig, and KUBERNETES_EXEC_INFO as kubectl writes it (not interactive)."""
    plugin = exec_plugin(tmp_path / "p", tokens=["exec-token-value-1"]) | {"provideClusterInfo": True}
    async with KubeStore.from_environment(SECRET, kubeconfig=with_user(kube.config, {"exec": plugin})) as store:
        await store.load()
    (run,) = plugin_runs(tmp_path / "p")
    assert run["args"] == ["--extra-arg"] and run["env"] == "from-kubeconfig" and run["stdin_tty"] is False
    assert json.loads(run["info"]) == {
        "apiVersion": V1,
        "kind": "ExecCredential",
        "spec": {"interactive": False, "cluster": {"server": kube.base}},
    }


async def test_an_exec_plugin_runs_without_the_bootstrap_secrets(
    kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The initial access token, the admin credentials and their *_FILE names never reach the plugin."""
    for name in hooks.BOOTSTRAP_ONLY:
        monkeypatch.setenv(name, "bootstrap-only-value")
    monkeypatch.setenv("keycloak_admin_password", "bootstrap-only-value")  # the settings read any case
    config = with_user(kube.config, {"exec": exec_plugin(tmp_path / "p", tokens=["exec-token-value-1"])})
    await load_twice(config)
    names = set(plugin_runs(tmp_path / "p")[0]["names"])
    assert {name.upper() for name in names} & set(hooks.BOOTSTRAP_ONLY) == set()
    assert {"PATH", "PLUGIN_ENV", "KUBERNETES_EXEC_INFO"} <= names


async def test_a_v1beta1_exec_plugin_needs_no_interactive_mode(kube: FakeKube, tmp_path: Path) -> None:
    """client.authentication.k8s.io/v1beta1 plugins work, interactiveMode defaulting to IfAvailable."""
    plugin = exec_plugin(tmp_path / "p", version=V1BETA1, tokens=["beta-token-value-1"])
    async with KubeStore.from_environment(SECRET, kubeconfig=with_user(kube.config, {"exec": plugin})) as store:
        await store.load()
    assert kube.authorization == {"Bearer beta-token-value-1"}
    assert json.loads(plugin_runs(tmp_path / "p")[0]["info"])["apiVersion"] == V1BETA1


async def test_an_unexpired_exec_credential_is_reused(kube: FakeKube, tmp_path: Path) -> None:
    """A credential valid for an hour serves every request: the plugin runs once."""
    plugin = exec_plugin(tmp_path / "p", tokens=["exec-token-1-value", "exec-token-2-value"], expires_in=3600)
    await load_twice(with_user(kube.config, {"exec": plugin}))
    assert len(plugin_runs(tmp_path / "p")) == 1 and kube.authorization == {"Bearer exec-token-1-value"}


async def test_an_expired_exec_credential_runs_the_plugin_again(kube: FakeKube, tmp_path: Path) -> None:
    """A credential past its expirationTimestamp is fetched again before the next request."""
    plugin = exec_plugin(tmp_path / "p", tokens=["exec-token-1-value", "exec-token-2-value"], expires_in=-60)
    await load_twice(with_user(kube.config, {"exec": plugin}))
    assert len(plugin_runs(tmp_path / "p")) == 2
    assert kube.authorization == {"Bearer exec-token-1-value", "Bearer exec-token-2-value"}


async def test_a_401_runs_the_exec_plugin_again_once(kube: FakeKube, tmp_path: Path) -> None:
    """A revoked exec credential (401) is fetched again and the request retried once."""
    plugin = exec_plugin(tmp_path / "p", tokens=["exec-token-1-value", "exec-token-2-value"], expires_in=3600)
    kube.trick("GET secret", answer(401, json.dumps({"kind": "Status", "code": 401}).encode()))
    async with KubeStore.from_environment(SECRET, kubeconfig=with_user(kube.config, {"exec": plugin})) as store:
        assert (await store.load())[0] == registration()
    assert len(plugin_runs(tmp_path / "p")) == 2 and kube.seen == ["GET secret", "GET secret"]


async def test_a_failing_exec_plugin_is_a_storage_error_without_its_output(
    kube: FakeKube, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit status 1: a StorageError naming the command and status; neither its stdout nor stderr shows."""
    plugin = exec_plugin(tmp_path / "p", tokens=["leaked-plugin-token"], exit=1)
    async with KubeStore.from_environment(SECRET, kubeconfig=with_user(kube.config, {"exec": plugin})) as store:
        with pytest.raises(StorageError) as caught:
            await store.load()
    message = str(caught.value)
    assert sys.executable in message and "status 1" in message
    no_secret_in(message + "".join(capsys.readouterr()), "leaked-plugin-token")
    assert kube.seen == []


async def test_a_hanging_exec_plugin_is_stopped_at_the_timeout(
    kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin that never answers is killed after EXEC_TIMEOUT: one StorageError, no process left."""
    monkeypatch.setattr(config_module, "EXEC_TIMEOUT", 0.5)
    plugin = exec_plugin(tmp_path / "p", hang=True)
    async with KubeStore.from_environment(SECRET, kubeconfig=with_user(kube.config, {"exec": plugin})) as store:
        with pytest.raises(StorageError, match="did not answer within"):
            await store.load()
    pid = int((tmp_path / "p" / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_a_missing_exec_plugin_is_a_config_error_with_its_install_hint(kube: FakeKube, tmp_path: Path) -> None:
    """A command that does not exist: ConfigError naming it, with the kubeconfig's installHint."""
    plugin = {"apiVersion": V1, "command": "no-such-plugin-x", "interactiveMode": "Never", "installHint": "brew it"}
    async with KubeStore.from_environment(SECRET, kubeconfig=with_user(kube.config, {"exec": plugin})) as store:
        with pytest.raises(ConfigError, match=r"'no-such-plugin-x' cannot be started.*brew it"):
            await store.load()


async def test_an_exec_credential_of_another_api_version_is_a_storage_error(kube: FakeKube, tmp_path: Path) -> None:
    """The plugin must answer in the apiVersion the kubeconfig asked for."""
    plugin = exec_plugin(tmp_path / "p", tokens=["exec-token-value-1"], answer_version=V1BETA1)
    async with KubeStore.from_environment(SECRET, kubeconfig=with_user(kube.config, {"exec": plugin})) as store:
        with pytest.raises(StorageError, match="answered apiVersion"):
            await store.load()


async def test_exec_output_that_is_no_exec_credential_is_a_storage_error(kube: FakeKube, tmp_path: Path) -> None:
    """Anything but an ExecCredential with a token or a certificate is one StorageError."""
    plugin = exec_plugin(tmp_path / "p", raw=json.dumps({"apiVersion": V1, "kind": "ExecCredential", "status": {}}))
    async with KubeStore.from_environment(SECRET, kubeconfig=with_user(kube.config, {"exec": plugin})) as store:
        with pytest.raises(StorageError, match=r"neither status\.token"):
            await store.load()


def test_a_v1_exec_plugin_without_interactive_mode_is_a_config_error(tmp_path: Path) -> None:
    """client.authentication.k8s.io/v1 requires interactiveMode, as kubectl does."""
    plugin = exec_plugin(tmp_path / "p")
    del plugin["interactiveMode"]
    with pytest.raises(ConfigError, match="interactiveMode must be one of"):
        KubeApi.from_kubeconfig(with_user(kubeconfig(tmp_path / "k.json", "https://127.0.0.2:1"), {"exec": plugin}))


async def test_interactive_mode_always_without_a_terminal_is_a_config_error(kube: FakeKube, tmp_path: Path) -> None:
    """interactiveMode Always with no terminal on stdin: ConfigError before the plugin runs."""
    plugin = exec_plugin(tmp_path / "p", tokens=["exec-token-value-1"]) | {"interactiveMode": "Always"}
    async with KubeStore.from_environment(SECRET, kubeconfig=with_user(kube.config, {"exec": plugin})) as store:
        with pytest.raises(ConfigError, match="needs a terminal"):
            await store.load()
    assert plugin_runs(tmp_path / "p") == []


async def test_a_relative_exec_command_is_relative_to_the_kubeconfig(kube: FakeKube, tmp_path: Path) -> None:
    """A command with a slash is resolved in the kubeconfig's folder; the plugin runs from another cwd."""
    plugin = exec_plugin(tmp_path / "p", tokens=["exec-token-value-1"])
    script = tmp_path / "bin" / "plugin"
    script.parent.mkdir()
    script.write_text(f"#!{sys.executable}\n" + PLUGIN)
    script.chmod(stat.S_IRWXU)
    plugin["command"], plugin["args"] = "./bin/plugin", plugin["args"][1:]
    async with KubeStore.from_environment(SECRET, kubeconfig=with_user(kube.config, {"exec": plugin})) as store:
        await store.load()
    assert kube.authorization == {"Bearer exec-token-value-1"}


async def test_an_exec_token_is_masked_in_logs(kube: FakeKube, tmp_path: Path) -> None:
    """The plugin's token is registered for masking as soon as it is read."""
    plugin = exec_plugin(tmp_path / "p", tokens=["exec-token-to-mask-1"])
    async with KubeStore.from_environment(SECRET, kubeconfig=with_user(kube.config, {"exec": plugin})) as store:
        await store.load()
    no_secret_in(log._scrub("x exec-token-to-mask-1 y"), "exec-token-to-mask-1")


# --- client certificates ---


def client_pem(folder: Path) -> tuple[bytes, bytes]:
    from harness.tls import write_ca, write_client_cert

    folder.mkdir(parents=True, exist_ok=True)
    write_ca(folder / "ca.crt", folder / "ca.key", "test CA")
    write_client_cert(folder / "ca.crt", folder / "ca.key", folder / "u.crt", folder / "u.key", user="u")
    return (folder / "u.crt").read_bytes(), (folder / "u.key").read_bytes()


def test_client_key_data_is_loaded_through_private_files_that_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """client-certificate-data/-key-data load into TLS from a private temporary folder, gone afterwards."""
    import base64
    import tempfile

    cert, key = client_pem(tmp_path / "pki")
    user = {
        "client-certificate-data": base64.b64encode(cert).decode(),
        "client-key-data": base64.b64encode(key).decode(),
    }
    api = KubeApi.from_kubeconfig(with_user(kubeconfig(tmp_path / "k.json", "https://127.0.0.2:1"), user))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    assert not isinstance(api.ssl_context(), bool)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_mismatched_client_key_is_a_config_error_without_the_key(tmp_path: Path) -> None:
    """A key that does not belong to the certificate: ConfigError; no key material in the message."""
    import base64

    cert, _ = client_pem(tmp_path / "one")
    _, other_key = client_pem(tmp_path / "two")
    key_data = base64.b64encode(other_key).decode()
    user = {"client-certificate-data": base64.b64encode(cert).decode(), "client-key-data": key_data}
    api = KubeApi.from_kubeconfig(with_user(kubeconfig(tmp_path / "k.json", "https://127.0.0.2:1"), user))
    with pytest.raises(ConfigError, match="client certificate and key") as caught:
        api.ssl_context()
    no_secret_in(str(caught.value), key_data, other_key.decode())


def test_a_client_certificate_without_its_key_is_a_config_error(tmp_path: Path) -> None:
    """client-certificate without client-key (or the reverse) is refused at once."""
    config = with_user(kubeconfig(tmp_path / "k.json", "https://127.0.0.2:1"), {"client-certificate": "u.crt"})
    with pytest.raises(ConfigError, match="without its key"):
        KubeApi.from_kubeconfig(config)


# --- the kubeconfig's CA is the only trust root ---


@dataclass
class Pki:
    """A CA the test's system trust store holds (``system_ca``, signing the server) and one it does not."""

    system_ca: Path
    other_ca: Path
    cert: Path
    key: Path


@pytest.fixture
def pki(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Pki:
    from harness.tls import write_ca, write_ca_and_server_cert

    folder = tmp_path / "pki"
    folder.mkdir()
    found = Pki(folder / "system-ca.crt", folder / "other-ca.crt", folder / "server.crt", folder / "server.key")
    write_ca_and_server_cert(found.system_ca, found.cert, found.key, hosts=["127.0.0.1"], common_name="127.0.0.1")
    write_ca(found.other_ca, folder / "other-ca.key", "another CA")
    monkeypatch.setenv("SSL_CERT_FILE", str(found.system_ca))  # OpenSSL's default trust store, for this test
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return found


@pytest.fixture
async def tls_kube(pki: Pki, tmp_path: Path) -> AsyncIterator[FakeKube]:
    """The fake API server over https, its certificate signed by the CA of the system trust store."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert, pki.key)
    fake = FakeKube()
    runner = web.AppRunner(fake.app(), shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    fake.base = f"https://127.0.0.1:{runner.addresses[0][1]}"
    fake.put_secret(registration())
    try:
        yield fake
    finally:
        await runner.cleanup()


async def test_certificate_authority_data_is_the_only_trust_root(tls_kube: FakeKube, pki: Pki, tmp_path: Path) -> None:
    """A server whose CA only the system store trusts never gets the token when the kubeconfig names another CA."""
    config = kubeconfig(
        tmp_path / "k.json",
        tls_kube.base,
        **{"certificate-authority-data": base64.b64encode(pki.other_ca.read_bytes()).decode()},
    )
    with pytest.raises(StorageError, match="TLS with the Kubernetes API"):
        async with KubeStore.from_environment(SECRET, kubeconfig=config) as store:
            await store.load()
    assert (tls_kube.seen, tls_kube.authorization) == ([], set())


async def test_a_certificate_authority_file_is_the_only_trust_root(
    tls_kube: FakeKube, pki: Pki, tmp_path: Path
) -> None:
    """The same for a kubeconfig's certificate-authority file: the system store is not consulted."""
    config = kubeconfig(tmp_path / "k.json", tls_kube.base, **{"certificate-authority": str(pki.other_ca)})
    with pytest.raises(StorageError, match="TLS with the Kubernetes API"):
        async with KubeStore.from_environment(SECRET, kubeconfig=config) as store:
            await store.load()
    assert (tls_kube.seen, tls_kube.authorization) == ([], set())


async def test_a_kubeconfig_without_a_ca_trusts_the_system_store(tls_kube: FakeKube, tmp_path: Path) -> None:
    """No CA named: the system trust store decides, as client-go does (and this test's store is in effect)."""
    async with KubeStore.from_environment(SECRET, kubeconfig=kubeconfig(tmp_path / "k.json", tls_kube.base)) as store:
        await store.load()
    assert tls_kube.authorization == {f"Bearer {KUBE_TOKEN}"}


async def test_certificate_authority_data_of_the_servers_ca_is_trusted(
    tls_kube: FakeKube, pki: Pki, tmp_path: Path
) -> None:
    """certificate-authority-data naming the server's own CA works."""
    data = base64.b64encode(pki.system_ca.read_bytes()).decode()
    config = kubeconfig(tmp_path / "k.json", tls_kube.base, **{"certificate-authority-data": data})
    async with KubeStore.from_environment(SECRET, kubeconfig=config) as store:
        await store.load()
    assert tls_kube.authorization == {f"Bearer {KUBE_TOKEN}"}
