"""The harnesses' apt-get waits for apt's locks instead of failing a stage when another apt holds them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import process
from harness.process import HarnessError, apt_get

# A stand-in apt-get: answers as apt does while another process holds the lists lock, for the first N calls.
FAKE_APT = """#!/bin/sh
count=$(cat "$STATE" 2>/dev/null || echo 0)
echo $((count + 1)) > "$STATE"
echo "$@" >> "$STATE.args"
if [ "$count" -lt "$LOCKED_CALLS" ]; then
  echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 4242 (apt-get)" >&2
  exit 100
fi
[ -z "$FAIL" ] || { echo "E: Unable to locate package nothing-like-it" >&2; exit 100; }
"""


@pytest.fixture
def fake_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "apt-get").write_text(FAKE_APT)
    (tmp_path / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STATE", str(tmp_path / "calls"))
    monkeypatch.setattr(process, "APT_LOCK_POLL", 0.0)
    return tmp_path / "calls"


def test_apt_get_waits_while_another_apt_holds_its_lock(fake_apt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two answers of 'Could not get lock', then success: apt_get returns, having asked apt to wait too."""
    monkeypatch.setenv("LOCKED_CALLS", "2")
    apt_get("update", "-qq")
    assert fake_apt.read_text().strip() == "3"
    assert "DPkg::Lock::Timeout=" in fake_apt.with_suffix(".args").read_text()


def test_apt_get_fails_at_once_on_any_other_error(fake_apt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure that is not a lock is not retried: one call, and the error carries apt's own line."""
    monkeypatch.setenv("LOCKED_CALLS", "0")
    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(HarnessError, match="Unable to locate package"):
        apt_get("install", "-y", "nothing-like-it")
    assert fake_apt.read_text().strip() == "1"
