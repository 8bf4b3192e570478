"""'env' and 'show' with the standard library alone, and the early try of the folder's lock for 'run'.

``entrypoint.sh`` runs ``dcr-bootstrap env`` on every start of the server it wraps, so these two
commands read the saved file without pydantic, aiohttp or structlog (a few milliseconds instead of
a few hundred). They serve only the plain case: a file that parses, named by DCR_CLIENT_FILE or the
default, and no ``.env`` file that could name another. Anything else returns None and the CLI takes
the full path, which explains the problem in its one line.

``take_lock`` tries the credentials folder's lock as the CLI starts, before the imports that take a
few hundred milliseconds: of many runs started together on one folder, the first holds it from then
on, and the others know they waited for it, so they reuse what it writes instead of asking the
server again (``store.locked`` adopts the held lock, or the news that it was busy).
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._files import Untrusted, read_own

# Must equal Settings.dcr_client_file's default; a unit test holds the two together.
DEFAULT_FILE = ".dcr_client.json"
# 'show' prints these in clear and masks every other value, so a field we do not know is never shown.
PUBLIC_KEYS = frozenset(
    {
        "client_id",
        "registration_client_uri",
        "registered_at",
        "issuer",
        "token_endpoint",
        "introspection_endpoint",
        "client_secret_expires_at",
        "client_secret_issued_at",
        "retire_at",
        "metadata_fingerprint",
        "token_endpoint_auth_method",
        "mode",
    }
)
MASK = "**********"


def exports(pairs: list[tuple[str, str]]) -> str:
    """``export NAME='value'`` lines for eval: each value quoted, so none runs or splits."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in pairs)


def _shown(saved: dict[str, Any]) -> dict[str, Any]:
    return {key: value if key in PUBLIC_KEYS or value is None else MASK for key, value in saved.items()}


def show_text(saved: dict[str, Any], retired: list[dict[str, Any]] | None = None) -> str:
    """The registration with every value we do not know to be public masked; replaced ones under 'retired'."""
    shown = _shown(saved) | ({"retired": [_shown(entry) for entry in retired]} if retired else {})
    return json.dumps(shown, indent=2) + "\n"


def _client_file() -> Path | None:
    if os.path.lexists(".env"):
        return None  # pydantic-settings reads it; only the full path knows what it names
    named = [value for key, value in os.environ.items() if key.upper() == "DCR_CLIENT_FILE"]
    if len(named) > 1 or (named and not named[0].strip()):
        return None
    return Path(named[0] if named else DEFAULT_FILE)


def beside(path: Path, suffix: str) -> Path:
    """``.NAME.suffix`` beside ``path``: the one naming of every side file (lock, pending, retired, intent, synced)."""
    dotted = path.name if path.name.startswith(".") else f".{path.name}"
    return path.with_name(f"{dotted}.{suffix}")


def load() -> dict[str, Any] | None:
    """The saved registration as plain JSON, or None for anything but the plain case."""
    path = _client_file()
    if path is None or os.path.lexists(beside(path, "retired")):
        return None  # replaced registrations are listed by the full path
    try:
        data = json.loads(read_own(path))  # a link or another user's file: the full path explains
    except (OSError, ValueError, Untrusted):
        return None
    return data if isinstance(data, dict) and _plain(data.get("client_id"), data.get("client_secret")) else None


def _plain(client_id: object, secret: object) -> bool:
    """A client id and secret the full path would accept too (VSCHAR); anything else it explains in one line."""
    if not (isinstance(client_id, str) and client_id) or not isinstance(secret, str | None):
        return False
    return all(" " <= ch <= "~" for ch in client_id + (secret or ""))


def env() -> str | None:
    if any(key.upper() == "DCR_ENV_NAMES" for key in os.environ):
        return None  # other names: the full path checks the mapping
    saved = load()
    if saved is None:
        return None
    return exports(
        [("KEYCLOAK_CLIENT_ID", saved["client_id"]), ("KEYCLOAK_CLIENT_SECRET", saved.get("client_secret") or "")]
    )


def show() -> str | None:
    saved = load()
    return None if saved is None else show_text(saved)


@dataclass(frozen=True)
class Early:
    """The CLI's early try of a folder's lock: the lock file, the held descriptor, or whether it was busy."""

    lock: Path | None = None
    fd: int | None = None
    busy: bool = False
    version: list[int] | None = None  # the credentials file's, when it was found busy


_early = Early()


def file_version(path: Path) -> list[int] | None:
    """What changes whenever the file is replaced (each save is a new inode): compared, never trusted."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_mtime_ns, st.st_size]


def take_lock() -> None:
    """Try the lock of DCR_CLIENT_FILE's folder without waiting; keep it if free, note it if busy."""
    global _early
    path = _client_file()
    try:
        if path is None or not path.name:
            return  # the full path's case: store.locked does it all, and explains
        lock = beside(path, "lock")
        lock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # as store.locked would, a moment later
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except (OSError, ValueError):
        return  # store.locked explains
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        _early = Early(lock.absolute(), busy=True, version=file_version(path))
        return
    except OSError:
        os.close(fd)
        return
    _early = Early(lock.absolute(), fd)


def adopt_lock(lock: Path) -> Early:
    """The early try of this very lock file (a held descriptor is the caller's from now on), else a blank one."""
    global _early
    early, _early = _early, Early()
    if early.lock is not None and early.lock == lock.absolute():
        return early
    if early.fd is not None:
        os.close(early.fd)
    return Early()
