"""``python -m bench``: every figure of issue 10 in one run, written to docs/PERFORMANCE.md.

Starts one real Keycloak (the harness), installs the node peer (``npm ci`` in bench/peers), unpacks
"before" (``git archive``; the working tree is "after"), then measures, in this order: startup (quiet
machine), first registration and restart cost beside node openid-client, kcreg.sh and curl; request
economy; ready-to-done lag beside a fixed 1 s poller; the fleet. Raw numbers go to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.keycloak import KEYCLOAK_VERSION, Admin, KeycloakServer, ensure_distribution

from . import fleet, lag, register, report, startup
from .common import (
    BEFORE_REV,
    PEERS,
    ROOT,
    Peers,
    Run,
    Tree,
    after_tree,
    base_env,
    before_tree,
    command_version,
    git_describe,
    install_node_peers,
    log,
    package_version,
    workdir,
)

FIGURES = ("startup", "cost", "economy", "lag", "fleet")


@dataclass
class Results:
    started: str
    finished: str = ""
    duration: float = 0.0
    load_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    loads: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # before each figure
    machine: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    keycloak: dict[str, float] = field(default_factory=dict)
    env: dict[str, list[Run]] = field(default_factory=dict)
    imports: dict[str, dict[str, float]] = field(default_factory=dict)
    importtime: dict[str, startup.ImportTime] = field(default_factory=dict)
    profiles: dict[str, startup.Profile] = field(default_factory=dict)
    costs: dict[str, list[Run]] = field(default_factory=dict)
    economy: dict[str, list[str]] = field(default_factory=dict)
    lag: list[lag.Trial] = field(default_factory=list)
    fleets: list[fleet.Fleet] = field(default_factory=list)


def machine() -> dict[str, str]:
    info = {"cores": str(os.cpu_count())}
    try:
        mem_kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        info["ram"] = f"{mem_kib / 1024 / 1024:.1f} GiB"
    except (OSError, IndexError, ValueError):
        info["ram"] = "?"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line)
    except (OSError, StopIteration):
        info["cpu"] = "?"
    pretty = "?"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                pretty = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    info["os"] = f"{pretty}, Linux {os.uname().release}"
    return info


def versions(peers: Peers) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "keycloak": KEYCLOAK_VERSION}
    out["node"] = command_version([peers.node, "--version"]) if peers.node else "not installed"
    out["openid-client"] = package_version(PEERS / "node_modules" / "openid-client" / "package.json")
    out["curl"] = command_version(["curl", "--version"]).split(" (")[0] if peers.curl else "not installed"
    out["java"] = command_version(["java", "-version"])
    for dist in ("aiohttp", "pydantic", "pydantic-settings", "structlog", "tenacity"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "?"
    out["dcr-bootstrap after"] = git_describe()
    return out


async def _main(args: argparse.Namespace) -> Results:
    t_start = time.monotonic()
    results = Results(started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    results.load_start = os.getloadavg()
    results.machine = machine()
    figures = set(args.only or FIGURES)
    results.settings = {
        "figures": sorted(figures, key=FIGURES.index),
        "rounds": args.rounds,
        "lag_trials": args.lag_trials,
        "lag_gaps": list(args.lag_gaps),
        "long_gaps": args.long_gaps,
        "replicas": args.replicas,
        "before": args.before,
    }
    if args.reuse_keycloak:
        # Developing the bench: a Keycloak already running ({"url", "port", "pw", "home"} in a JSON file).
        known = json.loads(args.reuse_keycloak.read_text())
        server = KeycloakServer(home=Path(known["home"]), http_port=int(known["port"]), admin_password=known["pw"])
    else:
        server = KeycloakServer(home=ensure_distribution()).spawn()
    try:
        work = workdir()
        log(f"work folder {work}; Keycloak starting on {server.url}")
        trees: list[Tree] = [after_tree()]
        if args.before != "none":
            trees.append(before_tree(args.before, work / "before-tree"))
        node = await asyncio.to_thread(install_node_peers)
        peers = Peers(kcreg=server.home / "bin" / "kcreg.sh", node=node)
        results.versions = versions(peers)
        if server.pgid is not None:
            await asyncio.to_thread(server.wait_ready)
        results.keycloak = {"startup_s": server.startup_seconds or 0.0, "rss_mib": server.rss_mib or 0.0}
        admin = server.admin()
        realm = await asyncio.to_thread(admin.create_realm)
        token = await asyncio.to_thread(admin.mint_initial_access_token, realm, count=1000, expiration=7200)
        rounds = args.rounds

        # Warm Keycloak up (JIT, caches): two discarded rounds of every job.
        log("warm-up")
        costs = functools.partial(register.costs, url=server.url, realm=realm, token=token, trees=trees, peers=peers)
        await asyncio.to_thread(costs, work=work / "warmup", rounds=2, seed=99)
        if "startup" in figures:
            results.loads["startup"] = os.getloadavg()
            log("startup: env, imports, importtime, cProfile")
            saved = _a_saved_file(work / "warmup")
            home = work / "startup"
            home.mkdir()
            (home / ".dcr_client.json").write_bytes(saved.read_bytes())
            env = register.tool_env(base_env(home), server.url, realm, token, home / ".dcr_client.json")
            results.env = await asyncio.to_thread(
                startup.env_runs,
                trees,
                env,
                home,
                rounds,
                random.Random(6),  # noqa: S311
                peers.node,
            )
            for tree in trees:
                for kind in ("importtime", "profile"):
                    where = work / f"{kind}-{tree.label}"
                    where.mkdir()
                    run_env = register.tool_env(base_env(where), server.url, realm, token, where / ".dcr_client.json")
                    if kind == "importtime":
                        results.importtime[tree.label] = await asyncio.to_thread(
                            startup.importtime, tree, run_env, where
                        )
                    else:
                        results.profiles[tree.label] = await asyncio.to_thread(startup.profile, tree, run_env, where)
                results.imports[tree.label] = await asyncio.to_thread(
                    startup.import_costs,
                    tree,
                    base_env(home),
                    home,
                    max(3, rounds // 2),
                    results.importtime[tree.label].own_modules,
                )
        if "cost" in figures:
            results.loads["cost"] = os.getloadavg()
            log(f"cost: {rounds} interleaved rounds")
            results.costs = await asyncio.to_thread(costs, work=work / "cost", rounds=rounds)
        if "economy" in figures:
            results.loads["economy"] = os.getloadavg()
            log("economy: requests per job")
            results.economy = await register.economy(
                keycloak_port=server.http_port,
                admin_password=server.admin_password,
                realm=realm,
                trees=trees,
                peers=peers,
                work=work,
            )
        if "lag" in figures:
            results.loads["lag"] = os.getloadavg()
            lag_realm = await asyncio.to_thread(admin.create_realm)
            lag_token = await asyncio.to_thread(admin.mint_initial_access_token, lag_realm, count=500, expiration=7200)
            results.lag = await lag.run(
                keycloak_url=server.url,
                keycloak_port=server.http_port,
                realm=lag_realm,
                token=lag_token,
                trees=trees,
                peers=peers,
                work=work / "lag",
                trials_per_tool=args.lag_trials,
                short=tuple(args.lag_gaps),
                long_gaps=args.long_gaps,
            )
        if "fleet" in figures:
            for tree in trees:
                for shared in (False, True):
                    results.loads[f"fleet {tree.label} {'shared' if shared else 'own'}"] = os.getloadavg()
                    log(f"fleet: {args.replicas} x {tree.label}, {'one shared folder' if shared else 'own folders'}")
                    results.fleets.append(
                        await fleet.run(
                            tree=tree,
                            shared=shared,
                            replicas=args.replicas,
                            keycloak_url=server.url,
                            keycloak_port=server.http_port,
                            admin=_fresh_admin(server),
                            work=work,
                        )
                    )
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")
    finally:
        server.stop()
    results.load_end = os.getloadavg()
    results.finished = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    results.duration = time.monotonic() - t_start
    return results


def _fresh_admin(server: KeycloakServer) -> Admin:
    return server.admin()


def _a_saved_file(folder: Path) -> Path:
    for path in sorted(folder.glob("*/after/.dcr_client.json")):
        return path
    raise RuntimeError(f"no saved registration under {folder}")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds for costs and env (10)")
    parser.add_argument("--lag-trials", type=int, default=10, help="lag trials per tool and variant (10)")
    parser.add_argument(
        "--lag-gaps", type=float, nargs=2, default=(1.0, 8.0), metavar=("MIN", "MAX"), help="seconds (1 8)"
    )
    parser.add_argument(
        "--long-gaps",
        type=int,
        default=4,
        help="'before' lag trials at the 503 gate with 15-60 s gaps (4); half as many at the refusing one, "
        "and for 'after' half and a quarter",
    )
    parser.add_argument("--replicas", type=int, default=100, help="fleet size (100)")
    parser.add_argument("--before", default=BEFORE_REV, help=f"git revision of 'before' ({BEFORE_REV}); 'none'")
    parser.add_argument("--only", action="append", choices=FIGURES, help="run only this figure (repeatable)")
    parser.add_argument("--quick", action="store_true", help="tiny numbers, for checking the bench itself")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "PERFORMANCE.md")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs of every run)")
    parser.add_argument("--reuse-keycloak", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.lag_trials, args.long_gaps, args.replicas = 2, 2, 0, 10
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    results = asyncio.run(_main(args))
    text = report.render(results, " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    raw = ROOT / "bench" / "results"
    raw.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    (raw / f"bench-{stamp}.json").write_text(json.dumps(asdict(results), indent=1, default=str))
    log(f"wrote {args.output} and bench/results/bench-{stamp}.json")
    return 0
