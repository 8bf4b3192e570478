"""Settings: environment variables (and an optional ``.env``); their names are the public interface.

A ``.env`` in the working directory is read only if it is ours: a regular file (not a link) owned by
this user or root, writable by nobody else, and not in the credentials folder, which other containers
may share (whoever can write there must not choose where the initial access token is sent). Any other
``.env`` is ignored with a warning naming the reason (``ignored_env_files``).

The first four names come from the seed design (``USE_DCR``, ``DCR_INITIAL_ACCESS_TOKEN``,
``KEYCLOAK_CLIENT_ID``, ``KEYCLOAK_CLIENT_SECRET``). Every secret can also be read from a file
(``*_FILE``), the way Docker and Kubernetes mount secrets. The README's configuration reference is
generated from this model (``python -m bootstrap._reference``), so descriptions here are user-facing.
Everything is checked here, before any request: a bad value is one ConfigError line (exit 2).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, DotEnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from . import envnames, log
from ._dotenv import DEFAULT_CLIENT_FILE, EXPLICIT, OwnDotEnv, explicit_text
from ._parse import (
    K8S_NAME_FIELDS,
    MAX_CLIENT_NAME,
    CsvList,
    Duration,
    ListenAddr,
    PositiveDuration,
    ca_context,
    check_header_safe,
    check_kubernetes,
    client_file,
    client_name,
    env_names,
    from_file,
    grant_types,
    hostname,
    http_url,
    k8s_name,
    octal,
    origins,
    redirect_uris,
    same_file,
    split_csv,
    unset,
)
from .errors import ConfigError
from .urls import origin


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

    # --- admin credentials: initial-token, and the clean-up after a run killed while registering ---
    keycloak_admin_username: str | None = Field(
        None,
        description="Keycloak admin user: for initial-token, and, if set, for finding and deleting a client "
        "that a run killed during its registration left (see docs/SECURITY.md).",
    )
    keycloak_admin_password: SecretStr | None = Field(None, description="Keycloak admin password (with the user).")
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
    dcr_trusted_origins: CsvList = Field(
        [],
        description="Comma-separated extra origins (https://host[:port]) that may receive secrets. By default "
        "only the issuer's origin (and DCR_INTERNAL_URL's) may: a registration, management or token endpoint "
        "elsewhere is refused before any secret is sent.",
    )

    # --- output ---
    dcr_client_file: Path = Field(Path(DEFAULT_CLIENT_FILE), description="Credentials file (JSON, mode 0600).")
    dcr_file_mode: Literal["0600", "0640", "0440", "0400"] = Field(
        "0600",
        description="Mode of the credentials file and the env file. 0640 or 0440 let a server running as another "
        "uid in the volume's group (fsGroup) read them; never world-readable.",
    )
    dcr_env_file: Path | None = Field(
        None,
        description="Also write KEYCLOAK_CLIENT_ID=/KEYCLOAK_CLIENT_SECRET= lines here (mode 0600; safe to source "
        "in sh or to pass to docker --env-file: values that could not be carried safely are refused).",
    )
    dcr_env_names: str = Field(
        envnames.DEFAULT,
        description="Which names the env file (DCR_ENV_FILE) and 'dcr-bootstrap env' give the fields, as "
        "field=NAME pairs of client_id, client_secret, issuer, token_endpoint and introspection_endpoint, for a "
        "server that reads other names (e.g. client_id=OAUTH_CLIENT_ID,client_secret=OAUTH_CLIENT_SECRET,"
        "introspection_endpoint=OAUTH_INTROSPECTION_URL). Names of this tool's settings are refused.",
    )

    # --- client metadata (RFC 7591 §2) ---
    dcr_client_name: str = Field(
        "mcp-server-{hostname}",
        description=f"client_name; '{{hostname}}' becomes this host's name (at most {MAX_CLIENT_NAME} characters).",
    )
    dcr_grant_types: CsvList = Field(["client_credentials"], description="Comma-separated grant_types.")
    dcr_redirect_uris: CsvList = Field([], description="Comma-separated redirect_uris (none by default).")
    dcr_token_endpoint_auth_method: str = Field("client_secret_basic", description="token_endpoint_auth_method.")
    dcr_application_type: Literal["web", "native"] = Field(
        "web",
        description="application_type (OpenID Connect Registration): web for a confidential server-side client, "
        "as MCP's authorization spec asks DCR clients to say; native for one on a user's device.",
    )
    dcr_scope: str | None = Field(None, description="Space-separated scope to request (server default if unset).")
    dcr_contacts: CsvList = Field([], description="Comma-separated contacts.")
    dcr_software_id: str | None = Field(None, description="software_id.")
    dcr_software_version: str | None = Field(None, description="software_version.")
    dcr_on_missing_client: Literal["register", "fail"] = Field(
        "register", description="When the saved client no longer exists: register again, or fail."
    )

    # --- waiting and retries ---
    dcr_wait_timeout: PositiveDuration = Field(
        120.0, description="Time for the whole run, waiting included (a duration: 120, 120s, 2m)."
    )
    dcr_attempt_timeout: PositiveDuration = Field(
        10.0,
        description="Time for one HTTP attempt (never past DCR_WAIT_TIMEOUT). A registration POST or update "
        "PUT, which must not be repeated, waits for its answer until DCR_WAIT_TIMEOUT instead.",
    )
    dcr_retry_initial_delay: Duration = Field(0.5, description="First backoff delay (a duration).")
    dcr_retry_max_delay: Duration = Field(10.0, description="Largest backoff delay (a duration).")

    dcr_watch_interval: PositiveDuration = Field(
        300.0, description="Time between re-checks in 'watch' (sidecar) mode (a duration: 300, 5m)."
    )
    dcr_renew_before: Duration | None = Field(
        None,
        description="When the server says the client secret expires (client_secret_expires_at), renew it this long "
        "before (RFC 7592 read, then update, then a new registration); default: a third of its lifetime. A "
        "window at least as long as the secret's lifetime is clamped to that third, with one warning.",
    )
    dcr_rotate_after: PositiveDuration | None = Field(
        None,
        description="Give the client new credentials once its secret is this old (e.g. 30d): Keycloak's secret "
        "regeneration with admin credentials, else a new registration. Off by default.",
    )
    dcr_rotate_grace: Duration = Field(
        3600.0,
        description="How long a registration replaced by a new one stays valid for apps still using it; the run "
        "after that deletes it (RFC 7592).",
    )
    dcr_on_change: str | None = Field(
        None,
        description="'watch': a command run (split like a shell would, but run without one; use sh -c '...' for "
        "a shell) after the client id or secret changed, e.g. to signal the server (the README shows how in a "
        "Pod); it gets no initial access token or admin credentials, and its process group is killed when watch "
        "stops.",
    )
    dcr_on_change_timeout: PositiveDuration = Field(
        30.0, description="DCR_ON_CHANGE is killed (with its process group) after this long; its exit status is logged."
    )
    dcr_delete_on_exit: bool = Field(
        False,
        description="'watch' only: on SIGTERM/SIGINT delete the client (RFC 7592), the clients it replaced and "
        "the file, so a per-Pod client never outlives its Pod; one that still works but cannot be deleted is "
        "named and kept.",
    )
    dcr_metrics_addr: ListenAddr | None = Field(
        None,
        description="'watch' only: serve /metrics, /healthz and /readyz on this host:port, e.g. "
        "127.0.0.1:9464 (docs/monitoring.md). Off by default.",
    )

    # --- Kubernetes shared store ---
    dcr_k8s_secret: str | None = Field(
        None,
        description="Keep the registration in this Secret of the Pod's namespace, so all replicas share one "
        "client (the file is still written).",
    )
    dcr_k8s_lease: str | None = Field(
        None, description="Lease that lets one replica at a time register (with DCR_K8S_SECRET)."
    )
    dcr_k8s_namespace: str | None = Field(
        None, description="Namespace of the Secret and Lease (default: the Pod's own namespace)."
    )
    dcr_k8s_context: str | None = Field(
        None,
        description="The kubeconfig context to use instead of its current-context (with KUBECONFIG, which is then "
        "used even in a Pod).",
    )
    dcr_k8s_rollout: str | None = Field(
        None,
        description="A Deployment (in the Secret's namespace) whose pod template carries a hash of the Secret's "
        "credentials as an annotation, patched whenever they differ, so its Pods restart on the new ones; a "
        "replaced client is deleted only after its roll-out completed (RBAC: get and patch on that "
        "Deployment, by resourceNames).",
    )
    dcr_k8s_allow_http: bool = Field(
        False,
        description="Allow a plain-http Kubernetes API server that is not on loopback (the bearer token and the "
        "Secret would cross the network unencrypted). Off: such a server is refused before any request.",
    )

    dcr_k8s_pod_name: str | None = Field(
        None,
        description="This Pod's name (downward API metadata.name): record a Kubernetes Event on it for each "
        "run's outcome (RBAC: create on events; with DCR_K8S_POD_NAMESPACE).",
    )
    dcr_k8s_pod_namespace: str | None = Field(None, description="This Pod's namespace (downward API).")
    dcr_termination_log: str | None = Field(
        None,
        description="File for a failed run's last line, Kubernetes' termination message (default: "
        "/dev/termination-log when it exists and is writable; empty: off).",
    )

    # --- logs ---
    dcr_log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="json, console, or auto (console on a terminal, JSON otherwise)."
    )
    dcr_log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        env_file = dotenv_settings.env_file if isinstance(dotenv_settings, DotEnvSettingsSource) else ".env"
        return init_settings, env_settings, OwnDotEnv(settings_cls, env_file=env_file), file_secret_settings

    _split = field_validator("dcr_grant_types", "dcr_redirect_uris", "dcr_contacts", mode="before")(split_csv)
    _split_origins = field_validator("dcr_trusted_origins", mode="before")(split_csv)

    # Each rule is a function of _parse; pydantic turns its ValueError into the one ConfigError line.
    _urls = field_validator("keycloak_url", "dcr_issuer", "dcr_internal_url")(http_url)
    _octal = field_validator("dcr_file_mode", mode="before")(octal)
    _k8s = field_validator(*K8S_NAME_FIELDS)(k8s_name)
    _origins = field_validator("dcr_trusted_origins")(origins)
    _redirects = field_validator("dcr_redirect_uris")(redirect_uris)
    _grants = field_validator("dcr_grant_types")(grant_types)
    _name = field_validator("dcr_client_name")(client_name)
    _file = field_validator("dcr_client_file")(client_file)
    _env_names = field_validator("dcr_env_names")(env_names)

    @model_validator(mode="after")
    def _secrets_from_files(self) -> Settings:
        self.dcr_initial_access_token = from_file(
            self.dcr_initial_access_token, self.dcr_initial_access_token_file, "DCR_INITIAL_ACCESS_TOKEN"
        )
        self.keycloak_client_secret = from_file(
            self.keycloak_client_secret, self.keycloak_client_secret_file, "KEYCLOAK_CLIENT_SECRET"
        )
        self.keycloak_admin_password = from_file(
            self.keycloak_admin_password, self.keycloak_admin_password_file, "KEYCLOAK_ADMIN_PASSWORD"
        )
        log.register_secrets(self.dcr_initial_access_token, self.keycloak_client_secret, self.keycloak_admin_password)
        if self.keycloak_client_id:
            log.register_basic(self.keycloak_client_id, self.keycloak_client_secret)
        check_header_safe(
            DCR_INITIAL_ACCESS_TOKEN=self.dcr_initial_access_token,
            KEYCLOAK_CLIENT_SECRET=self.keycloak_client_secret,
            KEYCLOAK_CLIENT_ID=self.keycloak_client_id,
        )
        if self.dcr_env_file is not None and same_file(self.dcr_env_file, self.dcr_client_file):
            raise ConfigError(
                "DCR_ENV_FILE names the same file as DCR_CLIENT_FILE; it would replace the JSON credentials. "
                "Choose another path, e.g. /var/lib/dcr/.dcr_client.env."
            )
        return self

    # --- derived values ---
    def tls_context(self) -> ssl.SSLContext | None:
        """The context that trusts DCR_CA_BUNDLE (None: the system's store); a bad bundle is a ConfigError."""
        return ca_context(self.dcr_ca_bundle)

    def secret_origins(self, issuer: str | None = None) -> frozenset[str]:
        """Origins allowed to receive a secret: the issuer's, DCR_INTERNAL_URL's, and DCR_TRUSTED_ORIGINS."""
        if issuer is None and (self.dcr_issuer or (self.keycloak_url and self.keycloak_realm)):
            issuer = self.expected_issuer
        named = [*([issuer] if issuer else []), *self.dcr_trusted_origins]
        if self.dcr_internal_url:
            named.append(self.dcr_internal_url)
        return frozenset(origin(url) for url in named)

    @property
    def expected_issuer(self) -> str:
        if self.dcr_issuer:
            return self.dcr_issuer
        assert self.keycloak_url and self.keycloak_realm  # guaranteed by check()
        # The seed's KEYCLOAK_URL and KEYCLOAK_REALM name a Keycloak realm: one realm, one issuer, at /realms/.
        return f"{self.keycloak_url.rstrip('/')}/realms/{self.keycloak_realm}"

    @property
    def public_base(self) -> str | None:
        """The base URL that the server's metadata names; DCR_INTERNAL_URL replaces it on the wire."""
        if self.keycloak_url:
            return self.keycloak_url
        if not self.dcr_issuer:
            return None
        parts = urlsplit(self.dcr_issuer)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def env_names(self) -> envnames.EnvNames:
        return envnames.parse(self.dcr_env_names)

    @property
    def file_mode(self) -> int:
        return int(self.dcr_file_mode, 8)

    @property
    def client_name(self) -> str:
        return self.dcr_client_name.replace("{hostname}", hostname())

    def check_server(self) -> Settings:
        """Enough to reach the server: an issuer, or KEYCLOAK_URL with KEYCLOAK_REALM."""
        if not self.dcr_issuer and not (self.keycloak_url and self.keycloak_realm):
            missing = unset(KEYCLOAK_URL=self.keycloak_url, KEYCLOAK_REALM=self.keycloak_realm)
            raise ConfigError(
                f"No authorization server configured: {missing} not set. "
                "Set KEYCLOAK_URL and KEYCLOAK_REALM, or DCR_ISSUER for any RFC 8414 server."
            )
        if self.expected_issuer.startswith("https:"):
            plain = [o for o in self.dcr_trusted_origins if not o.startswith("https:")]
            if plain:
                raise ConfigError(
                    "DCR_TRUSTED_ORIGINS lists an http origin while the issuer is https; secrets are never sent "
                    "over a downgraded scheme. Use https origins."
                )
        return self

    def check(self) -> Settings:
        """Everything a run needs; raise one ConfigError naming what is missing and what to set."""
        self.check_server()
        if not self.use_dcr and not (self.keycloak_client_id and self.keycloak_client_secret):
            missing = unset(
                KEYCLOAK_CLIENT_ID=self.keycloak_client_id, KEYCLOAK_CLIENT_SECRET=self.keycloak_client_secret
            )
            raise ConfigError(
                f"USE_DCR=false but {missing} not set. Set USE_DCR=true to register by DCR, or provide static "
                "credentials (KEYCLOAK_CLIENT_SECRET_FILE works too)."
            )
        k8s = (self.dcr_k8s_lease, self.dcr_k8s_namespace, self.dcr_k8s_rollout)
        check_kubernetes(self.dcr_k8s_secret, self.use_dcr, self.dcr_delete_on_exit, k8s)
        if (
            self.use_dcr
            and "client_credentials" in self.dcr_grant_types
            and self.dcr_token_endpoint_auth_method == "none"
        ):
            raise ConfigError(
                "DCR_GRANT_TYPES has client_credentials but DCR_TOKEN_ENDPOINT_AUTH_METHOD=none: a public client "
                "cannot use client_credentials. Use client_secret_basic, or drop client_credentials."
            )
        return self


def load_settings(env_file: Path | None = None, **overrides: object) -> Settings:
    """Read settings from the environment (and ``env_file``, the operator's --env-file, else a trusted ./.env);
    translate validation errors into one ConfigError line."""
    if env_file is not None:
        explicit_text(env_file)  # its problems are the run's error, before anything else is judged
        overrides["_env_file"] = env_file
    token = EXPLICIT.set(env_file)
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            loc = "_".join(str(p) for p in err["loc"]).upper() or "settings"
            problems.append(f"{loc}: {err['msg']}")
        raise ConfigError("Invalid settings: " + "; ".join(problems) + ". Fix these environment variables.") from None
    finally:
        EXPLICIT.reset(token)
