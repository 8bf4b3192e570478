"""Shared mode never loses, leaks or orphans, against the fake API server."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bootstrap import flow, k8s, lifecycle, log
from bootstrap.commands import ROTATE_NOW
from bootstrap.errors import StorageError
from bootstrap.k8s import DATA_KEY, ROLLOUT_ANNOTATION, credentials_digest
from bootstrap.models import SavedRegistration
from tests.fakeserver import FakeServer, settings_for
from tests.unit import test_k8s
from tests.unit.test_k8s import NS, SECRET, FakeKube, Handler, answer, consistent, shared_settings

kube = test_k8s.kube  # the fake API server, and no Pod environment
outside_a_pod = test_k8s.outside_a_pod


def _secret_obj(kube: FakeKube) -> dict[str, Any]:
    return kube.objects[("secret", NS, SECRET)]


def _valid_token(server: FakeServer, kube: FakeKube) -> bool:
    shared = kube.shared()
    return shared is not None and server.tokens.get(shared["registration_access_token"]) == shared["client_id"]


# --- newer local state is published, never replaced by an older Secret ---


async def test_a_rotated_token_the_secret_missed_is_published_by_the_next_run(
    server: FakeServer, kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run rotates the registration token (RFC 7592 read) and its Secret write is refused (403): the next run
    of the same Pod writes the newer token to the Secret instead of loading the stale, now invalid one."""
    settings = shared_settings(server, kube, tmp_path, monkeypatch)
    await k8s.run_shared(settings)
    kube.trick("PUT secret", answer(403, b'{"kind": "Status", "message": "forbidden"}'))
    with pytest.raises(StorageError, match="403"):
        await k8s.run_shared(settings)
    assert not _valid_token(server, kube)  # the Secret's token was rotated away on the server
    await k8s.run_shared(settings)
    assert _valid_token(server, kube)
    consistent(server, kube)


async def test_a_renewed_secret_the_secret_missed_is_published_and_no_client_is_added(
    server: FakeServer, kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal whose Secret write failed: the next run publishes the renewed secret; the client stays the one."""
    server.secret_lifetime, server.rotate_on_update = 3600, True
    settings = shared_settings(server, kube, tmp_path, monkeypatch)
    first = await k8s.run_shared(settings)
    kube.trick("PUT secret", answer(403, b'{"kind": "Status", "message": "forbidden"}'))
    with pytest.raises(StorageError):
        await k8s.run_shared(shared_settings(server, kube, tmp_path, monkeypatch, dcr_rotate_after=ROTATE_NOW))
    await k8s.run_shared(settings)
    shared = kube.shared()
    assert shared is not None and shared["client_id"] == first.registration.client_id
    assert shared["client_secret"] == server.clients[first.registration.client_id]["client_secret"]
    assert server.registered == 1 and _valid_token(server, kube)


async def test_a_client_only_this_pods_file_holds_is_retired_not_orphaned(
    server: FakeServer, kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Pod's file names a client the Secret does not (registered, never published): it joins the Secret's
    retired list, and a run after the grace deletes it on the server."""
    (tmp_path / "other").mkdir()
    ours = await flow.run(settings_for(server, tmp_path, dcr_client_name="mcp-server"))
    theirs = await flow.run(settings_for(server, tmp_path / "other", dcr_client_name="mcp-server"))
    kube.put_secret(theirs.registration.to_file())
    settings = shared_settings(server, kube, tmp_path, monkeypatch, dcr_rotate_grace="10m")
    outcome = await k8s.run_shared(settings)
    assert outcome.registration.client_id == theirs.registration.client_id
    shared = kube.shared()
    assert shared is not None and [r["registration"]["client_id"] for r in shared["retired"]] == [
        ours.registration.client_id
    ]
    later = lifecycle.now() + 900
    monkeypatch.setattr(lifecycle, "now", lambda: later)
    await k8s.run_shared(settings)
    assert set(server.clients) == {theirs.registration.client_id}


def test_a_merge_keeps_each_sides_newer_group() -> None:
    """Against the base, the file's new token and the Secret's new secret both survive a three-way merge."""
    from bootstrap.k8s._reconcile import merge

    base = {"client_id": "c", "client_secret": "s-old", "registration_access_token": "t-old"}
    local = base | {"registration_access_token": "t-new"}
    shared = base | {"client_secret": "s-new"}
    merged, conflict = merge(local, shared, base)
    assert merged == base | {"client_secret": "s-new", "registration_access_token": "t-new"} and not conflict
    _, conflict = merge(local | {"client_secret": "s-mine"}, shared, base)
    assert conflict


# --- level-triggered roll-outs; retirement waits for a completed roll-out ---


async def test_a_failed_rollout_patch_is_made_by_the_next_run(
    server: FakeServer, kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal whose Deployment PATCH is refused: the next run (nothing changed) sees the stale annotation and
    patches it."""
    server.secret_lifetime, server.rotate_on_update = 3600, True
    kube.put_deployment()
    settings = shared_settings(server, kube, tmp_path, monkeypatch, dcr_k8s_rollout="app")
    await k8s.run_shared(settings)
    kube.trick("PATCH deployment", answer(403, b'{"kind": "Status", "message": "forbidden"}'))
    with contextlib.suppress(StorageError):
        await k8s.run_shared(
            shared_settings(server, kube, tmp_path, monkeypatch, dcr_rotate_after=ROTATE_NOW, dcr_k8s_rollout="app")
        )
    current = SavedRegistration.model_validate(kube.shared())
    await k8s.run_shared(settings)
    annotations = kube.deployment()["spec"]["template"]["metadata"].get("annotations") or {}
    assert annotations.get(ROLLOUT_ANNOTATION) == credentials_digest(current)


async def test_a_replaced_client_is_deleted_only_after_the_rollout_completed(
    server: FakeServer, kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its grace, a replaced client stays while the Deployment still runs old replicas; it goes once the
    roll-out of the current credentials has completed."""
    server.secret_lifetime = 3600
    kube.put_deployment()
    for pod in ("pod-a", "pod-b", "pod-c"):
        (tmp_path / pod).mkdir()
    values: dict[str, Any] = {"dcr_k8s_rollout": "app", "dcr_rotate_grace": "10m"}
    first = await k8s.run_shared(shared_settings(server, kube, tmp_path / "pod-a", monkeypatch, **values))
    replaced = await k8s.run_shared(
        shared_settings(server, kube, tmp_path / "pod-b", monkeypatch, dcr_rotate_after=ROTATE_NOW, **values)
    )
    assert replaced.action == "replaced"
    kube.settle(updatedReplicas=1, replicas=3)  # one new replica up, two old ones still on the old client
    later = lifecycle.now() + 900
    monkeypatch.setattr(lifecycle, "now", lambda: later)
    settings = shared_settings(server, kube, tmp_path / "pod-c", monkeypatch, **values)
    await k8s.run_shared(settings)
    assert first.registration.client_id in server.clients
    kube.settle()
    await k8s.run_shared(settings)
    assert set(server.clients) == {replaced.registration.client_id}
    assert "retired" not in (kube.shared() or {})


# --- what we send in a Secret write is masked in every form ---


def _decoded_runs(text: str) -> list[bytes]:
    """Every base64 run in ``text``, decoded at each alignment (what a reader of the log could decode)."""
    out = []
    for run in re.findall(r"[A-Za-z0-9+/_-]{8,}", text):
        for start in range(4):
            chunk = run[start:]
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            with contextlib.suppress(binascii.Error, ValueError):
                out.append(base64.b64decode(chunk.replace("-", "+").replace("_", "/")))
    return out


async def test_an_api_server_echoing_the_secret_write_prints_no_client_secret(
    server: FakeServer, kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 422 whose message echoes the Secret's base64 data: the error names no client secret, in any encoding."""
    sent: list[str] = []

    async def echo(request: web.Request, handler: Handler) -> web.StreamResponse:
        value = (await request.json())["data"][DATA_KEY]
        sent.append(json.loads(base64.b64decode(value))["client_secret"])
        message = f'Secret "{SECRET}" is invalid: data[{DATA_KEY}]: Invalid value: "{value}"'
        return web.json_response({"kind": "Status", "code": 422, "message": message}, status=422)

    kube.trick("POST secret", echo)
    with pytest.raises(StorageError) as caught:
        await k8s.run_shared(shared_settings(server, kube, tmp_path, monkeypatch))
    text = caught.value.line()
    (secret,) = sent
    if any(secret.encode() in run for run in _decoded_runs(text)) or secret in text:
        raise AssertionError("the client secret can be read from the error")  # never print it


# --- a broken Secret is set aside, not obeyed ---


async def test_a_registration_token_with_a_line_break_is_set_aside_and_a_new_client_registered(
    server: FakeServer, kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CR/LF in the Secret's registration token: the value is kept under a timestamped key, the run registers."""
    broken = {"client_id": "c-1", "client_secret": "shared-secret-value", "registration_access_token": "t\r\nX: 1"}
    raw = kube.put_secret(broken)["data"][DATA_KEY]
    outcome = await k8s.run_shared(shared_settings(server, kube, tmp_path, monkeypatch))
    assert outcome.action == "registered"
    data = _secret_obj(kube)["data"]
    (kept,) = (key for key in data if key.startswith(f"{DATA_KEY}.broken-"))
    assert data[kept] == raw
    consistent(server, kube)


async def test_a_broken_secret_whose_client_is_still_manageable_gets_that_client_deleted_after_its_grace(
    server: FakeServer, kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Secret naming a live client with a malformed secret: a new client is registered and the old one, whose
    registration token still works, is retired and deleted after the grace."""
    (tmp_path / "old").mkdir()
    old = await flow.run(settings_for(server, tmp_path / "old", dcr_client_name="mcp-server"))
    kube.put_secret(old.registration.to_file() | {"client_secret": "bad\nsecret"})
    settings = shared_settings(server, kube, tmp_path, monkeypatch, dcr_rotate_grace="10m")
    outcome = await k8s.run_shared(settings)
    assert old.registration.client_id in server.clients
    later = lifecycle.now() + 900
    monkeypatch.setattr(lifecycle, "now", lambda: later)
    await k8s.run_shared(settings)
    assert set(server.clients) == {outcome.registration.client_id}


@pytest.mark.parametrize("value", [b"not json", b"[1, 2]", b'{"client_id": 5}'], ids=["text", "list", "wrong type"])
async def test_a_secret_key_of_the_wrong_shape_is_set_aside(
    server: FakeServer,
    kube: FakeKube,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    value: bytes,
) -> None:
    """Not a JSON object, or not a registration: kept under a named key (the warning says which), run goes on."""
    log.configure("json")
    kube.put_secret(data={DATA_KEY: base64.b64encode(value).decode()})
    await k8s.run_shared(shared_settings(server, kube, tmp_path, monkeypatch))
    (kept,) = (key for key in _secret_obj(kube)["data"] if key.startswith(f"{DATA_KEY}.broken-"))
    assert kept in capsys.readouterr().err
    consistent(server, kube)


async def test_a_deployment_the_role_cannot_read_is_still_rolled_for_credentials_the_run_changed(
    server: FakeServer, kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without RBAC 'get' on the Deployment (403), a renewal still patches its pod template, as before."""
    server.secret_lifetime, server.rotate_on_update = 3600, True
    kube.put_deployment()
    await k8s.run_shared(shared_settings(server, kube, tmp_path, monkeypatch, dcr_k8s_rollout="app"))
    kube.trick("GET deployment", answer(403, b'{"kind": "Status", "message": "forbidden"}'))
    renewed = await k8s.run_shared(
        shared_settings(server, kube, tmp_path, monkeypatch, dcr_rotate_after=ROTATE_NOW, dcr_k8s_rollout="app")
    )
    assert renewed.action == "renewed"
    annotations = kube.deployment()["spec"]["template"]["metadata"].get("annotations") or {}
    assert annotations.get(ROLLOUT_ANNOTATION) == credentials_digest(renewed.registration)
