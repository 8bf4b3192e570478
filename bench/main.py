"""``python -m bench``: every figure of the performance goals in one run, written to docs/PERFORMANCE.md.

Starts one real Keycloak (the harness), installs the node peer (``npm ci`` in bench/peers), unpacks
"before" (``git archive``; the working tree is "after"), then measures, in this order: startup (quiet
machine), first registration and restart cost beside node openid-client, kcreg.sh and curl; request
economy; ready-to-done lag beside a fixed 1 s poller; the fleet; Pods on one Secret (a real kube-apiserver).
Raw numbers go to bench/results/. With ``--only``, the figures not run are kept as the output file had them.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.keycloak import KEYCLOAK_VERSION, Admin, KeycloakServer, ensure_distribution

from . import fleet, lag, pods, register, report, startup
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
from .figures import FIGURES, Results


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
        "pods": args.pods,
        "before": args.before,
    }
    server = _keycloak(args.reuse_keycloak)
    try:
        bench = await _Bench.start(server, args, results)
        # Warm Keycloak up (JIT, caches): two discarded rounds of every job.
        log("warm-up")
        await asyncio.to_thread(bench.costs, work=bench.work / "warmup", rounds=2, seed=99)
        for name in FIGURES:
            if name in figures:
                await _STEPS[name](bench, results)
        if not args.keep:
            shutil.rmtree(bench.work, ignore_errors=True)
        else:
            log(f"kept {bench.work}")
    finally:
        server.stop()
    results.load_end = os.getloadavg()
    results.finished = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    results.duration = time.monotonic() - t_start
    return results


def _keycloak(reuse: Path | None) -> KeycloakServer:
    if reuse is None:
        return KeycloakServer(home=ensure_distribution()).spawn()
    # Developing the bench: a Keycloak already running ({"url", "port", "pw", "home"} in a JSON file).
    known = json.loads(reuse.read_text())
    return KeycloakServer(home=Path(known["home"]), http_port=int(known["port"]), admin_password=known["pw"])


@dataclass
class _Bench:
    """What every figure measures with: the Keycloak, its realm and token, the trees, the peers, a work folder."""

    args: argparse.Namespace
    server: KeycloakServer
    admin: Admin
    realm: str
    token: str
    trees: list[Tree]
    peers: Peers
    work: Path

    def target(self) -> fleet.Target:
        """What a fleet (or the Pods) runs against: this Keycloak, with an admin API of its own."""
        return fleet.Target(self.server.url, self.server.http_port, self.server.admin(), self.work)

    @classmethod
    async def start(cls, server: KeycloakServer, args: argparse.Namespace, results: Results) -> _Bench:
        """Unpack "before", install the node peer and wait for Keycloak (noting versions and its startup)."""
        work = workdir()
        log(f"work folder {work}; Keycloak starting on {server.url}")
        trees: list[Tree] = [after_tree()]
        if args.before != "none":
            trees.append(before_tree(args.before, work / "before-tree"))
        node = await asyncio.to_thread(install_node_peers)
        peers = Peers(kcreg=server.home / "bin" / "kcreg.sh", node=node)
        results.versions = versions(peers)
        if server.pgid is not None:  # started here, not reused
            await asyncio.to_thread(server.wait_ready)
        results.keycloak = {"startup_s": server.startup_seconds or 0.0, "rss_mib": server.rss_mib or 0.0}
        admin = server.admin()
        realm = await asyncio.to_thread(admin.create_realm)
        token = await asyncio.to_thread(admin.mint_initial_access_token, realm, count=1000, expiration=7200)
        return cls(args, server, admin, realm, token, trees, peers, work)

    @property
    def costs(self) -> functools.partial[dict[str, list[Run]]]:
        """``register.costs`` against this Keycloak; give it ``work``, ``rounds`` (and ``seed``)."""
        return functools.partial(
            register.costs, url=self.server.url, realm=self.realm, token=self.token, trees=self.trees, peers=self.peers
        )

    def folder(self, name: str) -> tuple[dict[str, str], Path]:
        """A fresh folder under the work folder, and the tool's environment to run in it."""
        where = self.work / name
        where.mkdir()
        return self.tool_env(where), where

    def tool_env(self, home: Path) -> dict[str, str]:
        return register.tool_env(base_env(home), self.server.url, self.realm, self.token, home / ".dcr_client.json")


async def _startup(bench: _Bench, results: Results) -> None:
    results.loads["startup"] = os.getloadavg()
    log("startup: env, imports, importtime, cProfile")
    # ``dcr-bootstrap env`` needs a saved registration: copy one from the warm-up.
    saved = _a_saved_file(bench.work / "warmup")
    env, home = bench.folder("startup")
    (home / ".dcr_client.json").write_bytes(saved.read_bytes())
    rng = random.Random(6)  # noqa: S311 - a schedule, not a secret
    results.env = await asyncio.to_thread(
        startup.env_runs, bench.trees, env, home, bench.args.rounds, rng, bench.peers.node
    )
    for tree in bench.trees:
        results.importtime[tree.label] = await asyncio.to_thread(
            startup.importtime, tree, *bench.folder(f"importtime-{tree.label}")
        )
        results.profiles[tree.label] = await asyncio.to_thread(
            startup.profile, tree, *bench.folder(f"profile-{tree.label}")
        )
        results.imports[tree.label] = await asyncio.to_thread(
            startup.import_costs,
            tree,
            base_env(home),
            home,
            max(3, bench.args.rounds // 2),
            results.importtime[tree.label].own_modules,
        )


async def _cost(bench: _Bench, results: Results) -> None:
    results.loads["cost"] = os.getloadavg()
    log(f"cost: {bench.args.rounds} interleaved rounds")
    results.costs = await asyncio.to_thread(bench.costs, work=bench.work / "cost", rounds=bench.args.rounds)


async def _economy(bench: _Bench, results: Results) -> None:
    results.loads["economy"] = os.getloadavg()
    log("economy: requests per job")
    results.economy = await register.economy(
        keycloak_port=bench.server.http_port,
        admin_password=bench.server.admin_password,
        realm=bench.realm,
        trees=bench.trees,
        peers=bench.peers,
        work=bench.work,
    )


async def _lag(bench: _Bench, results: Results) -> None:
    results.loads["lag"] = os.getloadavg()
    # A realm of its own, with a token for every trial.
    realm = await asyncio.to_thread(bench.admin.create_realm)
    token = await asyncio.to_thread(bench.admin.mint_initial_access_token, realm, count=500, expiration=7200)
    args = bench.args
    results.lag = await lag.run(
        keycloak_url=bench.server.url,
        keycloak_port=bench.server.http_port,
        realm=realm,
        token=token,
        trees=bench.trees,
        peers=bench.peers,
        work=bench.work / "lag",
        trials_per_tool=args.lag_trials,
        short=tuple(args.lag_gaps),
        long_gaps=args.long_gaps,
    )


async def _fleet(bench: _Bench, results: Results) -> None:
    replicas = bench.args.replicas
    for tree in bench.trees:
        for shared in (False, True):
            # The fleet raises the load itself: note it before each of its runs.
            results.loads[f"fleet {tree.label} {'shared' if shared else 'own'}"] = os.getloadavg()
            log(f"fleet: {replicas} x {tree.label}, {'one shared folder' if shared else 'own folders'}")
            results.fleets.append(await fleet.run(tree, shared, replicas, bench.target()))


async def _pods(bench: _Bench, results: Results) -> None:
    log("pods: starting etcd and kube-apiserver")
    kube = await asyncio.to_thread(pods.start_kube)
    try:
        for tree in bench.trees:
            results.loads[f"pods {tree.label}"] = os.getloadavg()
            log(f"pods: {bench.args.pods} x {tree.label} on one Secret, under one Lease")
            results.pods.append(await pods.run(tree, bench.args.pods, kube, bench.target()))
    finally:
        await asyncio.to_thread(kube.stop)


# Each figure's step, run in the order of FIGURES; each notes the load before it.
_STEPS: dict[str, Callable[[_Bench, Results], Awaitable[None]]] = {
    "startup": _startup,
    "cost": _cost,
    "economy": _economy,
    "lag": _lag,
    "fleet": _fleet,
    "pods": _pods,
}


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
    parser.add_argument("--pods", type=int, default=20, help="Pods on one Secret (20)")
    parser.add_argument("--before", default=BEFORE_REV, help=f"git revision of 'before' ({BEFORE_REV}); 'none'")
    parser.add_argument("--only", action="append", choices=FIGURES, help="run only this figure (repeatable)")
    parser.add_argument("--quick", action="store_true", help="tiny numbers, for checking the bench itself")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "PERFORMANCE.md")
    parser.add_argument(
        "--replace", action="store_true", help="with --only: write only the figures run, do not keep the others"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs of every run)")
    parser.add_argument("--reuse-keycloak", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.lag_trials, args.long_gaps, args.replicas, args.pods = 2, 2, 0, 10, 4
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    results = asyncio.run(_main(args))
    text = report.render(results, " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    ran = set(args.only or FIGURES)
    if ran != set(FIGURES) and args.output.exists() and not args.replace:
        # A partial run: the figures it did not run stay as the file published them.
        text = report.merge(args.output.read_text(), text, ran)
        log(f"kept the figures not rerun from the previous {args.output.name}")
    args.output.write_text(text)
    raw = ROOT / "bench" / "results"
    raw.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    (raw / f"bench-{stamp}.json").write_text(json.dumps(asdict(results), indent=1, default=str))
    log(f"wrote {args.output} and bench/results/bench-{stamp}.json")
    return 0
