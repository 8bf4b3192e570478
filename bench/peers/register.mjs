// The node peer: openid-client 6 doing dcr-bootstrap's job on a first run. Discovery and RFC 7591
// registration (dynamicClientRegistration does both), then the credentials written to a JSON file
// (temp file with mode 0600, rename). With --prove it also obtains a client_credentials token, the
// third request dcr-bootstrap makes. Settings: the same environment variables as dcr-bootstrap.
import { rename, writeFile } from "node:fs/promises";
import * as client from "openid-client";

const env = process.env;
const issuer = env.DCR_ISSUER ?? `${env.KEYCLOAK_URL}/realms/${env.KEYCLOAK_REALM}`;
const file = env.DCR_CLIENT_FILE ?? ".dcr_client.json";
const prove = process.argv.includes("--prove");

const config = await client.dynamicClientRegistration(
  new URL(issuer),
  {
    client_name: `bench-node-${process.pid}`,
    grant_types: ["client_credentials"],
    token_endpoint_auth_method: "client_secret_basic",
  },
  client.ClientSecretBasic(), // the secret the server issues, sent as dcr-bootstrap sends it
  {
    initialAccessToken: env.DCR_INITIAL_ACCESS_TOKEN,
    execute: [client.allowInsecureRequests],
  },
);
const registered = config.clientMetadata();
const server = config.serverMetadata();
if (prove) {
  await client.clientCredentialsGrant(config);
}
const saved = {
  client_id: registered.client_id,
  client_secret: registered.client_secret,
  registration_access_token: registered.registration_access_token,
  registration_client_uri: registered.registration_client_uri,
  issuer: server.issuer,
  token_endpoint: server.token_endpoint,
};
const temp = `${file}.${process.pid}.tmp`;
await writeFile(temp, JSON.stringify(saved, null, 2), { mode: 0o600 });
await rename(temp, file);
