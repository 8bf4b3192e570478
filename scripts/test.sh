#!/usr/bin/env bash
# Run every check and test: lint, types, unit tests, and integration tests against a real Keycloak.
# This is the README's test command, and exactly what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

# ruff, ruff format, mypy --strict, shellcheck, hadolint: the pre-commit hooks, from the pinned venv, offline.
.venv/bin/pre-commit run --all-files --show-diff-on-failure
status=0
# Branch coverage of bootstrap/ (in-process), held to the floor in pyproject.toml ([tool.coverage.report]).
.venv/bin/pytest --cov --cov-report=term-missing:skip-covered "$@" || status=$?

# No server the harnesses started may outlive the test session (they promise it; check it from outside).
cache="${XDG_CACHE_HOME:-$HOME/.cache}/dcr-bootstrap"
for pattern in "kc.home.dir=$(pwd)/.cache/keycloak" "$cache/kube/.*/(etcd|kube-apiserver) " \
  "$cache/kube-node/.*/(kubelet|kube-controller-manager|kube-scheduler) |/dcr-node-[0-9a-f]{6}/containerd\.(toml|sock)"; do
  if pgrep -f "$pattern" >/dev/null; then
    echo "FAILED: a server started by the tests outlived the test session:" >&2
    pgrep -af "$pattern" >&2
    exit 1
  fi
done
exit "$status"
