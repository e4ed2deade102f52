// Shared helpers of the SDK conformance scripts (driven by tests/e2e_sdk/*.py).
//
// Every script runs the REAL @contentstack/personalize-edge-sdk against a running `edgeproxy serve` and prints
// exactly one JSON line on stdout: {"ok": true, ...result, "http": [...]} or {"ok": false, "error": ...}.
// Configuration comes from environment variables (EDGE_API_URL, PROJECT_UID, and per-script ones).
//
// Every HTTP exchange the SDK makes is recorded through Node's `http.client.*` diagnostics channels (the SDK
// fetches with cross-fetch -> node-fetch -> node:http), so the tests can see the headers the SDK sent and the
// status the proxy answered even though the SDK itself ignores the status of events/attributes calls.

import dc from 'node:diagnostics_channel';
import Personalize from '@contentstack/personalize-edge-sdk';

export { Personalize };

const httpLog = [];
const pending = new WeakMap();

dc.subscribe('http.client.request.start', ({ request }) => {
  const entry = {
    method: request.method,
    path: request.path,
    host: request.getHeader('host'),
    requestHeaders: Object.fromEntries(
      Object.entries(request.getHeaders()).map(([name, value]) => [name, Array.isArray(value) ? value.join(', ') : String(value)]),
    ),
    status: null,
    responseHeaders: null,
  };
  pending.set(request, entry);
  httpLog.push(entry);
});

dc.subscribe('http.client.response.finish', ({ request, response }) => {
  const entry = pending.get(request);
  if (!entry) return;
  entry.status = response.statusCode;
  entry.responseHeaders = response.headers;
});

export function env(name, fallback) {
  const value = process.env[name];
  if (value === undefined || value === '') {
    if (fallback !== undefined) return fallback;
    throw new Error(`environment variable ${name} is required`);
  }
  return value;
}

export function jsonEnv(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') {
    if (fallback !== undefined) return fallback;
    throw new Error(`environment variable ${name} (JSON) is required`);
  }
  return JSON.parse(raw);
}

/** The SDK pointed at the proxy's emulated Edge API. */
export function configuredSdk() {
  Personalize.setEdgeApiUrl(env('EDGE_API_URL'));
  return Personalize;
}

/** SDK init options from a JSON description; `request: {url, headers}` becomes a WHATWG Request. */
export function initOptions(spec) {
  const options = {};
  if (spec.userId !== undefined) options.userId = spec.userId;
  if (spec.tags !== undefined) options.tags = spec.tags;
  if (spec.liveAttributes !== undefined) options.liveAttributes = spec.liveAttributes;
  if (spec.request !== undefined) options.request = new Request(spec.request.url, { headers: spec.request.headers || {} });
  return options;
}

/** What the SDK instance reports about the visitor: the values the tests compare with `edgeproxy decide`. */
export function snapshot(sdk) {
  return {
    userId: sdk.getUserId() ?? null,
    aliases: sdk.getVariantAliases(),
    variantParam: sdk.getVariantParam(),
    experiences: sdk.getExperiences(),
    variants: sdk.getVariants(),
  };
}

/** init + snapshot, with the time the call started (the decision time for `edgeproxy decide`). */
export async function initAndSnapshot(projectUid, spec) {
  const startedAt = new Date().toISOString();
  const first = httpLog.length;
  const sdk = await Personalize.init(projectUid, initOptions(spec));
  return { sdk, result: { startedAt, ...snapshot(sdk), http: httpLog.slice(first) } };
}

/** Cookie name -> value, the value being the text between the first `=` and `;` (SPEC §6). */
export function parseSetCookie(header) {
  const pair = header.split(';', 1)[0];
  const eq = pair.indexOf('=');
  return { name: pair.slice(0, eq).trim(), value: pair.slice(eq + 1).trim(), raw: header };
}

/** Run `fn`, print its result (plus the HTTP log) as one JSON line; a crash prints ok:false and exits 1. */
export async function main(fn) {
  try {
    const result = await fn();
    process.stdout.write(`${JSON.stringify({ ok: true, ...result, http: httpLog })}\n`);
  } catch (error) {
    process.stdout.write(`${JSON.stringify({
      ok: false,
      error: String(error && error.message ? error.message : error),
      stack: error && error.stack ? String(error.stack) : null,
      http: httpLog,
    })}\n`);
    process.exitCode = 1;
  }
}
