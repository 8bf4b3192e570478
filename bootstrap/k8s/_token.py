"""A bearer token file (the service account's, a kubeconfig's ``tokenFile``), read and checked where it enters."""

from __future__ import annotations

from pathlib import Path

from .. import log
from ..errors import StorageError
from ..models import is_vschar


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
