// A real OpenID provider for the end-to-end harness: oidc-provider (a certified
// implementation), on loopback only, issuing JWT access tokens to clients with the
// client-credentials grant, as a platform's identity provider issues them to machines, and
// to a web application with the authorization code flow (PKCE) after an end user signs in.
//
//   node provider.mjs --new-key                 prints a new RSA signing key (private JWK)
//   node provider.mjs --port P --keys FILE      serves http://127.0.0.1:P
//
// FILE holds {"keys": [private JWK, ...]}: all are published in the JWKS and the first
// signs, so a rotation is a restart with [new, old], and a removal one with [new].
// Clients (secret = id + "-secret"):
//   e2e-robot      scope "orders:read orders:write"; `aud` is the API ("shop-api")
//   e2e-multi-aud  the same, with `aud` an array: ["shop-api", "https://reports.example"]
//   e2e-web        authorization code with PKCE, redirect http://127.0.0.1:4456/callback
//                  (nothing listens there: the harness reads the code off the redirect);
//                  the sign-in and consent pages are oidc-provider's development ones,
//                  which accept any login name and password, and the login becomes `sub`
//   e2e-console    the console's operators (ci/e2e_console.py): authorization code with
//                  PKCE, redirect http://127.0.0.1:8091/login/callback, and the checkout
//                  contexts' admin scopes besides
// Access tokens carry `scope` as a space-separated string, as oidc-provider issues it.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values } = parseArgs({
  options: { port: { type: 'string' }, keys: { type: 'string' }, 'new-key': { type: 'boolean' } },
});

if (values['new-key']) {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  console.log(JSON.stringify({ ...jwk, kid: randomUUID(), alg: 'RS256', use: 'sig' }));
  process.exit(0);
}

const port = Number(values.port);
const issuer = `http://127.0.0.1:${port}`;
const API = 'shop-api';
const SCOPES = 'orders:read orders:write';
// An operator's: each checkout context's admin scope (retrying an orders saga at the
// gateway, replaying a parked outbox row through the console).
const ADMIN = 'orders:admin payments:admin inventory:admin shipping:admin';
const client = (id) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: SCOPES,
});

const web = {
  client_id: 'e2e-web',
  client_secret: 'e2e-web-secret',
  grant_types: ['authorization_code'],
  response_types: ['code'],
  redirect_uris: ['http://127.0.0.1:4456/callback'],
  scope: `openid ${SCOPES}`,
};

const consoleClient = {
  ...web,
  client_id: 'e2e-console',
  client_secret: 'e2e-console-secret',
  redirect_uris: ['http://127.0.0.1:8091/login/callback'],
  scope: `openid ${SCOPES} ${ADMIN}`,
};

const provider = new Provider(issuer, {
  jwks: JSON.parse(readFileSync(values.keys, 'utf8')),
  clients: [client('e2e-robot'), client('e2e-multi-aud'), web, consoleClient],
  scopes: [...SCOPES.split(' '), ...ADMIN.split(' ')],
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => `urn:${API}`,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: `${SCOPES} ${ADMIN}`,
        audience: API,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  formats: {
    customizers: {
      // Some providers put several audiences in one token.
      jwt: (ctx, token, jwt) => {
        if (token.clientId === 'e2e-multi-aud') {
          jwt.payload.aud = [jwt.payload.aud, 'https://reports.example'];
        }
      },
    },
  },
});

provider.listen(port, '127.0.0.1', () => console.log(`oidc-provider listening on ${issuer}`));
