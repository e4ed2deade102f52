'use strict';
// Entry variants applied the way the Contentstack Delivery API applies them for `x-cs-variant-uid`:
// the header lists variant aliases in priority order and, for every field, the FIRST listed alias
// whose entry variant overrides that field wins; fields no listed variant touches keep the base value.
// Aliases the entry has no variant for are ignored, as are empty items ("a,,b", trailing commas).

const fs = require('node:fs');

const ALIAS_PATTERN = /^cs_personalize_[^_\s,]+_[0-9]+$/;
const VARIANT_PARAM_ITEM = /^[^_\s,]+_[0-9]+$/;

/**
 * Split an `x-cs-variant-uid` value into aliases: comma-separated, whitespace trimmed, empty items
 * dropped, later duplicates dropped (they could never win a field anyway). Accepts undefined/null
 * (header absent) and arrays (a header sent several times), which are read in order.
 * @param {string | string[] | undefined | null} header
 * @returns {string[]}
 */
function parseVariantHeader(header) {
  if (header === undefined || header === null) return [];
  const raw = Array.isArray(header) ? header.join(',') : String(header);
  const aliases = [];
  for (const item of raw.split(',')) {
    const alias = item.trim();
    if (alias !== '' && !aliases.includes(alias)) aliases.push(alias);
  }
  return aliases;
}

/**
 * Turn a variant param (`0_1,6_2`, as in `x-cs-personalize-variants` or `?personalize_variants=`)
 * into aliases (`cs_personalize_0_1,cs_personalize_6_2`), keeping its order. Malformed items are dropped.
 * @param {string | undefined | null} param
 * @returns {string[]}
 */
function aliasesFromVariantParam(param) {
  return parseVariantHeader(param)
    .filter((item) => VARIANT_PARAM_ITEM.test(item))
    .map((item) => `cs_personalize_${item}`);
}

/**
 * Apply entry variants to an entry.
 * @param {{fields: Record<string, unknown>, variants?: Record<string, Record<string, unknown>>}} entry
 * @param {string | string[] | undefined | null} header the `x-cs-variant-uid` value (or a list of aliases)
 * @returns {{
 *   fields: Record<string, unknown>,   // the personalized fields (a new object; the entry is not modified)
 *   applied: string[],                 // aliases that supplied at least one field, in header order
 *   sources: Record<string, string | null>, // per field: the winning alias, or null for the base value
 *   requested: string[],               // the parsed header
 *   ignored: string[],                 // requested aliases this entry has no variant for
 * }}
 */
function applyVariants(entry, header) {
  const requested = parseVariantHeader(header);
  const variants = entry.variants || {};
  const fields = { ...entry.fields };
  const sources = Object.fromEntries(Object.keys(fields).map((name) => [name, null]));
  const applied = [];
  const ignored = [];
  for (const alias of requested) {
    if (!Object.prototype.hasOwnProperty.call(variants, alias)) {
      ignored.push(alias);
      continue;
    }
    let supplied = false;
    for (const [name, value] of Object.entries(variants[alias])) {
      if (sources[name]) continue; // an earlier alias already won this field
      fields[name] = value;
      sources[name] = alias;
      supplied = true;
    }
    if (supplied) applied.push(alias);
  }
  return { fields, applied, sources, requested, ignored };
}

/**
 * Read and check a content file; errors say which file and which JSON path is wrong.
 * @param {string} path
 */
function loadContent(path) {
  let content;
  try {
    content = JSON.parse(fs.readFileSync(path, 'utf8'));
  } catch (err) {
    throw new Error(`cannot read content file ${path}: ${err.message}`);
  }
  validateContent(content, path);
  return content;
}

function validateContent(content, where = 'content') {
  const fail = (jsonPath, what) => {
    throw new Error(`${where}: ${jsonPath}: ${what}`);
  };
  const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
  if (!isObject(content)) fail('$', 'expected an object');
  if (!Array.isArray(content.entries)) fail('$.entries', 'expected an array of entries');
  const urls = new Set();
  content.entries.forEach((entry, i) => {
    const at = `$.entries[${i}]`;
    if (!isObject(entry)) fail(at, 'expected an object');
    for (const key of ['uid', 'content_type_uid', 'url']) {
      if (typeof entry[key] !== 'string' || entry[key] === '') fail(`${at}.${key}`, 'expected a non-empty string');
    }
    if (urls.has(entry.url)) fail(`${at}.url`, `duplicate url ${entry.url}`);
    urls.add(entry.url);
    if (!isObject(entry.fields)) fail(`${at}.fields`, 'expected an object of base field values');
    if (entry.variants === undefined) return;
    if (!isObject(entry.variants)) fail(`${at}.variants`, 'expected an object keyed by variant alias');
    for (const [alias, overrides] of Object.entries(entry.variants)) {
      const vat = `${at}.variants["${alias}"]`;
      if (!ALIAS_PATTERN.test(alias)) fail(vat, 'variant keys must be aliases like cs_personalize_0_1');
      if (!isObject(overrides)) fail(vat, 'expected an object of overridden fields');
      for (const name of Object.keys(overrides)) {
        if (!Object.prototype.hasOwnProperty.call(entry.fields, name)) {
          fail(`${vat}.${name}`, 'a variant can only override a field the base entry has');
        }
      }
    }
  });
}

module.exports = {
  ALIAS_PATTERN,
  parseVariantHeader,
  aliasesFromVariantParam,
  applyVariants,
  loadContent,
  validateContent,
};
