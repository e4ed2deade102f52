// Opens the analytics dashboard in Debian's headless Chromium (driven by playwright-core from tests/sdk) and
// prints one JSON line: what rendered, chart data points per experience, console messages, page errors,
// failed requests. Saves a full-page screenshot.
//
// env: DASHBOARD_URL, CHROMIUM, PLAYWRIGHT_CORE (path to playwright-core/index.mjs), PROFILE_ROOT, SCREENSHOT
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const { chromium } = await import(pathToFileURL(env('PLAYWRIGHT_CORE')).href);
const profile = fs.mkdtempSync(path.join(env('PROFILE_ROOT'), 'chromium-profile-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: env('CHROMIUM'),
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  viewport: { width: 1320, height: 1000 },
});
const observed = { console: [], pageErrors: [], failedRequests: [], responses: [] };
try {
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(30000);
  page.on('console', (msg) => observed.console.push({ type: msg.type(), text: msg.text() }));
  page.on('pageerror', (err) => observed.pageErrors.push(String(err && err.message ? err.message : err)));
  page.on('requestfailed', (req) => observed.failedRequests.push({ url: req.url(), error: req.failure() && req.failure().errorText }));
  page.on('response', (res) => observed.responses.push({ url: res.url(), status: res.status() }));
  await page.goto(env('DASHBOARD_URL'), { waitUntil: 'load' });
  await page.waitForSelector('body[data-state="ready"]');
  observed.page = await page.evaluate(() => {
    const text = (node) => (node ? node.textContent.trim() : null);
    return {
      title: document.title,
      state: document.body.dataset.state,
      liveTotal: text(document.getElementById('live-total')),
      error: document.getElementById('error').hidden ? null : text(document.getElementById('error')),
      toc: [...document.querySelectorAll('#toc a')].map(text),
      experiences: [...document.querySelectorAll('section.exp')].map((card) => ({
        shortUid: card.dataset.experience,
        name: text(card.querySelector('h2')),
        badges: [...card.querySelectorAll('.badge')].map(text),
        charts: [...card.querySelectorAll('.chart')].map((c) => ({
          title: text(c.querySelector('h3')),
          points: Number(c.dataset.points || 0),
          paths: c.querySelectorAll('svg path').length,
          yTicks: [...c.querySelectorAll('svg text.ytick')].map(text),
          legend: [...c.querySelectorAll('.legend span')].map(text).filter((t) => t),
        })),
        label: text(card.querySelector('.prio')),
        rows: [...card.querySelectorAll('tbody tr')].map((tr) => [...tr.querySelectorAll('td')].map(text)),
        notes: [...card.querySelectorAll('.notes li')].map(text),
      })),
    };
  });
  await page.screenshot({ path: env('SCREENSHOT'), fullPage: true });
  // Switch the checkout test to its secondary metric: the table and rate chart follow.
  const select = page.locator('#exp-2 select');
  if (await select.count()) {
    await select.selectOption('add_to_cart');
    observed.secondaryMetricFacts = await page.locator('#exp-2 .facts').textContent();
  }
} finally {
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(observed) + '\n');
