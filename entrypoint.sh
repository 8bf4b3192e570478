#!/bin/sh
# dcr-bootstrap container entrypoint.
#
#   no arguments   run the bootstrap and exit with its code (init container)
#   CMD [ARGS...]  run the bootstrap, export KEYCLOAK_CLIENT_ID / KEYCLOAK_CLIENT_SECRET from the
#                  credentials it wrote, then exec CMD (one container wrapping an unmodified server)
#
# Signals: while the bootstrap runs, TERM/INT/HUP are forwarded to it; after exec, CMD receives them
# directly. Exit codes are preserved (see the README's exit-code table).
#
# CMD gets only what it needs: the variables below, the bootstrap's own secrets and the files holding
# them, are removed from its environment (it gets the client secret itself as KEYCLOAK_CLIENT_SECRET).
# The files are left as they are. This is the one list; the README and docs/containers.md name it.
set -eu

bootstrap_only="DCR_INITIAL_ACCESS_TOKEN DCR_INITIAL_ACCESS_TOKEN_FILE KEYCLOAK_ADMIN_USERNAME
KEYCLOAK_ADMIN_PASSWORD KEYCLOAK_ADMIN_PASSWORD_FILE KEYCLOAK_CLIENT_SECRET_FILE"

if [ "$#" -eq 0 ]; then
  exec dcr-bootstrap
fi

child=""
forward() {
  if [ -n "$child" ]; then
    kill -s "$1" "$child" 2>/dev/null || true
  fi
}
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward HUP' HUP

dcr-bootstrap &
child=$!
# wait returns early (status > 128) when a trapped signal arrives; wait again for the real status.
status=0
while :; do
  if wait "$child"; then status=0; else status=$?; fi
  kill -0 "$child" 2>/dev/null || break
done
trap - TERM INT HUP
if [ "$status" -ne 0 ]; then
  exit "$status"
fi

# Never echo the secrets: eval reads them from the tool's stdout, nothing is logged.
exports=$(dcr-bootstrap env)
eval "$exports"
export KEYCLOAK_CLIENT_ID KEYCLOAK_CLIENT_SECRET
for name in $bootstrap_only; do
  unset "$name"
done
exec "$@"
