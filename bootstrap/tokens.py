"""The client_credentials token request (RFC 6749 §4.4): proof that credentials work."""

from __future__ import annotations

from urllib.parse import quote

from ._http import Transport
from .errors import CredentialsRejected, MalformedResponse


async def client_credentials(
    transport: Transport,
    token_endpoint: str,
    client_id: str,
    client_secret: str,
    *,
    auth_method: str = "client_secret_basic",
    scope: str | None = None,
) -> None:
    """Raise ``CredentialsRejected`` unless the server issues an access token. The token is dropped."""
    transport.check_secret_url(token_endpoint, "token_endpoint")
    form = {"grant_type": "client_credentials"}
    if scope:
        form["scope"] = scope
    basic = None
    if auth_method == "client_secret_post":
        form |= {"client_id": client_id, "client_secret": client_secret}
    else:
        # RFC 6749 §2.3.1: form-encode id and secret before Basic encoding.
        basic = (quote(client_id, safe=""), quote(client_secret, safe=""))
    resp = await transport.request("POST", token_endpoint, form=form, basic=basic)
    if resp.status == 200:
        if "access_token" not in resp.json():
            raise MalformedResponse(f"The token endpoint {token_endpoint} answered 200 without an access_token.")
        return
    error, description = resp.error_fields()
    # RFC 6749 §5.2: a failed client authentication is 401 (invalid_client; Keycloak says unauthorized_client).
    if resp.status == 401 or error == "invalid_client":
        hint = "Check the client id and secret (KEYCLOAK_CLIENT_ID / KEYCLOAK_CLIENT_SECRET, or the saved file)."
    elif error == "unauthorized_client":
        hint = "The client may not use client_credentials: enable that grant (service accounts) for it."
    else:
        hint = "Check the client's grant types and DCR_SCOPE against what the server allows."
    raise CredentialsRejected(
        status=resp.status,
        error=error,
        description=description,
        what=f"The token endpoint refused client {client_id}",
        hint=hint,
    )
