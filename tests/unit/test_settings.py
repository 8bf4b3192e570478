"""Settings: names, secrets from files, and one clear line for every configuration mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootstrap.errors import ConfigError
from bootstrap.settings import Settings, load_settings


def test_missing_server_names_the_variables_to_set() -> None:
    """No KEYCLOAK_URL/REALM and no DCR_ISSUER: the error names what to set."""
    with pytest.raises(ConfigError, match="KEYCLOAK_URL and KEYCLOAK_REALM not set"):
        load_settings().check()


def test_static_mode_without_credentials_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """USE_DCR=false without a secret: the error names KEYCLOAK_CLIENT_SECRET."""
    monkeypatch.setenv("USE_DCR", "false")
    monkeypatch.setenv("DCR_ISSUER", "https://as.example.test")
    monkeypatch.setenv("KEYCLOAK_CLIENT_ID", "svc")
    with pytest.raises(ConfigError, match="KEYCLOAK_CLIENT_SECRET not set"):
        load_settings().check()


def test_initial_access_token_is_read_from_its_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """DCR_INITIAL_ACCESS_TOKEN_FILE is read, trailing newline stripped."""
    secret = tmp_path / "iat"
    secret.write_text("token-from-file\n")
    monkeypatch.setenv("DCR_INITIAL_ACCESS_TOKEN_FILE", str(secret))
    token = load_settings().dcr_initial_access_token
    assert token is not None and token.get_secret_value() == "token-from-file"


def test_secret_and_its_file_together_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Setting a secret both directly and by file is ambiguous: refused."""
    (tmp_path / "s").write_text("a")
    monkeypatch.setenv("KEYCLOAK_CLIENT_SECRET", "b")
    monkeypatch.setenv("KEYCLOAK_CLIENT_SECRET_FILE", str(tmp_path / "s"))
    with pytest.raises(ConfigError, match="only one"):
        load_settings()


def test_unreadable_secret_file_names_the_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A secret file that does not exist: the error names the *_FILE setting."""
    monkeypatch.setenv("DCR_INITIAL_ACCESS_TOKEN_FILE", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="DCR_INITIAL_ACCESS_TOKEN_FILE"):
        load_settings()


def test_invalid_values_give_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-URL and a negative timeout: one line naming both variables, without their values."""
    monkeypatch.setenv("KEYCLOAK_URL", "keycloak:8080")
    monkeypatch.setenv("DCR_WAIT_TIMEOUT", "-1")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "KEYCLOAK_URL" in message and "DCR_WAIT_TIMEOUT" in message and "\n" not in message


def test_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    """DCR_GRANT_TYPES and DCR_REDIRECT_URIS take comma-separated values."""
    monkeypatch.setenv("DCR_GRANT_TYPES", "authorization_code, refresh_token")
    monkeypatch.setenv("DCR_REDIRECT_URIS", "http://localhost:3000/cb")
    settings = load_settings()
    assert settings.dcr_grant_types == ["authorization_code", "refresh_token"]
    assert settings.dcr_redirect_uris == ["http://localhost:3000/cb"]


def test_keycloak_issuer_is_derived_from_url_and_realm() -> None:
    """KEYCLOAK_URL + KEYCLOAK_REALM give the issuer; a trailing slash does not matter."""
    settings = Settings(keycloak_url="http://kc:8080/", keycloak_realm="mcp")
    assert settings.expected_issuer == "http://kc:8080/realms/mcp"


def test_client_name_includes_the_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """'{hostname}' in DCR_CLIENT_NAME becomes this host's name, so each instance has its own client."""
    monkeypatch.setattr("bootstrap._parse.socket.gethostname", lambda: "pod-7")
    assert Settings(dcr_client_name="mcp-{hostname}").client_name == "mcp-pod-7"


def test_public_client_cannot_use_client_credentials() -> None:
    """client_credentials with auth method 'none' is refused before any request."""
    with pytest.raises(ConfigError, match="public client"):
        Settings(dcr_issuer="https://as.example.test", dcr_token_endpoint_auth_method="none").check()


def test_kubernetes_names_must_be_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Secret name the API server would refuse is exit 2 before any request, naming the variable."""
    monkeypatch.setenv("DCR_K8S_SECRET", "Not_A_Name")
    with pytest.raises(ConfigError, match="DCR_K8S_SECRET"):
        load_settings()


def test_lease_without_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCR_ISSUER", "https://as.example.test")
    monkeypatch.setenv("DCR_K8S_LEASE", "mcp-dcr")
    with pytest.raises(ConfigError, match="without DCR_K8S_SECRET"):
        load_settings().check()


def test_delete_on_exit_with_a_shared_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """One Pod stopping must never delete the client every replica shares."""
    monkeypatch.setenv("DCR_ISSUER", "https://as.example.test")
    monkeypatch.setenv("DCR_K8S_SECRET", "mcp-dcr")
    monkeypatch.setenv("DCR_DELETE_ON_EXIT", "true")
    with pytest.raises(ConfigError, match="DCR_DELETE_ON_EXIT"):
        load_settings().check()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("2h", 7200.0), ("29d", 2505600.0), ("500ms", 0.5)],
)
def test_a_duration_takes_plain_seconds_or_a_unit(monkeypatch: pytest.MonkeyPatch, text: str, seconds: float) -> None:
    """DCR_WAIT_TIMEOUT (like every duration) reads 90, 90s, 15m, 2h, 29d or 500ms."""
    monkeypatch.setenv("DCR_WAIT_TIMEOUT", text)
    assert load_settings().dcr_wait_timeout == seconds


def test_a_duration_with_an_unknown_unit_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """'5 weeks' is refused naming the setting and the units it takes."""
    monkeypatch.setenv("DCR_WATCH_INTERVAL", "5 weeks")
    with pytest.raises(ConfigError, match=r"DCR_WATCH_INTERVAL: .*ms, s, m, h or d"):
        load_settings()
