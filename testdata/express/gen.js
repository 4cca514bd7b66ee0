#!/usr/bin/env node
// Generates vectors.json for sessionauth's express-session compatibility
// test (sessionauth/express_test.go).
//
// It runs the REAL express-session middleware with the REAL connect-redis
// RedisStore on a local HTTP server. The store gets a recording stand-in for
// the node-redis client, so no Redis is needed here: every value connect-redis
// would SET (key, JSON, EX seconds) is captured as-is. The cookie is taken from
// the Set-Cookie header express-session sent (signed with cookie-signature,
// URL-encoded by the cookie package), and each vector is read back once more
// through express-session to prove the pair is what the Ticketi server accepts.
//
// Usage (keep node_modules out of the repository):
//   tmp=$(mktemp -d) && cp package.json gen.js "$tmp" && (cd "$tmp" &&
//     npm install --no-audit --no-fund && node gen.js) > vectors.json
'use strict';

const http = require('http');
const session = require('express-session');
const { RedisStore } = require('connect-redis');
const signature = require('cookie-signature');

const SECRET = 'ticketi express-session secret (test vector only)';
const NEW_SECRET = 'ticketi rotated express-session secret (test vector only)';
const OTHER_SECRET = 'a secret the edge does not know (test vector only)';

// recordingClient implements the part of the node-redis v5 client that
// connect-redis 9 calls for get/set/expire/del.
function recordingClient() {
  const data = new Map();
  return {
    data,
    async get(key) { return data.has(key) ? data.get(key).value : null; },
    async set(key, value, opts) {
      const ex = opts && opts.expiration ? opts.expiration.value : null;
      data.set(key, { value, ex });
      return 'OK';
    },
    async expire(key, ttl) { if (data.has(key)) data.get(key).ex = ttl; return 1; },
    async del(keys) { let n = 0; for (const k of keys) n += data.delete(k) ? 1 : 0; return n; },
    async mGet(keys) { return keys.map((k) => (data.has(k) ? data.get(k).value : null)); },
  };
}

// The shapes a login handler commonly leaves in req.session.
const cases = [
  {
    name: 'top-level-fields',
    secrets: [SECRET],
    cookie: { maxAge: 24 * 3600 * 1000 },
    login(s) { s.userId = '1'; s.username = 'alice'; s.isVerified = true; },
    expect: { result: 'valid', userId: '1', username: 'alice', isVerified: true },
  },
  {
    name: 'nested-user-object',
    secrets: [SECRET],
    cookie: { maxAge: 7 * 24 * 3600 * 1000 },
    login(s) { s.user = { id: 2, username: 'bob', isVerified: false, email: 'bob@example.test' }; },
    expect: { result: 'valid', userId: '2', username: 'bob', isVerified: false },
  },
  {
    name: 'passport-user-id',
    secrets: [SECRET],
    cookie: {}, // no maxAge: a browser-session cookie, expires null; connect-redis uses its 1-day TTL
    login(s) { s.passport = { user: '3' }; },
    expect: { result: 'valid', userId: '3', username: '', isVerified: false },
  },
  {
    name: 'rotated-secret-list',
    secrets: [NEW_SECRET, SECRET], // express-session signs with the first
    cookie: { maxAge: 3600 * 1000 },
    login(s) { s.userId = '4'; s.username = 'dana'; s.isVerified = true; },
    expect: { result: 'valid', userId: '4', username: 'dana', isVerified: true },
  },
  {
    name: 'anonymous-session',
    secrets: [SECRET],
    cookie: { maxAge: 3600 * 1000 },
    login(s) { s.views = 1; }, // a session without a logged-in user
    expect: { result: 'unknown' },
  },
];

function request(port, path, cookieHeader) {
  return new Promise((resolve, reject) => {
    const headers = cookieHeader ? { Cookie: cookieHeader } : {};
    http.get({ host: '127.0.0.1', port, path, headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve({ res, body }));
    }).on('error', reject);
  });
}

async function runCase(c) {
  const client = recordingClient();
  const mw = session({
    store: new RedisStore({ client }), // default prefix "sess:"
    secret: c.secrets,
    name: 'connect.sid',
    resave: false,
    saveUninitialized: false,
    cookie: c.cookie,
  });
  const server = http.createServer((req, res) => mw(req, res, () => {
    if (req.url === '/login') c.login(req.session);
    res.end(JSON.stringify({ sid: req.sessionID, session: req.session }));
  }));
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const port = server.address().port;
  try {
    const generatedAtMs = Date.now();
    const { res, body } = await request(port, '/login');
    const setCookie = res.headers['set-cookie'][0];
    const sid = JSON.parse(body).sid;
    const cookiePair = setCookie.split(';')[0]; // what the browser sends back
    const key = 'sess:' + sid;
    const stored = client.data.get(key);
    if (!stored) throw new Error(c.name + ': connect-redis stored nothing');
    // Read back through express-session: the cookie must load the session.
    const again = JSON.parse((await request(port, '/whoami', cookiePair)).body);
    if (again.sid !== sid) throw new Error(c.name + ': express-session did not accept its own cookie');
    return {
      name: c.name,
      secrets: c.secrets,
      sid,
      setCookie,
      cookieHeader: cookiePair,
      redisKey: key,
      redisValue: stored.value,
      redisTTLSeconds: stored.ex,
      generatedAtMs,
      expect: c.expect,
    };
  } finally {
    server.close();
  }
}

async function main() {
  const vectors = [];
  for (const c of cases) vectors.push(await runCase(c));
  // A cookie signed exactly like express-session's setcookie() does, but with
  // a secret the edge is not given: it must be refused.
  const sid = vectors[0].sid;
  const foreign = 's:' + signature.sign(sid, OTHER_SECRET);
  const cookie = require('cookie');
  vectors.push({
    name: 'signed-with-unknown-secret',
    secrets: [OTHER_SECRET],
    sid,
    setCookie: cookie.serialize('connect.sid', foreign, { path: '/', httpOnly: true }),
    cookieHeader: 'connect.sid=' + encodeURIComponent(foreign),
    redisKey: vectors[0].redisKey,
    redisValue: vectors[0].redisValue,
    redisTTLSeconds: vectors[0].redisTTLSeconds,
    generatedAtMs: vectors[0].generatedAtMs,
    expect: { result: 'invalid' },
  });
  const versions = {};
  for (const p of ['express-session', 'connect-redis', 'cookie-signature', 'cookie']) {
    const file = require('path').join(__dirname, 'node_modules', p, 'package.json');
    versions[p] = JSON.parse(require('fs').readFileSync(file, 'utf8')).version;
  }
  process.stdout.write(JSON.stringify({
    comment: 'Generated by testdata/express/gen.js with the real express-session and connect-redis; do not edit by hand.',
    node: process.version,
    versions,
    edgeSecrets: [SECRET, NEW_SECRET],
    vectors,
  }, null, 2) + '\n');
}

main().catch((err) => { console.error(err); process.exit(1); });
