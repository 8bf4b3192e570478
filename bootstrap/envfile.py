"""The operator's ``.env`` (the one the unmodified server reads), edited in place by 'setup' and 'to-static'.

python-dotenv parses it (the parser pydantic-settings and the seed's server use), so what we read is
what they read. An edit sets or comments out named keys and keeps every other line byte for byte;
a file with a line python-dotenv cannot parse is refused whole (exit 2) and never touched. The
previous content is kept as ``.env.backup`` (or a timestamped one, if that exists) before the file
is replaced, atomically and 0600.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dotenv.parser import Binding, parse_stream

from . import store
from .errors import ConfigError, StorageError


@dataclass(frozen=True)
class EnvFile:
    path: Path
    bindings: tuple[Binding, ...]

    @property
    def text(self) -> str:
        return "".join(binding.original.string for binding in self.bindings)

    def get(self, key: str) -> str | None:
        """The value the last active line of ``key`` gives it (as python-dotenv reads it), or None."""
        values = [b.value for b in self.bindings if b.key == key]
        return values[-1] if values else None

    def edited(self, set_to: Mapping[str, str], comment_out: frozenset[str] = frozenset()) -> str:
        """The text with ``set_to`` keys set (in place, else appended) and ``comment_out`` keys commented out."""
        unsafe = [key for key, value in set_to.items() if not store.env_safe(value)]
        if unsafe:  # a quote, $ or line break would run code or add lines where the file is sourced
            raise StorageError(
                f"The value for {', '.join(unsafe)} has characters a .env line cannot carry unquoted; "
                f"nothing was changed in {self.path}."
            )
        done: set[str] = set()
        text = "".join(_edited(binding, set_to, comment_out, done) for binding in self.bindings)
        missing = [key for key in set_to if key not in done]
        if missing and text and not text.endswith("\n"):
            text += "\n"
        return text + "".join(f"{key}={set_to[key]}\n" for key in missing)


def _edited(binding: Binding, set_to: Mapping[str, str], comment_out: frozenset[str], done: set[str]) -> str:
    """One binding's text after the edit: set (its first line of a key), commented out, or as it was."""
    key, original = binding.key, binding.original.string
    if key is None or (key not in set_to and key not in comment_out):
        return original
    if key in set_to and key not in done:
        done.add(key)
        prefix = "export " if original.lstrip().startswith("export ") else ""
        return f"{prefix}{key}={set_to[key]}\n"
    return "".join(f"# {line}" for line in original.splitlines(keepends=True))


def load(path: Path) -> EnvFile:
    """The .env at ``path``; a ConfigError (exit 2) if python-dotenv cannot parse every line of it."""
    raw = store.read_named(path, "the .env your server reads (--env-file)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; nothing was changed.") from None
    bindings = tuple(parse_stream(io.StringIO(text)))
    bad = next((b for b in bindings if b.error), None)
    if bad is not None:
        raise ConfigError(
            f"{path} line {bad.original.line} is not KEY=VALUE, a comment or blank; fix it and run again. "
            "Nothing was changed."
        )
    return EnvFile(path, bindings)


def replace(env: EnvFile, text: str) -> Path:
    """Keep the current content as a backup, then write ``text`` (0600, atomic); returns the backup's path."""
    backup = env.path.with_name(f"{env.path.name}.backup")
    if os.path.lexists(backup):
        backup = env.path.with_name(f"{env.path.name}.backup.{store.stamp()}")
    store.write_private(backup, env.text.encode())
    store.write_private(env.path, text.encode())
    return backup
