#!/usr/bin/env bash
# Local bring-up on a fresh machine: set everything up, start Keycloak, run dcr-bootstrap, prove the
# credentials, start the unmodified example MCP server against them and make an MCP call, show the reload
# on a restart, stop everything (harness/demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m harness.demo
