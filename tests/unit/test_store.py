"""The credentials file: atomic, 0600 from the first byte, never clobbered by a failed write."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from bootstrap import store
from bootstrap.errors import StorageError
from bootstrap.models import SavedRegistration


def registration(client_id: str = "cid") -> SavedRegistration:
    return SavedRegistration(client_id=client_id, client_secret=SecretStr("s3cret"), registered_at="host")


def test_saved_file_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    """umask 000 still yields a 0600 file."""
    old = os.umask(0)
    try:
        store.save(tmp_path / "c.json", registration())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "c.json").stat().st_mode) == 0o600


def test_temp_file_is_created_0600(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The temp file is private from its first byte (checked at the moment of rename)."""
    seen: list[int] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    store.save(tmp_path / "c.json", registration())
    assert seen == [0o600]


def test_failed_write_leaves_the_old_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure before the rename keeps the previous file byte-for-byte and removes the temp file."""
    path = tmp_path / "c.json"
    store.save(path, registration("old"))
    before = path.read_bytes()

    def broken(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(StorageError, match="No space left"):
        store.save(path, registration("new"))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]


def test_saved_file_round_trips_with_the_seed_keys(tmp_path: Path) -> None:
    """What save writes, load reads; the secret is plain in the file (it is the file's purpose)."""
    path = tmp_path / "c.json"
    store.save(path, registration())
    assert json.loads(path.read_text())["client_secret"] == "s3cret"
    loaded = store.load(path)
    assert loaded is not None and loaded.client_id == "cid"


def test_seed_written_file_loads(tmp_path: Path) -> None:
    """A file in the seed's exact format (five keys) is understood."""
    path = tmp_path / ".dcr_client.json"
    path.write_text(
        json.dumps(
            {
                "client_id": "generated-client-id",
                "client_secret": "generated-secret",
                "registration_access_token": "rat",
                "registration_client_uri": "http://kc/realms/r/clients-registrations/openid-connect/x",
                "registered_at": "hostname",
            }
        )
    )
    loaded = store.load(path)
    assert loaded is not None and loaded.registration_client_uri and loaded.registration_access_token


def test_corrupt_file_is_a_storage_error_that_says_what_to_do(tmp_path: Path) -> None:
    """A file that is not a registration: StorageError telling to move it away."""
    path = tmp_path / "c.json"
    path.write_text("{broken")
    with pytest.raises(StorageError, match="move it away"):
        store.load(path)


def test_env_file_has_the_variables_an_unmodified_server_reads(tmp_path: Path) -> None:
    """The optional env file holds KEYCLOAK_CLIENT_ID and KEYCLOAK_CLIENT_SECRET, mode 0600."""
    env_file = tmp_path / "creds.env"
    store.save(tmp_path / "c.json", registration(), env_file)
    assert env_file.read_text() == "KEYCLOAK_CLIENT_ID=cid\nKEYCLOAK_CLIENT_SECRET=s3cret\n"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600


async def test_lock_creates_a_missing_directory(tmp_path: Path) -> None:
    """The lock (and so the run) creates the credentials directory if it is missing."""
    async with store.locked(tmp_path / "new" / "c.json"):
        assert (tmp_path / "new").is_dir()
