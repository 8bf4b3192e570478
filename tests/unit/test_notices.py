"""A run's outcome said where Kubernetes operators look: the termination message file and Events on the Pod.

The CLI runs in the main thread (``commands.execute``), the fake authorization server and a fake
Kubernetes events API each on a loop of their own; the kubeconfig points at the fake API.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bootstrap import commands, log, notices
from bootstrap.errors import ExitCode
from bootstrap.k8s import _events
from bootstrap.settings import load_settings
from tests.fakeserver import IAT, FakeServer, app_in_thread, serving_in_thread
from tests.unit.test_k8s import KUBE_TOKEN, kubeconfig

POD, NS = "shop-7d9f8-x2x4q", "shop"


@dataclass
class FakeEvents:
    """The events resource of one namespace: what was posted, or a refusal (``status``)."""

    status: int = 201
    posted: list[dict[str, Any]] = field(default_factory=list)
    authorization: list[str] = field(default_factory=list)

    async def create(self, request: web.Request) -> web.Response:
        self.authorization.append(request.headers.get("Authorization", ""))
        if self.status != 201:
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden"}
            return web.json_response(body | {"code": self.status}, status=self.status)
        event = await request.json()
        self.posted.append(event)
        return web.json_response(event | {"metadata": {"name": f"{POD}.abcde", "namespace": NS}}, status=201)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(f"/api/v1/namespaces/{NS}/events", self.create)
        return app


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No Pod, no default termination file, nothing said before: each test starts as a new process."""
    for name in ("KUBERNETES_SERVICE_HOST", "KUBECONFIG", "DCR_K8S_POD_NAME", "DCR_K8S_POD_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(notices, "DEFAULT_TERMINATION_LOG", tmp_path / "absent" / "termination-log")
    monkeypatch.setattr(notices, "_last", [])
    monkeypatch.setattr(_events, "_warned", [])
    monkeypatch.setattr(notices, "_written", [])


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with serving_in_thread(FakeServer()) as fake:
        yield fake


@pytest.fixture
def events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeEvents]:
    """A fake events API, with the downward API's Pod name and namespace set."""
    fake = FakeEvents()
    with app_in_thread(fake.app()) as base:
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "kubeconfig.json", base)))
        monkeypatch.setenv("DCR_K8S_POD_NAME", POD)
        monkeypatch.setenv("DCR_K8S_POD_NAMESPACE", NS)
        yield fake


def _run_env(monkeypatch: pytest.MonkeyPatch, server: FakeServer, tmp_path: Path) -> Path:
    """A run that registers against ``server``; returns the termination file it is told to use."""
    monkeypatch.setenv("DCR_ISSUER", server.base)
    monkeypatch.setenv("DCR_INITIAL_ACCESS_TOKEN", IAT)
    monkeypatch.setenv("DCR_CLIENT_FILE", str(tmp_path / "creds" / "client.json"))
    monkeypatch.setenv("DCR_LOG_FORMAT", "json")
    monkeypatch.setenv("DCR_TERMINATION_LOG", str(tmp_path / "termination-log"))
    return tmp_path / "termination-log"


@pytest.fixture
def run_env(monkeypatch: pytest.MonkeyPatch, server: FakeServer, tmp_path: Path) -> Path:
    """``_run_env`` as a fixture, for the tests that need nothing else of its parts."""
    return _run_env(monkeypatch, server, tmp_path)


def _fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the run fail before any request: static mode without the static credentials (exit 2)."""
    monkeypatch.setenv("USE_DCR", "false")


def _last_line(err: str) -> str:
    return str(json.loads(err.strip().splitlines()[-1])["event"])


def test_a_failed_run_writes_its_last_line_to_the_termination_log(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The termination message is exactly the CLI's last log line."""
    path = _run_env(monkeypatch, server, tmp_path)
    _fail(monkeypatch)
    assert commands.execute("run", argparse.Namespace()) == ExitCode.CONFIG
    assert path.read_text() == _last_line(capsys.readouterr().err)


def test_a_successful_run_writes_no_termination_log(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Success leaves the termination message alone."""
    path = _run_env(monkeypatch, server, tmp_path)
    assert commands.execute("run", argparse.Namespace()) == ExitCode.OK
    assert not path.exists()


def test_a_settings_error_is_written_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings that do not load still name the termination file by DCR_TERMINATION_LOG."""
    monkeypatch.setenv("DCR_TERMINATION_LOG", str(tmp_path / "termination-log"))
    monkeypatch.setenv("DCR_WAIT_TIMEOUT", "soon")
    assert commands.execute("run", argparse.Namespace()) == ExitCode.CONFIG
    assert "DCR_WAIT_TIMEOUT" in (tmp_path / "termination-log").read_text()


def test_the_termination_log_is_masked() -> None:
    """A registered secret in the last line is masked in the file, as in the log."""
    log.register_secrets("termination-secret-value")
    path = notices.DEFAULT_TERMINATION_LOG.parent.parent / "masked"
    notices.write_termination("refused with termination-secret-value", str(path))
    assert "termination-secret-value" not in path.read_text() and "*****" in path.read_text()


def test_the_termination_log_is_capped_at_4096_bytes(tmp_path: Path) -> None:
    """Kubernetes keeps 4096 bytes: a longer line is cut on a character boundary."""
    notices.write_termination("€" * 3000, str(tmp_path / "t"))
    raw = (tmp_path / "t").read_bytes()
    assert len(raw) <= notices.TERMINATION_LIMIT and raw.decode().startswith("€€€")


def test_an_unwritable_termination_log_does_not_change_the_exit_code(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A termination file that cannot be written is a warning; the run's own code stands."""
    _run_env(monkeypatch, server, tmp_path)
    monkeypatch.setenv("DCR_TERMINATION_LOG", str(tmp_path / "no-such-dir" / "termination-log"))
    _fail(monkeypatch)
    assert commands.execute("run", argparse.Namespace()) == ExitCode.CONFIG


def test_the_default_termination_log_is_used_only_when_it_exists(tmp_path: Path) -> None:
    """Unset: /dev/termination-log if present and writable, else none; empty: off."""
    assert notices.termination_log(None) is None
    notices.DEFAULT_TERMINATION_LOG.parent.mkdir()
    notices.DEFAULT_TERMINATION_LOG.touch()
    assert notices.termination_log(None) == notices.DEFAULT_TERMINATION_LOG
    assert notices.termination_log("") is None
    assert load_settings(dcr_termination_log="").dcr_termination_log == ""


def test_a_run_records_a_normal_event_on_its_pod(
    server: FakeServer, events: FakeEvents, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One Event about the Pod: reason Registered, type Normal, reported by dcr-bootstrap, with our token."""
    _run_env(monkeypatch, server, tmp_path)
    assert commands.execute("run", argparse.Namespace()) == ExitCode.OK
    [event] = events.posted
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "name": POD, "namespace": NS}
    assert (event["reason"], event["type"], event["reportingComponent"]) == ("Registered", "Normal", "dcr-bootstrap")
    assert event["metadata"] == {"generateName": f"{POD}.", "namespace": NS}
    assert "registered" in event["message"] and events.authorization == [f"Bearer {KUBE_TOKEN}"]


def test_a_failed_run_records_a_warning_event_with_its_last_line(
    run_env: Path, events: FakeEvents, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """reason Failed, type Warning, the message is the last line (cause and fix)."""
    _fail(monkeypatch)
    assert commands.execute("run", argparse.Namespace()) == ExitCode.CONFIG
    [event] = events.posted
    assert (event["reason"], event["type"]) == ("Failed", "Warning")
    assert event["message"] == _last_line(capsys.readouterr().err)


def test_a_refused_event_does_not_fail_the_run(
    run_env: Path, events: FakeEvents, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """403 on events: exit 0 all the same, one warning naming the RBAC it needs."""
    events.status = 403
    assert commands.execute("run", argparse.Namespace()) == ExitCode.OK
    warnings = [json.loads(line) for line in capsys.readouterr().err.splitlines() if '"warning"' in line]
    assert len(warnings) == 1 and "'create' on events" in warnings[0]["event"]


def test_a_repeated_outcome_is_recorded_once(events: FakeEvents, tmp_path: Path) -> None:
    """A 'watch' that reloads the same client every round records one Event, not one per round."""
    settings = load_settings(dcr_client_file=tmp_path / "c.json")
    for _ in range(3):
        asyncio.run(notices.succeeded(settings, "reloaded", "client-1"))
    assert [e["reason"] for e in events.posted] == ["Reloaded"]


async def test_a_failed_watch_round_writes_the_termination_log_and_a_warning_event(
    events: FakeEvents, tmp_path: Path
) -> None:
    """A sidecar's failed round is said as a failed run is: its restarts and Events show why."""
    path = tmp_path / "termination-log"
    settings = load_settings(use_dcr=False, dcr_client_file=tmp_path / "c.json", dcr_termination_log=str(path))

    async def stop(_: float) -> None:
        raise asyncio.CancelledError

    await commands._watch(settings, argparse.Namespace(), sleep=stop)
    assert "No authorization server configured" in path.read_text()
    assert [(e["reason"], e["type"]) for e in events.posted] == [("Failed", "Warning")]


async def test_a_good_watch_round_after_a_failed_one_empties_the_termination_log(tmp_path: Path) -> None:
    """A sidecar stopped after it recovered shows no stale failure as its termination message."""
    path = tmp_path / "termination-log"
    settings = load_settings(dcr_client_file=tmp_path / "c.json", dcr_termination_log=str(path))
    await notices.round_failed(settings, "Server not ready after 120s")
    assert path.read_text() == "Server not ready after 120s"
    await notices.succeeded(settings, "reloaded", "client-1")
    assert path.read_text() == ""
