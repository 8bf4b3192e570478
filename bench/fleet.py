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
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.keycloak import Admin

from .common import BENCH, PYTHON, Tree, base_env, kill, log, median, percentile, reap, spawn
from .proxy import Proxy

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
    def requests_per_replica(self) -> float:
        return sum(self.requests) / self.replicas if self.replicas else 0.0

    @property
    def median_requests(self) -> float:
        return median([float(r) for r in self.requests])


async def run(
    *,
    tree: Tree,
    shared: bool,
    replicas: int,
    keycloak_url: str,
    keycloak_port: int,
    admin: Admin,
    work: Path,
    wait_timeout: float = 600.0,
) -> Fleet:
    result = Fleet(tree.label, shared, replicas)
    realm = await asyncio.to_thread(admin.create_realm)
    token = await asyncio.to_thread(admin.mint_initial_access_token, realm, count=replicas + 20, expiration=3600)
    clients_before = await asyncio.to_thread(admin.count_clients, realm)
    proxies = [Proxy(keycloak_port, rewrite_host=True) for _ in range(1 if shared else replicas)]
    for proxy in proxies:
        await proxy.start()
    root = work / f"fleet-{tree.label}-{'shared' if shared else 'own'}"
    lock_log = root / "locks.jsonl"
    argv = [PYTHON, str(BENCH / "lockprobe.py")] if shared else tree.argv()
    jobs: list[tuple[list[str], dict[str, str], Path, Path]] = []
    for i in range(replicas):
        folder = root / ("shared" if shared else f"r{i:03d}")
        folder.mkdir(parents=True, exist_ok=True)
        proxy = proxies[0 if shared else i]
        env = tree.env(base_env(work)) | {
            "KEYCLOAK_URL": keycloak_url,
            "DCR_INTERNAL_URL": proxy.url,
            "KEYCLOAK_REALM": realm,
            "DCR_INITIAL_ACCESS_TOKEN": token,
            "DCR_CLIENT_FILE": str(folder / ".dcr_client.json"),
            "DCR_WAIT_TIMEOUT": str(wait_timeout),
            "DCR_LOG_FORMAT": "json",
            "BENCH_LOCK_LOG": str(lock_log),
        }
        jobs.append((argv, env, folder, root / f"r{i:03d}.log"))
    # A start barrier: each replica waits in a shell on a pipe; closing it starts all of them at once
    # (``exec`` then replaces the shell, so the usage measured is the tool's).
    gate_r, gate_w = os.pipe()
    spawned = time.monotonic()
    procs = [
        (spawn(["sh", "-c", BARRIER, "replica", *argv_i], env, folder, log_path, stdin=gate_r), log_path)
        for argv_i, env, folder, log_path in jobs
    ]
    os.close(gate_r)
    t0 = time.monotonic()
    result.spawn_seconds = t0 - spawned
    os.close(gate_w)
    deadline = t0 + wait_timeout + 60
    while procs and time.monotonic() < deadline:
        for item in list(procs):
            proc, log_path = item
            if (ended := reap(proc)) is not None:
                procs.remove(item)
                result.done.append(time.monotonic() - t0)
                result.codes.append(ended.code)
                result.rss_mib.append(ended.rss_mib)
                result.cpu.append(ended.cpu)
                if ended.code != 0:
                    result.failures.append(f"exit {ended.code}: {_last_line(log_path)}")
        await asyncio.sleep(0.01)
    for proc, _log_path in procs:
        result.codes.append(kill(proc).code)
        result.failures.append("killed: still running past the deadline")
    for proxy in proxies:
        await proxy.close()
        result.requests.append(len(proxy.requests))
    result.clients_created = await asyncio.to_thread(admin.count_clients, realm) - clients_before
    ids = set()
    for folder in {job[2] for job in jobs}:
        try:
            ids.add(json.loads((folder / ".dcr_client.json").read_text())["client_id"])
        except (OSError, ValueError, KeyError):
            continue
    result.distinct_client_ids = len(ids)
    if shared and lock_log.exists():
        for line in lock_log.read_text().splitlines():
            entry = json.loads(line)
            if entry["got"] is not None:
                result.lock_waits.append(entry["got"] - entry["asked"])
                result.lock_held.append(entry["released"] - entry["got"])
    await asyncio.to_thread(admin.delete_realm, realm)
    log(
        f"fleet {tree.label} {'shared' if shared else 'own'}: {result.ok}/{replicas} ok, "
        f"{result.clients_created} clients, total {result.total:.1f}s"
    )
    return result


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"
