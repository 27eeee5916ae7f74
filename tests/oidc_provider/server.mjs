// A real, certified OpenID Provider for tests/test_any_provider.py: the npm package
// `oidc-provider`, with its own defaults wherever the tests do not need otherwise.
//
//   node server.mjs [port]
//
// Settings (environment):
//   OIDC_PORT                   port to listen on (or the first argument); 0 (the default): any free
//                               one. The ready line names the port and issuer actually used.
//   OIDC_HOST                   address to listen on and to name in the issuer; default 127.0.0.1
//   OIDC_PATH                   the issuer's path; default /oidc (MSAL refuses an authority without one)
//   OIDC_TLS_CERT, OIDC_TLS_KEY PEM files of the server certificate (with its chain) and its key
//   OIDC_CLIENT_ID, OIDC_CLIENT_SECRET
//   OIDC_REDIRECT_URIS          JSON array of the client's redirect URIs
//   OIDC_POST_LOGOUT_REDIRECT_URIS  JSON array of its post-logout redirect URIs (default [])
//   OIDC_CLAIMS_IN_ID_TOKEN     1: profile and email claims in the id token too. Default: the id
//                               token of the code flow carries `sub` only and the rest is at userinfo
//                               (oidc-provider's conformIdTokenClaims, as OpenID Connect Core §5.4 says)
//   OIDC_ACCESS_TOKEN_TTL       access token lifetime in seconds; default oidc-provider's (1 hour)
//   OIDC_REFRESH_TOKENS         "off": never issue a refresh token. Default oidc-provider's policy:
//                               one when offline_access was granted, and it keeps offline_access
//                               only in an authorization request with prompt=consent
//
// Sign-in uses oidc-provider's development interactions: any login name and any password, then a
// consent page. findAccount knows every name: `sub` is the login name, and the profile is made up
// from it ("ada.lovelace" is Ada Lovelace, ada.lovelace@example.test).
//
// Prints one line `READY {"issuer": ..., "port": ...}` on stdout when it listens, then one JSON
// line per protocol event (a token grant, an authorization error, a sign-out) for the tests to read.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';

import Provider from 'oidc-provider';

const env = process.env;

function required(name) {
  const value = env[name];
  if (!value) {
    console.error(`server.mjs: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

function jsonList(name, fallback) {
  const raw = env[name];
  if (!raw) {
    if (fallback !== undefined) return fallback;
    return required(name);
  }
  const value = JSON.parse(raw);
  if (!Array.isArray(value) || !value.every((item) => typeof item === 'string')) {
    console.error(`server.mjs: ${name} must be a JSON array of strings`);
    process.exit(2);
  }
  return value;
}

function log(event) {
  process.stdout.write(`${JSON.stringify({ at: Date.now() / 1000, ...event })}\n`);
}

const host = env.OIDC_HOST || '127.0.0.1';
const requestedPort = Number(process.argv[2] ?? env.OIDC_PORT ?? 0);
const mountPath = `/${(env.OIDC_PATH || '/oidc').replace(/^\/+|\/+$/g, '')}`;
const tls = { cert: readFileSync(required('OIDC_TLS_CERT')), key: readFileSync(required('OIDC_TLS_KEY')) };

const client = {
  client_id: required('OIDC_CLIENT_ID'),
  client_secret: required('OIDC_CLIENT_SECRET'),
  redirect_uris: jsonList('OIDC_REDIRECT_URIS'),
  post_logout_redirect_uris: jsonList('OIDC_POST_LOGOUT_REDIRECT_URIS', []),
  response_types: ['code'],
  grant_types: ['authorization_code', 'refresh_token'],
  token_endpoint_auth_method: 'client_secret_post', // MSAL sends the secret in the form body
};

// A fresh signing key per run: nothing secret is kept in the repository.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: randomBytes(8).toString('hex'), use: 'sig', alg: 'RS256' };

function profileOf(login) {
  const words = login.split(/[^A-Za-z0-9]+/).filter(Boolean);
  const name = words.map((word) => word[0].toUpperCase() + word.slice(1)).join(' ') || login;
  return {
    name,
    given_name: words.length ? name.split(' ')[0] : undefined,
    family_name: words.length > 1 ? name.split(' ').slice(1).join(' ') : undefined,
    preferred_username: login,
    email: `${words.join('.').toLowerCase() || 'user'}@example.test`,
    email_verified: true,
  };
}

const configuration = {
  clients: [client],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  // The standard claims of the profile and email scopes (oidc-provider knows only `sub` otherwise).
  claims: {
    openid: ['sub'],
    profile: ['name', 'given_name', 'family_name', 'preferred_username'],
    email: ['email', 'email_verified'],
  },
  conformIdTokenClaims: env.OIDC_CLAIMS_IN_ID_TOKEN !== '1',
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return { sub, ...profileOf(sub) };
      },
    };
  },
  features: {
    devInteractions: { enabled: true }, // the default, said out loud: the tests sign in through it
    rpInitiatedLogout: { enabled: true }, // the default too
  },
};

if (env.OIDC_ACCESS_TOKEN_TTL) {
  const seconds = Number(env.OIDC_ACCESS_TOKEN_TTL);
  configuration.ttl = { AccessToken: () => seconds };
}
if (env.OIDC_REFRESH_TOKENS === 'off') {
  configuration.issueRefreshToken = async () => false;
}

// Listen first (port 0: the kernel picks), then build the provider for the port it got.
const server = createServer(tls);
server.listen(requestedPort, host, () => {
  const { port } = server.address();
  const issuer = `https://${host}:${port}${mountPath}`;
  const provider = new Provider(issuer, configuration);

  provider.on('grant.success', (ctx) => log({
    event: 'grant.success',
    grant_type: ctx.oidc.params.grant_type,
    scope: ctx.body?.scope,
    expires_in: ctx.body?.expires_in,
    refresh_token: Boolean(ctx.body?.refresh_token), // whether one was issued, never the token
  }));
  for (const name of ['authorization.error', 'grant.error', 'userinfo.error', 'end_session.error', 'server_error']) {
    provider.on(name, (ctx, error) => log({
      event: name, error: error.error || error.name, error_description: error.error_description || error.message,
    }));
  }
  provider.on('authorization.success', (ctx) => log({ event: 'authorization.success', prompt: ctx.oidc.params.prompt }));
  provider.on('end_session.success', () => log({ event: 'end_session.success' }));

  // oidc-provider routes below its mount path; it learns that path from req.originalUrl.
  const callback = provider.callback();
  server.on('request', (req, res) => {
    const url = req.url || '/';
    if (url === mountPath || url.startsWith(`${mountPath}/`) || url.startsWith(`${mountPath}?`)) {
      req.originalUrl = url;
      req.url = url.slice(mountPath.length) || '/';
      if (req.url.startsWith('?')) req.url = `/${req.url}`;
      callback(req, res);
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found\n');
  });

  process.stdout.write(`READY ${JSON.stringify({ issuer, port })}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
