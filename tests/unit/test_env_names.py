"""DCR_ENV_NAMES: the env file and 'env' under the names another server reads, never a name that injects."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from bootstrap import cli, flow
from bootstrap.errors import ConfigError, ExitCode
from bootstrap.settings import load_settings
from tests.fakeserver import FakeServer, serving_in_thread, settings_for

MAPPING = (
    "client_id=OAUTH_CLIENT_ID,client_secret=OAUTH_CLIENT_SECRET,issuer=OAUTH_ISSUER,"
    "introspection_endpoint=OAUTH_INTROSPECTION_URL"
)


@pytest.mark.parametrize(
    "mapping",
    [
        "client_secret=DCR_ON_CHANGE",  # would make sourcing the file configure this tool
        "client_secret=dcr_trusted_origins",  # in any letter case
        "client_id=LD_PRELOAD",  # would hijack the program that sources the file
        "client_id=NODE_OPTIONS",
        "client_id=OAUTH ID",  # not a name
        "client_id=X\nY",
        "client_id=A,client_secret=A",  # one name for two fields
        "password=OAUTH_PASSWORD",  # no such field
        "OAUTH_CLIENT_ID",
    ],
)
def test_a_mapping_that_could_inject_or_is_malformed_is_a_configuration_error(
    mapping: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only known fields, each once, to distinct safe names: anything else is exit 2 before any request."""
    monkeypatch.setenv("DCR_ENV_NAMES", mapping)
    with pytest.raises(ConfigError, match="DCR_ENV_NAMES"):
        load_settings()


async def test_the_env_file_carries_the_mapped_names_and_the_introspection_endpoint(
    server: FakeServer, tmp_path: Path
) -> None:
    """A server reading OAUTH_* finds its id, secret, issuer and RFC 7662 endpoint; no KEYCLOAK_* line."""
    server.metadata_extra = {"introspection_endpoint": f"{server.base}/connect/introspect"}
    env_file = tmp_path / "app.env"
    await flow.run(settings_for(server, tmp_path, dcr_env_file=env_file, dcr_env_names=MAPPING))
    saved = json.loads((tmp_path / "client.json").read_text())
    assert env_file.read_text().splitlines() == [
        f"OAUTH_CLIENT_ID={saved['client_id']}",
        f"OAUTH_CLIENT_SECRET={saved['client_secret']}",
        f"OAUTH_ISSUER={server.base}",
        f"OAUTH_INTROSPECTION_URL={server.base}/connect/introspect",
    ]


async def test_an_introspection_endpoint_outside_the_trusted_origins_is_not_passed_on(
    server: FakeServer, tmp_path: Path
) -> None:
    """A server naming another origin for introspection would have the app send its secret there: dropped."""
    server.metadata_extra = {"introspection_endpoint": "https://elsewhere.example.test/introspect"}
    env_file = tmp_path / "app.env"
    await flow.run(settings_for(server, tmp_path, dcr_env_file=env_file, dcr_env_names=MAPPING))
    assert "OAUTH_INTROSPECTION_URL=\n" in env_file.read_text()
    assert json.loads((tmp_path / "client.json").read_text()).get("introspection_endpoint") is None


def test_env_prints_the_mapped_names_quoted_for_eval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """'dcr-bootstrap env' with DCR_ENV_NAMES exports the mapped names, each value shell-quoted."""
    with serving_in_thread(FakeServer()) as fake:
        fake.metadata_extra = {"introspection_endpoint": f"{fake.base}/connect/introspect"}
        settings = settings_for(fake, tmp_path)
        for name, value in {
            "DCR_ISSUER": fake.base,
            "DCR_INITIAL_ACCESS_TOKEN": settings.dcr_initial_access_token.get_secret_value(),  # type: ignore[union-attr]
            "DCR_CLIENT_FILE": str(tmp_path / "client.json"),
            "DCR_ENV_NAMES": MAPPING,
        }.items():
            monkeypatch.setenv(name, value)
        assert cli.run(["run"]) == ExitCode.OK
        capsys.readouterr()
        assert cli.run(["env"]) == ExitCode.OK
    exported = dict(shlex.split(line)[1].split("=", 1) for line in capsys.readouterr().out.splitlines())
    saved = json.loads((tmp_path / "client.json").read_text())
    assert exported == {
        "OAUTH_CLIENT_ID": saved["client_id"],
        "OAUTH_CLIENT_SECRET": saved["client_secret"],
        "OAUTH_ISSUER": fake.base,
        "OAUTH_INTROSPECTION_URL": f"{fake.base}/connect/introspect",
    }
