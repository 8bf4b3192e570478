"""Settings: environment variables (and an optional ``.env``); their names are the public interface.

The first four names come from the seed design (``USE_DCR``, ``DCR_INITIAL_ACCESS_TOKEN``,
``KEYCLOAK_CLIENT_ID``, ``KEYCLOAK_CLIENT_SECRET``). Every secret can also be read from a file
(``*_FILE``), the way Docker and Kubernetes mount secrets. The README's configuration reference is
generated from this model (``python -m bootstrap.docs``), so descriptions here are user-facing.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from . import keycloak
from .errors import ConfigError

CsvList = Annotated[list[str], NoDecode]

# Auth methods in which the client proves itself with a shared secret.
SECRET_AUTH_METHODS = frozenset({"client_secret_basic", "client_secret_post", "client_secret_jwt"})


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False)

    # --- mode (names from the seed) ---
    use_dcr: bool = Field(True, description="Register by DCR (true) or check and write static credentials.")
    dcr_initial_access_token: SecretStr | None = Field(
        None, description="Initial access token for RFC 7591 registration; unset means anonymous."
    )
    dcr_initial_access_token_file: Path | None = Field(
        None, description="File holding DCR_INITIAL_ACCESS_TOKEN (Docker/Kubernetes secret)."
    )
    keycloak_client_id: str | None = Field(None, description="Static client id (USE_DCR=false).")
    keycloak_client_secret: SecretStr | None = Field(None, description="Static client secret (USE_DCR=false).")
    keycloak_client_secret_file: Path | None = Field(None, description="File holding KEYCLOAK_CLIENT_SECRET.")

    # --- admin credentials: only the initial-token subcommand reads them ---
    keycloak_admin_username: str | None = Field(None, description="Keycloak admin user (initial-token only).")
    keycloak_admin_password: SecretStr | None = Field(None, description="Keycloak admin password (initial-token only).")
    keycloak_admin_password_file: Path | None = Field(None, description="File holding KEYCLOAK_ADMIN_PASSWORD.")

    # --- where the server is ---
    keycloak_url: str | None = Field(
        None,
        description="Keycloak base URL, e.g. http://localhost:8080; the issuer is KEYCLOAK_URL/realms/REALM.",
    )
    keycloak_realm: str | None = Field(None, description="Keycloak realm (with KEYCLOAK_URL).")
    dcr_issuer: str | None = Field(
        None, description="Issuer of any RFC 8414 server; overrides the issuer derived from KEYCLOAK_URL."
    )
    dcr_internal_url: str | None = Field(
        None,
        description="Split horizon: base URL this tool uses to reach the server (http://keycloak:8080) when "
        "its metadata names a public one (KEYCLOAK_URL or DCR_ISSUER's origin). The issuer is still checked.",
    )
    dcr_ca_bundle: Path | None = Field(None, description="PEM CA bundle to trust for HTTPS.")

    # --- output ---
    dcr_client_file: Path = Field(Path(".dcr_client.json"), description="Credentials file (JSON, mode 0600).")
    dcr_env_file: Path | None = Field(
        None, description="Also write KEYCLOAK_CLIENT_ID=/KEYCLOAK_CLIENT_SECRET= lines here (mode 0600)."
    )

    # --- client metadata (RFC 7591 §2) ---
    dcr_client_name: str = Field(
        "mcp-server-{hostname}", description="client_name; '{hostname}' becomes this host's name."
    )
    dcr_grant_types: CsvList = Field(["client_credentials"], description="Comma-separated grant_types.")
    dcr_redirect_uris: CsvList = Field([], description="Comma-separated redirect_uris (none by default).")
    dcr_token_endpoint_auth_method: str = Field("client_secret_basic", description="token_endpoint_auth_method.")
    dcr_scope: str | None = Field(None, description="Space-separated scope to request (server default if unset).")
    dcr_contacts: CsvList = Field([], description="Comma-separated contacts.")
    dcr_software_id: str | None = Field(None, description="software_id.")
    dcr_software_version: str | None = Field(None, description="software_version.")
    dcr_on_missing_client: Literal["register", "fail"] = Field(
        "register", description="When the saved client no longer exists: register again, or fail."
    )

    # --- waiting and retries ---
    dcr_wait_timeout: float = Field(120.0, gt=0, description="Total seconds to wait for the server.")
    dcr_attempt_timeout: float = Field(10.0, gt=0, description="Seconds for one HTTP attempt.")
    dcr_retry_initial_delay: float = Field(0.5, ge=0, description="First backoff delay in seconds.")
    dcr_retry_max_delay: float = Field(10.0, ge=0, description="Largest backoff delay in seconds.")

    dcr_watch_interval: float = Field(300.0, gt=0, description="Seconds between re-checks in 'watch' (sidecar) mode.")

    # --- logs ---
    dcr_log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="json, console, or auto (console on a terminal, JSON otherwise)."
    )
    dcr_log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")

    _split = field_validator("dcr_grant_types", "dcr_redirect_uris", "dcr_contacts", mode="before")(_split_csv)

    @field_validator("keycloak_url", "dcr_issuer", "dcr_internal_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _secrets_from_files(self) -> Settings:
        self.dcr_initial_access_token = _from_file(
            self.dcr_initial_access_token, self.dcr_initial_access_token_file, "DCR_INITIAL_ACCESS_TOKEN"
        )
        self.keycloak_client_secret = _from_file(
            self.keycloak_client_secret, self.keycloak_client_secret_file, "KEYCLOAK_CLIENT_SECRET"
        )
        self.keycloak_admin_password = _from_file(
            self.keycloak_admin_password, self.keycloak_admin_password_file, "KEYCLOAK_ADMIN_PASSWORD"
        )
        return self

    # --- derived values ---
    @property
    def expected_issuer(self) -> str:
        if self.dcr_issuer:
            return self.dcr_issuer
        assert self.keycloak_url and self.keycloak_realm  # guaranteed by check()
        return keycloak.issuer(self.keycloak_url, self.keycloak_realm)

    @property
    def public_base(self) -> str:
        """The base URL that the server's metadata names; DCR_INTERNAL_URL replaces it on the wire."""
        if self.keycloak_url:
            return self.keycloak_url
        parts = urlsplit(self.expected_issuer)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def client_name(self) -> str:
        return self.dcr_client_name.replace("{hostname}", hostname())

    def check(self, *, need_server: bool = True, need_credentials: bool = True) -> Settings:
        """Cross-field rules; raise one ConfigError naming what is missing and what to set."""
        if need_server and not self.dcr_issuer and not (self.keycloak_url and self.keycloak_realm):
            missing = [
                n for n, v in (("KEYCLOAK_URL", self.keycloak_url), ("KEYCLOAK_REALM", self.keycloak_realm)) if not v
            ]
            raise ConfigError(
                f"No authorization server configured: {' and '.join(missing)} not set. "
                "Set KEYCLOAK_URL and KEYCLOAK_REALM, or DCR_ISSUER for any RFC 8414 server."
            )
        if need_credentials and not self.use_dcr and not (self.keycloak_client_id and self.keycloak_client_secret):
            missing = [
                n
                for n, v in (
                    ("KEYCLOAK_CLIENT_ID", self.keycloak_client_id),
                    ("KEYCLOAK_CLIENT_SECRET", self.keycloak_client_secret),
                )
                if not v
            ]
            raise ConfigError(
                f"USE_DCR=false but {' and '.join(missing)} not set. "
                "Set USE_DCR=true to register by DCR, or provide static credentials "
                "(KEYCLOAK_CLIENT_SECRET_FILE works too)."
            )
        if (
            self.use_dcr
            and "client_credentials" in self.dcr_grant_types
            and (self.dcr_token_endpoint_auth_method == "none")
        ):
            raise ConfigError(
                "DCR_GRANT_TYPES has client_credentials but DCR_TOKEN_ENDPOINT_AUTH_METHOD=none: a public client "
                "cannot use client_credentials. Use client_secret_basic, or drop client_credentials."
            )
        return self


def _from_file(value: SecretStr | None, path: Path | None, name: str) -> SecretStr | None:
    if path is None:
        return value
    if value is not None:
        raise ConfigError(f"Both {name} and {name}_FILE are set; set only one of them.")
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"{name}_FILE={path} cannot be read ({exc.strerror}); mount the secret there or fix the path."
        ) from None
    if not text:
        raise ConfigError(f"{name}_FILE={path} is empty; write the secret into it or unset {name}_FILE.")
    return SecretStr(text)


def hostname() -> str:
    return socket.gethostname()


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; translate validation errors into one ConfigError line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            loc = "_".join(str(p) for p in err["loc"]).upper() or "settings"
            problems.append(f"{loc}: {err['msg']}")
        raise ConfigError("Invalid settings: " + "; ".join(problems) + ". Fix these environment variables.") from None
