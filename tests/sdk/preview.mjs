// Preview links (SPEC §10) in a real headless Chromium: pages of the Node example origin served THROUGH the proxy,
// and the official SDK browser bundle loaded into each page, as a site that uses both would.
//
// env: CHROMIUM (executable), PROJECT_UID, SDK_BUNDLE (path of personalize-edge-sdk.min.js),
//      VISITS (JSON: [{"name", "url", "fresh": bool, "event"?: key}, ...]; "fresh" starts a new browser context,
//      i.e. a visitor with no cookies; the others continue the previous visitor, so the preview cookie carries
//      over; "event": the SDK also sends impressions of every experience and that conversion event; "cookies":
//      [{"name", "value"}] set before the visit, to come back as an earlier visitor),
//      X_FORWARDED_FOR (optional), SCREENSHOT_DIR (optional: one png per visit)
//
// Per visit it reports: the document's status and response headers, the variant aliases the origin applied
// (<meta name="cs-variant-aliases">), the data-variant attributes on the page, the x-cs-variant-uid the origin
// received (its debug panel), and the SDK's experiences twice: from the manifest cookie the proxy set, and
// fetched from the proxy's /manifest after that cookie is cleared (X-Page-Url and the preview cookie decide).

import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { env, jsonEnv, main } from './lib.mjs';

const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage',
];

await main(async () => {
  const projectUid = env('PROJECT_UID');
  const bundle = env('SDK_BUNDLE');
  const visits = jsonEnv('VISITS');
  const xff = process.env.X_FORWARDED_FOR || '';
  const shots = process.env.SCREENSHOT_DIR || '';
  const browser = await chromium.launch({ executablePath: env('CHROMIUM'), headless: true, args: CHROMIUM_ARGS });
  const results = [];
  let context = null;
  try {
    for (const visit of visits) {
      if (visit.fresh || !context) {
        if (context) await context.close();
        context = await browser.newContext({ extraHTTPHeaders: xff ? { 'X-Forwarded-For': xff } : {} });
      }
      if (visit.cookies) await context.addCookies(visit.cookies.map((c) => ({ name: c.name, value: c.value, url: visit.url })));
      const page = await context.newPage();
      page.setDefaultTimeout(15000);
      const errors = [];
      page.on('pageerror', (err) => errors.push(String(err && err.message ? err.message : err)));
      const response = await page.goto(visit.url, { waitUntil: 'load' });
      const doc = { status: response.status(), headers: await response.headersArray() };
      const seen = await page.evaluate(() => {
        const meta = document.querySelector('meta[name="cs-variant-aliases"]');
        const panel = Array.from(document.querySelectorAll('div')).map((d) => d.textContent || '')
          .find((t) => t.startsWith('x-cs-variant-uid:'));
        return {
          applied: meta ? meta.getAttribute('content') : null,
          dataVariants: Array.from(document.querySelectorAll('[data-variant]')).map((n) => n.getAttribute('data-variant')),
          variantUidHeader: panel ? panel.slice('x-cs-variant-uid:'.length).trim() : null,
          location: window.location.href,
        };
      });
      await page.addScriptTag({ content: fs.readFileSync(bundle, 'utf8') });
      const sdk = await page.evaluate(async ([uid, eventKey]) => {
        const experiences = (instance) => instance.getExperiences().map((e) => [e.shortUid, e.activeVariantShortUid]);
        window.personalize.setEdgeApiUrl(window.location.origin + '/_personalize');
        const fromCookie = experiences(await window.personalize.init(uid));
        document.cookie = 'cs-personalize-manifest=; Max-Age=0; Path=/';
        const instance = await window.personalize.init(uid);
        const fetched = experiences(instance);
        if (eventKey) {  // what a page would send: impressions of everything shown, then a conversion
          await instance.triggerImpressions({ experienceShortUids: fetched.map(([e]) => e) });
          await instance.triggerEvent(eventKey);
        }
        return { fromCookie, fetched, userAgent: navigator.userAgent };
      }, [projectUid, visit.event || '']);
      if (shots) await page.screenshot({ path: path.join(shots, `preview-${visit.name}.png`), fullPage: true });
      const cookies = (await context.cookies()).map((c) => ({ name: c.name, value: c.value, httpOnly: c.httpOnly }));
      results.push({ name: visit.name, document: doc, ...seen, sdk, cookies, errors });
      await page.close();
    }
  } finally {
    if (context) await context.close();
    await browser.close();
  }
  return { visits: results };
});
