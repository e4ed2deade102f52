#!/usr/bin/env node
'use strict';
// The example origin for edgeproxy: a small shop that personalizes its pages from the variant aliases
// the proxy forwards (x-cs-variant-uid), plus diagnostic endpoints the proxy's end-to-end tests use.
// Node 20 built-ins only. Usage: node server.js [--port 3000] [--host 127.0.0.1] [--content content.json]

const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');
const crypto = require('node:crypto');
const { parseArgs } = require('node:util');
const { applyVariants, parseVariantHeader, aliasesFromVariantParam, loadContent } = require('./lib/variants.js');
const { renderEntry, renderNotFound } = require('./lib/pages.js');
const { acceptWebSocket } = require('./lib/websocket.js');

const DEFAULT_CONTENT = path.join(__dirname, 'content.json');
const STATIC_DIR = path.join(__dirname, 'static');
const STATIC_TYPES = { '.css': 'text/css; charset=utf-8', '.svg': 'image/svg+xml' };
const VARIANT_QUERY_PARAM = 'personalize_variants';

// /download: byte i of the body is i % 251 (a prime, so the pattern never lines up with chunk edges).
const DOWNLOAD_CHUNK = 64 * 1024;
const PATTERN_PERIOD = 251;
const PATTERN = Buffer.alloc(DOWNLOAD_CHUNK + PATTERN_PERIOD, 0);
for (let i = 0; i < PATTERN.length; i++) PATTERN[i] = i % PATTERN_PERIOD;
const MAX_SLOW_MS = 10 * 60 * 1000;

function send(res, status, body, headers = {}) {
  const buf = Buffer.isBuffer(body) ? body : Buffer.from(body, 'utf8');
  res.writeHead(status, { 'Content-Length': buf.length, ...headers });
  res.end(buf);
}

const sendText = (res, status, text, headers = {}) =>
  send(res, status, text, { 'Content-Type': 'text/plain; charset=utf-8', ...headers });

const sendJson = (res, status, value, headers = {}) =>
  send(res, status, JSON.stringify(value, null, 2) + '\n', { 'Content-Type': 'application/json', ...headers });

function methodNotAllowed(res, allow) {
  sendText(res, 405, `method not allowed; use ${allow}\n`, { Allow: allow });
}

/** Read a request body to the end, hashing as it streams; resolves {bytes, sha256}. */
function hashBody(req) {
  return new Promise((resolve, reject) => {
    const hash = crypto.createHash('sha256');
    let bytes = 0;
    req.on('data', (chunk) => {
      bytes += chunk.length;
      hash.update(chunk);
    });
    req.on('end', () => resolve({ bytes, sha256: hash.digest('hex') }));
    req.on('error', reject);
  });
}

/** Write `total` pattern bytes in 64 KiB slices of a shared buffer, waiting for 'drain' when told to. */
function streamPattern(res, total) {
  let offset = 0;
  const pump = () => {
    while (offset < total) {
      if (res.destroyed) return; // the client went away
      const length = Math.min(DOWNLOAD_CHUNK, total - offset);
      const start = offset % PATTERN_PERIOD;
      offset += length;
      if (!res.write(PATTERN.subarray(start, start + length))) {
        res.once('drain', pump);
        return;
      }
    }
    res.end();
  };
  pump();
}

function pairs(flat) {
  const out = [];
  for (let i = 0; i < flat.length; i += 2) out.push([flat[i], flat[i + 1]]);
  return out;
}

function parseNonNegativeInt(value) {
  if (value === null || !/^[0-9]{1,16}$/.test(value)) return null;
  const n = Number(value);
  return Number.isSafeInteger(n) ? n : null;
}

/** Static files are read once at start-up; the ETag lets caches revalidate with If-None-Match. */
function loadStatic() {
  const files = new Map();
  for (const name of fs.readdirSync(STATIC_DIR)) {
    const body = fs.readFileSync(path.join(STATIC_DIR, name));
    const etag = `"${crypto.createHash('sha1').update(body).digest('hex').slice(0, 16)}"`;
    files.set(`/static/${name}`, { body, etag, type: STATIC_TYPES[path.extname(name)] || 'application/octet-stream' });
  }
  return files;
}

/**
 * Create the origin server (not yet listening).
 * @param {{content?: object, contentPath?: string}} [options]
 */
function createOriginServer(options = {}) {
  const content = options.content || loadContent(options.contentPath || DEFAULT_CONTENT);
  const staticFiles = loadStatic();
  const byUrl = new Map(content.entries.map((entry) => [entry.url, entry]));
  const webSockets = new Set();
  // Cache-Control for pages (default none: every request reaches the origin); e.g. 'public, s-maxage=30'.
  const pageCacheControl = options.pageCacheControl || '';
  // Requests seen per path, so a cache in front can be checked: GET /_origin/hits.
  const hits = new Map();

  /** Personalize an entry for this request: the header wins; without one, the Launch-style query param. */
  function personalize(entry, req, query) {
    let aliasSource = 'none';
    let aliases = [];
    if (req.headers['x-cs-variant-uid'] !== undefined) {
      aliasSource = 'x-cs-variant-uid header';
      aliases = parseVariantHeader(req.headers['x-cs-variant-uid']);
    } else if (query.get(VARIANT_QUERY_PARAM) !== null) {
      aliasSource = `?${VARIANT_QUERY_PARAM} query parameter`;
      aliases = aliasesFromVariantParam(query.get(VARIANT_QUERY_PARAM));
    }
    return { ...applyVariants(entry, aliases), entry, query, aliasSource };
  }

  function page(req, res, entry, query) {
    if (req.method !== 'GET' && req.method !== 'HEAD') return methodNotAllowed(res, 'GET, HEAD');
    const view = personalize(entry, req, query);
    const headers = {
      'Content-Type': 'text/html; charset=utf-8',
      'x-cs-applied-variants': view.applied.join(','),
      // Surrogate keys name the entry and its content type, so a publish webhook can purge the pages.
      'Surrogate-Key': `${entry.uid} ${entry.content_type_uid}`,
    };
    if (pageCacheControl) headers['Cache-Control'] = pageCacheControl;
    return send(res, 200, renderEntry(view, req, content), headers);
  }

  async function route(req, res) {
    let url;
    try {
      url = new URL(req.url.startsWith('/') ? `http://origin.invalid${req.url}` : req.url);
    } catch {
      return sendText(res, 400, 'bad request target\n');
    }
    const { pathname, searchParams: query } = url;
    hits.set(pathname, (hits.get(pathname) || 0) + 1);

    const entry = byUrl.get(pathname);
    if (entry) return page(req, res, entry, query);

    if (staticFiles.has(pathname)) {
      if (req.method !== 'GET' && req.method !== 'HEAD') return methodNotAllowed(res, 'GET, HEAD');
      const file = staticFiles.get(pathname);
      const headers = { 'Cache-Control': 'public, max-age=3600', ETag: file.etag };
      const inm = req.headers['if-none-match'];
      if (inm && inm.split(',').some((tag) => tag.trim() === file.etag || tag.trim() === '*')) {
        res.writeHead(304, headers);
        return res.end();
      }
      return send(res, 200, file.body, { 'Content-Type': file.type, ...headers });
    }

    switch (pathname) {
      case '/healthz':
        return sendText(res, 200, 'ok\n');

      case '/_origin/hits':
        return sendJson(res, 200, Object.fromEntries(hits));

      case '/cacheable': {
        // A response a shared cache may keep: ?cc= sets Cache-Control (default public, s-maxage=60),
        // ?tag= a Surrogate-Key, ?vary= a Vary; the body names the variant set, the request target as received,
        // the Accept-Language it was rendered for, and how often this path was served.
        const cc = query.get('cc') || 'public, s-maxage=60';
        const variants = req.headers['x-cs-personalize-variants'] || '';
        const language = req.headers['accept-language'] || '';
        const served = hits.get(pathname);
        const body = JSON.stringify({ variants, served, url: req.url, language, at: Date.now() }) + '\n';
        const validator = variants + (query.get('v') || '') + (query.get('vary') ? `|${language}` : '');
        const etag = `"${crypto.createHash('sha1').update(validator).digest('hex').slice(0, 16)}"`;
        const headers = { 'Content-Type': 'application/json', 'Cache-Control': cc, ETag: etag };
        if (query.get('tag')) headers['Surrogate-Key'] = query.get('tag');
        if (query.get('vary')) headers.Vary = query.get('vary');
        if (query.get('fail') === '1') return sendText(res, 503, 'origin failing on purpose\n');
        if (req.headers['if-none-match'] === etag) {
          res.writeHead(304, headers);
          return res.end();
        }
        return send(res, 200, body, headers);
      }

      case '/echo': {
        const { bytes, sha256 } = await hashBody(req);
        return sendJson(res, 200, {
          method: req.method,
          url: req.url,
          httpVersion: req.httpVersion,
          headers: req.headers,
          // As received: original case, order and repeats (req.headers merges or drops repeats).
          rawHeaders: pairs(req.rawHeaders),
          bodyLength: bytes,
          bodySha256: sha256,
        });
      }

      case '/upload': {
        if (req.method !== 'POST' && req.method !== 'PUT') return methodNotAllowed(res, 'POST, PUT');
        return sendJson(res, 200, await hashBody(req));
      }

      case '/download': {
        if (req.method !== 'GET' && req.method !== 'HEAD') return methodNotAllowed(res, 'GET, HEAD');
        const total = parseNonNegativeInt(query.get('bytes'));
        if (total === null) return sendText(res, 400, 'bytes=N (a non-negative integer) is required\n');
        const headers = { 'Content-Type': 'application/octet-stream' };
        // ?chunked=1 leaves out Content-Length so the body goes out with chunked transfer-encoding.
        if (query.get('chunked') !== '1') headers['Content-Length'] = total;
        res.writeHead(200, headers);
        if (req.method === 'HEAD') return res.end();
        return streamPattern(res, total);
      }

      case '/redirect': {
        const to = query.get('to') || '/';
        const status = Number(query.get('status') || 302);
        if (![301, 302, 303, 307, 308].includes(status)) return sendText(res, 400, 'status must be 301, 302, 303, 307 or 308\n');
        // Paths on this site, or absolute URLs back to the host the request was sent to (for
        // Location-rewriting tests); anything else would make this an open redirect.
        let allowed = to.startsWith('/') && !to.startsWith('//') && !to.startsWith('/\\');
        if (!allowed && /^https?:\/\//i.test(to)) {
          try {
            allowed = new URL(to).host === req.headers.host;
          } catch {
            allowed = false;
          }
        }
        if (!allowed) return sendText(res, 400, 'to= must be a path on this site or a URL on the requested host\n');
        return sendText(res, status, `redirecting to ${to}\n`, { Location: to });
      }

      case '/slow': {
        const ms = parseNonNegativeInt(query.get('ms') ?? '1000');
        if (ms === null || ms > MAX_SLOW_MS) return sendText(res, 400, `ms=N must be an integer from 0 to ${MAX_SLOW_MS}\n`);
        const timer = setTimeout(() => sendText(res, 200, `waited ${ms} ms\n`), ms);
        res.on('close', () => clearTimeout(timer)); // client gave up (or the response is done)
        return undefined;
      }

      case '/set-cookie': {
        const cookies = ['origin_session=abc; Path=/'];
        if (query.get('extra') === '1') cookies.push('origin_pref=dark; Path=/; Max-Age=3600; HttpOnly');
        return sendText(res, 200, `set ${cookies.map((c) => c.split(';')[0]).join(', ')}\n`, { 'Set-Cookie': cookies });
      }

      case '/ws':
        return sendText(res, 426, 'this endpoint speaks WebSocket only\n', { Upgrade: 'websocket' });

      case '/api/content': {
        // The personalized entry as JSON, for tests that would rather not parse HTML.
        const target = byUrl.get(query.get('path') || '/');
        if (!target) return sendJson(res, 404, { error: 'no entry with that url', path: query.get('path') });
        const view = personalize(target, req, query);
        return sendJson(res, 200, {
          uid: target.uid,
          content_type_uid: target.content_type_uid,
          url: target.url,
          fields: view.fields,
          applied: view.applied,
          field_sources: view.sources,
          requested: view.requested,
          ignored: view.ignored,
          alias_source: view.aliasSource,
        }, { 'x-cs-applied-variants': view.applied.join(',') });
      }

      default: {
        const status = /^\/status\/([0-9]{3})$/.exec(pathname);
        if (status) {
          const code = Number(status[1]);
          if (code < 200 || code > 599) return sendText(res, 400, 'status code must be 200-599\n');
          if (code === 204 || code === 304) {
            res.writeHead(code);
            return res.end();
          }
          return sendText(res, code, `${code} ${http.STATUS_CODES[code] || 'Unknown'}\n`);
        }
        return send(res, 404, renderNotFound(pathname), { 'Content-Type': 'text/html; charset=utf-8' });
      }
    }
  }

  const server = http.createServer((req, res) => {
    route(req, res).catch((err) => {
      if (!res.headersSent) sendText(res, 500, `internal error: ${err.message}\n`);
      else res.destroy(err);
    });
  });

  server.on('upgrade', (req, socket, head) => {
    socket.on('error', () => socket.destroy());
    const pathname = req.url.split('?')[0];
    if (pathname !== '/ws') {
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    const connection = acceptWebSocket(req, socket, head);
    if (!connection) return;
    webSockets.add(connection);
    socket.on('close', () => webSockets.delete(connection));
  });

  /** Stop accepting, say goodbye to WebSocket clients (1001), let in-flight requests finish. */
  server.shutdown = (graceMs = 5000) => new Promise((resolve) => {
    server.close(() => resolve());
    server.closeIdleConnections();
    for (const connection of webSockets) connection.close(1001, 'server shutting down');
    setTimeout(() => {
      server.closeAllConnections();
      for (const connection of webSockets) connection.socket.destroy();
    }, graceMs).unref();
  });

  return server;
}

function main(argv) {
  let args;
  try {
    ({ values: args } = parseArgs({
      args: argv,
      options: {
        port: { type: 'string', short: 'p' },
        host: { type: 'string' },
        content: { type: 'string', short: 'c' },
        'page-cache-control': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    console.error(`${err.message}\nusage: node server.js [--port 3000] [--host 127.0.0.1] [--content content.json] [--page-cache-control VALUE]`);
    return process.exit(2);
  }
  if (args.help) {
    console.log('usage: node server.js [--port 3000] [--host 127.0.0.1] [--content content.json] [--page-cache-control VALUE]\n'
      + 'env: PORT, HOST (flags win). --port 0 picks a free port (see the start-up line).');
    return undefined;
  }
  const portText = args.port ?? process.env.PORT ?? '3000';
  const port = parseNonNegativeInt(portText);
  if (port === null || port > 65535) {
    console.error(`invalid port ${JSON.stringify(portText)}: use 0-65535 (--port or PORT)`);
    return process.exit(2);
  }
  const host = args.host ?? process.env.HOST ?? '127.0.0.1';
  let server;
  try {
    server = createOriginServer({
      contentPath: args.content ? path.resolve(args.content) : DEFAULT_CONTENT,
      pageCacheControl: args['page-cache-control'] ?? process.env.PAGE_CACHE_CONTROL ?? '',
    });
  } catch (err) {
    console.error(err.message);
    return process.exit(1);
  }
  server.on('error', (err) => {
    console.error(`cannot listen on ${host}:${port}: ${err.message}`);
    process.exit(1);
  });
  server.listen(port, host, () => {
    const address = server.address();
    const shownHost = address.family === 'IPv6' ? `[${address.address}]` : address.address;
    console.log(`example origin listening on http://${shownHost}:${address.port}`);
  });
  let stopping = false;
  const stop = (signal) => {
    if (stopping) process.exit(1); // a second signal: stop waiting
    stopping = true;
    console.log(`example origin: ${signal} received, closing`);
    server.shutdown().then(() => process.exit(0));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  return server;
}

module.exports = {
  createOriginServer,
  applyVariants,
  parseVariantHeader,
  aliasesFromVariantParam,
  patternByte: (i) => i % PATTERN_PERIOD,
  PATTERN_PERIOD,
};

if (require.main === module) main(process.argv.slice(2));
