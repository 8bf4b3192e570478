"""The Helm CLI for the chart's tests: built once per machine from its Go module, then reused.

* ``ensure_helm()`` returns ``${XDG_CACHE_HOME:-~/.cache}/dcr-bootstrap/helm/v<version>/helm``
  (``HELM_CACHE`` overrides the ``helm`` folder), building it the first time with ``go install
  helm.sh/helm/v3/cmd/helm@v<version>`` under a file lock (another checkout may build at once).
  It is stamped with the ldflags of helm's own Makefile: without them ``helm template`` assumes
  Kubernetes 1.20 and rejects a chart's ``kubeVersion: >=1.29``. The Kubernetes version stamped is the
  one helm's Makefile derives from the ``k8s.io/client-go`` it requires (v0.37 -> 1.37).
* ``lint``, ``template``, ``install`` and ``uninstall`` are thin wrappers; every call runs with ``HELM_*`` folders in a
  temporary directory, so nothing reads or writes the user's helm configuration or repositories.

Usage: ``python -m harness.helm`` (build or reuse, print the path).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from harness.cli import printing, run_command
from harness.process import HarnessError

HELM_VERSION = os.environ.get("HELM_VERSION", "3.22.0")
MODULE = "helm.sh/helm/v3"
CACHE = Path(
    os.environ.get("HELM_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dcr-bootstrap" / "helm"
)


def _log(message: str) -> None:
    print(f"[helm-harness] {message}", file=sys.stderr, flush=True)


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    env.pop("GOFLAGS", None)  # `go install pkg@version` refuses -mod=mod
    return env


def _go(args: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(["go", *args], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise HarnessError(f"go {' '.join(args[:2])} ... failed ({proc.returncode}):\n{tail}")
    return proc.stdout


def _k8s_version(gomod: str) -> tuple[str, str]:
    """(major, minor) of Kubernetes as helm's Makefile derives it: client-go v0.N.x is Kubernetes 1.N."""
    found = re.search(r"^\s*k8s\.io/client-go v(\d+)\.(\d+)\.", gomod, flags=re.MULTILINE)
    if found is None:
        raise HarnessError("helm's go.mod requires no k8s.io/client-go; cannot stamp the Kubernetes version")
    return str(int(found[1]) + 1), found[2]


def _ldflags(version: str, gomod: str) -> str:
    major, minor = _k8s_version(gomod)
    flags = [
        "-s -w",
        f"-X {MODULE}/internal/version.version=v{version}",
        f"-X {MODULE}/internal/version.metadata=",
        f"-X {MODULE}/internal/version.gitTreeState=clean",
    ]
    for pkg in ("pkg/lint/rules", "pkg/chartutil"):
        flags += [f"-X {MODULE}/{pkg}.k8sVersionMajor={major}", f"-X {MODULE}/{pkg}.k8sVersionMinor={minor}"]
    return " ".join(flags)


def _build(version: str, out: Path) -> None:
    env = _go_env()
    info = json.loads(_go(["mod", "download", "-json", f"{MODULE}@v{version}"], env))
    gomod = Path(info["GoMod"]).read_text()
    staging = out / ".gobin"
    shutil.rmtree(staging, ignore_errors=True)
    env["GOBIN"] = str(staging)
    jobs = os.environ.get("HELM_BUILD_JOBS", "1")  # the machine may be building kube-apiserver at once
    _log(f"building helm v{version} (cold: ~80 s)")
    started = time.monotonic()
    _go(
        ["install", "-p", jobs, "-trimpath", "-ldflags", _ldflags(version, gomod), f"{MODULE}/cmd/helm@v{version}"], env
    )
    (staging / "helm").rename(out / "helm")
    staging.rmdir()
    _log(f"helm built in {time.monotonic() - started:.0f}s into {out}")


def ensure_helm(version: str = HELM_VERSION) -> Path:
    """The cached helm binary, built first if missing."""
    out = CACHE / f"v{version}"
    binary = out / "helm"
    if binary.exists():
        return binary
    if shutil.which("go") is None:
        raise HarnessError("Go 1.26+ is needed to build helm once; install it and run again")
    out.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".build.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():  # the other checkout may have built it while this one waited
            _build(version, out)
    return binary


@contextmanager
def _isolated() -> Iterator[dict[str, str]]:
    """An environment whose helm config, cache and data folders are a fresh temporary directory."""
    with tempfile.TemporaryDirectory(prefix="dcr-helm-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_") and k != "KUBECONFIG"}
        for name in ("CONFIG", "CACHE", "DATA"):
            env[f"HELM_{name}_HOME"] = str(Path(home) / name.lower())
        yield env


def run(*args: str, check: bool = True, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``helm args...``; a failure raises HarnessError with helm's stderr unless ``check`` is False."""
    with _isolated() as env:
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        proc = subprocess.run(
            [str(ensure_helm()), *args], env=env, capture_output=True, text=True, check=False, timeout=120
        )
    if check and proc.returncode != 0:
        raise HarnessError(f"helm {args[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _values_args(values: Mapping[str, Any] | None, folder: Path) -> list[str]:
    if not values:
        return []
    path = folder / "values.yaml"
    path.write_text(yaml.safe_dump(dict(values)))
    return ["--values", str(path)]


def lint(chart: Path, values: Mapping[str, Any] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``helm lint --strict`` of ``chart`` with ``values`` layered over its defaults."""
    with tempfile.TemporaryDirectory(prefix="dcr-helm-values-") as folder:
        return run("lint", "--strict", str(chart), *_values_args(values, Path(folder)), check=check)


def template_text(
    chart: Path, release: str = "demo", namespace: str = "default", values: Mapping[str, Any] | None = None
) -> str:
    """The manifests ``helm template`` renders, as one YAML stream."""
    with tempfile.TemporaryDirectory(prefix="dcr-helm-values-") as folder:
        args = ["template", release, str(chart), "--namespace", namespace, *_values_args(values, Path(folder))]
        return run(*args).stdout


def template(
    chart: Path, release: str = "demo", namespace: str = "default", values: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The rendered manifests as a list of documents (empty documents dropped)."""
    text = template_text(chart, release, namespace, values)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def install(
    kubeconfig: Path,
    chart: Path,
    release: str,
    namespace: str,
    values: Mapping[str, Any] | None = None,
    extra: tuple[str, ...] = (),
) -> str:
    """``helm upgrade --install`` into ``namespace`` of the cluster ``kubeconfig`` names; returns helm's output."""
    with tempfile.TemporaryDirectory(prefix="dcr-helm-values-") as folder:
        args = ["upgrade", "--install", release, str(chart), "--namespace", namespace]
        return run(*args, *_values_args(values, Path(folder)), *extra, kubeconfig=kubeconfig).stdout


def uninstall(kubeconfig: Path, release: str, namespace: str, extra: tuple[str, ...] = ()) -> str:
    """``helm uninstall`` of ``release`` in ``namespace`` of the cluster ``kubeconfig`` names; returns helm's output."""
    return run("uninstall", release, "--namespace", namespace, *extra, kubeconfig=kubeconfig).stdout


def main(argv: list[str] | None = None) -> int:
    return run_command("helm", {"build": printing(ensure_helm)}, "[build]", argv, default="build")


if __name__ == "__main__":
    sys.exit(main())
