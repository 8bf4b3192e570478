"""'doctor': each finding against loopback fakes (tests/fakeserver.py for any server, tests/fakerealm.py for a
Keycloak realm), the exit code when one blocks, and the JSON the command prints."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bootstrap import cli, doctor, keycloak, keycloak_doctor
from bootstrap._http import Transport
from bootstrap.errors import ExitCode
from bootstrap.keycloak import AdminAccess
from bootstrap.models import ServerMetadata
from bootstrap.settings import Settings
from bootstrap.urls import origin
from tests.fakerealm import PASSWORD, REALM, FakeRealm, jwt, policy
from tests.fakeserver import FakeServer, app_in_thread, serve_app, settings_for

NOW = 1_800_000_000.0


def levels(findings: list[doctor.Finding]) -> dict[str, str]:
    """check -> level (the last finding of each check)."""
    return {f.check: f.level for f in findings}


async def diagnose(settings: Settings, checker: doctor.ServerChecker | None = None) -> list[doctor.Finding]:
    async with Transport(
        attempt_timeout=2,
        public_base=settings.public_base,
        internal_base=settings.dcr_internal_url,
        secret_origins=settings.secret_origins(),
    ) as transport:
        return await doctor.diagnose(settings, transport, checker, now=lambda: NOW)


async def test_a_healthy_generic_server_has_no_blocking_finding(server: FakeServer, tmp_path: Path) -> None:
    """Discovery, issuer and both endpoints are ok; an opaque token is only a warning."""
    findings = await diagnose(settings_for(server, tmp_path))
    assert levels(findings) == {
        "reachability": "ok",
        "issuer": "ok",
        "registration_endpoint": "ok",
        "token_endpoint": "ok",
        "initial_access_token": "warning",
    }
    assert doctor.blocked(findings) is None


async def test_an_unreachable_server_blocks(tmp_path: Path) -> None:
    """Nothing listening: one blocking reachability finding, and no further checks."""
    async with serve_app(FakeServer().app()) as base:
        pass  # the port is free again
    settings = Settings(dcr_issuer=base, dcr_client_file=tmp_path / "c.json")
    findings = await diagnose(settings)
    assert [(f.check, f.level) for f in findings] == [("reachability", "blocking")]
    blocked = doctor.blocked(findings)
    assert blocked is not None and blocked.exit_code == ExitCode.DOCTOR_BLOCKED


async def test_a_missing_realm_blocks_with_a_fix_naming_it(fake_realm: FakeRealm, tmp_path: Path) -> None:
    """Keycloak answers 404 for the metadata of a realm that does not exist: the fix names KEYCLOAK_REALM."""
    settings = Settings(keycloak_url=fake_realm.base, keycloak_realm="nope", dcr_client_file=tmp_path / "c.json")
    findings = await diagnose(settings)
    assert [(f.check, f.level) for f in findings] == [("reachability", "blocking")]
    assert "KEYCLOAK_REALM" in findings[0].fix


async def test_an_issuer_mismatch_blocks(server: FakeServer, tmp_path: Path) -> None:
    """The document names another issuer: blocking, with DCR_INTERNAL_URL in the fix."""
    server.metadata_extra = {"issuer": "https://public.example.test"}
    findings = await diagnose(settings_for(server, tmp_path))
    assert levels(findings)["issuer"] == "blocking"
    assert "DCR_INTERNAL_URL" in findings[-1].fix


async def test_the_split_horizon_fetches_through_the_internal_url(server: FakeServer, tmp_path: Path) -> None:
    """DCR_INTERNAL_URL set: the document comes from there and still names the public issuer."""
    public = "https://public.example.test"
    server.metadata_extra = {
        "issuer": public,
        "registration_endpoint": f"{public}/connect/register",
        "token_endpoint": f"{public}/connect/token",
    }
    settings = settings_for(server, tmp_path, dcr_issuer=public, dcr_internal_url=server.base)
    findings = await diagnose(settings)
    assert "through DCR_INTERNAL_URL" in findings[0].what
    assert doctor.blocked(findings) is None


async def test_a_missing_registration_endpoint_blocks(server: FakeServer, tmp_path: Path) -> None:
    """No registration_endpoint in the document: no DCR on that server."""
    server.metadata_extra = {"registration_endpoint": None}
    assert levels(await diagnose(settings_for(server, tmp_path)))["registration_endpoint"] == "blocking"


async def test_a_token_endpoint_on_another_origin_blocks(server: FakeServer, tmp_path: Path) -> None:
    """A token_endpoint outside the trusted origins would never be sent the secret."""
    server.metadata_extra = {"token_endpoint": "https://elsewhere.example.test/token"}
    findings = await diagnose(settings_for(server, tmp_path))
    assert levels(findings)["token_endpoint"] == "blocking"
    assert "DCR_TRUSTED_ORIGINS" in findings[-2].fix


async def test_an_expired_initial_access_token_blocks(server: FakeServer, tmp_path: Path) -> None:
    """A JWT whose exp is past is blocking; the token itself is never in a finding."""
    token = jwt({"exp": int(NOW) - 1, "typ": "InitialAccessToken"})
    findings = await diagnose(settings_for(server, tmp_path, dcr_initial_access_token=token))
    assert levels(findings)["initial_access_token_expiry"] == "blocking"
    if any(token in f.line() for f in findings):
        raise AssertionError("the token appeared in a finding")


async def test_an_unexpired_initial_access_token_is_ok(server: FakeServer, tmp_path: Path) -> None:
    """exp in the future: ok, with its time."""
    token = jwt({"exp": int(NOW) + 60, "typ": "InitialAccessToken"})
    findings = await diagnose(settings_for(server, tmp_path, dcr_initial_access_token=token))
    assert levels(findings)["initial_access_token_expiry"] == "ok"


@pytest.mark.parametrize("token", ["opaque", "a.b.c", "a.bnVsbA.c"])
def test_a_token_that_is_not_a_jwt_has_no_claims(token: str) -> None:
    """Not three parts, not base64 JSON, or JSON that is not an object: no claims."""
    assert doctor.jwt_claims(token) is None


# --- Keycloak ---


def expected(
    fake: FakeRealm, *, authenticated: bool = False, scopes: tuple[str, ...] = (), token_id: str | None = None
) -> keycloak_doctor.Expected:
    return keycloak_doctor.Expected(
        fake.issuer_url, authenticated, scopes, (), "127.0.0.1", f"{fake.base}/admin", REALM, token_id
    )


@pytest.fixture
async def fake_realm() -> AsyncIterator[FakeRealm]:
    fake = FakeRealm()
    async with serve_app(fake.app()) as fake.base:
        yield fake


async def realm_findings(fake: FakeRealm, wanted: keycloak_doctor.Expected, access: bool = True) -> dict[str, str]:
    admin = AdminAccess(fake.base, REALM, "admin", PASSWORD)
    login = (lambda t: keycloak.admin_token(t, admin.base_url, admin.username, admin.password)) if access else None
    checker = keycloak_doctor.KeycloakChecker(wanted, login)
    async with Transport(attempt_timeout=2, secret_origins={origin(fake.base)}) as transport:
        return levels(await checker.realm_findings(transport, ServerMetadata(issuer=fake.issuer_url)))


async def test_the_default_trusted_hosts_policy_refuses_anonymous_registration(fake_realm: FakeRealm) -> None:
    """A new realm trusts no host: without an initial access token the registration is refused."""
    found = await realm_findings(fake_realm, expected(fake_realm))
    assert found["policy_trusted-hosts"] == "blocking"
    assert found["policy_scope"] == "warning"  # Full Scope Disabled changes the client


async def test_full_scope_disabled_names_the_default_roles_the_clients_tokens_lose(fake_realm: FakeRealm) -> None:
    """The 'default roles blocking' case: Full Scope Disabled strips default-roles-<realm> from its tokens."""
    wanted = expected(fake_realm)
    admin = AdminAccess(fake_realm.base, REALM, "admin", PASSWORD)
    checker = keycloak_doctor.KeycloakChecker(
        wanted, lambda t: keycloak.admin_token(t, admin.base_url, admin.username, admin.password)
    )
    async with Transport(attempt_timeout=2, secret_origins={origin(fake_realm.base)}) as transport:
        findings = await checker.realm_findings(transport, ServerMetadata(issuer=fake_realm.issuer_url))
    scope = next(f for f in findings if f.check == "policy_scope")
    assert scope.level == "warning" and "offline_access, uma_authorization" in scope.what


async def test_a_trusted_host_passes_the_trusted_hosts_policy(fake_realm: FakeRealm) -> None:
    """Our address (loopback towards a loopback Keycloak) among the trusted hosts: ok."""
    fake_realm.policies[0]["config"]["trusted-hosts"] = ["127.0.0.1"]
    assert (await realm_findings(fake_realm, expected(fake_realm)))["policy_trusted-hosts"] == "ok"


async def test_a_wildcard_trusted_host_is_only_a_warning(fake_realm: FakeRealm) -> None:
    """Keycloak matches *.domain by the sender's reverse DNS name: doctor cannot tell, so it warns."""
    fake_realm.policies[0]["config"]["trusted-hosts"] = ["*.example.test"]
    assert (await realm_findings(fake_realm, expected(fake_realm)))["policy_trusted-hosts"] == "warning"


async def test_a_redirect_uri_host_the_trusted_hosts_policy_does_not_trust_blocks(fake_realm: FakeRealm) -> None:
    """client-uris-must-match: a redirect URI on an untrusted host is refused even from a trusted sender."""
    fake_realm.policies[0]["config"]["trusted-hosts"] = ["127.0.0.1"]
    wanted = dataclasses.replace(expected(fake_realm), redirect_hosts=("app.example.test",))
    assert (await realm_findings(fake_realm, wanted))["policy_trusted-hosts"] == "blocking"


async def test_an_initial_access_token_is_judged_by_the_authenticated_policies(fake_realm: FakeRealm) -> None:
    """With a token the anonymous Trusted Hosts policy does not apply."""
    found = await realm_findings(fake_realm, expected(fake_realm, authenticated=True))
    assert "policy_trusted-hosts" not in found
    assert found["policy_allowed-client-templates"] == "ok"


async def test_max_clients_reached_blocks(fake_realm: FakeRealm) -> None:
    """An authenticated Max Clients policy whose limit the realm's client count reached."""
    fake_realm.policies.append(policy("max-clients", "authenticated", "Max", **{"max-clients": ["6"]}))
    assert (await realm_findings(fake_realm, expected(fake_realm, authenticated=True)))[
        "policy_max-clients"
    ] == "blocking"


async def test_max_clients_below_the_limit_is_ok(fake_realm: FakeRealm) -> None:
    """Room left under the limit: ok."""
    fake_realm.policies.append(policy("max-clients", "authenticated", "Max", **{"max-clients": ["7"]}))
    assert (await realm_findings(fake_realm, expected(fake_realm, authenticated=True)))["policy_max-clients"] == "ok"


async def test_a_scope_outside_the_allowed_client_scopes_blocks(fake_realm: FakeRealm) -> None:
    """DCR_SCOPE asks for a scope that is neither allowed nor a realm default."""
    found = await realm_findings(fake_realm, expected(fake_realm, authenticated=True, scopes=("email", "custom")))
    assert found["policy_allowed-client-templates"] == "blocking"


async def test_realm_default_scopes_pass_the_allowed_client_scopes_policy(fake_realm: FakeRealm) -> None:
    """allow-default-scopes: the realm's default and optional scopes are allowed."""
    found = await realm_findings(
        fake_realm, expected(fake_realm, authenticated=True, scopes=("email", "offline_access"))
    )
    assert found["policy_allowed-client-templates"] == "ok"


async def test_a_client_disabled_policy_blocks(fake_realm: FakeRealm) -> None:
    """New clients registered disabled cannot get a token: blocking."""
    fake_realm.policies.append(policy("client-disabled", "authenticated"))
    assert (await realm_findings(fake_realm, expected(fake_realm, authenticated=True)))[
        "policy_client-disabled"
    ] == "blocking"


async def test_an_unknown_policy_is_a_warning(fake_realm: FakeRealm) -> None:
    """A provider doctor does not know: a warning naming it."""
    fake_realm.policies.append(policy("custom-thing", "authenticated"))
    assert (await realm_findings(fake_realm, expected(fake_realm, authenticated=True)))[
        "policy_custom-thing"
    ] == "warning"


@pytest.mark.parametrize(
    ("listed", "level"),
    [
        ([{"id": "jti-1", "count": 1, "remainingCount": 1}], "ok"),
        ([{"id": "jti-1", "count": 1, "remainingCount": 0}], "blocking"),
        ([{"id": "jti-2", "count": 1, "remainingCount": 1}], "blocking"),
    ],
)
async def test_the_realm_s_record_of_the_initial_access_token(
    fake_realm: FakeRealm, listed: list[dict[str, Any]], level: str
) -> None:
    """The token (by its jti) with uses left is ok; used up, or not in the realm's list (revoked), blocks."""
    fake_realm.initial_tokens = listed
    found = await realm_findings(fake_realm, expected(fake_realm, authenticated=True, token_id="jti-1"))
    assert found["initial_access_token_uses"] == level


async def test_an_affected_keycloak_version_is_a_warning(fake_realm: FakeRealm) -> None:
    """Keycloak 26.7.0 is affected by CVE-2026-16102."""
    fake_realm.version = "26.7.0"
    assert (await realm_findings(fake_realm, expected(fake_realm, authenticated=True)))["keycloak_version"] == "warning"


@pytest.mark.parametrize(
    ("version", "affected"),
    [
        ("26.4.13", True),
        ("26.4.14", False),
        ("26.5.0", True),
        ("26.6.4", True),
        ("26.6.5", False),
        ("26.7.0", True),
        ("26.7.1", False),
        ("26.7.3", False),
        ("26.8.0", False),
        ("25.0.6", True),
    ],
)
def test_the_advisory_ranges(version: str, affected: bool) -> None:
    """CVE-2026-16102: below 26.4.14, 26.5.0-26.6.4 and 26.7.0 are affected; the fixed lines are not."""
    parsed = keycloak_doctor.version_tuple(version)
    assert parsed is not None
    assert bool(keycloak_doctor.advisories_for(parsed)) is affected


def test_a_version_suffix_is_ignored() -> None:
    """26.7.0-SNAPSHOT and a vendor suffix read as their numbers."""
    assert keycloak_doctor.version_tuple("26.7.0-SNAPSHOT") == (26, 7, 0)
    assert keycloak_doctor.version_tuple("nightly") is None


async def test_refused_admin_credentials_are_a_warning(fake_realm: FakeRealm) -> None:
    """Policies unreadable is not a reason to block: a warning saying what to set."""
    fake_realm.refuse_admin = True
    assert (await realm_findings(fake_realm, expected(fake_realm)))["realm_policies"] == "warning"


async def test_without_admin_credentials_the_policies_are_a_warning(fake_realm: FakeRealm) -> None:
    """No admin credentials: one warning, no request to the admin API."""
    assert await realm_findings(fake_realm, expected(fake_realm), access=False) == {"realm_policies": "warning"}


def claims(fake_issuer: str, **extra: Any) -> dict[str, Any]:
    return {"typ": "InitialAccessToken", "iss": fake_issuer, "aud": fake_issuer, "exp": int(NOW) + 60} | extra


@pytest.mark.parametrize(
    ("extra", "check", "level"),
    [
        ({}, "initial_access_token_realm", "ok"),
        ({"iss": "https://kc.example.test/realms/other"}, "initial_access_token_realm", "blocking"),
        ({"aud": "https://kc.example.test/realms/other"}, "initial_access_token_realm", "blocking"),
        ({"typ": "Bearer"}, "initial_access_token_type", "blocking"),
    ],
)
def test_the_initial_access_token_claims(extra: dict[str, Any], check: str, level: str) -> None:
    """typ InitialAccessToken, iss and aud of this realm: anything else is another token or another realm."""
    issuer = "https://kc.example.test/realms/demo"
    wanted = keycloak_doctor.Expected(issuer, True, (), (), "kc", "https://kc.example.test/admin", "demo")
    checker = keycloak_doctor.KeycloakChecker(wanted, None)
    assert levels(checker.token_findings(claims(issuer, **extra)))[check] == level


# --- the command ---


@pytest.fixture
def realm_in_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRealm]:
    fake = FakeRealm()
    with app_in_thread(fake.app()) as fake.base:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        yield fake


def test_doctor_exits_with_its_code_when_a_finding_blocks(
    realm_in_thread: FakeRealm, capsys: pytest.CaptureFixture[str]
) -> None:
    """Anonymous against a new realm: Trusted Hosts blocks, exit 11, the last line names it."""
    assert cli.run(["doctor"]) == ExitCode.DOCTOR_BLOCKED
    out, err = capsys.readouterr()
    assert "[blocking] policy_trusted-hosts" in out
    assert "Trusted Hosts" in json.loads(err.strip().splitlines()[-1])["event"]


def test_doctor_json_lists_the_findings_and_exits_0_when_nothing_blocks(
    realm_in_thread: FakeRealm, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a valid initial access token of this realm: a JSON list, no blocking finding, exit 0."""
    token = jwt(claims(realm_in_thread.issuer_url, exp=int(time.time()) + 600, jti="jti-1"))
    realm_in_thread.initial_tokens = [{"id": "jti-1", "count": 1, "remainingCount": 1}]
    monkeypatch.setenv("DCR_INITIAL_ACCESS_TOKEN", token)
    assert cli.run(["doctor", "--json"]) == ExitCode.OK
    listed = json.loads(capsys.readouterr().out)
    assert {f["level"] for f in listed} == {"ok"}
    assert {"reachability", "issuer", "initial_access_token_realm", "keycloak_version"} <= {f["check"] for f in listed}


def test_only_the_command_layer_imports_keycloak_doctor() -> None:
    """Like keycloak: the Keycloak checks reach doctor only as the capability commands passes in."""
    from tests.unit.test_imports import COMMAND_LAYER, import_graph

    graph = import_graph()
    assert {name for name, deps in graph.items() if "bootstrap.keycloak_doctor" in deps} <= COMMAND_LAYER
    assert "bootstrap.keycloak" not in graph["bootstrap.keycloak_doctor"]
    assert "bootstrap.keycloak_doctor" not in graph["bootstrap.doctor"]
