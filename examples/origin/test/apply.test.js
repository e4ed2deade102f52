'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { applyVariants, parseVariantHeader, aliasesFromVariantParam } = require('../server.js');
const { loadContent, validateContent } = require('../lib/variants.js');

const entry = {
  fields: { hero_title: 'Base title', hero_subtitle: 'Base subtitle', banner_text: 'Base banner', promo_bar: 'Base promo' },
  variants: {
    cs_personalize_1_0: { hero_title: 'BF title', banner_text: 'BF banner' },
    cs_personalize_0_1: { hero_title: 'UK title', hero_subtitle: 'UK subtitle' },
    cs_personalize_4_0: { hero_subtitle: 'Gold subtitle' },
    cs_personalize_2_0: {},
  },
};

test('no header leaves every field at its base value', () => {
  for (const header of [undefined, null, '', ' ', ',', ' , ,']) {
    const result = applyVariants(entry, header);
    assert.deepEqual(result.fields, entry.fields, `header ${JSON.stringify(header)}`);
    assert.deepEqual(result.applied, []);
    assert.ok(Object.values(result.sources).every((s) => s === null));
  }
});

test('the first alias in header order wins a shared field', () => {
  const a = applyVariants(entry, 'cs_personalize_1_0,cs_personalize_0_1');
  assert.equal(a.fields.hero_title, 'BF title');
  assert.equal(a.fields.hero_subtitle, 'UK subtitle'); // 1_0 does not touch it, so 0_1 supplies it
  assert.equal(a.fields.banner_text, 'BF banner');
  assert.equal(a.sources.hero_title, 'cs_personalize_1_0');
  assert.equal(a.sources.hero_subtitle, 'cs_personalize_0_1');
  assert.deepEqual(a.applied, ['cs_personalize_1_0', 'cs_personalize_0_1']);

  const b = applyVariants(entry, 'cs_personalize_0_1,cs_personalize_1_0');
  assert.equal(b.fields.hero_title, 'UK title');
  assert.equal(b.fields.banner_text, 'BF banner');
});

test('an alias that loses every field it overrides is not reported as applied', () => {
  const result = applyVariants(entry, 'cs_personalize_0_1,cs_personalize_4_0');
  assert.equal(result.fields.hero_subtitle, 'UK subtitle');
  assert.deepEqual(result.applied, ['cs_personalize_0_1']);
  assert.deepEqual(result.ignored, []);
});

test('a variant with no fields (a control) changes nothing and is not applied', () => {
  const result = applyVariants(entry, 'cs_personalize_2_0');
  assert.deepEqual(result.fields, entry.fields);
  assert.deepEqual(result.applied, []);
});

test('unknown aliases are ignored and do not block later ones', () => {
  const result = applyVariants(entry, 'cs_personalize_9_9,not-an-alias,cs_personalize_0_1');
  assert.equal(result.fields.hero_title, 'UK title');
  assert.deepEqual(result.applied, ['cs_personalize_0_1']);
  assert.deepEqual(result.ignored, ['cs_personalize_9_9', 'not-an-alias']);
});

test('whitespace around aliases and empty items are ignored', () => {
  const result = applyVariants(entry, '  cs_personalize_4_0 ,, \tcs_personalize_1_0 ,');
  assert.equal(result.fields.hero_subtitle, 'Gold subtitle');
  assert.equal(result.fields.hero_title, 'BF title');
  assert.deepEqual(result.requested, ['cs_personalize_4_0', 'cs_personalize_1_0']);
  assert.deepEqual(result.applied, ['cs_personalize_4_0', 'cs_personalize_1_0']);
});

test('aliases are matched exactly (case-sensitive, no partial matches)', () => {
  const result = applyVariants(entry, 'CS_PERSONALIZE_1_0,cs_personalize_1,cs_personalize_1_00');
  assert.deepEqual(result.applied, []);
  assert.deepEqual(result.fields, entry.fields);
});

test('the entry itself is never modified', () => {
  const before = JSON.stringify(entry);
  applyVariants(entry, 'cs_personalize_1_0,cs_personalize_0_1');
  assert.equal(JSON.stringify(entry), before);
});

test('a header sent several times is read in order', () => {
  const result = applyVariants(entry, ['cs_personalize_0_1', 'cs_personalize_1_0']);
  assert.equal(result.fields.hero_title, 'UK title');
});

test('parseVariantHeader drops later duplicates', () => {
  assert.deepEqual(parseVariantHeader('a, b,a ,c'), ['a', 'b', 'c']);
});

test('a variant param becomes aliases in the same order', () => {
  assert.deepEqual(aliasesFromVariantParam('0_1, 6_2,,bad,1_x'), ['cs_personalize_0_1', 'cs_personalize_6_2']);
  assert.deepEqual(aliasesFromVariantParam(''), []);
  assert.deepEqual(aliasesFromVariantParam(null), []);
});

test('the bundled content file is valid and layers several experiences on shared homepage fields', () => {
  const content = loadContent(path.join(__dirname, '..', 'content.json'));
  const home = content.entries.find((e) => e.url === '/');
  const overriders = (field) => Object.keys(home.variants).filter((a) => field in home.variants[a]);
  assert.ok(overriders('hero_title').some((a) => a.startsWith('cs_personalize_1_')));
  assert.ok(overriders('hero_title').some((a) => a.startsWith('cs_personalize_0_')));
  // Priority order 1, 0, 6, 3, 4: Black Friday beats the homepage hero on the title.
  const result = applyVariants(home, 'cs_personalize_1_1,cs_personalize_0_0,cs_personalize_6_0,cs_personalize_3_0,cs_personalize_4_0');
  assert.equal(result.fields.hero_title, home.variants.cs_personalize_1_1.hero_title);
  assert.equal(result.fields.hero_subtitle, home.variants.cs_personalize_0_0.hero_subtitle);
  assert.equal(result.fields.recommendations_title, home.variants.cs_personalize_6_0.recommendations_title);
  assert.equal(result.fields.shipping_note, home.variants.cs_personalize_3_0.shipping_note);
  assert.equal(result.fields.loyalty_message, home.variants.cs_personalize_4_0.loyalty_message);
});

test('content validation points at the offending JSON path', () => {
  const bad = { entries: [{ uid: 'x', content_type_uid: 'page', url: '/', fields: { a: 1 }, variants: { cs_personalize_0_1: { b: 2 } } }] };
  assert.throws(() => validateContent(bad, 'test.json'), /test\.json: \$\.entries\[0\]\.variants\["cs_personalize_0_1"\]\.b/);
  const badAlias = { entries: [{ uid: 'x', content_type_uid: 'page', url: '/', fields: {}, variants: { '0_1': {} } }] };
  assert.throws(() => validateContent(badAlias), /cs_personalize_0_1/);
});
