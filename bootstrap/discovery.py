"""RFC 8414 / OpenID Connect Discovery: well-known URLs, metadata fetch and the issuer check."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import ValidationError

from ._http import Response, Transport
from .errors import NO_METADATA, DiscoveryError, MalformedResponse, Unavailable
from .models import ServerMetadata


def discovery_urls(issuer: str) -> list[str]:
    """Where metadata may live, in the order of RFC 8414 §3.1 then OpenID Discovery (as the MCP SDK tries)."""
    parts = urlsplit(issuer)
    origin = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    if not path:
        return [
            f"{origin}/.well-known/oauth-authorization-server",
            f"{origin}/.well-known/openid-configuration",
        ]
    return [
        f"{origin}/.well-known/oauth-authorization-server{path}",
        f"{origin}/.well-known/openid-configuration{path}",
        f"{origin}{path}/.well-known/openid-configuration",
    ]


def parse_metadata(resp: Response) -> ServerMetadata:
    try:
        return ServerMetadata.model_validate(resp.json())
    except ValidationError as exc:
        fields = ", ".join(str(e["loc"][0]) for e in exc.errors() if e["loc"])
        raise MalformedResponse(
            f"Metadata at {resp.url} is missing or has malformed fields ({fields}); "
            "check that DCR_ISSUER/KEYCLOAK_URL point at the authorization server."
        ) from None


def check_issuer(metadata: ServerMetadata, expected: str) -> None:
    """RFC 8414 §3.3: the metadata's issuer must be the one we asked for (a trailing '/' aside)."""
    if metadata.issuer.rstrip("/") != expected.rstrip("/"):
        raise DiscoveryError(
            f"Issuer mismatch: expected {expected} but the server names itself {metadata.issuer}. "
            "If that is the server's public URL and this tool reaches it at another address, set "
            "KEYCLOAK_URL (or DCR_ISSUER) to the public one and DCR_INTERNAL_URL to the address used here."
        )


def require_registration_endpoint(metadata: ServerMetadata) -> str:
    if not metadata.registration_endpoint:
        raise DiscoveryError(
            f"The server {metadata.issuer} advertises no registration_endpoint: it does not offer Dynamic "
            "Client Registration. Enable DCR on the server, or set USE_DCR=false with static credentials."
        )
    return metadata.registration_endpoint


async def fetch_metadata(transport: Transport, issuer: str) -> ServerMetadata:
    """One attempt over every well-known URL; 404 everywhere means 'not there yet' (retryable)."""
    urls = discovery_urls(issuer)
    for url in urls:
        resp = await transport.request("GET", url)
        if resp.status == 404:
            continue
        if resp.status != 200:
            raise DiscoveryError(
                f"Metadata request {transport.wire_url(url)} answered HTTP {resp.status}; "
                "check the server URL and that discovery is not behind authentication."
            )
        return parse_metadata(resp)
    raise Unavailable(f"no metadata yet at {transport.wire_url(urls[0])} (HTTP 404)", status=404, reason=NO_METADATA)


async def discover(transport: Transport, issuer: str) -> ServerMetadata:
    """One attempt: fetch the metadata and check that it names the issuer we asked for."""
    metadata = await fetch_metadata(transport, issuer)
    check_issuer(metadata, issuer)
    return metadata
