"""RFC 7591 registration and RFC 7592 read / update / delete.

Pure functions turn responses into ``ClientInformation`` or an ``OAuthError``; the async functions
only add the one HTTP call each. Nothing here knows Keycloak, except through ``keycloak.hint_for``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from . import keycloak
from ._http import Response, Transport
from .errors import REGISTRATION_ERRORS, ClientGone, MalformedResponse, RegistrationRejected, ServerResponseError
from .models import SERVER_MANAGED_FIELDS, ClientInformation, ClientMetadata
from .settings import SECRET_AUTH_METHODS

_GENERIC_HINTS: dict[str, str] = {
    "invalid_token": "The access token is invalid, expired or used up: provide a fresh DCR_INITIAL_ACCESS_TOKEN.",
    "insufficient_scope": "A server policy refused the request: use an initial access token, "
    "or change the server's client registration policy.",
    "invalid_client_metadata": "Fix the client metadata settings (DCR_GRANT_TYPES, DCR_SCOPE, "
    "DCR_TOKEN_ENDPOINT_AUTH_METHOD, ...) to values the server allows.",
    "invalid_redirect_uri": "Fix DCR_REDIRECT_URIS: every URI must be absolute and allowed by the server.",
    "invalid_software_statement": "The software statement is invalid; fix or remove it.",
    "unapproved_software_statement": "The server does not approve this software statement.",
}


def rejection(resp: Response, what: str) -> RegistrationRejected:
    error, description = resp.error_fields()
    cls = REGISTRATION_ERRORS.get(error or "", RegistrationRejected)
    if error is None and resp.status == 401:
        cls = REGISTRATION_ERRORS["invalid_token"]
    hint = (
        keycloak.hint_for(description)
        or _GENERIC_HINTS.get(error or "")
        or "Check the server's client registration settings and its log."
    )
    return cls(status=resp.status, error=error, description=description, what=what, hint=hint)


def parse_client_information(resp: Response, metadata: ClientMetadata | None = None) -> ClientInformation:
    """Check a 200/201 body is usable before anything is saved.

    Always a client_id; with ``metadata`` (a new registration) also a client_secret where the auth
    method needs one. Reads and updates may omit the secret: the saved one stays valid then.
    """
    try:
        info = ClientInformation.model_validate(resp.json())
    except ValidationError as exc:
        fields = ", ".join(str(e["loc"][0]) for e in exc.errors() if e["loc"]) or "body"
        raise MalformedResponse(
            f"The registration response from {resp.url} is unusable (bad or missing: {fields}); "
            "the server is not RFC 7591 compliant, or a proxy altered the answer."
        ) from None
    method = info.token_endpoint_auth_method or (metadata.token_endpoint_auth_method if metadata else None)
    if metadata is not None and method in SECRET_AUTH_METHODS and info.client_secret is None:
        raise MalformedResponse(
            f"The server registered client {info.client_id} for {method} but returned no client_secret; "
            "nothing was saved. Check the server's registration policy."
        )
    return info


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


async def register(
    transport: Transport, endpoint: str, metadata: ClientMetadata, initial_access_token: str | None
) -> ClientInformation:
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
    return parse_client_information(resp, metadata)


def _gone_or_rejected(resp: Response, what: str) -> RegistrationRejected:
    # RFC 7592 §2: a registration that no longer exists answers 401 (invalid_token), 403 or 404.
    if resp.status in (401, 403, 404):
        error, description = resp.error_fields()
        return ClientGone(
            status=resp.status,
            error=error,
            description=description,
            what=what,
            hint="The saved client no longer exists on the server (or its registration access token was "
            "revoked). Run again with DCR_ON_MISSING_CLIENT=register to register a new one.",
        )
    return rejection(resp, what)


async def read(transport: Transport, uri: str, token: str) -> ClientInformation:
    resp = await transport.request("GET", uri, bearer=token)
    if resp.status != 200:
        raise _gone_or_rejected(resp, "Reading the saved registration failed")
    return parse_client_information(resp)


async def update(
    transport: Transport, uri: str, token: str, current: ClientInformation, metadata: ClientMetadata
) -> ClientInformation:
    resp = await transport.request("PUT", uri, bearer=token, json_body=update_body(current, metadata))
    if resp.status != 200:
        if resp.status in (401, 403, 404):
            raise _gone_or_rejected(resp, "Updating the saved registration failed")
        raise rejection(resp, "Updating the saved registration was rejected")
    return parse_client_information(resp)


async def delete(transport: Transport, uri: str, token: str) -> None:
    resp = await transport.request("DELETE", uri, bearer=token)
    if resp.status not in (200, 204):
        raise _gone_or_rejected(resp, "Deleting the registration failed")
