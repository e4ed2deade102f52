// The SDK browser bundle in a real headless Chromium, on a page served THROUGH the proxy (same origin as the
// emulated Edge API). Drives tests/sdk/page/sdk-test.js step by step and prints one JSON line with everything
// observed: step results, every request/response (tagged with the step that caused it), the Set-Cookie headers
// of page loads, console messages, page errors and the browser's cookies.
//
// env: PAGE_URL (http://127.0.0.1:Q/sdk-test.html), EDGE_API_URL (default: PAGE_URL's origin + /_personalize),
//      PROJECT_UID, CHROMIUM (executable), SCENARIO (first-visit | fresh-context | cross-origin |
//      uid-round-trip), PROFILE_ROOT (a temp dir; a new --user-data-dir is made in it), SCREENSHOT (png path),
//      X_FORWARDED_FOR (optional: sent with every request, as a CDN in front of the proxy would),
//      ATTRIBUTES (JSON), NEW_USER_ID, EVENT_KEY (first-visit and cross-origin)
//
// Scenarios:
//   first-visit   load (the proxy sets the uid + manifest cookies) -> init (SDK uses the manifest cookie, no fetch)
//                 -> set -> impressions -> event -> clearManifestCookie -> init (fetches) -> setUserId(merge)
//                 -> init (fetches, new uid) -> reload (proxy cookies for the new uid) -> init (from the cookie)
//   fresh-context load -> the manifest cookie is cleared -> init (fetches /manifest from the proxy)
//   cross-origin  the page comes straight from the origin (not through the proxy) and EDGE_API_URL points at the
//                 proxy: every Edge API call is cross-origin (CORS, SPEC §5). init (fetches; the uid comes from
//                 the exposed response header) -> set -> impressions -> event -> init -> setUserId(merge) -> init
//   uid-round-trip load -> init -> setUserId(NEW_USER_ID) -> reload (the proxy reads the SDK's uid cookie and sets
//                 its own) -> init (from the proxy's cookies): the uid must come back exactly as the SDK wrote it

import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { env, jsonEnv, main } from './lib.mjs';

const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage',
];

await main(async () => {
  const pageUrl = env('PAGE_URL');
  const scenario = env('SCENARIO');
  const profile = fs.mkdtempSync(path.join(env('PROFILE_ROOT'), 'chromium-profile-'));
  const xff = process.env.X_FORWARDED_FOR || '';
  const cfg = {
    projectUid: env('PROJECT_UID'),
    edgeApiUrl: process.env.EDGE_API_URL || new URL('/_personalize', pageUrl).href,
    attributes: jsonEnv('ATTRIBUTES', {}),
    newUserId: process.env.NEW_USER_ID || '',
    eventKey: process.env.EVENT_KEY || 'purchase',
  };

  const context = await chromium.launchPersistentContext(profile, {
    executablePath: env('CHROMIUM'),
    headless: true,
    args: CHROMIUM_ARGS,
    extraHTTPHeaders: xff ? { 'X-Forwarded-For': xff } : {},
    viewport: { width: 1100, height: 900 },
  });
  const observed = { scenario, pageUrl, steps: [], navigations: [], network: [], console: [], pageErrors: [] };
  const pendingWork = [];
  let label = 'launch';
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(15000);
    page.on('console', (msg) => observed.console.push({ label, type: msg.type(), text: msg.text(), location: msg.location() }));
    page.on('pageerror', (err) => observed.pageErrors.push({ label, message: String(err && err.message ? err.message : err) }));
    const entries = new Map();
    page.on('request', (request) => {
      const entry = { label, method: request.method(), url: request.url(), status: null, failure: null };
      entries.set(request, entry);
      observed.network.push(entry);
      pendingWork.push(request.allHeaders().then((h) => { entry.requestHeaders = h; }, () => {}));
    });
    page.on('response', (response) => {
      const entry = entries.get(response.request());
      if (!entry) return;
      entry.status = response.status();
      pendingWork.push(response.headersArray().then((h) => { entry.responseHeaders = h; }, () => {}));
    });
    page.on('requestfailed', (request) => {
      const entry = entries.get(request);
      if (entry) entry.failure = request.failure() ? request.failure().errorText : 'failed';
    });

    const navigate = async (name, action) => {
      label = name;
      const at = new Date().toISOString();
      const response = await action();
      const headers = response ? await response.headersArray() : [];
      observed.navigations.push({
        label: name,
        at,
        stepsBefore: observed.steps.length, // window.__results starts afresh with each page load
        url: page.url(),
        status: response ? response.status() : null,
        setCookies: headers.filter((h) => h.name.toLowerCase() === 'set-cookie').map((h) => h.value),
        cookies: await context.cookies(),
      });
      await page.waitForFunction(() => !!(window.personalize && window.sdkConformance));
    };
    const run = async (name, step) => {
      label = name;
      const entry = await page.evaluate(([s, c]) => window.sdkConformance.run(s, c), [step, cfg]);
      observed.steps.push({ label: name, ...entry });
    };

    await navigate('load', () => page.goto(pageUrl));
    observed.userAgent = await page.evaluate(() => navigator.userAgent);
    if (scenario === 'first-visit') {
      await run('init-from-cookie', 'init');
      await run('set', 'set');
      await run('impressions', 'impressions');
      await run('event', 'event');
      await run('clear-manifest-cookie', 'clearManifestCookie');
      await run('init-after-set', 'init');
      await run('set-user-id', 'setUserId');
      await run('init-after-merge', 'init');
      await navigate('reload', () => page.reload());
      await run('init-after-reload', 'init');
    } else if (scenario === 'cross-origin') {
      await run('init-fetch', 'init');
      await run('set', 'set');
      await run('impressions', 'impressions');
      await run('event', 'event');
      await run('init-after-set', 'init');
      await run('set-user-id', 'setUserId');
      await run('init-after-merge', 'init');
    } else if (scenario === 'uid-round-trip') {
      await run('init-from-cookie', 'init');
      await run('set-user-id', 'setUserId');
      await navigate('reload', () => page.reload());
      await run('init-after-reload', 'init');
    } else if (scenario === 'fresh-context') {
      label = 'clear-manifest-cookie';
      await context.clearCookies({ name: 'cs-personalize-manifest' });
      observed.cookiesAfterClearing = await context.cookies();
      await run('init-fetch', 'init');
    } else {
      throw new Error(`unknown SCENARIO ${scenario}`);
    }
    label = 'end';
    observed.windowResults = await page.evaluate(() => window.__results);
    observed.cookies = await context.cookies();
    const screenshot = process.env.SCREENSHOT;
    if (screenshot) {
      await page.evaluate((entries) => window.sdkConformance.renderAll(entries), observed.steps);
      fs.mkdirSync(path.dirname(screenshot), { recursive: true });
      await page.screenshot({ path: screenshot, fullPage: true });
      observed.screenshot = screenshot;
    }
    await Promise.all(pendingWork);
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  return observed;
});
