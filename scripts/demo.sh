#!/usr/bin/env bash
# Local bring-up on a fresh machine: set everything up, start Keycloak, run dcr-bootstrap, prove the
# credentials with a token request, show the reload on a second run, stop Keycloak.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m harness.demo
