"""What Keycloak's admin API hands out (the admin token, a minted initial access token, a regenerated
secret) is masked the moment it is parsed and checked before anything writes or prints it."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from bootstrap import _secrets, cli, envfile, keycloak
from bootstrap._http import Transport
from bootstrap.errors import ExitCode, StorageError, UnsafeValue
from bootstrap.urls import origin
from bootstrap.wait import Deadline, RetryPolicy
from tests.fakeadmin import FakeAdmin, admin_in_thread
from tests.fakeserver import serve_app

STATIC_ENV = "USE_DCR=false\nKEYCLOAK_CLIENT_ID=old\nKEYCLOAK_CLIENT_SECRET=old-secret\nPORT=8000\n"


def _cli(fake: FakeAdmin, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    with admin_in_thread(fake):
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        return cli.run(list(args))


def _dotenv(tmp_path: Path) -> Path:
    dotenv = tmp_path / "app" / ".env"
    dotenv.parent.mkdir()
    dotenv.write_text(STATIC_ENV)
    return dotenv


@pytest.mark.parametrize(
    "token",
    [
        "eyJ.a\nDCR_ON_CHANGE=sh -c 'touch /tmp/pwned'",
        "eyJ.a\rDCR_TRUSTED_ORIGINS=https://evil.test",
        "eyJ.a$(touch /tmp/pwned)",
        "eyJ.a'; touch /tmp/pwned; '",
    ],
    ids=["line-feed", "carriage-return", "command-substitution", "quotes"],
)
def test_setup_refuses_a_minted_token_that_would_inject_into_the_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], token: str
) -> None:
    """A lying server's token with line breaks or shell code: exit 7, the .env untouched, no backup written."""
    dotenv = _dotenv(tmp_path)
    code = _cli(FakeAdmin(minted=token), monkeypatch, "setup", "--env-file", str(dotenv))
    assert code == ExitCode.SERVER_RESPONSE, capsys.readouterr().err
    assert dotenv.read_text() == STATIC_ENV
    assert sorted(p.name for p in dotenv.parent.iterdir()) == [".env"]


def test_setup_with_an_honest_token_switches_the_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The check lets a real (JWT-shaped) token through: the .env is switched to DCR."""
    dotenv = _dotenv(tmp_path)
    fake = FakeAdmin()
    assert _cli(fake, monkeypatch, "setup", "--env-file", str(dotenv)) == ExitCode.OK, capsys.readouterr().err
    assert f"DCR_INITIAL_ACCESS_TOKEN={fake.minted}\n" in dotenv.read_text()


def test_initial_token_output_refuses_a_token_with_a_line_break(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """'initial-token --output': a token with a line break is exit 7 and no file is written."""
    output = tmp_path / "iat"
    code = _cli(FakeAdmin(minted="eyJ.a\nDCR_ON_CHANGE=x"), monkeypatch, "initial-token", "--output", str(output))
    assert code == ExitCode.SERVER_RESPONSE, capsys.readouterr().err
    assert not output.exists()


def test_initial_token_prints_no_control_characters(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """'initial-token' to stdout: a token carrying terminal escapes is exit 7 and nothing is printed."""
    code = _cli(FakeAdmin(minted="eyJ.a\x1b]0;owned\x07"), monkeypatch, "initial-token")
    assert code == ExitCode.SERVER_RESPONSE
    assert capsys.readouterr().out == ""


def test_an_admin_error_echoing_the_admin_token_never_shows_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An admin-API error whose body echoes the master-realm admin token: the token is masked in the last line."""
    token = f"admin-token-{secrets.token_hex(8)}"
    fake = FakeAdmin(admin_token=token, mint_error=(403, {"errorMessage": f"no access for Bearer {token}"}))
    assert _cli(fake, monkeypatch, "initial-token") == ExitCode.ADMIN_REJECTED
    err = capsys.readouterr().err
    if token in err:  # not an assert: pytest would print the secret while explaining it
        raise AssertionError("the admin access token leaked into the log")
    assert "no access for Bearer **********" in err


def test_an_admin_token_with_a_line_break_is_never_sent(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An admin token with CR/LF (a header injection) is exit 7 before it is sent anywhere."""
    fake = FakeAdmin(admin_token="admin-token\r\nX-Injected: 1")
    assert _cli(fake, monkeypatch, "initial-token") == ExitCode.SERVER_RESPONSE, capsys.readouterr().err
    assert fake.authorizations == []


def test_an_admin_login_answer_without_a_token_is_a_malformed_answer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No access_token in the admin login's answer: exit 7 naming it, not an internal error."""
    assert _cli(FakeAdmin(admin_token=None), monkeypatch, "initial-token") == ExitCode.SERVER_RESPONSE
    assert "holds no admin access token" in capsys.readouterr().err


def _transport(fake: FakeAdmin) -> Transport:
    return Transport(attempt_timeout=5, secret_origins={origin(fake.base)})


async def test_admin_api_values_are_masked_as_they_are_parsed() -> None:
    """The admin token, a minted token and a regenerated secret are masked when keycloak returns them."""
    admin_token, minted, secret = (f"{name}-{secrets.token_hex(8)}" for name in ("admin", "minted", "secret"))
    fake = FakeAdmin(admin_token=admin_token, minted=minted, secret=secret)
    async with serve_app(fake.app()) as fake.base, _transport(fake) as transport:
        policy = RetryPolicy(Deadline(5), 0.01, 0.05)
        got = await keycloak.initial_access_token(transport, policy, fake.access, count=1, expiration=60)
        regenerated = await keycloak.KeycloakAdmin(transport, policy, fake.access).regenerate_secret("cid-1")
    assert (got, regenerated) == (minted, secret)
    assert [_secrets.mask(value) for value in (admin_token, minted, secret)] == [_secrets.MASK] * 3


async def test_a_regenerated_secret_with_a_control_character_is_refused() -> None:
    """A regenerated client secret outside VSCHAR is refused where it enters (exit 7)."""
    fake = FakeAdmin(secret="new-secret\nKEYCLOAK_CLIENT_ID=evil")
    async with serve_app(fake.app()) as fake.base, _transport(fake) as transport:
        admin = keycloak.KeycloakAdmin(transport, RetryPolicy(Deadline(5), 0.01, 0.05), fake.access)
        with pytest.raises(UnsafeValue):
            await admin.regenerate_secret("cid-1")


def test_a_dotenv_edit_never_writes_a_value_that_needs_quoting(tmp_path: Path) -> None:
    """The .env editor itself refuses a value with a line break or shell syntax (whoever passes it)."""
    env = envfile.load(_dotenv(tmp_path))
    with pytest.raises(StorageError, match="DCR_INITIAL_ACCESS_TOKEN"):
        env.edited({"USE_DCR": "true", "DCR_INITIAL_ACCESS_TOKEN": "a\nDCR_ON_CHANGE=x"})
