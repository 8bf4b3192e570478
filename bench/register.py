"""Benchmark: registering a client and reloading it, dcr-bootstrap beside the tools people use instead.

Each tool does the same job against the same real Keycloak (the harness), one fresh realm each, one
single-use initial access token per registration:

* ``dcr-bootstrap``   first run (discover, RFC 7591 register, write the file) and a restart (RFC 7592 read);
* ``kcreg.sh create`` Keycloak's own client-registration CLI (JVM), OIDC endpoint, ``-t`` token;
* ``curl``            a hand-written RFC 7591 POST, as setup scripts do (no discovery, no file, no checks).

Wall time and peak RSS per process (``os.wait4``; a tool's RSS includes the children it waits for) are
reported as median and max over ``--runs`` runs. Numbers only: nothing here asserts a time.

    .venv/bin/python -m bench.register --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from harness.keycloak import KeycloakServer

RESULTS = Path(__file__).resolve().parent / "results"


def measure(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of one process, which must exit 0."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = proc.stderr.read().decode(errors="replace")[-500:] if proc.stderr else ""
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {err}")
    return elapsed, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    server = KeycloakServer().start()
    try:
        admin = server.admin()
        work = Path(tempfile.mkdtemp(prefix="dcr-bench-"))
        base_env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(work)}
        kcreg = str(server.home / "bin" / "kcreg.sh")
        curl = shutil.which("curl")
        samples: dict[str, list[tuple[float, float]]] = {}

        def realm_and_token() -> tuple[str, str]:
            realm = admin.create_realm()
            return realm, admin.mint_initial_access_token(realm, count=1)

        def record(name: str, run: Callable[[], tuple[float, float]]) -> None:
            samples.setdefault(name, []).append(run())

        for i in range(args.runs):
            realm, token = realm_and_token()
            env = base_env | {
                "KEYCLOAK_URL": server.url,
                "KEYCLOAK_REALM": realm,
                "DCR_INITIAL_ACCESS_TOKEN": token,
                "DCR_CLIENT_FILE": str(work / f"run{i}" / ".dcr_client.json"),
                "DCR_LOG_FORMAT": "json",
            }
            bootstrap = [sys.executable, "-m", "bootstrap"]
            record("dcr-bootstrap (register)", partial(measure, bootstrap, env, work))
            record("dcr-bootstrap (restart: reload)", partial(measure, bootstrap, env, work))

            realm, token = realm_and_token()
            body = json.dumps({"client_name": f"bench-{i}", "grant_types": ["client_credentials"]})
            (work / "client.json").write_text(body)
            kcreg_argv = [kcreg, "create", "--no-config", "--server", server.url, "--realm", realm, "-t", token]
            kcreg_argv += ["-e", "oidc", "-f", str(work / "client.json"), "-i"]
            record("kcreg.sh create (Keycloak CLI)", partial(measure, kcreg_argv, base_env, work))
            if curl:
                realm, token = realm_and_token()
                endpoint = f"{server.url}/realms/{realm}/clients-registrations/openid-connect"
                curl_argv = [curl, "-sf", "-o", "/dev/null", "-H", "Content-Type: application/json"]
                curl_argv += ["-H", f"Authorization: Bearer {token}", "-d", body, endpoint]
                record("curl POST (hand-written script)", partial(measure, curl_argv, base_env, work))

        lines = [
            f"Keycloak {server.url} (started in {server.startup_seconds:.1f}s, RSS {server.rss_mib:.0f} MiB); "
            f"{args.runs} runs each; {os.cpu_count()} CPUs",
            "",
            "| tool | median wall (s) | max wall (s) | median peak RSS (MiB) |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, values in samples.items():
            walls, rss = [v[0] for v in values], [v[1] for v in values]
            lines.append(
                f"| {name} | {statistics.median(walls):.3f} | {max(walls):.3f} | {statistics.median(rss):.0f} |"
            )
        report = "\n".join(lines)
        print(report)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"register-{time.strftime('%Y%m%d-%H%M%S')}.md").write_text(report + "\n")
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
