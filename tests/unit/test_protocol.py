"""Pure protocol pieces: discovery URLs, errors and hints, update bodies, retry delays, redaction."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr
from tenacity import RetryCallState

from bootstrap import keycloak, log
from bootstrap._http import Response, Transport, retry_after, retryable
from bootstrap.discovery import discovery_urls
from bootstrap.errors import ClientGone, InsufficientScope, InvalidClientMetadata, NotAllowed, Unavailable
from bootstrap.models import ClientInformation, ClientMetadata
from bootstrap.registration import management_error, rejection, update_body
from bootstrap.wait import Deadline, RetryPolicy, no_backoff


def test_discovery_urls_follow_rfc8414_then_openid() -> None:
    """Path issuers: RFC 8414 path insertion first, then both OpenID forms."""
    assert discovery_urls("https://as.test/realms/r") == [
        "https://as.test/.well-known/oauth-authorization-server/realms/r",
        "https://as.test/.well-known/openid-configuration/realms/r",
        "https://as.test/realms/r/.well-known/openid-configuration",
    ]


def test_discovery_urls_for_a_host_only_issuer() -> None:
    """Host-only issuers have exactly the two root well-known URLs."""
    assert discovery_urls("https://as.test") == [
        "https://as.test/.well-known/oauth-authorization-server",
        "https://as.test/.well-known/openid-configuration",
    ]


def test_rfc7591_error_codes_map_to_their_exceptions() -> None:
    """invalid_client_metadata becomes InvalidClientMetadata with the generic hint."""
    exc = rejection(Response(400, "u", body=b'{"error":"invalid_client_metadata"}'), "Registration was rejected")
    assert isinstance(exc, InvalidClientMetadata)
    assert "DCR_GRANT_TYPES" in str(exc)


def test_keycloak_trusted_hosts_rejection_gets_the_keycloak_hint() -> None:
    """Keycloak's Trusted Hosts message gets the two ways out."""
    body = b'{"error":"insufficient_scope","error_description":"Policy \'Trusted Hosts\' rejected request"}'
    exc = rejection(Response(403, "u", body=body), "Registration was rejected")
    assert isinstance(exc, InsufficientScope)
    hint = keycloak.hint_for(exc, "http://kc")
    assert hint is not None and "DCR_INITIAL_ACCESS_TOKEN" in hint and "Trusted Hosts" in hint


def test_management_401_means_the_client_is_gone() -> None:
    """RFC 7592: 401 on read means the registration no longer exists (or its token was revoked)."""
    assert isinstance(management_error(Response(401, "u", body=b"{}"), "read"), ClientGone)


def test_management_403_means_not_allowed_not_gone() -> None:
    """RFC 7592: 403 is a policy refusal; it must never look like a vanished client."""
    exc = management_error(Response(403, "u", body=b"{}"), "read")
    assert isinstance(exc, NotAllowed) and not isinstance(exc, ClientGone)


def test_update_body_drops_server_managed_fields_and_applies_wanted_metadata() -> None:
    """RFC 7592 §2.2: no registration_access_token/uri/issued/expires; our values on top; client_id kept."""
    current = ClientInformation.model_validate(
        {
            "client_id": "cid",
            "client_secret": "sec",
            "registration_access_token": "rat",
            "registration_client_uri": "https://as/x",
            "client_id_issued_at": 1,
            "client_secret_expires_at": 0,
            "client_name": "old",
            "jwks_uri": "https://keep.me",
        }
    )
    wanted = ClientMetadata(client_name="new", grant_types=["client_credentials"], token_endpoint_auth_method="x")
    body: dict[str, Any] = update_body(current, wanted)
    assert not {"registration_access_token", "registration_client_uri", "client_id_issued_at"} & body.keys()
    assert (body["client_id"], body["client_secret"], body["client_name"]) == ("cid", "sec", "new")
    assert body["jwks_uri"] == "https://keep.me"


def test_fingerprint_changes_with_metadata_only() -> None:
    """Equal metadata, equal fingerprint; a changed name, a different one."""
    a = ClientMetadata(client_name="a", grant_types=["client_credentials"], token_endpoint_auth_method="m")
    assert a.fingerprint == a.model_copy().fingerprint
    assert a.fingerprint != a.model_copy(update={"client_name": "b"}).fingerprint


def test_retry_after_seconds_and_http_date() -> None:
    """Retry-After as delta-seconds or an HTTP-date in the past."""
    assert retry_after("7") == 7.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after("soon") is None


def _state_with(exc: BaseException) -> RetryCallState:
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.set_exception((type(exc), exc, None))
    return state


def test_retry_after_replaces_the_backoff() -> None:
    """A server's Retry-After is the next delay (when backoff is on)."""
    policy = RetryPolicy(Deadline(60), initial=0.5, maximum=10)
    with no_backoff(False):
        assert policy.delay(_state_with(Unavailable("429", retry_after=3.0))) == 3.0


def test_backoff_is_jittered_and_bounded() -> None:
    """Without Retry-After the delay is random, within [0, maximum]."""
    policy = RetryPolicy(Deadline(60), initial=0.5, maximum=2)
    with no_backoff(False):
        delays = {policy.delay(_state_with(Unavailable("down"))) for _ in range(20)}
    assert all(0 <= d <= 2 for d in delays) and len(delays) > 1


def test_refused_connections_are_probed_often() -> None:
    """Nothing listening costs the server nothing: the next probe comes within a beat, not a backoff."""
    policy = RetryPolicy(Deadline(60), initial=0.5, maximum=10)
    with no_backoff(False):
        delays = [policy.delay(_state_with(Unavailable("refused", connect=True))) for _ in range(20)]
    assert max(delays) <= 0.25


def test_a_server_still_starting_is_polled_under_four_times_a_second() -> None:
    """404/502/503/504 without Retry-After: a short poll, never the growing backoff, under 4/s on average."""
    policy = RetryPolicy(Deadline(60), initial=5, maximum=60)
    with no_backoff(False):
        delays = [policy.delay(_state_with(Unavailable("starting", status=s))) for s in (404, 502, 503, 504) * 50]
    assert max(delays) <= 0.35
    assert sum(delays) / len(delays) >= 0.25


def test_overload_without_retry_after_backs_off() -> None:
    """429 without Retry-After is overload: the exponential backoff applies."""
    policy = RetryPolicy(Deadline(60), initial=5, maximum=60)
    with no_backoff(False):
        delays = [policy.delay(_state_with(Unavailable("busy", status=429))) for _ in range(20)]
    assert max(delays) > 0.5


@pytest.mark.parametrize(
    ("status", "sent", "idempotent", "expected"),
    [
        (None, False, False, True),  # connection refused: nothing was sent
        (None, True, True, True),  # timeout on a GET
        (None, True, False, False),  # timeout on a POST: it may have been processed
        (500, True, True, True),
        (500, True, False, False),
        (503, True, False, True),  # "not processed"
        (429, True, False, True),
        (400, True, True, False),
        (404, True, True, False),  # a protocol answer; discovery alone reads 404 as "not yet"
    ],
)
def test_one_predicate_decides_what_is_retryable(
    status: int | None, sent: bool, idempotent: bool, expected: bool
) -> None:
    assert retryable(status, sent=sent, idempotent=idempotent) is expected


def test_split_horizon_rewrites_only_public_urls() -> None:
    """URLs under the public base go to the internal one; others are untouched."""
    transport = Transport(attempt_timeout=1, public_base="http://localhost:8080", internal_base="http://keycloak:8080")
    assert transport.wire_url("http://localhost:8080/realms/r") == "http://keycloak:8080/realms/r"
    assert transport.wire_url("http://localhost:80800/x") == "http://localhost:80800/x"
    assert transport.wire_url("https://other/x") == "https://other/x"


def test_redaction_masks_sensitive_keys_and_known_secret_values() -> None:
    """Sensitive keys are masked, and a registered secret is masked inside any string."""
    log.register_secrets("very-secret-value")
    event = log.redact(None, "info", {"client_secret": "x", "event": "got very-secret-value back", "n": 1})
    assert event == {"client_secret": log.MASK, "event": f"got {log.MASK} back", "n": 1}


def test_models_never_show_secrets_in_repr() -> None:
    """SecretStr keeps secrets out of reprs and exception messages."""
    info = ClientInformation(client_id="c", client_secret=SecretStr("hidden-value"))
    assert "hidden-value" not in repr(info)
