#!/usr/bin/env node
'use strict';
// A recording origin for the hostile-input tests (tests/e2e/test_gate_hostile.py): it answers every request
// with a small JSON body and remembers exactly what arrived — method, target, version, raw header lines, the
// body's bytes — and every connection-level parse error, so a test can assert what the proxy let through
// (nothing smuggled, nothing altered). Node's own strict llhttp parses; Node 20 built-ins only.
//   GET  /__recorded   the records since the last call (and forgets them); not itself recorded
//   GET  /__ready      readiness probe; not recorded
//   /cacheable*        answered with Cache-Control: public, s-maxage=3600
//   Upgrade requests   recorded too, and declined with a plain 200 (an origin may ignore Upgrade)
// Usage: node recording_origin.cjs --port N

const http = require('node:http');
const { parseArgs } = require('node:util');

const { values } = parseArgs({ options: { port: { type: 'string' }, host: { type: 'string', default: '127.0.0.1' } } });
let records = [];

function pairs(raw) {
  const out = [];
  for (let i = 0; i < raw.length; i += 2) out.push([raw[i], raw[i + 1]]);
  return out;
}

function record(req, body, kind) {
  records.push({
    kind,
    method: req.method,
    url: req.url,
    httpVersion: req.httpVersion,
    rawHeaders: pairs(req.rawHeaders),
    body: body.toString('base64'),
    trailers: pairs(req.rawTrailers || []),
  });
  return records.length;
}

const server = http.createServer((req, res) => {
  if (req.url === '/__ready' || req.url === '/__recorded') {
    req.resume();
    const body = req.url === '/__ready' ? 'ready\n' : JSON.stringify(records);
    if (req.url === '/__recorded') records = [];
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
    return res.end(body);
  }
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const n = record(req, Buffer.concat(chunks), 'request');
    const body = JSON.stringify({ recorded: n, method: req.method, url: req.url }) + '\n';
    const headers = { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) };
    if (req.url.startsWith('/cacheable')) headers['Cache-Control'] = 'public, s-maxage=3600';
    else headers['Cache-Control'] = 'no-store';
    res.writeHead(200, headers);
    res.end(body);
  });
});

server.on('upgrade', (req, socket) => {
  record(req, Buffer.alloc(0), 'upgrade');
  const body = 'no upgrade here\n';
  socket.end(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
});

server.on('clientError', (err, socket) => {
  records.push({ kind: 'clientError', code: err.code || String(err) });
  if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
});

server.keepAliveTimeout = 30000;
server.listen(Number(values.port), values.host, () => console.log(`recording origin on ${values.host}:${values.port}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
