"""Where the Kubernetes API server is and how to authenticate to it: in-cluster files or a kubeconfig.

Everything here happens before a request: the server URL, its CA and the credentials are read and
checked, and a server the credentials must not be sent to (plain http off loopback) is refused.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from .. import log
from ..errors import ConfigError, StorageError, printable
from ..models import is_vschar
from ..settings import K8S_NAME

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

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


@dataclass(frozen=True)
class KubeApi:
    """Where and how to reach the API server."""

    server: str
    token: str | None = None
    ca_file: Path | None = None
    ca_data: bytes | None = None
    insecure: bool = False
    default_namespace: str = "default"

    def __post_init__(self) -> None:
        log.register_secrets(self.token)  # masked in every log line from now on

    def __repr__(self) -> str:  # never print the token
        return f"KubeApi(server={self.server!r}, namespace={self.default_namespace!r})"

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
        return cls(f"https://{host}:{port}", token=token, ca_file=sa_dir / "ca.crt", default_namespace=namespace)

    @classmethod
    def from_environment(cls, kubeconfig: Path | None = None) -> KubeApi:
        """In-cluster config when running in a Pod, else ``kubeconfig`` (or ``$KUBECONFIG``)."""
        if kubeconfig is None and not os.environ.get("KUBERNETES_SERVICE_HOST") and os.environ.get("KUBECONFIG"):
            kubeconfig = Path(os.environ["KUBECONFIG"].split(os.pathsep)[0])
        return cls.from_kubeconfig(kubeconfig) if kubeconfig else cls.in_cluster()

    @classmethod
    def from_kubeconfig(cls, path: Path) -> KubeApi:
        """The current context of a kubeconfig (JSON or YAML); file paths in it are relative to its folder."""
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise StorageError(f"Cannot read kubeconfig {path} ({type(exc).__name__})") from None
        context, cluster, user = _current(_parse_config(text, path), path)
        return cls(
            server=str(cluster["server"]).rstrip("/"),
            token=_user_token(user, path),
            ca_file=_relative(path, cluster.get("certificate-authority")),
            ca_data=_ca_data(cluster.get("certificate-authority-data"), path),
            insecure=cluster.get("insecure-skip-tls-verify") is True,
            default_namespace=text_or_none(context.get("namespace")) or "default",
        )

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

    def ssl_context(self) -> ssl.SSLContext | bool:
        if self.insecure:
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
        return context


def _relative(config: Path, value: object) -> Path | None:
    """A path named in a kubeconfig: relative ones are relative to the kubeconfig's folder, as kubectl reads them."""
    name = text_or_none(value)
    return config.parent / name if name else None


def _user_token(user: dict[str, Any], config: Path) -> str | None:
    token = text_or_none(user.get("token"))
    token_file = _relative(config, user.get("tokenFile"))
    if token is not None or token_file is None:
        return token
    try:
        return token_file.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise StorageError(f"Cannot read the tokenFile named in kubeconfig {config} ({type(exc).__name__})") from None


def _ca_data(value: object, config: Path) -> bytes | None:
    if value is None:
        return None
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError:
        raise StorageError(f"kubeconfig {config}: certificate-authority-data is not base64") from None


def _server_url(server: str) -> SplitResult:
    """The API server's URL, parsed, if it is an http(s) URL of a host with nothing else in it."""
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.query:
        raise ConfigError(
            f"The Kubernetes API server {printable(server, 200)!r} is not an http(s) URL of a host; fix "
            "the kubeconfig's cluster server (or KUBERNETES_SERVICE_HOST)."
        )
    return parts


def _current(config: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The kubeconfig's current context, and its cluster and user (the first ones when it names none)."""
    context = _named(config, "contexts", "context", config.get("current-context"), first=True) or {}
    cluster = _named(config, "clusters", "cluster", context.get("cluster"), first=True)
    if not cluster or not text_or_none(cluster.get("server")):
        raise StorageError(f"kubeconfig {path} names no cluster server")
    return context, cluster, _named(config, "users", "user", context.get("user"), first=False) or {}


def _named(config: dict[str, Any], section: str, key: str, name: object, *, first: bool) -> dict[str, Any] | None:
    listed = config.get(section)
    entries = {
        str(entry.get("name")): dict_or_empty(entry.get(key))
        for entry in (listed if isinstance(listed, list) else [])
        if isinstance(entry, dict)
    }
    found: dict[str, Any] | None = entries.get(str(name)) if name is not None else None
    return found if found is not None or not first else next(iter(entries.values()), None)


def _parse_config(text: str, path: Path) -> dict[str, Any]:
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
