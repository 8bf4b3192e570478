"""Where a URL points: shared by the settings (which origins are trusted) and the transport (checks)."""

from __future__ import annotations

from urllib.parse import urlsplit


def origin(url: str) -> str:
    """scheme://host:port with the default port made explicit, for comparing where URLs point.

    A URL that does not parse (``http://[::1``, a bad port) has no origin: "" matches none we trust.
    """
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or {"http": 80, "https": 443}.get(scheme, 0)
    except ValueError:
        return ""
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


def is_absolute_http(url: str) -> bool:
    """An http(s) URL with a host that parses (servers name URLs: a broken one is refused, not a crash)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)
