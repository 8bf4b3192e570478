#!/usr/bin/env bash
# Set up a fresh machine for dcr-bootstrap: tools, the pinned Python environment, the Keycloak distribution.
# Idempotent: a second run only checks. Used by scripts/test.sh and scripts/demo.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*" >&2; }

need_apt=()
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  need_apt+=(python3 python3-venv)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing ${need_apt[*]} with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    say "missing: ${need_apt[*]}; install them (Java 17+, Maven, Python 3.11+) and run again"; exit 1
  fi
fi

# Go is not installed here (Debian's is too old): the container and Kubernetes stages build Compose,
# etcd and kube-apiserver with it once per machine, and fail with one line without it.
command -v go >/dev/null 2>&1 || say "go not found: install Go 1.24+ for the container and Kubernetes stages"

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ -n "$(find requirements pyproject.toml -newer "$stamp" 2>/dev/null)" ]; then
  say "installing the pinned set (requirements/dev.txt)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements/dev.txt
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  touch "$stamp"
fi

say "fetching the Keycloak distribution (cached in .cache/keycloak)"
.venv/bin/python -m harness.keycloak fetch
