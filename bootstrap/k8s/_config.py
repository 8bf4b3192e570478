"""Where the Kubernetes API server is and how to authenticate to it: in-cluster files or a kubeconfig.

The server URL, its CA and the way to authenticate are read and checked before any request, and a
server the credentials must not be sent to (plain http off loopback) is refused. Credentials that
rotate are fetched again while the client runs (``Credentials``): the service-account token file and a
kubeconfig's ``tokenFile`` whenever the file changes (the kubelet replaces the projected token long
before it expires), an exec plugin's credential when it expires, and either of them once after a 401.

Kubeconfig files are parsed and merged in ``_kubeconfig`` (into this module's fields: it imports nothing from
here); exec credential plugins run in ``_exec``; token files are read by ``_token``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from .. import log
from .._parse import K8S_NAME
from ..errors import ConfigError, StorageError, printable
from ..models import is_vschar
from ._exec import ExecPlugin, Issued
from ._kubeconfig import Kubeconfig
from ._token import read_token

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


logger = log.get_logger()


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
        return cls(**merged.fields(context))

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
            # A CA named here is the only trust root (as in client-go): with cafile or cadata,
            # create_default_context loads no system store, so a server some public CA vouches for gets nothing.
            context = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file else None,
                cadata=self.ca_data.decode() if self.ca_data else None,
            )
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
