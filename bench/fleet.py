"""Figure 4: a fleet. ``replicas`` processes started at once against one Keycloak.

* ``own`` folders: each replica has its own folder and its own counting proxy (split horizon:
  ``KEYCLOAK_URL`` is Keycloak's real URL, ``DCR_INTERNAL_URL`` the replica's proxy), so the requests
  each replica sends are counted apart. Every replica must exit 0 with a client of its own.
* ``shared`` folder: every replica on one folder (one proxy). Exactly one client must come out, every
  replica must exit 0; each run's wait for the file lock is timed (``lockprobe.py``).

All replicas wait at a start barrier until every one is spawned, then start together; completion =
the moment a process exited, from that start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from harness.keycloak import Admin

from .common import BENCH, PYTHON, Run, Tree, base_env, kill, log, median, percentile, reap, spawn
from .proxy import Proxy, Request

BARRIER = 'read -r _ || true; exec "$@" </dev/null'


@dataclass
class Fleet:
    tree: str
    shared: bool
    replicas: int
    spawn_seconds: float = 0.0
    done: list[float] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)  # per proxy: per replica (own), or one total (shared)
    what: dict[str, int] = field(default_factory=dict)  # every proxy's requests by kind (``request_kinds``)
    actions: dict[str, int] = field(default_factory=dict)  # "Credentials written" actions of the runs' logs
    clients_created: int = 0
    distinct_client_ids: int = 0
    lock_waits: list[float] = field(default_factory=list)
    lock_held: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return sum(1 for c in self.codes if c == 0)

    @property
    def total(self) -> float:
        return max(self.done) if self.done else float("nan")

    def p(self, q: float) -> float:
        return percentile(self.done, q)

    @property
    def total_requests(self) -> int:
        return sum(self.requests)

    @property
    def requests_per_replica(self) -> float:
        return sum(self.requests) / self.replicas if self.replicas else 0.0

    @property
    def median_requests(self) -> float:
        return median([float(r) for r in self.requests])


@dataclass(frozen=True)
class Target:
    """What a fleet runs against: Keycloak (its URL; its port, for the counting proxies; its admin API)."""

    keycloak_url: str
    keycloak_port: int
    admin: Admin
    work: Path
    wait_timeout: float = 600.0


@dataclass(frozen=True)
class Realm:
    """A fleet's own realm, a multi-use initial access token of it, and the clients it held at the start."""

    name: str
    token: str
    clients_before: int


@contextlib.asynccontextmanager
async def fresh_realm(admin: Admin, replicas: int) -> AsyncIterator[Realm]:
    """A realm for one fleet, deleted afterwards."""
    name = await asyncio.to_thread(admin.create_realm)
    try:
        # Multi-use, so a second registration would show as a second client rather than as a refusal.
        token = await asyncio.to_thread(admin.mint_initial_access_token, name, count=replicas + 20, expiration=3600)
        yield Realm(name, token, await asyncio.to_thread(admin.count_clients, name))
    finally:
        await asyncio.to_thread(admin.delete_realm, name)


def run_env(tree: Tree, target: Target, realm: Realm, lock_log: Path) -> dict[str, str]:
    """The environment every replica of a fleet shares."""
    return tree.env(base_env(target.work)) | {
        "KEYCLOAK_URL": target.keycloak_url,
        "KEYCLOAK_REALM": realm.name,
        "DCR_INITIAL_ACCESS_TOKEN": realm.token,
        "DCR_WAIT_TIMEOUT": str(target.wait_timeout),
        "DCR_LOG_FORMAT": "json",
        "BENCH_LOCK_LOG": str(lock_log),
    }


async def tally(result: Fleet, jobs: list[Job], target: Target, realm: Realm) -> set[str]:
    """What the runs said they did and left behind: clients in Keycloak; the client ids in their files."""
    result.actions = written_actions(job.log_path for job in jobs)
    result.clients_created = await asyncio.to_thread(target.admin.count_clients, realm.name) - realm.clients_before
    in_files = client_ids({job.folder for job in jobs})
    result.distinct_client_ids = len(in_files)
    return in_files


async def run(tree: Tree, shared: bool, replicas: int, target: Target) -> Fleet:
    result = Fleet(tree.label, shared, replicas)
    kind = "shared" if shared else "own"
    root = target.work / f"fleet-{tree.label}-{kind}"
    lock_log = root / "locks.jsonl"
    async with fresh_realm(target.admin, replicas) as realm:
        proxies = [Proxy(target.keycloak_port, rewrite_host=True) for _ in range(1 if shared else replicas)]
        for proxy in proxies:
            await proxy.start()
        jobs = _jobs(tree, shared, replicas, root, run_env(tree, target, realm, lock_log), proxies)
        await release_and_wait(result, jobs, target.wait_timeout + 60)
        for proxy in proxies:
            await proxy.close()
            result.requests.append(len(proxy.requests))
        result.what = request_kinds(r for proxy in proxies for r in proxy.requests)
        await tally(result, jobs, target, realm)
        if shared and lock_log.exists():
            read_lock_times(result, lock_log, "folder")
    log(
        f"fleet {tree.label} {kind}: {result.ok}/{replicas} ok, "
        f"{result.clients_created} clients, total {result.total:.1f}s"
    )
    return result


@dataclass(frozen=True)
class Job:
    argv: list[str]
    env: dict[str, str]
    folder: Path
    log_path: Path


def _jobs(tree: Tree, shared: bool, replicas: int, root: Path, env: dict[str, str], proxies: list[Proxy]) -> list[Job]:
    """Each replica with a folder and a proxy of its own, or all of them on the one folder and proxy."""
    # The shared folder's runs go through lockprobe.py, which times each one's wait for the file lock.
    argv = [PYTHON, str(BENCH / "lockprobe.py")] if shared else tree.argv()
    jobs: list[Job] = []
    for i in range(replicas):
        folder = root / ("shared" if shared else f"r{i:03d}")
        folder.mkdir(parents=True, exist_ok=True)
        proxy = proxies[0 if shared else i]
        job_env = env | {"DCR_INTERNAL_URL": proxy.url, "DCR_CLIENT_FILE": str(folder / ".dcr_client.json")}
        jobs.append(Job(argv, job_env, folder, root / f"r{i:03d}.log"))
    return jobs


async def release_and_wait(result: Fleet, jobs: list[Job], kill_after: float) -> None:
    """Spawn every replica at the barrier, release them together and record each one's end.

    Replicas still running ``kill_after`` seconds after the release are killed.
    """
    # A start barrier: each replica waits in a shell on a pipe; closing it starts all of them at once
    # (``exec`` then replaces the shell, so the usage measured is the tool's).
    gate_r, gate_w = os.pipe()
    spawned = time.monotonic()
    procs = [
        (spawn(["sh", "-c", BARRIER, "replica", *job.argv], job.env, job.folder, job.log_path, stdin=gate_r), job)
        for job in jobs
    ]
    os.close(gate_r)
    t0 = time.monotonic()
    result.spawn_seconds = t0 - spawned
    os.close(gate_w)
    deadline = t0 + kill_after
    while procs and time.monotonic() < deadline:
        for item in list(procs):
            proc, job = item
            if (ended := reap(proc)) is not None:
                procs.remove(item)
                _record(result, ended, time.monotonic() - t0, job.log_path)
        await asyncio.sleep(0.01)
    for proc, _job in procs:
        result.codes.append(kill(proc).code)
        result.failures.append("killed: still running past the deadline")


def _record(result: Fleet, ended: Run, done: float, log_path: Path) -> None:
    result.done.append(done)
    result.codes.append(ended.code)
    result.rss_mib.append(ended.rss_mib)
    result.cpu.append(ended.cpu)
    if ended.code != 0:
        result.failures.append(f"exit {ended.code}: {_last_line(log_path)}")


def client_ids(folders: set[Path]) -> set[str]:
    """The client_id in each folder's credentials file (a shared folder holds one file)."""
    ids = set()
    for folder in folders:
        try:
            ids.add(json.loads((folder / ".dcr_client.json").read_text())["client_id"])
        except (OSError, ValueError, KeyError):
            continue
    return ids


def read_lock_times(result: Fleet, lock_log: Path, kind: str) -> None:
    """The waits for and holds of one kind of lock (``folder`` or ``lease``) that ``lockprobe.py`` logged."""
    for line in lock_log.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("kind", "folder") == kind and entry["got"] is not None:  # None: failed before it held it
            result.lock_waits.append(entry["got"] - entry["asked"])
            result.lock_held.append(entry["released"] - entry["got"])


def request_kinds(requests: Iterable[Request]) -> dict[str, int]:
    """How many requests of each kind: discovery, registration (RFC 7591), read/update/delete (RFC 7592), token."""
    kinds: Counter[str] = Counter()
    for request in requests:
        path = request.path.split("?", 1)[0]
        if "/.well-known/" in path:
            kinds["discovery"] += 1
        elif path.endswith("/protocol/openid-connect/token"):
            kinds["token"] += 1
        elif "/clients-registrations/" in path:
            registration = request.method == "POST" and path.rstrip("/").endswith("/openid-connect")
            kinds["registration" if registration else f"RFC 7592 {request.method}"] += 1
        else:
            kinds[f"other {request.method}"] += 1
    return dict(kinds)


def written_actions(logs: Iterable[Path]) -> dict[str, int]:
    """What each run said it did (``Credentials written``'s ``action``: registered, reloaded, ...)."""
    actions: Counter[str] = Counter()
    for path in logs:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if '"Credentials written"' in line:
                with contextlib.suppress(ValueError, AttributeError):
                    actions[str(json.loads(line).get("action"))] += 1
    return dict(actions)


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"
