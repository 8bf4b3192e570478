"""dcr-bootstrap: register an OAuth client by Dynamic Client Registration and write its credentials."""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    # The version lives in pyproject.toml alone; read it only when asked ('env' never asks).
    if name != "__version__":
        raise AttributeError(f"module 'bootstrap' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dcr-bootstrap")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"
