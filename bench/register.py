"""Figures 2, 3 and 5: what a first registration and a restart cost, beside the tools people use instead.

Every tool does its job against the same real Keycloak, in the same realm, with one multi-use initial
access token, each run in a fresh folder:

* ``dcr-bootstrap``   (before and after) a first run (discover, RFC 7591 register, prove the credentials
  with a token request, write the file) and a restart in the same folder (reload);
* node ``openid-client`` (``peers/register.mjs``): discovery + registration + write a JSON file, and the
  same with the proving token request (``--prove``), as dcr-bootstrap does;
* ``kcreg.sh create``  Keycloak's own client-registration CLI (JVM), OIDC endpoint, ``-t`` token;
* ``curl``             one hand-written RFC 7591 POST written to a file: the floor (no discovery, no checks).

Rounds are interleaved (each round runs every job once, in a shuffled order), so a slow minute of a
shared machine hits every tool alike. Wall, CPU (user + sys) and peak RSS come from ``os.wait4``.
``economy`` counts the requests each job sends (through the counting proxy). Numbers only: nothing
here asserts a time.

    .venv/bin/python -m bench --only cost --only economy --rounds 5
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.keycloak import Admin

from .common import Peers, Run, Tree, base_env, measure
from .proxy import Proxy

CLIENT_BODY = {"client_name": "bench-curl", "grant_types": ["client_credentials"]}


@dataclass(frozen=True)
class Job:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path


def tool_env(base: dict[str, str], url: str, realm: str, token: str, file: Path) -> dict[str, str]:
    return base | {
        "KEYCLOAK_URL": url,
        "KEYCLOAK_REALM": realm,
        "DCR_INITIAL_ACCESS_TOKEN": token,
        "DCR_CLIENT_FILE": str(file),
        "DCR_LOG_FORMAT": "json",
    }


def first_jobs(
    *, url: str, realm: str, token: str, trees: Sequence[Tree], peers: Peers, folder: Path
) -> tuple[list[Job], list[Job]]:
    """(first registrations, restarts) for one round, each in its own folder under ``folder``."""
    base = base_env(folder)
    firsts: list[Job] = []
    restarts: list[Job] = []
    for tree in trees:
        where = folder / tree.label
        where.mkdir(parents=True)
        env = tree.env(tool_env(base, url, realm, token, where / ".dcr_client.json"))
        firsts.append(Job(f"dcr-bootstrap {tree.label}: first registration", tree.argv(), env, where))
        restarts.append(Job(f"dcr-bootstrap {tree.label}: restart (reload)", tree.argv(), env, where))
    if peers.node:
        for prove in (False, True):
            where = folder / ("node-prove" if prove else "node")
            where.mkdir(parents=True)
            argv = [peers.node, str(peers.register_mjs), *(["--prove"] if prove else [])]
            name = "node openid-client: discovery + register + file" + (" + token request" if prove else "")
            firsts.append(Job(name, argv, tool_env(base, url, realm, token, where / ".dcr_client.json"), where))
    where = folder / "kcreg"
    where.mkdir(parents=True)
    (where / "client.json").write_text(json.dumps(CLIENT_BODY | {"client_name": "bench-kcreg"}))
    argv = [str(peers.kcreg), "create", "--no-config", "--server", url, "--realm", realm, "-t", token]
    argv += ["-e", "oidc", "-f", str(where / "client.json"), "-i"]
    firsts.append(Job("kcreg.sh create (Keycloak CLI, JVM)", argv, base, where))
    if peers.curl:
        where = folder / "curl"
        where.mkdir(parents=True)
        endpoint = f"{url}/realms/{realm}/clients-registrations/openid-connect"
        argv = [peers.curl, "-sf", "-o", str(where / ".dcr_client.json"), "-H", "Content-Type: application/json"]
        argv += ["-H", f"Authorization: Bearer {token}", "-d", json.dumps(CLIENT_BODY), endpoint]
        firsts.append(Job("curl: one RFC 7591 POST (floor)", argv, base, where))
    return firsts, restarts


def costs(
    *, url: str, realm: str, token: str, trees: Sequence[Tree], peers: Peers, work: Path, rounds: int, seed: int = 2
) -> dict[str, list[Run]]:
    """Interleaved rounds of every job; the runs of each, by job name (first-seen order)."""
    rng = random.Random(seed)  # noqa: S311 - a schedule, not a secret
    samples: dict[str, list[Run]] = {}
    for i in range(rounds):
        firsts, restarts = first_jobs(
            url=url, realm=realm, token=token, trees=trees, peers=peers, folder=work / f"cost-{i:02d}"
        )
        rng.shuffle(firsts)
        rng.shuffle(restarts)
        for job in firsts + restarts:
            samples.setdefault(job.name, []).append(measure(job.argv, job.env, job.cwd, output=job.cwd / "run.log"))
    return {name: samples[name] for name in sorted(samples, key=_order)}


def _order(name: str) -> tuple[int, str]:
    rank = ["after: first", "before: first", "after: restart", "before: restart", "node", "kcreg", "curl"]
    return next((i for i, key in enumerate(rank) if key in name), len(rank)), name


async def economy(
    *, keycloak_port: int, admin_password: str, realm: str, trees: Sequence[Tree], peers: Peers, work: Path
) -> dict[str, list[str]]:
    """The requests each job sends, counted by a proxy (tools point at it; its token is minted through it)."""
    proxy = await Proxy(keycloak_port).start()
    try:
        admin = Admin(proxy.url, "admin", admin_password)
        token = await asyncio.to_thread(admin.mint_initial_access_token, realm, count=50, expiration=1800)
        firsts, restarts = first_jobs(
            url=proxy.url, realm=realm, token=token, trees=trees, peers=peers, folder=work / "economy"
        )
        seen: dict[str, list[str]] = {}
        for job in firsts + restarts:
            before = len(proxy.requests)
            await asyncio.to_thread(measure, job.argv, job.env, job.cwd, output=job.cwd / "run.log")
            seen[job.name] = [r.line() for r in proxy.requests[before:]]
        return {name: seen[name] for name in sorted(seen, key=_order)}
    finally:
        await proxy.close()
