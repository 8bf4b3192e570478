"""Every secret value the process has handled, in the forms it takes on the wire, and masking them.

Standard library only: ``errors`` masks a server's message as it builds an exception, ``log`` masks
every log line, and the models register what they parse. A secret is registered where it enters
(settings, a file, a Secret, a server's answer, the Kubernetes token) and masked from then on,
raw, URL-encoded, base64 (with and without padding, URL-safe too) and as the HTTP Basic value of
an id/secret pair.
"""

from __future__ import annotations

import base64
from typing import Protocol
from urllib.parse import quote, quote_plus

MASK = "**********"
# Shorter values would mask ordinary words; no credential of ours is this short.
MIN_LENGTH = 4
_known: set[str] = set()


class SecretLike(Protocol):
    def get_secret_value(self) -> str: ...


def _plain(value: str | SecretLike | None) -> str | None:
    return value if value is None or isinstance(value, str) else value.get_secret_value()


def _encoded(data: bytes) -> set[str]:
    forms = {base64.b64encode(data).decode(), base64.urlsafe_b64encode(data).decode()}
    return forms | {form.rstrip("=") for form in forms}


def register(*values: str | SecretLike | None) -> None:
    """Remember secrets, and the forms they take on the wire, so that each is masked wherever it appears."""
    for value in map(_plain, values):
        if value and len(value) >= MIN_LENGTH:
            _known.update({value, quote(value, safe=""), quote_plus(value)} | _encoded(value.encode()))


def register_basic(client_id: str, secret: str | SecretLike | None) -> None:
    """The value of an HTTP Basic header for this pair (both raw and RFC 6749 §2.3.1 form-encoded)."""
    plain = _plain(secret)
    if not plain:
        return
    for pair in (f"{client_id}:{plain}", f"{quote(client_id, safe='')}:{quote(plain, safe='')}"):
        _known.update(_encoded(pair.encode()))


def register_embedded(*values: str | SecretLike | None) -> None:
    """Secrets that travel inside a larger base64 value (a Kubernetes Secret's data): at any byte offset
    the secret's bytes encode to one of three character runs, whatever surrounds them; each is masked."""
    for value in map(_plain, values):
        if not value or len(value) < MIN_LENGTH:
            continue
        data = value.encode()
        for shift in range(3):
            # Pad in front to the alignment; keep only the characters that encode the secret's bytes alone.
            start, end = (shift * 8 + 5) // 6, (shift + len(data)) * 8 // 6
            for form in (base64.b64encode(b"\0" * shift + data), base64.urlsafe_b64encode(b"\0" * shift + data)):
                inner = form.decode()[start:end]
                if len(inner) >= MIN_LENGTH:
                    _known.add(inner)


def mask(text: str) -> str:
    """``text`` with every registered secret (in every registered form) replaced by MASK."""
    for secret in sorted(_known, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text
