'use strict';
// Server-side HTML for the example site. Every personalized value is rendered with
// data-field="<field>" and, when a variant supplied it, data-variant="<alias>", so tests and curious
// humans can see where each value came from.

const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
const escapeHtml = (value) => String(value).replace(/[&<>"']/g, (c) => ESCAPES[c]);

const CSS = `
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2a2f;background:#f5f7f4}
a{color:#1f6f5c}
.promo{background:#1d2a2f;color:#f5f7f4;text-align:center;padding:.45rem 1rem;font-size:.9rem}
header.site{display:flex;align-items:center;gap:1rem;padding:1rem 2rem;background:#fff;border-bottom:1px solid #dfe5df}
header.site .brand{display:flex;align-items:center;gap:.6rem;font-weight:700;font-size:1.15rem;color:inherit;text-decoration:none}
header.site nav{margin-left:auto;display:flex;gap:1.2rem}
header.site nav a{text-decoration:none;color:#1d2a2f}
main{max-width:60rem;margin:0 auto;padding:2rem}
.hero{background:linear-gradient(135deg,#1f6f5c,#2f8f6f);color:#fff;border-radius:14px;padding:3rem 2.5rem}
.hero h1{margin:0 0 .5rem;font-size:2.3rem;line-height:1.15}
.hero p{margin:0 0 1.5rem;font-size:1.15rem;opacity:.92}
.button{display:inline-block;padding:.75rem 1.4rem;border-radius:8px;background:#f2b134;color:#1d2a2f;font-weight:700;text-decoration:none;border:0;font-size:1rem;cursor:pointer}
.button.green{background:#1e9e4a;color:#fff}
.sticky{position:sticky;bottom:0;background:#fff;padding:1rem;border-top:1px solid #dfe5df;text-align:right}
.banner{margin:1.5rem 0;padding:1rem 1.25rem;border-left:5px solid #f2b134;background:#fff8e6;border-radius:6px}
.note{color:#4b5b57;font-size:.95rem}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(12rem,1fr));gap:1rem}
.card{background:#fff;border:1px solid #dfe5df;border-radius:10px;padding:1rem}
.card a{font-weight:600;text-decoration:none}
.badge{display:inline-block;background:#1f6f5c;color:#fff;border-radius:99px;padding:.1rem .6rem;font-size:.8rem}
.panel{background:#fff;border:1px solid #dfe5df;border-radius:10px;padding:1.5rem;margin:1.5rem 0}
.price{font-size:1.6rem;font-weight:700}
.progress{height:10px;background:#e4e9e4;border-radius:99px;overflow:hidden}
.progress span{display:block;height:100%;background:#1f6f5c}
table{width:100%;border-collapse:collapse}
td,th{padding:.5rem;border-bottom:1px solid #e4e9e4;text-align:left}
.welcome{margin:0 0 1.5rem;padding:.8rem 1.25rem;border-radius:10px;background:#e3f1ea;border:1px solid #b7dcc9;font-weight:600}
.nudge{margin:1.5rem 0;padding:1rem 1.25rem;border-left:5px solid #1f6f5c;background:#e9f4ef;border-radius:6px}
aside.hints{margin:2rem 0 0;padding:.75rem 1.25rem;border:1px dashed #b9c4bd;border-radius:10px;color:#4b5b57;font-size:.9rem}
aside.hints p{margin:.3rem 0}
footer.debug{max-width:60rem;margin:2rem auto;padding:1rem 2rem;font:13px/1.6 ui-monospace,Menlo,Consolas,monospace;color:#4b5b57;border-top:1px dashed #b9c4bd}
footer.debug code{background:#e9eee9;padding:0 .3rem;border-radius:4px}
`;

/** A personalized value, tagged with the field name and the alias that supplied it. */
function field(view, name, tag = 'span', attrs = '') {
  const source = view.sources[name];
  const variantAttr = source ? ` data-variant="${escapeHtml(source)}"` : '';
  return `<${tag} data-field="${name}"${variantAttr}${attrs}>${escapeHtml(view.fields[name])}</${tag}>`;
}

function money(content, amount) {
  return `${escapeHtml((content.site && content.site.currency_symbol) || '$')}${Number(amount).toFixed(2)}`;
}

function productCards(content, slugs) {
  const cards = (slugs || []).map((slug) => {
    const product = content.entries.find((e) => e.url === `/products/${slug}`);
    if (!product) return '';
    return `<div class="card"><a href="/products/${escapeHtml(slug)}">${escapeHtml(product.fields.name)}</a>`
      + `<div class="note">${money(content, product.fields.price)}</div></div>`;
  });
  return `<div class="cards" data-field="recommendations">${cards.join('')}</div>`;
}

function layout({ title, view, req, content, body }) {
  const applied = view.applied.join(',');
  const siteName = escapeHtml((content.site && content.site.name) || 'Example');
  const promo = view.fields.promo_bar !== undefined ? `<div class="promo">${field(view, 'promo_bar')}</div>` : '';
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="cs-variant-aliases" content="${escapeHtml(applied)}">
<title>${escapeHtml(title)} · ${siteName}</title>
<style>${CSS}</style>
<link rel="stylesheet" href="/static/site.css">
</head>
<body>
${promo}
<header class="site">
  <a class="brand" href="/"><img src="/static/logo.svg" alt="" width="32" height="32">${siteName}</a>
  <nav><a href="/">Home</a><a href="/products/storm-shell-jacket">Jackets</a><a href="/cart">Cart</a><a href="/checkout">Checkout</a></nav>
</header>
<main>
${body}
</main>
${debugFooter(view, req, content)}
</body>
</html>
`;
}

function debugFooter(view, req, content) {
  const names = content.variant_names || {};
  const list = (aliases) => (aliases.length
    ? aliases.map((a) => `<code>${escapeHtml(a)}</code>${names[a] ? ` (${escapeHtml(names[a])})` : ''}`).join(', ')
    : 'none');
  const header = (name) => {
    const value = req.headers[name];
    return value === undefined ? '<em>not sent</em>' : `<code>${escapeHtml(value)}</code>`;
  };
  const queryParam = view.query.get('personalize_variants');
  return `<footer class="debug">
  <div>variants applied: <span id="variants-applied">${list(view.applied)}</span></div>
  <div>aliases from: ${escapeHtml(view.aliasSource)}; ignored (no entry variant): ${list(view.ignored)}</div>
  <div>x-cs-variant-uid: ${header('x-cs-variant-uid')}</div>
  <div>variant param (x-cs-personalize-variants): <span id="variant-param">${header('x-cs-personalize-variants')}</span></div>
  <div>?personalize_variants: ${queryParam === null ? '<em>not sent</em>' : `<code>${escapeHtml(queryParam)}</code>`}</div>
  <div>user uid (x-cs-personalize-user-uid): ${header('x-cs-personalize-user-uid')}</div>
  <div>entry: <code>${escapeHtml(view.entry.content_type_uid)}/${escapeHtml(view.entry.uid)}</code></div>
</footer>`;
}

/** A personalized value shown only when it is not empty (base "", a variant supplies the text). */
function optional(view, name, cls) {
  return view.fields[name] ? `<div class="${cls}">${field(view, name)}</div>` : '';
}

/**
 * Demo hints: how to reach the variants of the behaviour experiences (8 returning visitor, 9 high-intent shopper),
 * or why they show. Each hint is a field its variant overrides, so it says what the visitor just did.
 */
function hints(view, names) {
  const shown = names.filter((name) => view.fields[name] !== undefined && view.fields[name] !== '');
  if (!shown.length) return '';
  return `<aside class="hints" aria-label="Demo hints">${shown.map((name) => field(view, name, 'p', ' class="hint"')).join('')}</aside>`;
}

function homepage(view, content) {
  return `${optional(view, 'welcome_back', 'welcome')}
<section class="hero">
  ${field(view, 'hero_title', 'h1')}
  ${field(view, 'hero_subtitle', 'p')}
  <a class="button" data-field="hero_cta" href="${escapeHtml(view.fields.hero_cta_url)}"${view.sources.hero_cta ? ` data-variant="${escapeHtml(view.sources.hero_cta)}"` : ''}>${escapeHtml(view.fields.hero_cta)}</a>
</section>
<div class="banner">${field(view, 'banner_text')}</div>
<p class="note">${field(view, 'shipping_note')}</p>
<h2>${field(view, 'recommendations_title')}</h2>
${productCards(content, view.fields.recommendations)}
${optional(view, 'checkout_nudge', 'nudge')}
<div class="panel">${field(view, 'loyalty_message')}</div>
${hints(view, ['welcome_hint', 'checkout_hint'])}`;
}

function product(view, content) {
  const badge = view.fields.badge ? ` ${field(view, 'badge', 'span', ' class="badge"')}` : '';
  return `<div class="panel">
  <h1>${field(view, 'name')}${badge}</h1>
  <div class="price">${money(content, view.fields.price)}</div>
  ${field(view, 'description', 'p')}
  <a class="button" href="/cart">Add to cart</a>
</div>
${optional(view, 'checkout_nudge', 'nudge')}
<h2>${field(view, 'recommendations_title')}</h2>
${productCards(content, view.fields.recommendations)}
${hints(view, ['checkout_hint'])}`;
}

function checkout(view) {
  const green = view.fields.button_style === 'green' ? ' green' : '';
  const button = `<button class="button${green}" data-field="button_label" data-style="${escapeHtml(view.fields.button_style)}"${view.sources.button_label ? ` data-variant="${escapeHtml(view.sources.button_label)}"` : ''}>${escapeHtml(view.fields.button_label)}</button>`;
  const sticky = view.fields.button_position === 'sticky';
  return `${field(view, 'heading', 'h1')}
<div class="panel">
  <p><label>Email<br><input type="email" placeholder="you@example.com"></label></p>
  <p><label>Card number<br><input inputmode="numeric" placeholder="4242 4242 4242 4242"></label></p>
  <p class="note">${field(view, 'delivery_note')}</p>
  <p class="note">${field(view, 'trust_note')}</p>
  ${sticky ? '' : button}
</div>
${sticky ? `<div class="sticky" data-field="button_position">${button}</div>` : ''}`;
}

function cart(view, content) {
  let subtotal = 0;
  const rows = (view.fields.items || []).map((item) => {
    const entry = content.entries.find((e) => e.url === `/products/${item.product}`);
    const price = entry ? entry.fields.price : 0;
    subtotal += price * item.quantity;
    return `<tr><td>${escapeHtml(entry ? entry.fields.name : item.product)}</td><td>${escapeHtml(item.quantity)}</td><td>${money(content, price * item.quantity)}</td></tr>`;
  });
  const threshold = Number(view.fields.free_shipping_threshold);
  const missing = Math.max(0, threshold - subtotal);
  const pct = threshold > 0 ? Math.min(100, Math.round((subtotal / threshold) * 100)) : 100;
  const progress = missing > 0
    ? `Add ${money(content, missing)} more for free shipping.`
    : 'Your order ships free.';
  return `${field(view, 'heading', 'h1')}
<div class="panel">
  <table><tr><th>Item</th><th>Qty</th><th>Total</th></tr>${rows.join('')}
  <tr><th colspan="2">Subtotal</th><th>${money(content, subtotal)}</th></tr></table>
</div>
<div class="panel">
  <p>${field(view, 'shipping_note')}</p>
  <div class="progress"><span style="width:${pct}%"></span></div>
  <p class="note" data-field="free_shipping_threshold" data-threshold="${escapeHtml(threshold)}"${view.sources.free_shipping_threshold ? ` data-variant="${escapeHtml(view.sources.free_shipping_threshold)}"` : ''}>${progress}</p>
  <a class="button" href="/checkout">${field(view, 'checkout_label')}</a>
</div>`;
}

const TEMPLATES = { homepage, product, checkout, cart };

/** Render a personalized entry; `view` is the result of applyVariants plus entry, query, aliasSource. */
function renderEntry(view, req, content) {
  const template = TEMPLATES[view.entry.content_type_uid];
  if (!template) throw new Error(`no template for content type ${view.entry.content_type_uid}`);
  return layout({ title: view.entry.title, view, req, content, body: template(view, content) });
}

function renderNotFound(pathname) {
  return `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Not found</title>
<style>body{font:16px/1.5 system-ui,sans-serif;color:#1d2a2f;background:#f5f7f4;display:grid;place-items:center;min-height:90vh;margin:0}
main{text-align:center}h1{font-size:3rem;margin:0}a{color:#1f6f5c}</style></head>
<body><main><h1>404</h1><p>Nothing lives at <code>${escapeHtml(pathname)}</code>.</p><p><a href="/">Back to the shop</a></p></main></body>
</html>
`;
}

module.exports = { renderEntry, renderNotFound, escapeHtml };
