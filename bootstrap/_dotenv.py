"""Which ``.env`` the settings may read: a ``./.env`` only if it is ours and not in the shared credentials
folder (else it is ignored, and the reason kept for the CLI's warning and last line), and the file the
operator names with ``--env-file`` under the same ownership rules, where a problem is an error.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path

from dotenv import dotenv_values
from pydantic_settings import DotEnvSettingsSource
from pydantic_settings.sources.utils import parse_env_vars

from ._files import Untrusted, read_own
from .errors import ConfigError

# (path, why it was not read), for the CLI to log once logging is configured.
ignored_env_files: list[tuple[str, str]] = []
CREDENTIALS_FOLDER = "sits in the credentials folder, which other containers may share"
# The file named by --env-file: read even beside the credentials file (the operator chose it), and a
# problem with it is an error, not a warning. Set by load_settings for the one Settings it builds.
EXPLICIT: ContextVar[Path | None] = ContextVar("explicit_env_file", default=None)
DEFAULT_CLIENT_FILE = ".dcr_client.json"


def credentials_folder() -> Path:
    """Judged from the environment alone: a .env must not be able to move the folder it is judged by.

    With DCR_CLIENT_FILE unset the file is ``./.dcr_client.json``, so a ``.env`` beside it is not read.
    """
    return Path(os.environ.get("DCR_CLIENT_FILE") or DEFAULT_CLIENT_FILE).absolute().parent


def explicit_text(path: Path) -> str:
    """The text of the file --env-file names, held to the ownership rules of any .env; ConfigError if not."""
    try:
        return read_own(path, owners=frozenset({os.geteuid(), 0}), shared_write=False).decode("utf-8")
    except Untrusted as exc:
        problem = f"it {exc.reason}"
    except OSError as exc:
        problem = f"it cannot be read ({exc.strerror})"
    except UnicodeDecodeError:
        problem = "it is not UTF-8 text"
    raise ConfigError(
        f"--env-file {path} was not read: {problem}. Name a regular file owned by this user or root and "
        "writable by no one else (chmod go-w)."
    )


def safe_dotenv(path: Path) -> str | None:
    """The text of a .env we may trust, or None (the reason recorded in ``ignored_env_files``)."""
    explicit = EXPLICIT.get()
    if explicit is not None:
        return explicit_text(explicit)
    try:
        if path.absolute().parent.resolve() == credentials_folder().resolve():
            raise Untrusted(path, CREDENTIALS_FOLDER)
        raw = read_own(path, owners=frozenset({os.geteuid(), 0}), shared_write=False)
    except FileNotFoundError:
        return None
    except Untrusted as exc:
        ignored_env_files.append((str(path), exc.reason))
        return None
    except OSError as exc:
        ignored_env_files.append((str(path), f"cannot be read ({exc.strerror})"))
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        ignored_env_files.append((str(path), "is not UTF-8 text"))
        return None


class OwnDotEnv(DotEnvSettingsSource):
    """pydantic-settings' .env source, reading only a .env that ``safe_dotenv`` accepts."""

    def _read_env_file(self, file_path: Path) -> Mapping[str, str | None]:
        text = safe_dotenv(file_path)
        if text is None:
            return {}
        values = dotenv_values(stream=io.StringIO(text))
        return parse_env_vars(values, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)
