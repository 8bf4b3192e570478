"""kubeconfig files, read and merged as kubectl merges them, into the fields of a ``KubeApi`` (``_config``).

``KUBECONFIG`` may list several files (``os.pathsep``): the first file to set ``current-context`` wins,
and each cluster, user and context comes from the first file defining its name; a relative path in an
entry is relative to the folder of the file that defined it. Fields we do not implement are refused,
never silently ignored (the run would go out as another identity than the one the kubeconfig names).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import log
from ..errors import ConfigError, StorageError, printable
from ._exec import ExecPlugin
from ._token import read_token
from ._values import dict_or_empty, text_or_none

UNSUPPORTED_USER_FIELDS = ("auth-provider", "username", "password", "as", "as-uid", "as-groups", "as-user-extra")

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

    def fields(self, context_name: str | None = None) -> dict[str, Any]:
        """The KubeApi fields (keyword arguments) of the named context, or of the current one."""
        name, context = self._context(context_name)
        cluster_ref = self._entry("clusters", text_or_none(context.get("cluster")), f"context {name!r}")
        if cluster_ref is None or not text_or_none(cluster_ref[1].get("server")):
            raise StorageError(f"{self._where()} names no cluster server")
        user_name = text_or_none(context.get("user"))
        user_ref = self._entry("users", user_name, f"context {name!r}") if user_name else None
        origin, user = user_ref or (self.files[0], {})
        return {
            "default_namespace": text_or_none(context.get("namespace")) or "default",
            **_cluster_fields(*cluster_ref),
            **_user_fields(user, origin, _cluster_info(*cluster_ref)),
        }

    def _context(self, context_name: str | None) -> tuple[str | None, dict[str, Any]]:
        """DCR_K8S_CONTEXT's context (which must exist), or the current one (or the first, or none)."""
        if context_name is not None and context_name not in self.entries["contexts"]:
            raise ConfigError(
                f"DCR_K8S_CONTEXT={printable(context_name, 80)!r} is not a context of {self._where()} (contexts: "
                f"{printable(', '.join(self.entries['contexts']) or 'none', 200)}); name one of them."
            )
        name = context_name or self.current_context
        _, context = self._entry("contexts", name, "current-context") or (self.files[0], {})
        return name, context


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
