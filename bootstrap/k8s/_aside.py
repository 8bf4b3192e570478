"""A Secret whose registration fails validation is set aside, not obeyed, as a broken credentials file is.

The value of the key is moved, byte for byte, to ``dcr_client.json.broken-<time>`` in the same Secret
(named in a warning), and the run goes on as with an empty Secret: it registers anew. The old client,
when the document still names it with a usable RFC 7592 token, joins the retired list and is deleted
after its grace; otherwise the warning names what the operator must delete by hand.
"""

from __future__ import annotations

from typing import Any

from .. import _secrets, lifecycle, log, store
from ..models import Retired, SavedRegistration, is_vschar
from ..settings import Settings
from ._store import DATA_KEY, RETIRED_KEY, BrokenEntry, KubeStore

logger = log.get_logger()
# What deleting the old client by RFC 7592 needs, and what helps name it; other fields are left behind.
_SALVAGED = ("client_id", "registration_client_uri", "registration_access_token", "issuer", "token_endpoint")


def parse(kube: KubeStore, data: dict[str, Any] | None) -> SavedRegistration | None:
    """The Secret's registration; a document that is not one is a ``BrokenEntry``."""
    if data is None:
        return None
    try:
        return SavedRegistration.model_validate(data)  # its secrets are registered for masking by the model
    except ValueError:
        raise BrokenEntry(f"Secret {kube.name} key {DATA_KEY} is not a valid registration", data) from None


def _text(document: dict[str, Any], key: str) -> str | None:
    value = document.get(key)
    return value if isinstance(value, str) and value and is_vschar(value) else None


def salvage(document: dict[str, Any] | None) -> SavedRegistration | None:
    """The old client, from the valid fields of a broken document, if it names one (its id at least)."""
    if document is None:
        return None
    # Whatever it holds, malformed or not, is masked from now on.
    values = [v for k in ("client_secret", "registration_access_token") if isinstance(v := document.get(k), str)]
    _secrets.register(*values)
    _secrets.register_embedded(*values)
    fields = {key: value for key in _SALVAGED if (value := _text(document, key)) is not None}
    return SavedRegistration.model_validate(fields) if "client_id" in fields else None


def retired_of(document: dict[str, Any] | None) -> list[Retired]:
    """The broken document's own list of replaced registrations, as far as it is readable."""
    found: list[Retired] = []
    for item in (document or {}).get(RETIRED_KEY) or []:
        try:
            found.append(Retired.model_validate(item))
        except (ValueError, TypeError):
            continue
    return found


async def set_aside(settings: Settings, kube: KubeStore, broken: BrokenEntry) -> tuple[list[Retired], str]:
    """Keep the broken value under a timestamped key, and say so: (the registrations to retire, new version)."""
    old = salvage(broken.document)
    retired = retired_of(broken.document)
    deletable = old is not None and old.registration_client_uri is not None and old.registration_access_token
    if old is not None and deletable:
        retired.append(Retired(registration=old, retire_at=lifecycle.now() + int(settings.dcr_rotate_grace)))
    kept, version = await kube.set_aside(store.stamp())
    if old is None:
        remedy = "inspect that key: if it names a client on the server, delete that client there"
    elif deletable:
        remedy = "its client is deleted after DCR_ROTATE_GRACE (RFC 7592); remove the key once you have read it"
    else:
        remedy = f"client {old.client_id} has no usable registration access token: delete it on the server by hand"
    logger.warning(
        "The Secret's registration is not valid; kept it under another key and registering anew",
        secret=kube.name,
        kept=kept,
        reason=str(broken),
        client_id=old.client_id if old is not None else None,
        remedy=remedy,
    )
    return retired, version
