"""The flow against a scripted server: what a real Keycloak cannot be made to do."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from aioresponses import aioresponses

from bootstrap import flow
from bootstrap.errors import (
    DiscoveryError,
    InvalidToken,
    MalformedResponse,
    ServerNotReady,
    ServerResponseError,
)
from tests.unit.conftest import ISSUER, REG, RFC8414, TOKEN, client_info, make_settings, metadata


async def test_429_with_retry_after_is_retried(http: aioresponses, tmp_path: Path) -> None:
    """A 429 with Retry-After is retried, then the run registers."""
    http.get(RFC8414, status=429, headers={"Retry-After": "1"})
    http.get(RFC8414, payload=metadata())
    http.post(REG, status=201, payload=client_info())
    http.post(TOKEN, payload={"access_token": "at", "token_type": "Bearer"}, repeat=True)
    outcome = await flow.run(make_settings(tmp_path))
    assert outcome.action == "registered"


async def test_registration_429_is_retried_without_a_duplicate(http: aioresponses, tmp_path: Path) -> None:
    """A 429 on registration means 'not processed': it is retried and one client results."""
    http.get(RFC8414, payload=metadata())
    http.post(REG, status=429)
    http.post(REG, status=201, payload=client_info())
    http.post(TOKEN, payload={"access_token": "at", "token_type": "Bearer"}, repeat=True)
    assert (await flow.run(make_settings(tmp_path))).registration.client_id == "cid-1"


async def test_registration_500_is_not_retried(http: aioresponses, tmp_path: Path) -> None:
    """A 500 on registration may have created the client: no blind retry, a clear error."""
    http.get(RFC8414, payload=metadata())
    http.post(REG, status=500, body="oops")
    with pytest.raises(ServerResponseError, match="may have created"):
        await flow.run(make_settings(tmp_path))


async def test_404_everywhere_waits_until_the_deadline(http: aioresponses, tmp_path: Path) -> None:
    """Metadata 404 (realm not created yet) is retried until the deadline, then ServerNotReady."""
    http.get(RFC8414, status=404, repeat=True)
    http.get("https://as.example.test/.well-known/openid-configuration/realms/demo", status=404, repeat=True)
    http.get(f"{ISSUER}/.well-known/openid-configuration", status=404, repeat=True)
    with pytest.raises(ServerNotReady, match="no metadata yet"):
        await flow.run(make_settings(tmp_path, dcr_wait_timeout=0.2))


async def test_openid_discovery_is_the_fallback(http: aioresponses, tmp_path: Path) -> None:
    """A server without RFC 8414 metadata is discovered through OpenID discovery."""
    http.get(RFC8414, status=404)
    http.get("https://as.example.test/.well-known/openid-configuration/realms/demo", status=404)
    http.get(f"{ISSUER}/.well-known/openid-configuration", payload=metadata())
    http.post(REG, status=201, payload=client_info())
    http.post(TOKEN, payload={"access_token": "at", "token_type": "Bearer"}, repeat=True)
    assert (await flow.run(make_settings(tmp_path))).action == "registered"


async def test_malformed_metadata_json_is_a_server_response_error(http: aioresponses, tmp_path: Path) -> None:
    """Metadata that is not JSON: MalformedResponse naming the URL, nothing written."""
    http.get(RFC8414, body="<html>proxy error</html>", content_type="text/html")
    with pytest.raises(MalformedResponse, match="not JSON"):
        await flow.run(make_settings(tmp_path))
    assert not (tmp_path / ".dcr_client.json").exists()


async def test_metadata_without_issuer_is_rejected(http: aioresponses, tmp_path: Path) -> None:
    """Metadata missing its issuer field is malformed."""
    http.get(RFC8414, payload={"token_endpoint": TOKEN})
    with pytest.raises(MalformedResponse, match="issuer"):
        await flow.run(make_settings(tmp_path))


async def test_issuer_mismatch_is_refused(http: aioresponses, tmp_path: Path) -> None:
    """RFC 8414 §3.3: metadata naming another issuer is refused before any registration."""
    http.get(RFC8414, payload=metadata(issuer="https://evil.example.test/realms/demo"))
    with pytest.raises(DiscoveryError, match="Issuer mismatch"):
        await flow.run(make_settings(tmp_path))


async def test_missing_registration_endpoint_is_a_clear_error(http: aioresponses, tmp_path: Path) -> None:
    """No registration_endpoint: the error says DCR is not offered and how to go static."""
    http.get(RFC8414, payload=metadata(registration_endpoint=None))
    with pytest.raises(DiscoveryError, match="USE_DCR=false"):
        await flow.run(make_settings(tmp_path))


async def test_registration_response_without_client_id_is_not_saved(http: aioresponses, tmp_path: Path) -> None:
    """A 201 without client_id is unusable: nothing is saved."""
    http.get(RFC8414, payload=metadata())
    http.post(REG, status=201, payload={"client_secret": "x"})
    http.post(TOKEN, payload={"access_token": "at", "token_type": "Bearer"}, repeat=True)
    with pytest.raises(MalformedResponse, match="client_id"):
        await flow.run(make_settings(tmp_path))
    assert not (tmp_path / ".dcr_client.json").exists()


async def test_registration_without_needed_secret_is_not_saved(http: aioresponses, tmp_path: Path) -> None:
    """client_secret_basic but no client_secret in the answer: refused before saving."""
    http.get(RFC8414, payload=metadata())
    http.post(REG, status=201, payload=client_info(client_secret=None))
    http.post(TOKEN, payload={"access_token": "at", "token_type": "Bearer"}, repeat=True)
    with pytest.raises(MalformedResponse, match="no client_secret"):
        await flow.run(make_settings(tmp_path))


async def test_registration_malformed_json_is_reported(http: aioresponses, tmp_path: Path) -> None:
    """A 201 whose body is not JSON: MalformedResponse."""
    http.get(RFC8414, payload=metadata())
    http.post(REG, status=201, body="{not json")
    http.post(TOKEN, payload={"access_token": "at", "token_type": "Bearer"}, repeat=True)
    with pytest.raises(MalformedResponse):
        await flow.run(make_settings(tmp_path))


async def test_invalid_token_maps_to_its_exception(http: aioresponses, tmp_path: Path) -> None:
    """RFC 6750 invalid_token on registration becomes InvalidToken with a hint."""
    http.get(RFC8414, payload=metadata())
    http.post(REG, status=401, payload={"error": "invalid_token", "error_description": "Failed decode token"})
    with pytest.raises(InvalidToken, match="DCR_INITIAL_ACCESS_TOKEN") as info:
        await flow.run(make_settings(tmp_path))
    assert "iat-secret-value" not in str(info.value)


async def test_registered_file_has_seed_keys_and_mode_0600(http: aioresponses, tmp_path: Path) -> None:
    """The saved file has the seed's keys and is 0600."""
    http.get(RFC8414, payload=metadata())
    http.post(REG, status=201, payload=client_info())
    http.post(TOKEN, payload={"access_token": "at", "token_type": "Bearer"}, repeat=True)
    await flow.run(make_settings(tmp_path))
    path = tmp_path / ".dcr_client.json"
    data = json.loads(path.read_text())
    assert {"client_id", "client_secret", "registration_access_token", "registration_client_uri", "registered_at"} <= (
        data.keys()
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_reload_saves_a_rotated_registration_token(http: aioresponses, tmp_path: Path) -> None:
    """A server that rotates the registration access token on read gets the new one saved."""
    http.get(RFC8414, payload=metadata(), repeat=True)
    http.post(REG, status=201, payload=client_info())
    http.post(TOKEN, payload={"access_token": "at", "token_type": "Bearer"}, repeat=True)
    settings = make_settings(tmp_path)
    await flow.run(settings)
    http.get(f"{REG}/cid-1", payload=client_info(registration_access_token="rotated-token"))
    outcome = await flow.run(settings)
    assert outcome.action == "reloaded"
    assert json.loads((tmp_path / ".dcr_client.json").read_text())["registration_access_token"] == "rotated-token"


async def test_server_without_management_is_checked_by_token_request(http: aioresponses, tmp_path: Path) -> None:
    """No registration_client_uri: the saved credentials are proven by a client_credentials request."""
    http.get(RFC8414, payload=metadata(), repeat=True)
    http.post(REG, status=201, payload=client_info(registration_client_uri=None, registration_access_token=None))
    http.post(TOKEN, payload={"access_token": "at", "token_type": "Bearer"})
    settings = make_settings(tmp_path)
    await flow.run(settings)
    http.post(TOKEN, payload={"access_token": "at", "token_type": "Bearer"})
    assert (await flow.run(settings)).action == "reloaded"


async def test_server_without_management_reregisters_on_rejected_credentials(
    http: aioresponses, tmp_path: Path
) -> None:
    """No management and the token request fails: register again."""
    http.get(RFC8414, payload=metadata(), repeat=True)
    http.post(REG, status=201, payload=client_info(registration_client_uri=None, registration_access_token=None))
    http.post(TOKEN, payload={"access_token": "at", "token_type": "Bearer"})
    settings = make_settings(tmp_path)
    await flow.run(settings)
    http.post(TOKEN, status=401, payload={"error": "invalid_client"})
    http.post(REG, status=201, payload=client_info(client_id="cid-2"))
    http.post(TOKEN, payload={"access_token": "at", "token_type": "Bearer"})
    http.post(TOKEN, payload={"access_token": "at", "token_type": "Bearer"}, repeat=True)
    outcome = await flow.run(settings)
    assert (outcome.action, outcome.registration.client_id) == ("registered", "cid-2")


async def test_tls_failure_is_not_retried_and_names_the_ca_setting(http: aioresponses, tmp_path: Path) -> None:
    """A certificate error will not heal: ConfigError at once, naming DCR_CA_BUNDLE."""
    import ssl

    from aiohttp import ClientSSLError

    from bootstrap.errors import ConfigError

    http.get(RFC8414, exception=ClientSSLError(None, ssl.SSLError("certificate verify failed")))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="DCR_CA_BUNDLE"):
        await flow.run(make_settings(tmp_path, dcr_wait_timeout=60))


async def test_connection_refused_is_retried_until_the_deadline(http: aioresponses, tmp_path: Path) -> None:
    """Connection errors are retried; after the deadline the error says what to check."""
    from aiohttp import ClientConnectionError

    http.get(RFC8414, exception=ClientConnectionError("refused"), repeat=True)
    with pytest.raises(ServerNotReady, match="DCR_WAIT_TIMEOUT"):
        await flow.run(make_settings(tmp_path, dcr_wait_timeout=0.2))
