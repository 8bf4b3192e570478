"""Exec credential plugins (``client.authentication.k8s.io`` v1 and v1beta1), as kubectl runs them.

A kubeconfig user's ``exec`` names a command that prints an ExecCredential: a token, or a client
certificate and key, valid until ``expirationTimestamp``. It is run with ``KUBERNETES_EXEC_INFO``,
unattended unless a terminal is there and its ``interactiveMode`` allows one, within a timeout, without
the bootstrap's own secrets in its environment; its output may hold credentials, so no error ever shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import log
from ..errors import ConfigError, StorageError, printable
from ..hooks import child_environment
from ..models import is_vschar
from ._values import dict_or_empty, text_or_none

# An exec credential plugin that is not interactive gets this long (at most the run's deadline) to answer.
EXEC_TIMEOUT = 30.0
EXEC_OUTPUT_LIMIT = 1024 * 1024
EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
INTERACTIVE_MODES = ("Never", "IfAvailable", "Always")


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
        if os.sep in command and not os.path.isabs(command):
            command = str(origin.parent / command)
        args, env = _lists(spec, origin)
        return cls(
            command=command,
            args=tuple(str(arg) for arg in args),
            env=tuple((str(e.get("name")), str(e.get("value", ""))) for e in env if isinstance(e, dict)),
            api_version=str(version),
            interactive_mode=_mode(spec, str(version), origin),
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
        # As kubectl: our environment plus the kubeconfig's, but never the bootstrap's own secrets.
        env = child_environment(dict(self.env) | {"KUBERNETES_EXEC_INFO": self.exec_info(interactive)})
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


def _mode(spec: dict[str, Any], version: str, origin: Path) -> str:
    """interactiveMode: required by v1, IfAvailable when v1beta1 leaves it out."""
    mode = spec.get("interactiveMode", None if version == EXEC_API_VERSIONS[0] else "IfAvailable")
    if mode not in INTERACTIVE_MODES:
        raise ConfigError(
            f"kubeconfig {origin}: users[].user.exec.interactiveMode must be one of {', '.join(INTERACTIVE_MODES)} "
            f"(required for {EXEC_API_VERSIONS[0]}); set it, usually to Never or IfAvailable."
        )
    return str(mode)


def _lists(spec: dict[str, Any], origin: Path) -> tuple[list[Any], list[Any]]:
    args, env = spec.get("args") or [], spec.get("env") or []
    if not isinstance(args, list) or not isinstance(env, list):
        raise ConfigError(f"kubeconfig {origin}: users[].user.exec args and env must be lists; fix them.")
    return args, env


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
    status = _status(out, plugin.api_version, what)
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


def _status(out: bytes, api_version: str, what: str) -> dict[str, Any]:
    """The ``status`` of the ExecCredential on the plugin's stdout, in the apiVersion the kubeconfig asks for."""
    try:
        doc = json.loads(out)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or doc.get("kind") != "ExecCredential":
        raise StorageError(f"{what} did not print an ExecCredential (JSON) on stdout; run it by hand to see why.")
    if doc.get("apiVersion") != api_version:
        raise StorageError(
            f"{what} answered apiVersion {printable(str(doc.get('apiVersion')), 80)!r}, not {api_version} "
            "as the kubeconfig asks; set users[].user.exec.apiVersion to one the plugin speaks."
        )
    return dict_or_empty(doc.get("status"))


def _timestamp(value: object, what: str) -> float | None:
    if value is None:
        return None
    try:
        at = datetime.datetime.fromisoformat(str(value))
    except ValueError:
        raise StorageError(f"{what} gave an expirationTimestamp that is not RFC 3339; fix the plugin.") from None
    return (at if at.tzinfo else at.replace(tzinfo=datetime.UTC)).timestamp()
