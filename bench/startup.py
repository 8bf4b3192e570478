"""Figure 6: what starting costs. ``dcr-bootstrap env`` (run by entrypoint.sh on every start), the
interpreter's own floor, each library's import on its own, ``-X importtime`` of a whole first
registration, and a cProfile of one, before and after.
"""

from __future__ import annotations

import pstats
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .common import PYTHON, Run, Tree, measure, median

FLOOR = "python -c pass (not subtracted)"
WHOLE = "bootstrap (all modules a run imports)"
# Standalone imports in a fresh interpreter, each minus ``python -c pass``.
IMPORTS = {
    "aiohttp": "import aiohttp",
    "pydantic": "import pydantic",
    "pydantic_settings": "import pydantic_settings",
    "structlog": "import structlog",
    "tenacity": "import tenacity",
    "asyncio": "import asyncio",
    "ssl.create_default_context()": "import ssl; ssl.create_default_context()",
}


def env_runs(
    trees: Sequence[Tree], env: dict[str, str], cwd: Path, rounds: int, rng: random.Random, node: str | None = None
) -> dict[str, list[Run]]:
    """``dcr-bootstrap env`` per tree and ``python -c pass`` (and node's own start), interleaved."""
    jobs: list[tuple[str, list[str], dict[str, str]]] = [
        (f"dcr-bootstrap env ({tree.label})", tree.script("env"), tree.env(env)) for tree in trees
    ]
    jobs.append(("python -c pass (interpreter floor)", [PYTHON, "-c", "pass"], env))
    if node:
        jobs.append(("node -e 0 (node's floor)", [node, "-e", "0"], env))
    out: dict[str, list[Run]] = {name: [] for name, _, _ in jobs}
    for _ in range(rounds):
        rng.shuffle(jobs)
        for name, argv, job_env in jobs:
            out[name].append(measure(argv, job_env, cwd))
    return out


def import_costs(
    tree: Tree, env: dict[str, str], cwd: Path, rounds: int, own_modules: Sequence[str]
) -> dict[str, float]:
    """Median CPU seconds of each standalone import, minus an empty interpreter's.

    ``own_modules``: the tool's modules a real run imported (from ``-X importtime``); importing them all
    is what a run pays for its imports.
    """
    statements = {FLOOR: "pass", **IMPORTS, WHOLE: "import " + ", ".join(own_modules or ["bootstrap.cli"])}
    cpu: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        for name, statement in statements.items():
            cpu[name].append(measure([PYTHON, "-c", statement], tree.env(env), cwd).cpu)
    floor = median(cpu[FLOOR])
    return {FLOOR: floor} | {name: median(v) - floor for name, v in cpu.items() if name != FLOOR}


@dataclass(frozen=True)
class ImportTime:
    total_us: int
    by_package: dict[str, int]  # cumulative time of each top-level package's first import
    top_self: list[tuple[str, int]]  # modules with the largest self time
    own_modules: list[str]  # the bootstrap.* modules the run imported


_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def parse_importtime(stderr: str) -> ImportTime:
    by_package: dict[str, int] = defaultdict(int)
    selfs: list[tuple[str, int]] = []
    total = 0
    for line in stderr.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        self_us, cumulative, indent, module = int(match[1]), int(match[2]), len(match[3]), match[4]
        selfs.append((module, self_us))
        if indent == 1:  # imported by the program itself (not by another module)
            total += cumulative
        package = module.split(".")[0]
        # A package's cost: the cumulative time of its outermost import.
        if module == package or "." not in module:
            by_package[package] = max(by_package[package], cumulative)
    own = sorted({m for m, _ in selfs if m.startswith("bootstrap.") and m != "bootstrap.__main__"})
    return ImportTime(total, dict(by_package), sorted(selfs, key=lambda x: -x[1])[:12], own)


def importtime(tree: Tree, env: dict[str, str], cwd: Path) -> ImportTime:
    log_file = cwd / "importtime.log"
    measure([PYTHON, "-X", "importtime", "-m", "bootstrap"], tree.env(env), cwd, output=log_file)
    return parse_importtime(log_file.read_text(errors="replace"))


@dataclass(frozen=True)
class Profile:
    total: float  # seconds the profiler saw
    phases: dict[str, float]  # cumulative seconds of a few functions that name where time goes
    top: list[tuple[str, int, float, float]]  # (function, calls, tottime, cumtime), largest tottime first


# (part of the function's name, part of its file name): the largest cumulative time among matches.
PHASES = {
    "imports (importlib _find_and_load)": ("_find_and_load", "importlib._bootstrap"),
    "SSL default contexts (set_default_verify_paths)": ("set_default_verify_paths", ""),
    "settings (Settings() from the environment)": ("__init__", "pydantic_settings/main.py"),
    "the event loop's run (asyncio.run)": ("run_until_complete", "asyncio/base_events.py"),
    "waiting for the network (epoll.poll)": ("'poll' of 'select.epoll'", ""),
}


def profile(tree: Tree, env: dict[str, str], cwd: Path) -> Profile:
    out = cwd / "run.prof"
    measure([PYTHON, "-m", "cProfile", "-o", str(out), "-m", "bootstrap"], tree.env(env), cwd, output=cwd / "run.log")
    stats = pstats.Stats(str(out))
    raw = stats.stats  # type: ignore[attr-defined]
    phases: dict[str, float] = {}
    for phase, (func, where) in PHASES.items():
        best = 0.0
        for (filename, _line, name), (_cc, _nc, _tt, ct, _callers) in raw.items():
            if func in name and where in filename:
                best = max(best, float(ct))
        phases[phase] = best
    rows = []
    for (filename, line, name), (_cc, nc, tt, ct, _callers) in raw.items():
        where = re.sub(r".*/(site-packages|python3\.\d+)/", "", filename)
        rows.append((name if filename == "~" else f"{where}:{line}({name})", int(nc), float(tt), float(ct)))
    rows.sort(key=lambda r: -r[2])
    total = float(stats.total_tt)  # type: ignore[attr-defined]
    return Profile(total, phases, rows[:15])
