#!/usr/bin/env bash
# Run every check and test: lint, types, unit tests, and integration tests against a real Keycloak.
# This is the README's test command, and exactly what CI runs (.ci/run).
set -euo pipefail

# The processes matching the extended regular expression $1 (as `pgrep -f` matches) that this test session
# started: those whose environment carries our DCR_TEST_SESSION. Servers another program on the machine
# runs (another checkout's tests, a developer's cluster) look the same but lack it, so they never count.
session_processes() {
  local pid
  for pid in $(pgrep -f "$1"); do
    # /proc/<pid>/environ: the environment the process started with, NUL-separated; gone if it just ended.
    if grep -qzxF "DCR_TEST_SESSION=$DCR_TEST_SESSION" "/proc/$pid/environ" 2>/dev/null; then
      ps -o pid=,args= -p "$pid" || true
    fi
  done
}

main() {
  cd "$(dirname "$0")/.."
  scripts/setup.sh

  # Every process the session starts inherits this mark (the harnesses pass our environment on), which
  # is how the leak check below tells them from the same servers started by anyone else.
  DCR_TEST_SESSION="$(cat /proc/sys/kernel/random/uuid)"
  export DCR_TEST_SESSION

  # ruff, ruff format, mypy --strict, shellcheck, hadolint: the pre-commit hooks, from the pinned venv, offline.
  .venv/bin/pre-commit run --all-files --show-diff-on-failure
  local status=0
  # Branch coverage of bootstrap/ (in-process), held to the floor in pyproject.toml ([tool.coverage.report]).
  .venv/bin/pytest --cov --cov-report=term-missing:skip-covered "$@" || status=$?

  # No server the harnesses started may outlive the test session (they promise it; check it from outside).
  local cache="${XDG_CACHE_HOME:-$HOME/.cache}/dcr-bootstrap" pattern leaked
  for pattern in "kc.home.dir=$(pwd)/.cache/keycloak" "$cache/kube/.*/(etcd|kube-apiserver) " \
    "$cache/kube-node/.*/(kubelet|kube-controller-manager|kube-scheduler) |/dcr-node-[0-9a-f]{6}/containerd\.(toml|sock)"; do
    leaked="$(session_processes "$pattern")"
    if [[ -n "$leaked" ]]; then
      echo "FAILED: a server started by the tests outlived the test session:" >&2
      echo "$leaked" >&2
      exit 1
    fi
  done
  exit "$status"
}

# Sourced (by tests/unit/test_leak_check.py), it only defines the functions.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
