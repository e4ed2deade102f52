// Records a HAR with a real headless Chromium visiting the example site THROUGH edgeproxy.
// playwright-core comes from tests/sdk (npm ci --prefix tests/sdk); run with NODE_PATH=tests/sdk/node_modules.
//
// env: BASE_URL (the proxy), HAR (output path), CHROMIUM (executable), PROFILE_ROOT (temp dir for user data),
//      VISITORS (JSON: [{name, userAgent, xForwardedFor?, cookies?: [{name, value}], paths: [...]}])
// Each visitor is its own browser context (own cookie jar); all contexts record into one HAR each, merged here.

'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { chromium } = require('playwright-core');

const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage',
];

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`environment variable ${name} is required`);
  return value;
}

(async () => {
  const base = env('BASE_URL');
  const out = env('HAR');
  const visitors = JSON.parse(env('VISITORS'));
  const profileRoot = env('PROFILE_ROOT');
  const harFiles = [];
  const visited = [];
  for (const [index, visitor] of visitors.entries()) {
    const profile = fs.mkdtempSync(path.join(profileRoot, `chromium-${visitor.name}-`));
    const harFile = path.join(profileRoot, `part-${index}.har`);
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: env('CHROMIUM'),
      headless: true,
      args: CHROMIUM_ARGS,
      userAgent: visitor.userAgent,
      extraHTTPHeaders: visitor.xForwardedFor ? { 'X-Forwarded-For': visitor.xForwardedFor } : {},
      recordHar: { path: harFile, content: 'embed', mode: 'full' },
    });
    try {
      if (visitor.cookies && visitor.cookies.length) {
        await context.addCookies(visitor.cookies.map((c) => ({ name: c.name, value: c.value, url: base })));
      }
      const page = context.pages()[0] || (await context.newPage());
      page.setDefaultTimeout(15000);
      for (const target of visitor.paths) {
        const response = await page.goto(new URL(target, base).href, { waitUntil: 'load' });
        // The body as the browser got it (the HAR's embedded content is filled asynchronously and may be cut
        // when the context closes; the test reads the origin's echo from here).
        visited.push({
          visitor: visitor.name, path: target, url: response ? response.url() : null,
          status: response ? response.status() : null, body: response ? await response.text() : null,
        });
      }
    } finally {
      await context.close(); // flushes the HAR
    }
    harFiles.push(harFile);
  }
  // One HAR, entries in visit order (a HAR from several tabs/sessions looks the same).
  const merged = JSON.parse(fs.readFileSync(harFiles[0], 'utf8'));
  for (const file of harFiles.slice(1)) {
    merged.log.entries.push(...JSON.parse(fs.readFileSync(file, 'utf8')).log.entries);
  }
  fs.writeFileSync(out, JSON.stringify(merged, null, 1));
  process.stdout.write(JSON.stringify({ ok: true, visited, entries: merged.log.entries.length }) + '\n');
})().catch((err) => {
  process.stdout.write(JSON.stringify({ ok: false, error: String(err && err.stack ? err.stack : err) }) + '\n');
  process.exit(1);
});
