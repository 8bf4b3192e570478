"""RFC 7591 registration and RFC 7592 read / update / delete.

Pure functions turn responses into ``ClientInformation`` or an ``OAuthError``; the async functions
add the one HTTP call each and make exactly one attempt (the flow owns retrying). Nothing here
knows Keycloak: server-specific hints are added where the CLI writes the last line.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ._http import Response, Transport
from .errors import (
    REGISTRATION_ERRORS,
    ClientGone,
    MalformedResponse,
    NotAllowed,
    RegistrationRejected,
    ServerResponseError,
)
from .models import SERVER_MANAGED_FIELDS, ClientInformation, ClientMetadata

_GENERIC_HINTS: dict[str, str] = {
    "invalid_token": "The access token is invalid, expired or used up: provide a fresh DCR_INITIAL_ACCESS_TOKEN.",
    "insufficient_scope": "A server policy refused the request: use an initial access token, "
    "or change the server's client registration policy.",
    "invalid_client_metadata": "Fix the client metadata settings (DCR_GRANT_TYPES, DCR_SCOPE, "
    "DCR_TOKEN_ENDPOINT_AUTH_METHOD, ...) to values the server allows.",
    "invalid_redirect_uri": "Fix DCR_REDIRECT_URIS: every URI must be absolute and allowed by the server.",
}


def rejection(resp: Response, what: str) -> RegistrationRejected:
    error, description = resp.error_fields()
    cls = REGISTRATION_ERRORS.get(error or "", RegistrationRejected)
    if error is None and resp.status == 401:
        cls = REGISTRATION_ERRORS["invalid_token"]
    hint = _GENERIC_HINTS.get(error or "", "Check the server's client registration settings and its log.")
    return cls(status=resp.status, error=error, description=description, what=what, hint=hint)


def parse_client_information(resp: Response) -> ClientInformation:
    """A 200/201 body with at least a client_id; what else it must hold is the flow's to judge."""
    try:
        return ClientInformation.model_validate(resp.json())
    except ValidationError as exc:
        fields = ", ".join(str(e["loc"][0]) for e in exc.errors() if e["loc"]) or "body"
        raise MalformedResponse(
            f"The registration response from {resp.url} is unusable (bad or missing: {fields}); "
            "the server is not RFC 7591 compliant, or a proxy altered the answer."
        ) from None


def update_body(current: ClientInformation, metadata: ClientMetadata) -> dict[str, Any]:
    """RFC 7592 §2.2: all current metadata, our wanted values on top, without server-managed fields."""
    body = {k: v for k, v in current.model_dump(mode="json").items() if k not in SERVER_MANAGED_FIELDS}
    if current.client_secret is not None:
        body["client_secret"] = current.client_secret.get_secret_value()
    else:
        body.pop("client_secret", None)
    body.update(metadata.to_request())
    body["client_id"] = current.client_id
    return body


# RFC 7592 §2: 401 (or 404) means no such client or token; 403 means "not allowed", never "gone".
_MANAGEMENT_ERRORS: dict[int, tuple[type[RegistrationRejected], str]] = {
    status: (
        ClientGone,
        "The saved client no longer exists on the server, or its registration access token is no longer valid.",
    )
    for status in (401, 404)
} | {
    403: (
        NotAllowed,
        "The server does not allow this client to be managed by RFC 7592 (a policy, not a missing client), so "
        "nothing was registered anew. Ask the server's administrator to allow it.",
    )
}


def management_error(resp: Response, what: str) -> RegistrationRejected:
    """The RFC 7592 error an answer means (``_MANAGEMENT_ERRORS``), else an RFC 7591 rejection."""
    known = _MANAGEMENT_ERRORS.get(resp.status)
    if known is None:
        return rejection(resp, what)
    cls, hint = known
    error, description = resp.error_fields()
    return cls(status=resp.status, error=error, description=description, what=what, hint=hint)


async def register(
    transport: Transport, endpoint: str, metadata: ClientMetadata, initial_access_token: str | None
) -> ClientInformation:
    transport.check_secret_url(endpoint, "registration_endpoint")
    resp = await transport.request(
        "POST", endpoint, bearer=initial_access_token, json_body=metadata.to_request(), idempotent=False
    )
    if resp.status >= 500:
        raise ServerResponseError(
            f"Registration at {transport.wire_url(endpoint)} failed with HTTP {resp.status}; the server may "
            "have created the client anyway. Check the server's log and clients, then run again."
        )
    if resp.status not in (200, 201):
        raise rejection(resp, f"Registration at {transport.wire_url(endpoint)} was rejected")
    return parse_client_information(resp)


async def read(transport: Transport, uri: str, token: str) -> ClientInformation:
    transport.check_secret_url(uri, "registration_client_uri")
    resp = await transport.request("GET", uri, bearer=token)
    if resp.status != 200:
        raise management_error(resp, "Reading the saved registration failed")
    return parse_client_information(resp)


async def update(
    transport: Transport, uri: str, token: str, current: ClientInformation, metadata: ClientMetadata
) -> ClientInformation:
    transport.check_secret_url(uri, "registration_client_uri")
    # Not idempotent: the server may rotate the token as it applies the update, so a lost answer is
    # never retried with the old one (429/503 still are: the server did not process those).
    resp = await transport.request("PUT", uri, bearer=token, json_body=update_body(current, metadata), idempotent=False)
    if resp.status >= 500:
        raise ServerResponseError(
            f"Updating the registration at {transport.wire_url(uri)} failed with HTTP {resp.status}; the server "
            "may have applied it. Run again: a rotated token is detected and the client kept."
        )
    if resp.status != 200:
        raise management_error(resp, "Updating the saved registration failed")
    return parse_client_information(resp)


async def delete(transport: Transport, uri: str, token: str, *, budget: float | None = None) -> None:
    transport.check_secret_url(uri, "registration_client_uri")
    resp = await transport.request("DELETE", uri, bearer=token, budget=budget)
    if resp.status not in (200, 204):
        raise management_error(resp, "Deleting the registration failed")
