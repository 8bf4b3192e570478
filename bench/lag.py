"""Figure 1: ready-to-done lag. How long after the server becomes ready does the credentials file exist?

Each trial starts one tool against a loopback gate (``proxy.Proxy``) in front of an already-running
Keycloak. The gate is "not ready" for ``gap`` seconds after the tool's process started, then forwards:

* ``refused``: nothing listens on the gate's port until then (connection refused);
* ``503``: the gate answers every request itself with 503 (no Retry-After) until then, and counts them.

The gate rewrites the Host header to Keycloak's, and dcr-bootstrap reaches it by split horizon
(``KEYCLOAK_URL`` = Keycloak's real URL, ``DCR_INTERNAL_URL`` = the gate), as in compose or Kubernetes.

lag = the moment the credentials file exists (polled every 5 ms) - the moment the gate opened.
Tools: dcr-bootstrap before and after, and a fixed 1 s poller (curl in a shell loop, then a curl POST).

Trials overlap in time to keep the run short, but no two "busy" moments do: the schedule keeps every
trial's process start (the interpreter's import burst) and the second after its gate opens clear of
every other trial's, so one trial's registration never competes with another's for the CPU.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .common import Peers, Tree, base_env, kill, log, median, percentile, reap, spawn
from .proxy import Mode, Proxy

Variant = Literal["refused", "503"]
POLL = 0.005
START_WINDOW = {"peer": 0.15}  # a shell and curl start in milliseconds; Python needs its imports
PYTHON_START_WINDOW = 0.6
READY_WINDOW = 1.1
LONG_GAPS = (15.0, 60.0)  # the range reaches 60 s; "before" needs long gaps to show its backoff


@dataclass
class Trial:
    tool: str  # a Tree label, or "peer"
    variant: Variant
    gap: float
    start_at: float = 0.0
    started: float | None = None
    opened: float | None = None
    file_at: float | None = None
    exit_at: float | None = None
    code: int | None = None
    local_requests: int = 0  # answered 503 by the gate
    forwarded_requests: int = 0
    first_forward: float | None = None  # the first request the gate passed to Keycloak
    refused_probes: int | None = None  # retries the tool logged for "connection refused"
    log_path: Path | None = field(default=None, repr=False)

    @property
    def lag(self) -> float | None:
        if self.file_at is None or self.opened is None:
            return None
        return self.file_at - self.opened

    @property
    def not_ready_seconds(self) -> float:
        return (self.opened or 0.0) - (self.started or 0.0)


def make_trials(
    tools: Sequence[str],
    trials: int,
    short: tuple[float, float],
    long_gaps: dict[tuple[str, Variant], int],
    rng: random.Random,
) -> list[Trial]:
    plan: list[Trial] = []
    variants: tuple[Variant, ...] = ("refused", "503")
    for variant in variants:
        for tool in tools:
            plan += [Trial(tool, variant, round(rng.uniform(*short), 2)) for _ in range(trials)]
    for (tool, variant), count in long_gaps.items():
        if tool in tools:
            plan += [Trial(tool, variant, round(rng.uniform(*LONG_GAPS), 2)) for _ in range(count)]
    return plan


def schedule(trials: list[Trial], step: float = 0.05) -> float:
    """Give each trial a start offset so that no start burst or ready second overlaps another; the span."""
    busy: list[tuple[float, float]] = []

    def free(a: float, b: float) -> bool:
        return all(b <= lo or a >= hi for lo, hi in busy)

    for trial in sorted(trials, key=lambda t: -t.gap):
        ready = trial.gap
        while True:
            start = ready - trial.gap
            start_window = (start, start + START_WINDOW.get(trial.tool, PYTHON_START_WINDOW))
            ready_window = (ready - 0.1, ready + READY_WINDOW)
            if free(*start_window) and free(*ready_window):
                break
            ready += step
        busy += [start_window, ready_window]
        trial.start_at = start
    return max(t.start_at + t.gap + READY_WINDOW for t in trials)


async def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _run_trial(
    trial: Trial,
    t0: float,
    argv: list[str],
    env: dict[str, str],
    gate: Proxy,
    file: Path,
    limit: float,
) -> None:
    await _sleep_until(t0 + trial.start_at)
    assert trial.log_path is not None
    proc = spawn(argv, env, file.parent, trial.log_path)
    trial.started = time.monotonic()
    try:
        # Before the gate opens the file cannot appear: only look for an early exit, every 50 ms.
        while time.monotonic() < trial.started + trial.gap:
            if (ended := reap(proc)) is not None:
                trial.exit_at, trial.code = time.monotonic(), ended.code
                return
            await asyncio.sleep(min(0.05, max(0.0, trial.started + trial.gap - time.monotonic())))
        trial.opened = await gate.open()
        while time.monotonic() < trial.opened + limit:
            now = time.monotonic()
            if trial.file_at is None and os.path.exists(file):  # noqa: ASYNC240 - a stat, every 5 ms
                trial.file_at = now
            if (ended := reap(proc)) is not None:
                trial.exit_at, trial.code = now, ended.code
                if trial.file_at is None and os.path.exists(file):  # noqa: ASYNC240
                    trial.file_at = now
                return
            await asyncio.sleep(POLL)
        trial.code = kill(proc).code
    finally:
        await gate.close()
        trial.local_requests = sum(1 for r in gate.requests if r.local)
        trial.forwarded_requests = sum(1 for r in gate.requests if not r.local)
        trial.first_forward = min((r.at for r in gate.requests if not r.local), default=None)


async def run(
    *,
    keycloak_url: str,
    keycloak_port: int,
    realm: str,
    token: str,
    trees: Sequence[Tree],
    peers: Peers,
    work: Path,
    trials_per_tool: int = 10,
    short: tuple[float, float] = (1.0, 8.0),
    long_gaps: int = 4,
    seed: int = 10,
) -> list[Trial]:
    rng = random.Random(seed)  # noqa: S311 - a schedule, not a secret
    tools = [tree.label for tree in trees] + (["peer"] if peers.curl else [])
    # "before" backs off exponentially on 5xx (not on a refused connection, which 5575cf1 already probed
    # every 0.2 s): the long gaps go mostly to the 503 gate, where that backoff shows.
    long_plan: dict[tuple[str, Variant], int] = {}
    if long_gaps:
        long_plan = {
            ("before", "503"): long_gaps,
            ("before", "refused"): long_gaps // 2,
            ("after", "503"): long_gaps // 2,
            ("after", "refused"): max(1, long_gaps // 4),
        }
    trials = make_trials(tools, trials_per_tool, short, long_plan, rng)
    span = schedule(trials)
    log(f"lag: {len(trials)} trials over about {span:.0f}s")
    by_label = {tree.label: tree for tree in trees}
    tasks = []
    t0 = time.monotonic() + 1.0
    for i, trial in enumerate(trials):
        folder = work / f"lag-{i:03d}-{trial.tool}-{trial.variant}"
        folder.mkdir(parents=True)
        trial.log_path = folder / "run.log"
        file = folder / ".dcr_client.json"
        mode: Mode = "refuse" if trial.variant == "refused" else "answer"
        gate = await Proxy(keycloak_port, mode=mode, rewrite_host=True).start()
        env = base_env(work) | {
            "KEYCLOAK_URL": keycloak_url,
            "DCR_INTERNAL_URL": gate.url,
            "KEYCLOAK_REALM": realm,
            "DCR_INITIAL_ACCESS_TOKEN": token,
            "DCR_CLIENT_FILE": str(file),
            "DCR_WAIT_TIMEOUT": str(int(trial.gap + 120)),
            "DCR_LOG_FORMAT": "json",
        }
        if trial.tool == "peer":
            # The poller builds its URLs from KEYCLOAK_URL: point it at the gate (Host is rewritten).
            argv, env = ["sh", str(peers.poller)], env | {"KEYCLOAK_URL": gate.url}
        else:
            tree = by_label[trial.tool]
            argv, env = tree.argv(), tree.env(env)
        tasks.append(_run_trial(trial, t0, argv, env, gate, file, limit=90.0))
    await asyncio.gather(*tasks)
    for trial in trials:
        if trial.tool != "peer" and trial.log_path is not None:
            text = trial.log_path.read_text(errors="replace")
            trial.refused_probes = sum(
                1 for line in text.splitlines() if "Server not ready" in line and "connect" in line
            )
        if trial.code != 0 or trial.lag is None:
            log(f"lag trial {trial.tool}/{trial.variant} gap {trial.gap}s failed: exit {trial.code}")
    return trials


@dataclass(frozen=True)
class LagRow:
    tool: str
    variant: Variant
    trials: int
    failed: int
    gaps: tuple[float, float]
    median: float
    p90: float
    worst: float
    lags: list[float]
    not_ready_rate: float  # requests a second the tool sent to a not-ready (503) gate
    not_ready_rate_max: float
    refused_probe_rate: float | None  # connection attempts a second while refused (from the tool's log)
    forwarded_median: float  # requests after the gate opened (to Keycloak)
    detect_median: float  # gate opened -> the tool's first request that reached Keycloak
    work_median: float  # that request -> the file exists (the job itself: requests, checks, fsync)


def summarize(trials: Sequence[Trial], tool: str, variant: Variant, *, long: bool | None = None) -> LagRow | None:
    chosen = [t for t in trials if t.tool == tool and t.variant == variant]
    if long is not None:
        chosen = [t for t in chosen if (t.gap >= 15.0) == long]
    if not chosen:
        return None
    ok = [t for t in chosen if t.lag is not None and t.code == 0]
    lags = sorted(t.lag for t in ok if t.lag is not None)
    waited = sum(t.not_ready_seconds for t in chosen)
    rates = [t.local_requests / t.not_ready_seconds for t in chosen if t.not_ready_seconds > 0]
    probes = [t.refused_probes / t.not_ready_seconds for t in chosen if t.refused_probes is not None and t.gap]
    return LagRow(
        tool=tool,
        variant=variant,
        trials=len(chosen),
        failed=len(chosen) - len(lags),
        gaps=(min(t.gap for t in chosen), max(t.gap for t in chosen)),
        median=median(lags),
        p90=percentile(lags, 90),
        worst=max(lags) if lags else float("nan"),
        lags=lags,
        not_ready_rate=sum(t.local_requests for t in chosen) / waited if waited else 0.0,
        not_ready_rate_max=max(rates) if rates else 0.0,
        refused_probe_rate=median(probes) if probes else None,
        forwarded_median=median([float(t.forwarded_requests) for t in chosen]),
        detect_median=median([t.first_forward - t.opened for t in ok if t.first_forward and t.opened]),
        work_median=median([t.file_at - t.first_forward for t in ok if t.file_at and t.first_forward]),
    )
