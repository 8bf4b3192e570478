"""The value rules of the settings: durations, URLs, lists, names, and secrets read from files.

Kept apart from the settings model so that it reads as the list of settings it is; every rule here
raises ValueError (pydantic turns it into the one ConfigError line) or ConfigError itself.
"""

from __future__ import annotations

import re
import socket
import ssl
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr
from pydantic_settings import NoDecode

from . import envnames
from .errors import ConfigError
from .models import is_vschar

CsvList = Annotated[list[str], NoDecode]

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> object:
    """Plain seconds or a number with a unit: ``90``, ``90s``, ``1.5m``, ``15m``, ``2h``, ``29d``, ``500ms``."""
    if not isinstance(value, str):
        return value
    match = _DURATION.fullmatch(value)
    if match is None:
        raise ValueError("must be a duration: seconds (90) or a number with a unit ms, s, m, h or d (15m, 29d)")
    return float(match.group(1)) * _UNIT_SECONDS[(match.group(2) or "s").lower()]


# Every duration setting: seconds as a float in the code, plain seconds or a unit in the environment.
Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0, allow_inf_nan=False)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0, allow_inf_nan=False)]


def split_addr(value: str) -> tuple[str, int]:
    """``host:port`` (an IPv6 host in brackets) as its host and port; ValueError when it is not one."""
    host, colon, port = value.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not port.isdigit() or not 0 <= int(port) < 65536 or not _HOST.fullmatch(host):
        raise ValueError("must be host:port to listen on, e.g. 127.0.0.1:9464, 0.0.0.0:9464 or [::1]:9464")
    return host, int(port)


def _listen_addr(value: str) -> str:
    split_addr(value)
    return value.strip()


# An IPv4/IPv6 literal or a DNS name: nothing a socket would read as something else.
_HOST = re.compile(r"[0-9A-Za-z.:-]{1,253}")
ListenAddr = Annotated[str, AfterValidator(_listen_addr)]

# Grant types of RFC 6749, 7522, 7523, 8628, 8693 and OpenID CIBA: anything else is a typo.
KNOWN_GRANT_TYPES = frozenset(
    {
        "authorization_code",
        "implicit",
        "password",
        "client_credentials",
        "refresh_token",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "urn:ietf:params:oauth:grant-type:saml2-bearer",
        "urn:ietf:params:oauth:grant-type:device_code",
        "urn:ietf:params:oauth:grant-type:token-exchange",
        "urn:openid:params:grant-type:ciba",
    }
)
# Keycloak stores client names in a 255-character column and answers 500 beyond it; stay well inside.
MAX_CLIENT_NAME = 200
# A DNS-1123 subdomain, what the API server accepts for Secret, Lease and namespace names.
K8S_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def check_url(value: str, *, path_allowed: bool = True) -> str:
    # Never echo the value: a URL may carry a password.
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain a user name or password (they would be logged); remove 'user:pass@'")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    if not path_allowed and parts.path not in ("", "/"):
        raise ValueError("must be an origin (scheme://host[:port]) without a path")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("has an invalid port") from None
    return value.rstrip("/")


def split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def unset(**values: object) -> str:
    return " and ".join(name for name, value in values.items() if not value)


def from_file(value: SecretStr | None, path: Path | None, name: str) -> SecretStr | None:
    if path is None:
        return value
    if value is not None:
        raise ConfigError(f"Both {name} and {name}_FILE are set; set only one of them.")
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"{name}_FILE={path} cannot be read ({exc.strerror}); mount the secret there or fix the path."
        ) from None
    if not text:
        raise ConfigError(f"{name}_FILE={path} is empty; write the secret into it or unset {name}_FILE.")
    return SecretStr(text)


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a.absolute() == b.absolute()


def hostname() -> str:
    return socket.gethostname()


# --- the settings' field rules (Settings attaches each with field_validator) ---


def http_url(value: str | None) -> str | None:
    return check_url(value) if value else None


def octal(value: object) -> object:
    return f"0{value}" if isinstance(value, str) and re.fullmatch(r"[0-7]{3}", value) else value


# The settings that name Kubernetes objects, each checked by k8s_name before it goes in a URL.
K8S_NAME_FIELDS = (
    "dcr_k8s_secret",
    "dcr_k8s_lease",
    "dcr_k8s_namespace",
    "dcr_k8s_rollout",
    "dcr_k8s_pod_name",
    "dcr_k8s_pod_namespace",
)


def k8s_name(value: str | None) -> str | None:
    if value and not K8S_NAME.fullmatch(value):
        raise ValueError("must be a Kubernetes name: lower-case letters, digits, '-' and '.', at most 253")
    return value or None


def check_kubernetes(secret: str | None, use_dcr: bool, delete_on_exit: bool, with_secret: tuple[object, ...]) -> None:
    """The DCR_K8S_* settings that only make sense together (``with_secret``: lease, namespace, rollout)."""
    if secret and delete_on_exit:
        raise ConfigError(
            "DCR_DELETE_ON_EXIT would delete the client that DCR_K8S_SECRET shares with every other Pod when "
            "this one stops; use one of the two modes (see docs/kubernetes.md)."
        )
    if secret and not use_dcr:
        raise ConfigError(
            "DCR_K8S_SECRET shares a DCR registration, but USE_DCR=false; unset DCR_K8S_SECRET for static credentials."
        )
    if any(with_secret) and not secret:
        raise ConfigError(
            "DCR_K8S_LEASE, DCR_K8S_NAMESPACE or DCR_K8S_ROLLOUT is set without DCR_K8S_SECRET; name the Secret "
            "that holds the shared registration, or unset them."
        )


def origins(values: list[str]) -> list[str]:
    return [check_url(v, path_allowed=False) for v in values]


def redirect_uris(values: list[str]) -> list[str]:
    for value in values:
        parts = urlsplit(value)
        if not parts.scheme or parts.fragment:
            raise ValueError("every redirect URI must be absolute and without a fragment (RFC 6749 §3.1.2)")
    return values


def grant_types(values: list[str]) -> list[str]:
    if not values:
        raise ValueError("must name at least one grant type, e.g. client_credentials")
    unknown = [v for v in values if v not in KNOWN_GRANT_TYPES]
    if unknown:
        raise ValueError(f"unknown grant type(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_GRANT_TYPES))}")
    return values


def client_name(value: str) -> str:
    if not value.strip() or not value.isprintable():
        raise ValueError("must be non-empty printable text")
    if len(value.replace("{hostname}", hostname())) > MAX_CLIENT_NAME:
        raise ValueError(f"is longer than {MAX_CLIENT_NAME} characters; servers refuse (or fail on) such names")
    return value


def client_file(value: Path) -> Path:
    if not str(value).strip() or value.name in ("", ".", "..") or value.is_dir():
        raise ValueError("must name a file, not a directory (e.g. /var/lib/dcr/.dcr_client.json)")
    return value


def env_names(value: str) -> str:
    envnames.parse(value)  # ValueError names what is wrong
    return value


def check_header_safe(**values: SecretStr | str | None) -> None:
    """Values sent in HTTP headers (a bearer token, Basic credentials) hold no line break or control character;
    a client id given (a str) is not empty either."""
    for name, value in values.items():
        plain = value.get_secret_value() if isinstance(value, SecretStr) else value
        if plain is not None and not (is_vschar(plain) and (plain or isinstance(value, SecretStr))):
            raise ConfigError(
                f"{name} is empty or contains a line break or another control character, which cannot be sent "
                "in an HTTP header; copy the value again without it."
            )


def ca_context(bundle: Path | None) -> ssl.SSLContext | None:
    """A context that trusts the PEM CA ``bundle`` (DCR_CA_BUNDLE; None: the system's store)."""
    if bundle is None:
        return None
    try:
        return ssl.create_default_context(cafile=str(bundle))
    except FileNotFoundError:
        raise ConfigError(f"DCR_CA_BUNDLE={bundle} does not exist; mount the CA file there.") from None
    except (OSError, ssl.SSLError, ValueError):
        raise ConfigError(
            f"DCR_CA_BUNDLE={bundle} is not a readable PEM CA bundle; point it at the CA certificate."
        ) from None
