"""dcr-bootstrap: register an OAuth client by Dynamic Client Registration and write its credentials."""

__version__ = "0.1.0"

__all__ = ["__version__"]
