#!/bin/sh
# The lag peer: a fixed 1 s poller (what wait-for-it style scripts do), then a hand-written RFC 7591
# POST with curl, the answer written to DCR_CLIENT_FILE (temp file, then rename).
# Environment: KEYCLOAK_URL, KEYCLOAK_REALM, DCR_INITIAL_ACCESS_TOKEN, DCR_CLIENT_FILE.
set -eu
issuer="$KEYCLOAK_URL/realms/$KEYCLOAK_REALM"
until curl -sf -o /dev/null "$issuer/.well-known/openid-configuration"; do
  sleep 1
done
umask 077
curl -sf -o "$DCR_CLIENT_FILE.tmp" \
  -H "Content-Type: application/json" \
  -H "Authorization: Bearer $DCR_INITIAL_ACCESS_TOKEN" \
  -d '{"client_name":"bench-poller","grant_types":["client_credentials"]}' \
  "$issuer/clients-registrations/openid-connect"
mv "$DCR_CLIENT_FILE.tmp" "$DCR_CLIENT_FILE"
