#!/usr/bin/env bash
# Run every check and test: lint, types, unit tests, and integration tests against a real Keycloak.
# This is the README's test command, and exactly what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
status=0
.venv/bin/pytest "$@" || status=$?

# No Keycloak may outlive the test session (the harness promises it; check it from outside).
if pgrep -f "kc.home.dir=$(pwd)/.cache/keycloak" >/dev/null; then
  echo "FAILED: a Keycloak process outlived the test session:" >&2
  pgrep -af "kc.home.dir=$(pwd)/.cache/keycloak" >&2
  exit 1
fi
exit "$status"
