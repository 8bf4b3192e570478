"""A secret that Keycloak's admin API regenerated, held to the rules of every RFC 7591/7592 answer.

The admin API is a server answer like any other: a value outside RFC 6749's VSCHAR (control characters,
line breaks) or one an env file cannot carry is refused before anything is saved, and the registration is
built with validation, never copied around it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from . import lifecycle, store
from .errors import StorageError, UnsafeValue
from .models import SavedRegistration, is_vschar


def regenerated(current: SavedRegistration, secret: str, env_file: Path | None) -> SavedRegistration:
    """``current`` with the admin API's new secret; UnsafeValue (nothing saved, the old secret kept) if unsafe."""
    try:
        if not (secret and is_vschar(secret)):
            raise ValueError("not VSCHAR")
        rotated = SavedRegistration.model_validate(
            current.model_dump() | {"client_secret": SecretStr(secret), "client_secret_issued_at": lifecycle.now()}
        )
        if env_file is not None:
            store.env_lines(rotated)  # what a shell or docker --env-file cannot carry is refused too
    except (ValueError, StorageError):
        raise UnsafeValue(
            f"Keycloak's admin API regenerated the secret of client {current.client_id} as an empty value or one "
            "with characters outside RFC 6749's VSCHAR (control characters, line breaks, quotes for the env "
            "file); nothing was saved and the old secret is kept. Regenerate it in Keycloak, then run again."
        ) from None
    return rotated
