// A real OpenID Connect provider for the proxy's OIDC end-to-end tests
// (tests/tests/e2e/oidc.rs): npm's `oidc-provider`, the certified implementation, configured
// like a small Keycloak realm. Pinned to the 8.x line: 9.x needs node >= 20.19 and fails on
// Debian 12's node 18 (`URL.parse is not a function`); 8.8.1 runs on both.
//
//   node provider.mjs --port PORT [--impostor-port PORT2]
//
// * Issuer `http://127.0.0.1:PORT`; discovery at `/.well-known/openid-configuration`.
// * Tokens come from the provider's own token endpoint through the client_credentials grant
//   (non-interactive): every test persona is a confidential client (secret `secret`), so the
//   token's `sub` is the persona's client id. Access tokens are JWTs because every resource
//   server below is configured with `accessTokenFormat: 'jwt'` (resource indicators,
//   RFC 8707): ask for one with `resource=<indicator>`.
// * Persona claims are added with `extraTokenClaims`, shaped like Keycloak's:
//   `realm_access.roles`, `resource_access.<client>.roles`, `groups`, `azp`,
//   `preferred_username`, and a room claim for one persona.
// * Signing keys: one RSA (RS256 and PS256), one EC P-256 (ES256), one Ed25519 (EdDSA),
//   generated at start with kids `rsa-1`, `ec-1`, `ed-1`. `POST /admin/rotate` replaces them
//   with a new generation (`rsa-2`, ...): the old keys are no longer published or used, the
//   harshest kind of rotation. The provider instance is rebuilt with the new keys and swapped
//   in place, on the same port.
// * `--impostor-port`: a second provider with issuer `http://127.0.0.1:PORT2` that signs with
//   the SAME keys: its tokens verify against the real provider's JWKS but carry another
//   `iss` (the issuer check, not the signature, must refuse them).
//
// Prints `oidc-provider ready <issuer>` on stdout once it listens. Listens on 127.0.0.1 only.

import * as crypto from 'node:crypto';
import * as http from 'node:http';

import Provider, { errors } from 'oidc-provider';

function arg(name) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
}

const port = Number(arg('port') ?? process.env.OIDC_PORT);
const impostorPort = arg('impostor-port') ? Number(arg('impostor-port')) : undefined;
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node provider.mjs --port PORT [--impostor-port PORT2]');
  process.exit(64);
}

const SECRET = 'secret';

// Test personas: client id -> claims added to their access tokens.
const PERSONAS = {
  // Keycloak realm role.
  alice: { realm_access: { roles: ['offline_access', 'rtc-moderator'] }, preferred_username: 'Alice' },
  // Realm role of a member, and a group that maps to nothing: the highest mapped role wins.
  bob: { realm_access: { roles: ['rtc-member'] }, groups: ['/staff'], preferred_username: 'Bob' },
  // Guest through a group only.
  gina: { groups: ['/guests'], preferred_username: 'Gina' },
  // Roles that map to nothing here.
  uma: { realm_access: { roles: ['offline_access', 'uma_authorization'] }, groups: ['/other'] },
  // A member whose token names its room (the proxy's room claim).
  rita: { realm_access: { roles: ['rtc-member'] }, rtc: { room: 'standup' } },
  // Both a guest group and a moderator role in a client's roles: highest wins (moderator).
  max: { groups: ['/guests'], resource_access: { 'rtc-web': { roles: ['moderator'] } } },
};

// Resource indicators -> what the JWT access token looks like.
const RESOURCES = {
  'urn:rtcd:proxy:rs256': { audience: 'rtcd-proxy', alg: 'RS256' },
  'urn:rtcd:proxy:ps256': { audience: 'rtcd-proxy', alg: 'PS256' },
  'urn:rtcd:proxy:es256': { audience: 'rtcd-proxy', alg: 'ES256' },
  'urn:rtcd:proxy:eddsa': { audience: 'rtcd-proxy', alg: 'EdDSA' },
  // Another API's audience: the proxy must refuse these.
  'urn:other:api': { audience: 'other-api', alg: 'RS256' },
  // Keycloak's default: `aud: account`, the web client only in `azp`.
  'urn:keycloak:account': { audience: 'account', alg: 'RS256', azp: 'rtc-web' },
};

let generation = 0;
let keys = [];

function newKeys() {
  generation += 1;
  const jwk = (pair, kid) => ({ ...pair.privateKey.export({ format: 'jwk' }), kid, use: 'sig' });
  keys = [
    jwk(crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }), `rsa-${generation}`),
    jwk(crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }), `ec-${generation}`),
    jwk(crypto.generateKeyPairSync('ed25519'), `ed-${generation}`),
  ];
}

function build(issuer) {
  const provider = new Provider(issuer, {
    clients: Object.keys(PERSONAS).map((id) => ({
      client_id: id,
      client_secret: SECRET,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_post',
    })),
    jwks: { keys },
    cookies: { keys: ['e2e-cookie-key-not-a-secret'] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:rtcd:proxy:rs256',
        useGrantedResource: () => true,
        getResourceServerInfo(_ctx, indicator) {
          const r = RESOURCES[indicator];
          if (!r) throw new errors.InvalidTarget();
          return {
            scope: '',
            audience: r.audience,
            accessTokenTTL: 600,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: r.alg } },
          };
        },
      },
    },
    async extraTokenClaims(_ctx, token) {
      const persona = PERSONAS[token.clientId] ?? {};
      const azp = RESOURCES[token.resourceServer?.identifier()]?.azp;
      return { ...persona, azp: azp ?? token.clientId };
    },
  });
  provider.proxy = false;
  return provider;
}

const issuer = `http://127.0.0.1:${port}`;
newKeys();
let current = build(issuer);

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/admin/rotate') {
    newKeys();
    current = build(issuer);
    impostor = impostorPort ? build(`http://127.0.0.1:${impostorPort}`) : undefined;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ kids: keys.map((k) => k.kid) }));
    return;
  }
  current.callback()(req, res);
});

let impostor = impostorPort ? build(`http://127.0.0.1:${impostorPort}`) : undefined;

function listen(srv, p) {
  return new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(p, '127.0.0.1', resolve);
  });
}

await listen(server, port);
if (impostorPort) {
  await listen(http.createServer((req, res) => impostor.callback()(req, res)), impostorPort);
}
console.log(`oidc-provider ready ${issuer}`);

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
