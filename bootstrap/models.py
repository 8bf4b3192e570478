"""Data on the wire and on disk.

Strict where we speak (``ClientMetadata`` forbids unknown fields), lenient where servers speak
(``ServerMetadata`` and ``ClientInformation`` keep whatever else they return: RFC 7591 §3.2.1 lets a
server substitute or add values). Secrets are ``SecretStr`` so no repr or log shows them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from . import log

# Auth methods in which the client proves itself with a shared secret.
SECRET_AUTH_METHODS = frozenset({"client_secret_basic", "client_secret_post", "client_secret_jwt"})


def is_vschar(value: str) -> bool:
    """RFC 6749 Appendix A VSCHAR (%x20-7E): what a client_id, secret or token may hold."""
    return all(" " <= ch <= "~" for ch in value)


class ServerMetadata(BaseModel):
    """RFC 8414 §2 / OpenID Discovery; only the fields we use are typed."""

    model_config = ConfigDict(extra="allow", frozen=True)

    issuer: str
    token_endpoint: str | None = None
    registration_endpoint: str | None = None
    introspection_endpoint: str | None = None  # RFC 7662: passed on to the app (DCR_ENV_NAMES), never called


class ClientMetadata(BaseModel):
    """What we ask for (RFC 7591 §2). Its fingerprint tells a later run whether to update."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    client_name: str
    grant_types: list[str]
    redirect_uris: list[str] = Field(default_factory=list)
    response_types: list[str] = Field(default_factory=list)
    token_endpoint_auth_method: str
    # OpenID Connect Registration §2; MCP's authorization spec asks DCR clients to send it.
    application_type: str | None = None
    scope: str | None = None
    contacts: list[str] | None = None
    software_id: str | None = None
    software_version: str | None = None

    def to_request(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)

    @property
    def needs_secret(self) -> bool:
        return self.token_endpoint_auth_method in SECRET_AUTH_METHODS

    @property
    def fingerprint(self) -> str:
        canonical = json.dumps(self.to_request(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


class ClientInformation(BaseModel):
    """RFC 7591 §3.2.1 / RFC 7592 §3 response. Lenient: servers add fields and substitute values."""

    model_config = ConfigDict(extra="allow", frozen=True)

    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None
    client_secret_expires_at: int | None = None
    registration_access_token: SecretStr | None = None
    registration_client_uri: str | None = None
    token_endpoint_auth_method: str | None = None

    @model_validator(mode="after")
    def _mask(self) -> ClientInformation:
        # Masked in every log line from the moment a server's answer is parsed, whatever happens next.
        log.register_secrets(self.client_secret, self.registration_access_token)
        log.register_basic(self.client_id, self.client_secret)
        return self

    def unsafe_fields(self) -> list[str]:
        """Credentials outside RFC 6749's VSCHAR: only a broken or hostile server sends them."""
        values = {
            "client_id": self.client_id,
            "client_secret": self.client_secret.get_secret_value() if self.client_secret else "",
            "registration_access_token": (
                self.registration_access_token.get_secret_value() if self.registration_access_token else ""
            ),
        }
        return [name for name, value in values.items() if not is_vschar(value)]


class Retired(BaseModel):
    """A registration replaced by a new one, kept until ``retire_at`` so that running apps keep working."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    registration: SavedRegistration
    retire_at: int

    def to_file(self) -> dict[str, Any]:
        return {"registration": self.registration.to_file(), "retire_at": self.retire_at}


class Intent(BaseModel):
    """A registration asked for (a POST about to be sent), recorded before it is sent.

    RFC 7591 has no idempotency key, so the nonce travels in ``client_name``: a later run that finds an
    intent without an answer can find that client (by an admin API) or tell the operator its name.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    nonce: str = Field(pattern=r"^[0-9a-f]{12}$")
    issuer: str
    client_name: str
    started_at: str


# Fields a server manages; RFC 7592 §2.2 forbids sending them back in an update.
SERVER_MANAGED_FIELDS = frozenset(
    {
        "registration_access_token",
        "registration_client_uri",
        "client_secret_expires_at",
        "client_id_issued_at",
    }
)


class SavedRegistration(BaseModel):
    """The credentials file. The first five keys are the seed's contract; the rest serve later runs."""

    model_config = ConfigDict(extra="ignore")

    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None
    registration_access_token: SecretStr | None = None
    registration_client_uri: str | None = None
    registered_at: str | None = None
    issuer: str | None = None
    token_endpoint: str | None = None
    # RFC 7662's endpoint, for an app that verifies its callers' tokens by introspection (DCR_ENV_NAMES).
    introspection_endpoint: str | None = None
    client_secret_expires_at: int | None = None
    # When this tool first saw this client_secret (epoch seconds): its age for renewal and rotation.
    client_secret_issued_at: int | None = None
    metadata_fingerprint: str | None = None
    token_endpoint_auth_method: str | None = None
    mode: str = "dcr"

    @field_validator("client_id", "client_secret", "registration_access_token", "registration_client_uri")
    @classmethod
    def _vschar(cls, value: str | SecretStr | None) -> str | SecretStr | None:
        # What we save is sent in headers later: a control character or line break would break every run.
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text is not None and not is_vschar(text):
            raise ValueError("has characters outside RFC 6749 VSCHAR (control characters or line breaks)")
        return value

    @model_validator(mode="after")
    def _mask(self) -> SavedRegistration:
        # Loaded from a file or a Secret, or built from an answer: masked in every log line from now on.
        log.register_secrets(self.client_secret, self.registration_access_token)
        log.register_basic(self.client_id, self.client_secret)
        return self

    def to_file(self) -> dict[str, Any]:
        """Plain JSON with the secrets revealed: only ``store`` writes this, to a 0600 file."""
        data = self.model_dump()
        for key in ("client_secret", "registration_access_token"):
            value = getattr(self, key)
            data[key] = value.get_secret_value() if value is not None else None
        return data
