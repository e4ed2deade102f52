'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const crypto = require('node:crypto');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { createOriginServer, patternByte } = require('../server.js');

async function startOrigin() {
  const server = createOriginServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return { server, port, base: `http://127.0.0.1:${port}` };
}

/** Make a request; resolves {status, headers, body (Buffer)}. `body` may be a Buffer or an array of Buffers (sent chunked). */
function request(base, target, { method = 'GET', headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(`${base}${target}`, { method, headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (Array.isArray(body)) {
      for (const chunk of body) req.write(chunk);
      req.end();
    } else {
      req.end(body);
    }
  });
}

let origin;
test.before(async () => { origin = await startOrigin(); });
test.after(() => origin.server.shutdown(100));

const get = (p, opts) => request(origin.base, p, opts);
const fieldText = (html, field) => {
  const m = new RegExp(`data-field="${field}"[^>]*>([^<]*)<`).exec(html);
  return m && m[1];
};
const metaAliases = (html) => /<meta name="cs-variant-aliases" content="([^"]*)">/.exec(html)[1];

test('homepage without variants renders base content and reports none applied', async () => {
  const res = await get('/');
  assert.equal(res.status, 200);
  assert.match(res.headers['content-type'], /^text\/html/);
  assert.equal(res.headers['x-cs-applied-variants'], '');
  const html = res.body.toString();
  assert.equal(metaAliases(html), '');
  assert.equal(fieldText(html, 'hero_title'), 'Gear up for every trail');
  assert.match(html, /variants applied: <span id="variants-applied">none/);
});

test('homepage applies variants first-alias-wins and reports what was applied', async () => {
  const res = await get('/', {
    headers: {
      'x-cs-variant-uid': 'cs_personalize_1_1, cs_personalize_0_1,cs_personalize_6_2,cs_personalize_3_0,cs_personalize_4_0',
      'x-cs-personalize-variants': '1_1,0_1,6_2,3_0,4_0',
      'x-cs-personalize-user-uid': 'user-42',
    },
  });
  const html = res.body.toString();
  assert.equal(fieldText(html, 'hero_title'), 'Black Friday week: deals end Sunday at midnight');
  assert.equal(fieldText(html, 'hero_subtitle'), 'Waterproofs and warm layers, with free UK delivery over £50.');
  assert.equal(fieldText(html, 'shipping_note'), 'Free UK delivery on orders over £50.'); // 0_1 beats 3_0
  assert.equal(fieldText(html, 'recommendations_title'), 'New since your last visit');
  // 3_0 lost its only field to 0_1, so it is not reported as applied.
  const applied = 'cs_personalize_1_1,cs_personalize_0_1,cs_personalize_6_2,cs_personalize_4_0';
  assert.equal(res.headers['x-cs-applied-variants'], applied);
  assert.equal(metaAliases(html), applied);
  assert.match(html, /<span id="variant-param"><code>1_1,0_1,6_2,3_0,4_0<\/code>/);
  assert.match(html, /user-42/);
});

test('without the header the Launch-style query parameter is used; the header wins when both come', async () => {
  const fromQuery = await get('/?personalize_variants=0_2,7_1');
  assert.equal(fromQuery.headers['x-cs-applied-variants'], 'cs_personalize_0_2,cs_personalize_7_1');
  const both = await get('/?personalize_variants=0_2', { headers: { 'x-cs-variant-uid': 'cs_personalize_0_0' } });
  assert.equal(both.headers['x-cs-applied-variants'], 'cs_personalize_0_0');
  const emptyHeader = await get('/?personalize_variants=0_2', { headers: { 'x-cs-variant-uid': '' } });
  assert.equal(emptyHeader.headers['x-cs-applied-variants'], '');
});

test('product, checkout and cart pages personalize their own fields', async () => {
  const header = { 'x-cs-variant-uid': 'cs_personalize_6_0,cs_personalize_3_2,cs_personalize_2_0,cs_personalize_2_1,cs_personalize_7_1' };
  const product = await get('/products/storm-shell-jacket', { headers: header });
  assert.equal(product.headers['x-cs-applied-variants'], 'cs_personalize_6_0,cs_personalize_7_1');
  assert.equal(fieldText(product.body.toString(), 'badge'), 'Premium pick');

  const checkout = await get('/checkout', { headers: header });
  // 2_0 is the control (no fields), so 2_1 supplies the button even though 2_0 came first.
  assert.equal(checkout.headers['x-cs-applied-variants'], 'cs_personalize_2_1,cs_personalize_7_1');
  assert.equal(fieldText(checkout.body.toString(), 'button_label'), 'Place order securely');
  assert.match(checkout.body.toString(), /data-style="green"/);

  const cart = await get('/cart', { headers: header });
  assert.equal(cart.headers['x-cs-applied-variants'], 'cs_personalize_3_2,cs_personalize_7_1');
  assert.match(cart.body.toString(), /data-threshold="100"/);
  assert.equal(fieldText(cart.body.toString(), 'promo_bar'), 'Hurry: free express shipping ends tonight!');
});

test('the behaviour experiences (8 returning visitor, 9 high-intent shopper) render with their demo hints', async () => {
  const base = (await get('/')).body.toString();
  assert.doesNotMatch(base, /data-field="welcome_back"|data-field="checkout_nudge"/); // empty base: not rendered
  assert.match(fieldText(base, 'welcome_hint'), /come back after 30 minutes \(or restart the demo with a later DEMO_NOW\)/);
  assert.equal(fieldText(base, 'checkout_hint'), 'Demo hint: open /checkout twice to see the high-intent nudge.');

  const res = await get('/', { headers: { 'x-cs-variant-uid': 'cs_personalize_2_0,cs_personalize_8_0,cs_personalize_9_0,cs_personalize_7_0' } });
  const html = res.body.toString();
  assert.equal(res.headers['x-cs-applied-variants'], 'cs_personalize_8_0,cs_personalize_9_0,cs_personalize_7_0');
  assert.match(html, /data-field="welcome_back" data-variant="cs_personalize_8_0">Welcome back!/);
  assert.match(html, /data-field="checkout_nudge" data-variant="cs_personalize_9_0">Still deciding\?/);
  assert.equal(fieldText(html, 'welcome_hint'),
    'Demo hint: you are back after more than 30 minutes: a returning visit (visit_count &gt; 1).');
  assert.equal(fieldText(html, 'checkout_hint'),
    'Demo hint: you viewed checkout twice in 7 days (checkout_views_7d &gt;= 2).');
  assert.match(html, /cs_personalize_8_0<\/code> \(Returning visitor welcome \/ Welcome back\)/);

  const product = await get('/products/merino-base-layer', { headers: { 'x-cs-variant-uid': 'cs_personalize_9_0' } });
  assert.equal(product.headers['x-cs-applied-variants'], 'cs_personalize_9_0');
  assert.match(product.body.toString(), /data-field="checkout_nudge" data-variant="cs_personalize_9_0">Ready when you are/);
  const checkout = await get('/checkout', { headers: { 'x-cs-variant-uid': 'cs_personalize_8_0,cs_personalize_9_0' } });
  assert.equal(checkout.headers['x-cs-applied-variants'], ''); // the checkout page has no content for them
});

test('/api/content returns the personalized entry as JSON', async () => {
  const res = await get('/api/content?path=/cart', { headers: { 'x-cs-variant-uid': 'cs_personalize_3_1' } });
  const body = JSON.parse(res.body);
  assert.equal(body.fields.free_shipping_threshold, 75);
  assert.equal(body.field_sources.free_shipping_threshold, 'cs_personalize_3_1');
  assert.deepEqual(body.applied, ['cs_personalize_3_1']);
});

test('unknown paths and products get a 404 HTML page; pages refuse POST', async () => {
  for (const p of ['/nope', '/products/no-such-thing']) {
    const res = await get(p);
    assert.equal(res.status, 404);
    assert.match(res.headers['content-type'], /^text\/html/);
  }
  const post = await get('/', { method: 'POST', body: 'x' });
  assert.equal(post.status, 405);
  assert.equal(post.headers.allow, 'GET, HEAD');
});

test('HEAD on a page sends the headers and no body', async () => {
  const res = await get('/checkout', { method: 'HEAD', headers: { 'x-cs-variant-uid': 'cs_personalize_2_2' } });
  assert.equal(res.status, 200);
  assert.equal(res.headers['x-cs-applied-variants'], 'cs_personalize_2_2');
  assert.ok(Number(res.headers['content-length']) > 0);
  assert.equal(res.body.length, 0);
});

test('static assets are cacheable and revalidate with ETag', async () => {
  for (const [p, type] of [['/static/site.css', /^text\/css/], ['/static/logo.svg', /^image\/svg\+xml/]]) {
    const res = await get(p);
    assert.equal(res.status, 200);
    assert.match(res.headers['content-type'], type);
    assert.equal(res.headers['cache-control'], 'public, max-age=3600');
    const again = await get(p, { headers: { 'if-none-match': res.headers.etag } });
    assert.equal(again.status, 304);
    assert.equal(again.body.length, 0);
  }
});

test('/echo reports method, raw url, lower-case headers and a streamed body hash', async () => {
  const body = crypto.randomBytes(300_000);
  const res = await get('/echo?a=1&b=%20two', { method: 'PATCH', headers: { 'X-Custom-Header': 'Value', 'Content-Length': body.length }, body });
  assert.match(res.headers['content-type'], /^application\/json/);
  const echo = JSON.parse(res.body);
  assert.equal(echo.method, 'PATCH');
  assert.equal(echo.url, '/echo?a=1&b=%20two');
  assert.equal(echo.headers['x-custom-header'], 'Value');
  assert.equal(echo.bodyLength, body.length);
  assert.equal(echo.bodySha256, crypto.createHash('sha256').update(body).digest('hex'));
  const empty = JSON.parse((await get('/echo', { method: 'DELETE' })).body);
  assert.equal(empty.bodyLength, 0);
  assert.equal(empty.bodySha256, crypto.createHash('sha256').digest('hex'));
});

test('/upload hashes a chunked body as it streams', async () => {
  const chunks = Array.from({ length: 48 }, () => crypto.randomBytes(65_536));
  const res = await get('/upload', { method: 'POST', body: chunks });
  const hash = crypto.createHash('sha256');
  chunks.forEach((c) => hash.update(c));
  assert.deepEqual(JSON.parse(res.body), { bytes: 48 * 65_536, sha256: hash.digest('hex') });
  assert.equal((await get('/upload')).status, 405);
});

test('/download streams the deterministic pattern with Content-Length', async () => {
  const n = 5 * 1024 * 1024 + 7;
  const res = await get(`/download?bytes=${n}`);
  assert.equal(res.status, 200);
  assert.equal(res.headers['content-length'], String(n));
  assert.equal(res.body.length, n);
  for (let i = 0; i < n; i++) {
    if (res.body[i] !== patternByte(i)) assert.fail(`byte ${i} is ${res.body[i]}, expected ${patternByte(i)}`);
  }
  const zero = await get('/download?bytes=0');
  assert.equal(zero.body.length, 0);
  const chunked = await get('/download?bytes=100000&chunked=1');
  assert.equal(chunked.headers['transfer-encoding'], 'chunked');
  assert.equal(chunked.body.length, 100000);
  const head = await get('/download?bytes=12345', { method: 'HEAD' });
  assert.equal(head.headers['content-length'], '12345');
  assert.equal(head.body.length, 0);
  assert.equal((await get('/download?bytes=-1')).status, 400);
});

test('/download respects backpressure: a stalled 10 GiB download stays a few KiB buffered', async () => {
  const n = 10 * 1024 ** 3;
  let serverRes;
  const capture = (req, res) => { if (req.url === `/download?bytes=${n}`) serverRes = res; };
  origin.server.prependListener('request', capture);
  const req = http.get(`${origin.base}/download?bytes=${n}`, { agent: false });
  const res = await new Promise((resolve, reject) => { req.on('response', resolve); req.on('error', reject); });
  origin.server.off('request', capture);
  assert.equal(res.headers['content-length'], String(n));
  // Read a little, then stop reading. A server that ignored write()'s false / 'drain' would queue the
  // whole 10 GiB (cheaply, as slices of one buffer) and writableLength would show it.
  let received = 0;
  await new Promise((resolve) => {
    res.on('data', (chunk) => {
      for (let i = 0; i < chunk.length; i++) {
        if (chunk[i] !== patternByte(received + i)) assert.fail(`byte ${received + i} differs`);
      }
      received += chunk.length;
      if (received >= 1024 * 1024) { res.pause(); resolve(); }
    });
  });
  await new Promise((r) => setTimeout(r, 300));
  assert.ok(serverRes.writableLength < 1024 * 1024, `server queued ${serverRes.writableLength} bytes for a paused client`);
  assert.equal((await get('/healthz')).status, 200);
  req.destroy();
});

test('/redirect, /status, /slow and /set-cookie', async () => {
  const redirect = await get('/redirect?to=/products/storm-shell-jacket%3Fref%3Dx');
  assert.equal(redirect.status, 302);
  assert.equal(redirect.headers.location, '/products/storm-shell-jacket?ref=x');
  assert.equal((await get('/redirect?to=/x&status=308')).status, 308);
  assert.equal((await get('/redirect?to=https://evil.example/')).status, 400);
  assert.equal((await get('/redirect?to=//evil.example/')).status, 400);

  const teapot = await get('/status/418');
  assert.equal(teapot.status, 418);
  assert.ok(teapot.body.length > 0);
  for (const code of [204, 304]) {
    const res = await get(`/status/${code}`);
    assert.equal(res.status, code);
    assert.equal(res.body.length, 0);
  }
  assert.equal((await get('/status/503')).status, 503);
  assert.equal((await get('/status/999')).status, 400);

  const started = Date.now();
  const slow = await get('/slow?ms=150');
  assert.equal(slow.status, 200);
  assert.ok(Date.now() - started >= 140);

  const cookie = await get('/set-cookie');
  assert.deepEqual(cookie.headers['set-cookie'], ['origin_session=abc; Path=/']);
  assert.match(cookie.body.toString(), /origin_session=abc/);
});

test('/ws without an upgrade answers 426', async () => {
  const res = await get('/ws');
  assert.equal(res.status, 426);
});

test('the CLI logs its address, serves, and exits 0 on SIGTERM', async () => {
  const child = spawn(process.execPath, [path.join(__dirname, '..', 'server.js'), '--port', '0', '--host', '127.0.0.1'],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const url = await new Promise((resolve, reject) => {
    child.stdout.on('data', (d) => {
      out += d;
      const m = /example origin listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(out);
      if (m) resolve(m[1]);
    });
    child.on('exit', (code) => reject(new Error(`exited early with ${code}: ${out}`)));
  });
  assert.equal((await request(url, '/healthz')).status, 200);
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  child.kill('SIGTERM');
  assert.deepEqual(await exited, { code: 0, signal: null });
});

test('the CLI refuses a broken content file with a clear message', async () => {
  const child = spawn(process.execPath, [path.join(__dirname, '..', 'server.js'), '--port', '0', '--content', '/nonexistent/content.json'],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => { err += d; });
  const code = await new Promise((resolve) => child.on('exit', resolve));
  assert.equal(code, 1);
  assert.match(err, /cannot read content file \/nonexistent\/content\.json/);
});
