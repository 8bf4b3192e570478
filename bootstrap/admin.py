"""A server's own admin API, as the orchestrator may use it: a capability it is given, never imports.

RFC 7591 cannot look a client up and RFC 7592 cannot regenerate a secret; a server's admin API can.
The flow depends only on this protocol. ``bootstrap/keycloak.py`` implements it for Keycloak, and the
command layer wires it in (``keycloak.admin_for``) when the settings hold admin credentials; without
them the flow does what RFC 7591/7592 alone allow and names what is left for an operator.
"""

from __future__ import annotations

from collections.abc import Callable, Set
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._http import Transport
    from .wait import RetryPolicy


class Admin(Protocol):
    """One run's access to the admin API (its login is made once, on first use)."""

    async def find_clients_named(self, names: Set[str]) -> list[str]:
        """The client ids of the clients whose client_name is one of ``names``."""
        ...

    async def delete_client(self, client_id: str) -> bool:
        """Delete the client ``client_id``; False if the server has no such client."""
        ...

    async def regenerate_secret(self, client_id: str) -> str:
        """A new secret for ``client_id``, as the server hands it out (the caller validates it)."""
        ...


# What the command layer gives the flow: the admin API over the run's transport, within its retry policy.
AdminFor = Callable[["Transport", "RetryPolicy"], Admin]
