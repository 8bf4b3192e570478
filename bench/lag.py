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
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .common import Peers, Tree, base_env, kill, log, median, percentile, reap, spawn
from .proxy import Mode, Proxy

Variant = Literal["refused", "503"]
VARIANTS: tuple[Variant, ...] = ("refused", "503")
POLL = 0.005
START_WINDOW = {"peer": 0.15}  # a shell and curl start in milliseconds; Python needs its imports
PYTHON_START_WINDOW = 0.6
READY_WINDOW = 1.1
LONG_GAPS = (15.0, 60.0)  # the lag goal's range reaches 60 s; "before" needs long gaps to show its backoff


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

    @property
    def ok(self) -> bool:
        return self.lag is not None and self.code == 0

    @property
    def answered_rate(self) -> float | None:
        """Requests a second the gate answered itself while not ready."""
        return self.local_requests / self.not_ready_seconds if self.not_ready_seconds > 0 else None

    @property
    def refused_probe_rate(self) -> float | None:
        """Connection attempts a second the tool logged while the gate refused (None: it logs none)."""
        if self.refused_probes is None or not self.gap:
            return None
        return self.refused_probes / self.not_ready_seconds

    @property
    def detect(self) -> float | None:
        """Gate opened -> the tool's first request that reached Keycloak: the retry policy's share of the lag."""
        return self.first_forward - self.opened if self.first_forward and self.opened else None

    @property
    def work(self) -> float | None:
        """That first request -> the file exists: the job itself."""
        return self.file_at - self.first_forward if self.file_at and self.first_forward else None


def make_trials(
    tools: Sequence[str],
    trials: int,
    short: tuple[float, float],
    long_gaps: dict[tuple[str, Variant], int],
    rng: random.Random,
) -> list[Trial]:
    plan: list[Trial] = []
    for variant in VARIANTS:
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
        if await _exited_before_ready(trial, proc):
            return
        trial.opened = await gate.open()
        await _watch(trial, proc, file, trial.opened + limit)
    finally:
        await gate.close()
        trial.local_requests = sum(1 for r in gate.requests if r.local)
        trial.forwarded_requests = sum(1 for r in gate.requests if not r.local)
        trial.first_forward = min((r.at for r in gate.requests if not r.local), default=None)


async def _exited_before_ready(trial: Trial, proc: subprocess.Popen[bytes]) -> bool:
    """Wait out the gap; True if the tool exited meanwhile."""
    assert trial.started is not None
    ready = trial.started + trial.gap
    # Before the gate opens the file cannot appear: only look for an early exit, every 50 ms.
    while time.monotonic() < ready:
        if (ended := reap(proc)) is not None:
            trial.exit_at, trial.code = time.monotonic(), ended.code
            return True
        await asyncio.sleep(min(0.05, max(0.0, ready - time.monotonic())))
    return False


async def _watch(trial: Trial, proc: subprocess.Popen[bytes], file: Path, deadline: float) -> None:
    """Note when the file appears and when the tool exits; kill it at ``deadline``."""
    while time.monotonic() < deadline:
        now = time.monotonic()
        _look_for(trial, file, now)
        if (ended := reap(proc)) is not None:
            trial.exit_at, trial.code = now, ended.code
            _look_for(trial, file, now)  # written just before the exit
            return
        await asyncio.sleep(POLL)
    trial.code = kill(proc).code


def _look_for(trial: Trial, file: Path, now: float) -> None:
    if trial.file_at is None and os.path.exists(file):  # a stat, every 5 ms: cheap enough for the loop
        trial.file_at = now


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
    trials = make_trials(tools, trials_per_tool, short, _long_plan(long_gaps), rng)
    span = schedule(trials)
    log(f"lag: {len(trials)} trials over about {span:.0f}s")
    by_label = {tree.label: tree for tree in trees}
    setup = _Setup(keycloak_url, keycloak_port, realm, token, peers, work)
    t0 = time.monotonic() + 1.0
    tasks = []
    for i, trial in enumerate(trials):
        argv, env, gate, file = await setup.prepare(i, trial, None if trial.tool == "peer" else by_label[trial.tool])
        tasks.append(_run_trial(trial, t0, argv, env, gate, file, limit=90.0))
    await asyncio.gather(*tasks)
    for trial in trials:
        _count_refused_probes(trial)
        if trial.code != 0 or trial.lag is None:
            log(f"lag trial {trial.tool}/{trial.variant} gap {trial.gap}s failed: exit {trial.code}")
    return trials


def _long_plan(long_gaps: int) -> dict[tuple[str, Variant], int]:
    """How many long-gap trials each tool gets at each gate.

    "before" backs off exponentially on 5xx (not on a refused connection, which 5575cf1 already probed
    every 0.2 s): the long gaps go mostly to the 503 gate, where that backoff shows.
    """
    if not long_gaps:
        return {}
    return {
        ("before", "503"): long_gaps,
        ("before", "refused"): long_gaps // 2,
        ("after", "503"): long_gaps // 2,
        ("after", "refused"): max(1, long_gaps // 4),
    }


@dataclass(frozen=True)
class _Setup:
    """What every trial shares: the Keycloak behind the gates, the realm, and where the trials work."""

    keycloak_url: str
    keycloak_port: int
    realm: str
    token: str
    peers: Peers
    work: Path

    async def prepare(self, i: int, trial: Trial, tree: Tree | None) -> tuple[list[str], dict[str, str], Proxy, Path]:
        """Trial ``i``'s folder and gate (listening already, unless it refuses); its argv, env, gate and file.

        ``tree`` None: the 1 s poller.
        """
        folder = self.work / f"lag-{i:03d}-{trial.tool}-{trial.variant}"
        folder.mkdir(parents=True)
        trial.log_path = folder / "run.log"
        file = folder / ".dcr_client.json"
        mode: Mode = "refuse" if trial.variant == "refused" else "answer"
        gate = await Proxy(self.keycloak_port, mode=mode, rewrite_host=True).start()
        env = base_env(self.work) | {
            "KEYCLOAK_URL": self.keycloak_url,
            "DCR_INTERNAL_URL": gate.url,
            "KEYCLOAK_REALM": self.realm,
            "DCR_INITIAL_ACCESS_TOKEN": self.token,
            "DCR_CLIENT_FILE": str(file),
            "DCR_WAIT_TIMEOUT": str(int(trial.gap + 120)),
            "DCR_LOG_FORMAT": "json",
        }
        if tree is None:
            # The poller builds its URLs from KEYCLOAK_URL: point it at the gate (Host is rewritten).
            argv, env = ["sh", str(self.peers.poller)], env | {"KEYCLOAK_URL": gate.url}
        else:
            argv, env = tree.argv(), tree.env(env)
        return argv, env, gate, file


def _count_refused_probes(trial: Trial) -> None:
    """The poller does not log its tries; dcr-bootstrap logs each refused connection."""
    if trial.tool != "peer" and trial.log_path is not None:
        text = trial.log_path.read_text(errors="replace")
        trial.refused_probes = sum(1 for line in text.splitlines() if "Server not ready" in line and "connect" in line)


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
    """One tool at one gate; ``long``: only the 15-60 s gaps (True), only the short ones (False), or all (None)."""
    chosen = _choose(trials, tool, variant, long)
    if not chosen:
        return None
    ok = [t for t in chosen if t.ok]
    lags = sorted(_present(t.lag for t in ok))
    gaps = [t.gap for t in chosen]
    return LagRow(
        tool=tool,
        variant=variant,
        trials=len(chosen),
        failed=len(chosen) - len(lags),
        gaps=(min(gaps), max(gaps)),
        median=median(lags),
        p90=percentile(lags, 90),
        worst=max(lags, default=float("nan")),
        lags=lags,
        not_ready_rate=_answered_rate(chosen),
        not_ready_rate_max=max(_present(t.answered_rate for t in chosen), default=0.0),
        refused_probe_rate=_median_or_none(_present(t.refused_probe_rate for t in chosen)),
        forwarded_median=median([float(t.forwarded_requests) for t in chosen]),
        detect_median=median(_present(t.detect for t in ok)),
        work_median=median(_present(t.work for t in ok)),
    )


def _choose(trials: Sequence[Trial], tool: str, variant: Variant, long: bool | None) -> list[Trial]:
    return [t for t in trials if t.tool == tool and t.variant == variant and long in (None, t.gap >= LONG_GAPS[0])]


def _median_or_none(values: Sequence[float]) -> float | None:
    return median(values) if values else None


def _answered_rate(trials: Sequence[Trial]) -> float:
    """Requests the gates answered ÷ the seconds they were not ready, over all ``trials``."""
    waited = sum(t.not_ready_seconds for t in trials)
    return sum(t.local_requests for t in trials) / waited if waited else 0.0


def _present(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None]
