"""Where a URL points: shared by the settings (which origins are trusted) and the transport (checks)."""

from __future__ import annotations

from urllib.parse import urlsplit


def origin(url: str) -> str:
    """scheme://host:port with the default port made explicit, for comparing where URLs point."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme, 0)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


def is_absolute_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)
