#!/usr/bin/env node
// Generates vectors.json for cachehandler's path matching test
// (cachehandler/express_routing_test.go).
//
// It runs REAL Express routers (default settings, and with "case sensitive
// routing" + "strict routing") on a local HTTP server and sends each raw
// request path (no client-side normalisation) to it. Every answer records
// which route handled the path and the params Express decoded, or null when
// no route matched (Express's 404). The edge must match exactly the same
// paths to the same route with the same parameter values, so a path variant
// that reaches a handler can neither get a second cache entry nor escape an
// invalidation.
//
//   npm install && npm run gen                                 (Express 4, vectors.json)
//   npm install express@5 && node gen.js > vectors-express5.json  (Express 5)
const express = require('express');
const http = require('http');

// Routes in the order Caddyfile.example lists its rules.
const routes = [
  ['GET', 'events_featured', '/api/events/featured'],
  ['GET', 'events_location', '/api/events/location/:location'],
  ['GET', 'event', '/api/events/:id'],
  ['GET', 'user_profile', '/api/users/:id/profile'],
  ['PUT', 'event_put', '/api/events/:id'],
  ['POST', 'events_post', '/api/events'],
];

const paths = [
  '/api/events/42', '/api/events/42/', '/API/events/42', '/api/Events/42', '/API/EVENTS/42/',
  '/api/events/42//', '/api//events/42', '//api/events/42', '/api/events//42', '/api/events/42/x',
  '/api/events/%34%32', '/api/%65vents/42', '/api/events/4%2F2', '/api/events/%2e%2e',
  '/api/events/featured', '/api/events/FEATURED', '/api/events/featured/', '/api/events/Featured/',
  '/api/events/abc', '/api/events/ABC', '/api/events/',
  '/api/events/location/Paris', '/api/events/location/Paris/', '/API/Events/Location/paris',
  '/api/events/location/New%20York', '/api/events/location/',
  '/api/users/7/profile', '/api/users/7/profile/', '/api/USERS/7/PROFILE', '/api/users/7/profile//',
  '/api/events', '/api/events/', '/API/EVENTS',
];

function app(strict) {
  const a = express();
  if (strict) {
    a.set('case sensitive routing', true);
    a.set('strict routing', true);
  }
  for (const [method, name, path] of routes) {
    a[method.toLowerCase()](path, (req, res) => res.json({ route: name, params: req.params }));
  }
  a.use((req, res) => res.status(404).json({ route: null }));
  return a;
}

function ask(port, method, path) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path }, res => {
      let body = '';
      res.on('data', d => { body += d; });
      res.on('end', () => resolve(JSON.parse(body)));
    });
    req.on('error', reject);
    req.end();
  });
}

async function run(strict) {
  const server = http.createServer(app(strict));
  await new Promise(r => server.listen(0, '127.0.0.1', r));
  const port = server.address().port;
  const out = [];
  for (const method of ['GET', 'PUT', 'POST']) {
    for (const path of paths) {
      const got = await ask(port, method, path);
      out.push({ method, path, route: got.route, params: got.params || {} });
    }
  }
  server.close();
  return out;
}

(async () => {
  const vectors = {
    express: require('express/package.json').version,
    routes: routes.map(([method, name, path]) => ({ method, name, path })),
    default: await run(false),
    strict: await run(true),
  };
  process.stdout.write(JSON.stringify(vectors, null, 1) + '\n');
})();
