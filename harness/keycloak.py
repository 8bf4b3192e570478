"""A real Keycloak for tests, benchmarks and the local bring-up, from the official distribution.

* ``ensure_distribution()`` fetches ``org.keycloak:keycloak-quarkus-dist`` (zip) with
  ``mvn dependency:copy`` into the git-ignored ``.cache/keycloak`` and unzips it once.
* ``KeycloakServer`` runs ``kc.sh start-dev`` on free loopback ports with an in-memory database and
  health on the management port, and stops it. No Keycloak outlives its owner: the server runs in
  its own process group beside a watchdog that reads a pipe held by this process; when the pipe
  closes (``stop()``, normal exit, a crash or even SIGKILL of the owner) the watchdog terminates
  the whole group.
* ``Admin`` is a small synchronous client of Keycloak's admin REST API.

Only loopback addresses are ever used.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.cli import printing, run_command
from harness.process import HarnessError, answers_200, await_ready, log_tail, spawn, stop_group

KEYCLOAK_VERSION = os.environ.get("KEYCLOAK_VERSION", "26.7.3")
ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("KEYCLOAK_CACHE", ROOT / ".cache" / "keycloak"))
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
ADMIN_USER = "admin"
# A preview feature in Keycloak 26: client secret rotation by client policy (the lifecycle tests use it).
ROTATION_FEATURE = "--features=client-secret-rotation"
LOOPBACK = "127.0.0.1"

# The watchdog: start Keycloak and a reader of stdin (a pipe from the owner, on fd 3: an asynchronous list's
# own stdin is /dev/null); EOF ends the group, and so does Keycloak's own exit, so a server that dies during
# start-up is reported at once, not at the start-up timeout.
_WATCHDOG = 'exec 3<&0; "$@" </dev/null & s=$!; (read -r _ <&3; kill -TERM 0) & wait "$s"; kill -TERM 0'


def _log(message: str) -> None:
    print(f"[keycloak-harness] {message}", file=sys.stderr, flush=True)


def ensure_distribution(version: str = KEYCLOAK_VERSION) -> Path:
    """Return the unpacked distribution's home, fetching it with Maven the first time."""
    home = CACHE / f"keycloak-{version}"
    if (home / "bin" / "kc.sh").exists():
        return home
    CACHE.mkdir(parents=True, exist_ok=True)
    archive = CACHE / f"keycloak-quarkus-dist-{version}.zip"
    if not archive.exists():
        if shutil.which("mvn") is None:
            raise HarnessError("Maven (mvn) is not installed; it fetches the Keycloak distribution.")
        _log(f"fetching org.keycloak:keycloak-quarkus-dist:{version}:zip with mvn dependency:copy")
        cmd = [
            "mvn",
            "-B",
            "-q",
            f"{DEPENDENCY_PLUGIN}:copy",
            f"-Dartifact=org.keycloak:keycloak-quarkus-dist:{version}:zip",
            f"-DoutputDirectory={CACHE}",
            "-Dmdep.useBaseVersion=true",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=CACHE)
        if result.returncode != 0 or not archive.exists():
            raise HarnessError(
                f"mvn could not fetch keycloak-quarkus-dist {version} (exit {result.returncode}): "
                f"{(result.stdout + result.stderr).strip()[-800:]}"
            )
    staging = CACHE / f".unpack-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            target = zf.extract(info, staging)
            mode = info.external_attr >> 16
            if mode:
                os.chmod(target, mode & 0o777)
    os.replace(staging / f"keycloak-{version}", home)
    shutil.rmtree(staging, ignore_errors=True)
    return home


def ephemeral_ports() -> range:
    """The kernel's range for the local ports of outgoing connections."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


def free_port() -> int:
    """A loopback port free now and outside the ephemeral range.

    Servers bind their ports seconds to minutes after we choose them (longer on a busy machine); a port
    from the ephemeral range may meanwhile become the local end of any connection on the machine.
    """
    ephemeral = ephemeral_ports()
    candidates = [port for port in range(10000, 65536) if port not in ephemeral]
    for port in random.sample(candidates, 100):
        with socket.socket() as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise HarnessError("no free loopback port outside the ephemeral range")


@dataclass
class KeycloakServer:
    """One Keycloak process (group) on loopback ports."""

    home: Path = field(default_factory=ensure_distribution)
    http_port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    admin_password: str = field(default_factory=lambda: uuid.uuid4().hex, repr=False)
    extra_args: tuple[str, ...] = ()
    # The address it listens on, and a command prefix (``nsenter --net=...`` starts it in a network namespace).
    host: str = LOOPBACK
    launcher: tuple[str, ...] = ()
    log_path: Path | None = None
    startup_seconds: float | None = None
    rss_mib: float | None = None
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def health_url(self) -> str:
        return f"http://{self.host}:{self.management_port}/health/ready"

    @property
    def pgid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def spawn(self) -> KeycloakServer:
        """Start the process without waiting for readiness."""
        self.log_path = self.log_path or CACHE / f"keycloak-{self.http_port}.log"
        env = dict(os.environ)
        env.update(
            {
                "KC_BOOTSTRAP_ADMIN_USERNAME": ADMIN_USER,
                "KC_BOOTSTRAP_ADMIN_PASSWORD": self.admin_password,
                # Keep the JVM modest on a 2-core machine.
                "JAVA_OPTS_KC_HEAP": env.get("JAVA_OPTS_KC_HEAP", "-Xms128m -Xmx768m"),
            }
        )
        args = [
            *self.launcher,
            str(self.home / "bin" / "kc.sh"),
            "start-dev",
            f"--http-host={self.host}",
            f"--http-port={self.http_port}",
            f"--http-management-host={self.host}",
            f"--http-management-port={self.management_port}",
            "--health-enabled=true",
            "--db=dev-mem",
            *self.extra_args,
        ]
        self._started_at = time.monotonic()
        self._proc = spawn(["sh", "-c", _WATCHDOG, "keycloak-watchdog", *args], self.log_path, env)
        return self

    def wait_ready(self, timeout: float = 240.0) -> KeycloakServer:
        assert self._proc is not None
        self.startup_seconds, self.rss_mib = await_ready(
            self._proc, self._started_at, self._healthy, timeout, "Keycloak", self.log_tail, self.stop
        )
        _log(
            f"Keycloak {KEYCLOAK_VERSION} ready at {self.url} in {self.startup_seconds:.1f}s, "
            f"RSS {self.rss_mib:.0f} MiB (management port {self.management_port})"
        )
        return self

    def _healthy(self) -> bool:
        return answers_200(self.health_url)

    def start(self, timeout: float = 240.0) -> KeycloakServer:
        return self.spawn().wait_ready(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Close the watchdog's pipe (it terminates the group), then make sure the group is gone."""
        if self._proc is not None:
            stop_group(self._proc, timeout)

    def log_tail(self, lines: int = 25) -> str:
        return log_tail(self.log_path, lines)

    def admin(self) -> Admin:
        return Admin(self.url, ADMIN_USER, self.admin_password)


class AdminError(RuntimeError):
    pass


@dataclass
class Admin:
    """Keycloak admin REST API, synchronous, for fixtures and scripts."""

    base_url: str
    username: str
    password: str = field(repr=False)
    _token: str | None = field(default=None, repr=False)
    _token_expires: float = 0.0

    def token(self) -> str:
        if self._token is None or time.monotonic() > self._token_expires:
            data = self._call(
                "POST",
                "/realms/master/protocol/openid-connect/token",
                form={
                    "grant_type": "password",
                    "client_id": "admin-cli",
                    "username": self.username,
                    "password": self.password,
                },
                auth=False,
            )
            self._token = str(data["access_token"])
            self._token_expires = time.monotonic() + float(data.get("expires_in", 60)) - 10
        return self._token

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        form: dict[str, str] | None = None,
        auth: bool = True,
    ) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise AdminError(f"{method} {path}: HTTP {exc.code} {exc.read()[:300]!r}") from None
        return json.loads(raw) if raw else None

    # --- realms ---
    def create_realm(self, name: str | None = None, **attributes: str) -> str:
        name = name or f"t-{uuid.uuid4().hex[:10]}"
        self._call("POST", "/admin/realms", body={"realm": name, "enabled": True, "attributes": attributes})
        return name

    def import_realm(self, representation: dict[str, Any]) -> str:
        """Create a realm from a full representation (what --import-realm reads from a JSON file)."""
        self._call("POST", "/admin/realms", body=representation)
        return str(representation["realm"])

    def delete_realm(self, name: str) -> None:
        self._call("DELETE", f"/admin/realms/{name}")

    # --- client registration ---
    def mint_initial_access_token(self, realm: str, *, count: int = 1, expiration: int = 600) -> str:
        data = self._call(
            "POST", f"/admin/realms/{realm}/clients-initial-access", body={"count": count, "expiration": expiration}
        )
        return str(data["token"])

    def set_trusted_hosts(self, realm: str, hosts: list[str]) -> None:
        """Configure the anonymous Trusted Hosts client-registration policy."""
        components = self._call(
            "GET",
            f"/admin/realms/{realm}/components?type=org.keycloak.services.clientregistration.policy."
            "ClientRegistrationPolicy",
        )
        for component in components:
            if component["providerId"] == "trusted-hosts" and component.get("subType") == "anonymous":
                component["config"]["trusted-hosts"] = hosts
                component["config"]["host-sending-registration-request-must-match"] = ["true"]
                component["config"]["client-uris-must-match"] = ["false"]
                self._call("PUT", f"/admin/realms/{realm}/components/{component['id']}", body=component)
                return
        raise AdminError(f"realm {realm} has no anonymous Trusted Hosts policy")

    def add_registration_policy(self, realm: str, provider: str, sub_type: str, config: dict[str, list[str]]) -> None:
        """Add a client-registration policy (e.g. ``max-clients`` for ``authenticated`` registrations)."""
        parent = self._call("GET", f"/admin/realms/{realm}")["id"]
        component = {
            "name": f"{provider}-{sub_type}",
            "providerId": provider,
            "providerType": "org.keycloak.services.clientregistration.policy.ClientRegistrationPolicy",
            "parentId": parent,
            "subType": sub_type,
            "config": config,
        }
        self._call("POST", f"/admin/realms/{realm}/components", body=component)

    def set_secret_rotation(self, realm: str, *, expiration: int, remaining: int, rotated: int) -> None:
        """Keycloak's client secret rotation policy for every confidential client of ``realm`` (seconds).

        ``remaining`` is the window before expiry in which a DCR update rotates the secret; ``rotated`` is
        how long the previous secret stays valid. Needs the client-secret-rotation feature (ROTATION_FEATURE).
        """
        executor = {
            "executor": "secret-rotation",
            "configuration": {
                "expiration-period": expiration,
                "remaining-rotation-period": remaining,
                "rotated-expiration-period": rotated,
            },
        }
        self._call(
            "PUT",
            f"/admin/realms/{realm}/client-policies/profiles",
            body={"profiles": [{"name": "rotate-secrets", "executors": [executor]}]},
        )
        condition = {"condition": "client-access-type", "configuration": {"type": ["confidential"]}}
        policy = {"name": "rotate-secrets", "enabled": True, "conditions": [condition], "profiles": ["rotate-secrets"]}
        self._call("PUT", f"/admin/realms/{realm}/client-policies/policies", body={"policies": [policy]})

    # --- clients ---
    def clients(self, realm: str) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/admin/realms/{realm}/clients"))

    def count_clients(self, realm: str) -> int:
        return len(self.clients(realm))

    def _internal_id(self, realm: str, client_id: str) -> str:
        found = self._call("GET", f"/admin/realms/{realm}/clients?clientId={urllib.parse.quote(client_id)}")
        if not found:
            raise AdminError(f"no client {client_id} in realm {realm}")
        return str(found[0]["id"])

    def client(self, realm: str, client_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/admin/realms/{realm}/clients/{self._internal_id(realm, client_id)}"))

    def delete_client(self, realm: str, client_id: str) -> None:
        self._call("DELETE", f"/admin/realms/{realm}/clients/{self._internal_id(realm, client_id)}")

    def client_secret(self, realm: str, client_id: str) -> str:
        data = self._call("GET", f"/admin/realms/{realm}/clients/{self._internal_id(realm, client_id)}/client-secret")
        return str(data["value"])

    def regenerate_secret(self, realm: str, client_id: str) -> str:
        data = self._call("POST", f"/admin/realms/{realm}/clients/{self._internal_id(realm, client_id)}/client-secret")
        return str(data["value"])

    def add_audience_mapper(self, realm: str, client_id: str, audience: str) -> None:
        """Put client ``audience`` into the tokens of ``client_id`` (Keycloak 26.7 introspection needs it)."""
        self._call(
            "POST",
            f"/admin/realms/{realm}/clients/{self._internal_id(realm, client_id)}/protocol-mappers/models",
            body={
                "name": f"audience-{audience}",
                "protocol": "openid-connect",
                "protocolMapper": "oidc-audience-mapper",
                "config": {
                    "included.client.audience": audience,
                    "access.token.claim": "true",
                    "introspection.token.claim": "true",
                },
            },
        )

    def create_confidential_client(self, realm: str, client_id: str) -> str:
        """A static service-account client, for static-mode tests; returns its secret."""
        self._call(
            "POST",
            f"/admin/realms/{realm}/clients",
            body={
                "clientId": client_id,
                "publicClient": False,
                "serviceAccountsEnabled": True,
                "standardFlowEnabled": False,
                "protocol": "openid-connect",
            },
        )
        return self.client_secret(realm, client_id)

    def caller_token(self, realm: str, caller: str, audience: str) -> str:
        """A token of client ``caller`` (created if missing) whose audience names ``audience``.

        A server that introspects tokens with its own client needs to be in their audience (Keycloak 26.7).
        """
        try:
            secret = self.client_secret(realm, caller)
        except AdminError:
            secret = self.create_confidential_client(realm, caller)
        mappers = self.client(realm, caller).get("protocolMappers", [])
        if not any(m.get("config", {}).get("included.client.audience") == audience for m in mappers):
            self.add_audience_mapper(realm, caller, audience)
        token_endpoint = f"{self.base_url}/realms/{realm}/protocol/openid-connect/token"
        return str(client_credentials_token(token_endpoint, caller, secret)["access_token"])


def client_credentials_token(token_endpoint: str, client_id: str, client_secret: str) -> dict[str, Any]:
    """An independent check that credentials work (urllib, not the tool's own code), by client_secret_basic."""
    form = urllib.parse.urlencode({"grant_type": "client_credentials"}).encode()
    basic = base64.b64encode(
        f"{urllib.parse.quote(client_id, safe='')}:{urllib.parse.quote(client_secret, safe='')}".encode()
    ).decode()
    request = urllib.request.Request(
        token_endpoint, data=form, method="POST", headers={"Authorization": f"Basic {basic}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        raise AdminError(f"token request for {client_id} failed: HTTP {exc.code}") from None


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.keycloak fetch``: fetch and unpack the distribution (used by scripts/setup.sh)."""
    return run_command("keycloak", {"fetch": printing(ensure_distribution)}, "fetch", argv)


if __name__ == "__main__":
    sys.exit(main())
