"""Where the Kubernetes API server is and how to authenticate to it: in-cluster files or a kubeconfig.

The server URL, its CA and the way to authenticate are read and checked before any request, and a
server the credentials must not be sent to (plain http off loopback) is refused. Credentials that
rotate are fetched again while the client runs (``Credentials``): the service-account token file and a
kubeconfig's ``tokenFile`` whenever the file changes (the kubelet replaces the projected token long
before it expires), an exec plugin's credential when it expires, and either of them once after a 401.

A kubeconfig is read as kubectl reads it: ``KUBECONFIG`` may list several files (``os.pathsep``), merged
with the first file to set a value winning (``current-context``; each cluster, user and context by
name), and a relative path in an entry is relative to the folder of the file that defined it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import json
import os
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from .. import log
from ..errors import ConfigError, StorageError, printable
from ..models import is_vschar
from ..settings import K8S_NAME

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

# An exec credential plugin that is not interactive gets this long (at most the run's deadline) to answer.
EXEC_TIMEOUT = 30.0
EXEC_OUTPUT_LIMIT = 1024 * 1024
EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
INTERACTIVE_MODES = ("Never", "IfAvailable", "Always")
# Fields of a kubeconfig user that we do not implement: refused, never silently ignored (the run would go
# out as another identity than the one the kubeconfig names).
UNSUPPORTED_USER_FIELDS = ("auth-provider", "username", "password", "as", "as-uid", "as-groups", "as-user-extra")

logger = log.get_logger()


def dict_or_empty(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_name(what: str, name: str) -> str:
    """A namespace or object name as the API server accepts it (DNS-1123 subdomain), before it goes in a URL."""
    if not K8S_NAME.fullmatch(name):
        raise ConfigError(
            f"The Kubernetes {what} name {printable(name, 80)!r} is not a DNS-1123 name (lower-case letters, "
            "digits, '-' and '.', at most 253); fix the namespace file, the kubeconfig context or DCR_K8S_*."
        )
    return name


# --- exec credential plugins (client.authentication.k8s.io) ---


@dataclass(frozen=True)
class ExecPlugin:
    """A kubeconfig user's ``exec``: a command that prints an ExecCredential with a token or a certificate."""

    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    api_version: str = EXEC_API_VERSIONS[0]
    interactive_mode: str = "IfAvailable"
    install_hint: str | None = None
    cluster: dict[str, Any] | None = field(default=None, repr=False)  # spec.cluster, with provideClusterInfo

    @classmethod
    def parse(cls, raw: object, origin: Path, cluster: dict[str, Any] | None = None) -> ExecPlugin:
        """``users[].user.exec`` as kubectl reads it; a relative command with a slash is relative to ``origin``."""
        spec = dict_or_empty(raw)
        command = text_or_none(spec.get("command"))
        version = spec.get("apiVersion")
        if command is None or version not in EXEC_API_VERSIONS:
            raise ConfigError(
                f"kubeconfig {origin}: users[].user.exec needs a command and an apiVersion of "
                f"{' or '.join(EXEC_API_VERSIONS)}; fix the exec section."
            )
        mode = spec.get("interactiveMode", None if version == EXEC_API_VERSIONS[0] else "IfAvailable")
        if mode not in INTERACTIVE_MODES:
            raise ConfigError(
                f"kubeconfig {origin}: users[].user.exec.interactiveMode must be one of {', '.join(INTERACTIVE_MODES)} "
                f"(required for {EXEC_API_VERSIONS[0]}); set it, usually to Never or IfAvailable."
            )
        if os.sep in command and not os.path.isabs(command):
            command = str(origin.parent / command)
        args = spec.get("args") or []
        env = spec.get("env") or []
        if not isinstance(args, list) or not isinstance(env, list):
            raise ConfigError(f"kubeconfig {origin}: users[].user.exec args and env must be lists; fix them.")
        return cls(
            command=command,
            args=tuple(str(arg) for arg in args),
            env=tuple((str(e.get("name")), str(e.get("value", ""))) for e in env if isinstance(e, dict)),
            api_version=str(version),
            interactive_mode=str(mode),
            install_hint=text_or_none(spec.get("installHint")),
            cluster=cluster if spec.get("provideClusterInfo") is True else None,
        )

    def interactive(self) -> bool:
        """Whether the plugin may talk to a person: only with a terminal on stdin, and only if its mode allows."""
        terminal = sys.stdin is not None and sys.stdin.isatty()
        if self.interactive_mode == "Always" and not terminal:
            raise ConfigError(
                f"The exec credential plugin {self.command!r} needs a terminal (interactiveMode Always) and there is "
                "none; use a plugin configuration that works unattended (interactiveMode Never)."
            )
        return terminal and self.interactive_mode != "Never"

    def exec_info(self, interactive: bool) -> str:
        """KUBERNETES_EXEC_INFO, as kubectl passes it."""
        spec: dict[str, Any] = {"interactive": interactive}
        if self.cluster is not None:
            spec["cluster"] = self.cluster
        return json.dumps({"apiVersion": self.api_version, "kind": "ExecCredential", "spec": spec})

    async def run(self, remaining: float) -> Issued:
        """Run the plugin once; its credential, or one error naming the command (never its output)."""
        interactive = self.interactive()
        timeout = remaining if interactive else min(EXEC_TIMEOUT, remaining)
        env = os.environ | dict(self.env) | {"KUBERNETES_EXEC_INFO": self.exec_info(interactive)}
        try:
            proc = await asyncio.create_subprocess_exec(
                self.command,
                *self.args,
                stdin=None if interactive else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                # Its diagnostics may hold secrets and would break our JSON log lines: only a person sees them.
                stderr=None if interactive else asyncio.subprocess.DEVNULL,
                env=env,
                start_new_session=not interactive,
            )
        except OSError as exc:
            hint = f" ({printable(self.install_hint, 200)})" if self.install_hint else ""
            raise ConfigError(
                f"The kubeconfig's exec credential plugin {self.command!r} cannot be started ({type(exc).__name__}): "
                f"install it{hint} or fix users[].user.exec.command."
            ) from None
        try:
            out = await asyncio.wait_for(_read_all(proc.stdout, self.command), timeout)
            code = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            raise StorageError(
                f"The exec credential plugin {self.command!r} did not answer within {timeout:.0f}s, so it was "
                "stopped; run it by hand to see why, or raise DCR_WAIT_TIMEOUT."
            ) from None
        finally:
            if proc.returncode is None:
                _stop(proc, group=not interactive)
                await proc.wait()
        if code != 0:
            raise StorageError(
                f"The exec credential plugin {self.command!r} exited with status {code}; run it by hand to see why "
                "(its output is not logged: it may hold credentials)."
            )
        return _issued(out, self)


async def _read_all(stream: asyncio.StreamReader | None, command: str) -> bytes:
    out = bytearray()
    while stream is not None and (chunk := await stream.read(64 * 1024)):
        out += chunk
        if len(out) > EXEC_OUTPUT_LIMIT:
            raise StorageError(
                f"The exec credential plugin {command!r} printed over 1 MiB; an ExecCredential is small."
            )
    return bytes(out)


def _stop(proc: asyncio.subprocess.Process, *, group: bool) -> None:
    """Kill a plugin that is still running (and, unattended, what it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()


@dataclass(frozen=True)
class Issued:
    """What an exec plugin handed out: a token, or a client certificate and key (PEM); until ``expires``."""

    token: str | None = field(default=None, repr=False)
    identity: tuple[bytes, bytes] | None = field(default=None, repr=False)
    expires: float | None = None  # seconds since the epoch

    def expired(self) -> bool:
        return self.expires is not None and time.time() >= self.expires


def _issued(out: bytes, plugin: ExecPlugin) -> Issued:
    """The ExecCredential a plugin printed; errors name the plugin and the field, never a value."""
    what = f"The exec credential plugin {plugin.command!r}"
    try:
        doc = json.loads(out)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or doc.get("kind") != "ExecCredential":
        raise StorageError(f"{what} did not print an ExecCredential (JSON) on stdout; run it by hand to see why.")
    if doc.get("apiVersion") != plugin.api_version:
        raise StorageError(
            f"{what} answered apiVersion {printable(str(doc.get('apiVersion')), 80)!r}, not {plugin.api_version} "
            "as the kubeconfig asks; set users[].user.exec.apiVersion to one the plugin speaks."
        )
    status = dict_or_empty(doc.get("status"))
    token = text_or_none(status.get("token"))
    cert, key = text_or_none(status.get("clientCertificateData")), text_or_none(status.get("clientKeyData"))
    log.register_secrets(token, key)
    if token is None and (cert is None or key is None):
        raise StorageError(f"{what} gave neither status.token nor both clientCertificateData and clientKeyData.")
    if token is not None and not is_vschar(token):
        raise StorageError(f"{what} gave a token with control characters or line breaks; fix the plugin.")
    return Issued(
        token=token,
        identity=(cert.encode(), key.encode()) if token is None and cert and key else None,
        expires=_timestamp(status.get("expirationTimestamp"), what),
    )


def _timestamp(value: object, what: str) -> float | None:
    if value is None:
        return None
    try:
        at = datetime.datetime.fromisoformat(str(value))
    except ValueError:
        raise StorageError(f"{what} gave an expirationTimestamp that is not RFC 3339; fix the plugin.") from None
    return (at if at.tzinfo else at.replace(tzinfo=datetime.UTC)).timestamp()


# --- the credentials of one client, as they rotate ---


@dataclass(frozen=True)
class Auth:
    """What to present on one request: a bearer token and/or a client certificate, and their generation."""

    token: str | None = field(repr=False)
    identity: tuple[bytes, bytes] | None = field(repr=False)  # an exec plugin's certificate and key (PEM)
    generation: int


class Credentials:
    """A KubeApi's credentials while a client runs: token files re-read when they change, exec plugins re-run
    when their credential expires, and either fetched again after a 401 (``renew``)."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self.generation = 0
        self._token = api.token
        self._file_state: tuple[int, ...] | None = None
        self._issued: Issued | None = None
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"Credentials(server={self.api.server!r}, generation={self.generation})"

    def _changed(self, token: str | None) -> None:
        if token != self._token:
            self._token = token
            self.generation += 1

    def _file_token(self) -> str | None:
        """The token file's token, read again whenever the file (or the link to it) changed."""
        path = self.api.token_file
        assert path is not None
        try:
            st = path.stat()
            state = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if state != self._file_state:
                token = read_token(path)
                self._file_state = state
                self._changed(token)
        except StorageError:
            if self._token is None:
                raise
            # Mid-swap (the kubelet replaces a symlink): keep the last good token, as client-go does.
        except OSError:
            if self._token is None:
                raise StorageError(f"Cannot read the token file {path}; check the mounted token.") from None
        return self._token

    async def _exec(self, remaining: float) -> Issued:
        plugin = self.api.exec_plugin
        assert plugin is not None
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:  # one plugin run at a time, for every request that waits on it
            if self._issued is None or self._issued.expired():
                issued = await plugin.run(remaining)
                if self._issued is None or (issued.token, issued.identity) != (
                    self._issued.token,
                    self._issued.identity,
                ):
                    self.generation += 1
                self._issued = issued
            return self._issued

    async def current(self, remaining: float) -> Auth:
        """The credentials for the next request."""
        if self.api.token_file is not None:
            return Auth(self._file_token(), None, self.generation)
        if self.api.exec_plugin is not None and self.api.token is None:
            issued = await self._exec(remaining)
            identity = issued.identity if not self.api.has_client_certificate() else None
            return Auth(issued.token, identity, self.generation)
        return Auth(self.api.token, None, self.generation)

    async def renew(self, used: int, remaining: float) -> bool:
        """After a 401 to credentials of generation ``used``: fetch them again; whether a retry is worth it."""
        if self.generation == used:
            if self.api.token_file is not None:
                self._file_state = None
                self._file_token()
            elif self.api.exec_plugin is not None and self.api.token is None:
                self._issued = None
                await self._exec(remaining)
        return self.generation != used


def read_token(path: Path) -> str:
    """A token file's token (registered for masking, checked for control characters)."""
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise StorageError(
            f"Cannot read the token file {path} ({type(exc).__name__}); check the mounted token."
        ) from None
    log.register_secrets(token)
    if not token or not is_vschar(token):
        raise StorageError(f"The token file {path} is empty or has control characters or line breaks; fix it.")
    return token


# --- where and how ---


@dataclass(frozen=True)
class KubeApi:
    """Where and how to reach the API server."""

    server: str
    token: str | None = field(default=None, repr=False)  # a static token, or the token file's when it was read
    ca_file: Path | None = None
    ca_data: bytes | None = None
    insecure: bool = False
    default_namespace: str = "default"
    token_file: Path | None = None  # read again whenever it changes; wins over ``token``, as in client-go
    client_certificate: Path | None = None
    client_key: Path | None = None
    client_certificate_data: bytes | None = field(default=None, repr=False)
    client_key_data: bytes | None = field(default=None, repr=False)
    exec_plugin: ExecPlugin | None = None
    tls_server_name: str | None = None
    credentials: Credentials = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        log.register_secrets(self.token)  # masked in every log line from now on
        if self.client_key_data:
            log.register_secrets(self.client_key_data.decode("utf-8", "replace"))
        object.__setattr__(self, "credentials", Credentials(self))

    def __repr__(self) -> str:  # never print the token
        return f"KubeApi(server={self.server!r}, namespace={self.default_namespace!r})"

    def has_client_certificate(self) -> bool:
        return bool(self.client_certificate_data or self.client_certificate)

    @classmethod
    def in_cluster(cls, sa_dir: Path = SERVICE_ACCOUNT_DIR) -> KubeApi:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ConfigError(
                "DCR_K8S_SECRET is set but no Kubernetes API is configured: KUBERNETES_SERVICE_HOST is not set "
                "(not in a Pod) and neither is KUBECONFIG. Run in a Pod, set KUBECONFIG, or unset DCR_K8S_SECRET."
            )
        try:
            token = (sa_dir / "token").read_text().strip()
            namespace = (sa_dir / "namespace").read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise StorageError(
                f"Cannot read the service-account token or namespace in {sa_dir} ({type(exc).__name__}): "
                "mount a service-account token (automountServiceAccountToken or a projected volume)"
            ) from None
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return cls(
            f"https://{host}:{port}",
            token=token,
            token_file=sa_dir / "token",  # the kubelet rotates it: read again whenever it changes
            ca_file=sa_dir / "ca.crt",
            default_namespace=namespace,
        )

    @classmethod
    def from_environment(cls, kubeconfig: Path | None = None, context: str | None = None) -> KubeApi:
        """``kubeconfig``; else in-cluster config when running in a Pod (unless ``context`` names a kubeconfig
        context); else the files in ``$KUBECONFIG``."""
        if kubeconfig is not None:
            return cls.from_kubeconfig(kubeconfig, context)
        listed = os.environ.get("KUBECONFIG", "")
        if listed and (context or not os.environ.get("KUBERNETES_SERVICE_HOST")):
            return cls.from_kubeconfig([Path(p) for p in listed.split(os.pathsep) if p], context)
        if context:
            raise ConfigError(
                f"DCR_K8S_CONTEXT={printable(context, 80)!r} names a kubeconfig context, but KUBECONFIG is not set; "
                "set KUBECONFIG, or unset DCR_K8S_CONTEXT to use the Pod's service account."
            )
        return cls.in_cluster()

    @classmethod
    def from_kubeconfig(cls, paths: Path | Sequence[Path], context: str | None = None) -> KubeApi:
        """The current (or the named) context of a kubeconfig, or of several merged as kubectl merges them."""
        merged = Kubeconfig.load([paths] if isinstance(paths, Path) else list(paths), explicit=isinstance(paths, Path))
        return merged.api(context)

    def check(self, *, allow_http: bool = False) -> KubeApi:
        """Refuse, before any request, a server the bearer token must not be sent to; warn when TLS is off."""
        parts = _server_url(self.server)
        if parts.scheme == "http" and not allow_http and not _loopback(parts.hostname or ""):
            raise ConfigError(
                f"The Kubernetes API server {self.server} is plain http and not on loopback: its bearer token and "
                "the Secret would cross the network unencrypted, so nothing was sent. Use https, or set "
                "DCR_K8S_ALLOW_HTTP=true if that network is trusted."
            )
        if self.token is not None and not is_vschar(self.token):
            raise ConfigError("The Kubernetes bearer token contains control characters or line breaks; fix it.")
        if self.insecure:
            logger.warning(
                "TLS verification of the Kubernetes API server is off (insecure-skip-tls-verify in the kubeconfig): "
                "anyone on the path can read the bearer token and the Secret. Set its CA instead.",
                server=self.server,
            )
        return self

    def ssl_context(self, identity: tuple[bytes, bytes] | None = None) -> ssl.SSLContext | bool:
        """TLS for the server: its CA (or none, if insecure), and the client certificate, if any."""
        if self.insecure and identity is None and not self.has_client_certificate():
            return False
        try:
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
            if self.ca_data:
                context.load_verify_locations(cadata=self.ca_data.decode())
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                f"Cannot load the Kubernetes API server's CA ({self.ca_file or 'certificate-authority-data'}: "
                f"{type(exc).__name__}); fix the kubeconfig's certificate-authority, or the mounted ca.crt."
            ) from None
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self._load_client_certificate(context, identity)
        return context

    def _load_client_certificate(self, context: ssl.SSLContext, identity: tuple[bytes, bytes] | None) -> None:
        what = "client-certificate-data/client-key-data"
        try:
            if self.client_certificate_data and self.client_key_data:
                with _private_files(self.client_certificate_data, self.client_key_data) as (cert, key):
                    context.load_cert_chain(cert, key)
            elif self.client_certificate and self.client_key:
                what = f"client-certificate {self.client_certificate} / client-key {self.client_key}"
                context.load_cert_chain(self.client_certificate, self.client_key)
            elif identity is not None:
                what = "the exec plugin's clientCertificateData/clientKeyData"
                with _private_files(*identity) as (cert, key):
                    context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                f"Cannot load the Kubernetes client certificate and key ({what}: {type(exc).__name__}); check that "
                "both are PEM, belong together, and are readable."
            ) from None


@contextlib.contextmanager
def _private_files(cert: bytes, key: bytes) -> Iterator[tuple[str, str]]:
    """PEM data as files only this process can read, for as long as ssl takes to load them (it reads files
    only), and gone afterwards."""
    with tempfile.TemporaryDirectory(prefix="dcr-kube-") as folder:  # mode 0700
        paths = []
        for name, data in (("client.crt", cert), ("client.key", key)):
            path = os.path.join(folder, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            paths.append(path)
        yield paths[0], paths[1]


def _server_url(server: str) -> SplitResult:
    """The API server's URL, parsed, if it is an http(s) URL of a host with nothing else in it."""
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.query:
        raise ConfigError(
            f"The Kubernetes API server {printable(server, 200)!r} is not an http(s) URL of a host; fix "
            "the kubeconfig's cluster server (or KUBERNETES_SERVICE_HOST)."
        )
    return parts


# --- kubeconfig files, merged ---

_SECTIONS = {"clusters": "cluster", "users": "user", "contexts": "context"}


@dataclass
class Kubeconfig:
    """One or more kubeconfig files merged as kubectl merges them: the first file to set a value wins."""

    files: list[Path] = field(default_factory=list)
    current_context: str | None = None
    # section -> name -> (the file that defined it, the entry)
    entries: dict[str, dict[str, tuple[Path, dict[str, Any]]]] = field(
        default_factory=lambda: {section: {} for section in _SECTIONS}
    )

    @classmethod
    def load(cls, paths: Sequence[Path], *, explicit: bool) -> Kubeconfig:
        """The files in order; in a KUBECONFIG list a file that does not exist is skipped, as kubectl does."""
        merged = cls()
        for path in dict.fromkeys(paths):
            try:
                text = path.read_text()
            except FileNotFoundError:
                if explicit:
                    raise StorageError(f"Cannot read kubeconfig {path} (FileNotFoundError)") from None
                continue
            except (OSError, UnicodeDecodeError) as exc:
                raise StorageError(f"Cannot read kubeconfig {path} ({type(exc).__name__})") from None
            merged.add(_parse_config(text, path), path)
        if not merged.files:
            raise StorageError(
                f"None of the kubeconfig files in KUBECONFIG exists ({os.pathsep.join(map(str, paths))}); fix it."
            )
        return merged

    def add(self, config: dict[str, Any], path: Path) -> None:
        self.files.append(path)
        if self.current_context is None:
            self.current_context = text_or_none(config.get("current-context"))
        for section, key in _SECTIONS.items():
            listed = config.get(section)
            for entry in listed if isinstance(listed, list) else []:
                if isinstance(entry, dict) and entry.get("name") is not None:
                    self.entries[section].setdefault(str(entry["name"]), (path, dict_or_empty(entry.get(key))))

    def _where(self) -> str:
        return f"kubeconfig {os.pathsep.join(map(str, self.files))}"

    def _entry(self, section: str, name: str | None, why: str) -> tuple[Path, dict[str, Any]] | None:
        """The entry of that name; with no name, the first one (as this tool always did); a dangling name raises."""
        found = self.entries[section]
        if name is None:
            return next(iter(found.values()), None)
        if name not in found:
            raise StorageError(
                f"{self._where()}: {why} names {_SECTIONS[section]} {printable(name, 80)!r}, which no file defines "
                f"(defined: {printable(', '.join(found) or 'none', 200)}); fix the kubeconfig."
            )
        return found[name]

    def api(self, context_name: str | None = None) -> KubeApi:
        """The KubeApi of the named context, or of the current one."""
        if context_name is not None and context_name not in self.entries["contexts"]:
            raise ConfigError(
                f"DCR_K8S_CONTEXT={printable(context_name, 80)!r} is not a context of {self._where()} (contexts: "
                f"{printable(', '.join(self.entries['contexts']) or 'none', 200)}); name one of them."
            )
        name = context_name or self.current_context
        _, context = self._entry("contexts", name, "current-context") or (self.files[0], {})
        cluster_ref = self._entry("clusters", text_or_none(context.get("cluster")), f"context {name!r}")
        if cluster_ref is None or not text_or_none(cluster_ref[1].get("server")):
            raise StorageError(f"{self._where()} names no cluster server")
        user_name = text_or_none(context.get("user"))
        user_ref = self._entry("users", user_name, f"context {name!r}") if user_name else None
        origin, user = user_ref or (self.files[0], {})
        return KubeApi(
            default_namespace=text_or_none(context.get("namespace")) or "default",
            **_cluster_fields(*cluster_ref),
            **_user_fields(user, origin, _cluster_info(*cluster_ref)),
        )


def _relative(config: Path, value: object) -> Path | None:
    """A path named in a kubeconfig: relative ones are relative to the folder of the file that names it."""
    name = text_or_none(value)
    return config.parent / name if name else None


def _base64(value: object, what: str, config: Path) -> bytes | None:
    if value is None:
        return None
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError:
        raise StorageError(f"kubeconfig {config}: {what} is not base64") from None


def _cluster_fields(origin: Path, cluster: dict[str, Any]) -> dict[str, Any]:
    if cluster.get("proxy-url"):
        raise ConfigError(
            f"kubeconfig {origin}: the cluster's proxy-url is not supported; reach the API server directly "
            "(or use a kubeconfig without proxy-url)."
        )
    return {
        "server": str(cluster["server"]).rstrip("/"),
        "ca_file": _relative(origin, cluster.get("certificate-authority")),
        "ca_data": _base64(cluster.get("certificate-authority-data"), "certificate-authority-data", origin),
        "insecure": cluster.get("insecure-skip-tls-verify") is True,
        "tls_server_name": text_or_none(cluster.get("tls-server-name")),
    }


def _cluster_info(origin: Path, cluster: dict[str, Any]) -> dict[str, Any]:
    """The cluster as an exec plugin with provideClusterInfo gets it in KUBERNETES_EXEC_INFO."""
    info: dict[str, Any] = {"server": cluster.get("server")}
    ca = cluster.get("certificate-authority-data")
    ca_file = _relative(origin, cluster.get("certificate-authority"))
    if ca is None and ca_file is not None:
        with contextlib.suppress(OSError):
            ca = base64.b64encode(ca_file.read_bytes()).decode()
    optional = {
        "certificate-authority-data": ca,
        "tls-server-name": cluster.get("tls-server-name"),
        "insecure-skip-tls-verify": cluster.get("insecure-skip-tls-verify"),
        "config": dict_or_empty(cluster.get("extensions") and _extension(cluster)) or None,
    }
    return info | {key: value for key, value in optional.items() if value is not None}


def _extension(cluster: dict[str, Any]) -> object:
    """The cluster's client.authentication.k8s.io/exec extension (its per-cluster plugin config)."""
    listed = cluster.get("extensions")
    for entry in listed if isinstance(listed, list) else []:
        if isinstance(entry, dict) and entry.get("name") == "client.authentication.k8s.io/exec":
            return entry.get("extension")
    return None


def _user_fields(user: dict[str, Any], origin: Path, cluster: dict[str, Any]) -> dict[str, Any]:
    unsupported = [name for name in UNSUPPORTED_USER_FIELDS if user.get(name)]
    if unsupported:
        raise ConfigError(
            f"kubeconfig {origin}: the user's {', '.join(unsupported)} is not supported (only token, tokenFile, "
            "client certificates and exec plugins are); use one of those."
        )
    token_file = _relative(origin, user.get("tokenFile"))
    fields: dict[str, Any] = {
        "token": read_token(token_file) if token_file else text_or_none(user.get("token")),
        "token_file": token_file,
        "client_certificate": _relative(origin, user.get("client-certificate")),
        "client_key": _relative(origin, user.get("client-key")),
        "client_certificate_data": _base64(user.get("client-certificate-data"), "client-certificate-data", origin),
        "client_key_data": _base64(user.get("client-key-data"), "client-key-data", origin),
        "exec_plugin": ExecPlugin.parse(user["exec"], origin, cluster) if user.get("exec") else None,
    }
    log.register_secrets(text_or_none(user.get("client-key-data")))
    has_cert = bool(fields["client_certificate"] or fields["client_certificate_data"])
    has_key = bool(fields["client_key"] or fields["client_key_data"])
    if has_cert != has_key:
        raise ConfigError(
            f"kubeconfig {origin}: the user has a client certificate without its key, or a key without its "
            "certificate; set both client-certificate(-data) and client-key(-data)."
        )
    return fields


def _parse_config(text: str, path: Path) -> dict[str, Any]:
    if not text.strip():
        return {}  # an empty kubeconfig, as kubectl allows
    try:
        loaded: Any = json.loads(text)
    except ValueError:
        try:
            import yaml  # only for YAML kubeconfigs (kubectl's default)
        except ImportError as exc:
            raise StorageError(f"kubeconfig {path} is YAML; write it as JSON (kubectl config view -o json)") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError:
            raise StorageError(f"kubeconfig {path} is neither JSON nor YAML") from None
    if not isinstance(loaded, dict):
        raise StorageError(f"kubeconfig {path} is not a mapping")
    return loaded
