// Steps of the browser conformance flow, called one at a time by tests/sdk/browser.mjs through page.evaluate.
// Each step's result is appended to window.__results and rendered into the page (for the screenshot).
(function () {
  'use strict';

  var results = [];
  window.__results = results;
  var current = null; // the SDK instance of the latest init

  function readCookies() {
    // name -> text between the first '=' and ';' (SPEC §6); the first occurrence of a name wins.
    var out = {};
    document.cookie.split(';').forEach(function (part) {
      var eq = part.indexOf('=');
      if (eq < 0) return;
      var name = part.slice(0, eq).trim();
      if (name && !(name in out)) out[name] = part.slice(eq + 1).trim();
    });
    return out;
  }

  function snapshot(sdk) {
    return {
      userId: sdk.getUserId() === undefined ? null : sdk.getUserId(),
      aliases: sdk.getVariantAliases(),
      variantParam: sdk.getVariantParam(),
      experiences: sdk.getExperiences(),
      variants: sdk.getVariants()
    };
  }

  function render(entry) {
    var tbody = document.querySelector('#results tbody');
    if (!tbody) return;
    var row = document.createElement('tr');
    if (entry.error) row.className = 'error';
    var th = document.createElement('th');
    th.textContent = entry.label || entry.step;
    var td = document.createElement('td');
    var code = document.createElement('code');
    var shown = entry.error ? { error: entry.error } : entry.result;
    if (shown && shown.userId !== undefined && shown.variantParam !== undefined) {
      shown = { userId: shown.userId, variantParam: shown.variantParam, aliases: shown.aliases };
    }
    code.textContent = JSON.stringify(shown);
    td.appendChild(code);
    row.appendChild(th);
    row.appendChild(td);
    tbody.appendChild(row);
  }

  function requireSdk() {
    if (!current) throw new Error('no SDK instance: run the init step first');
    return current;
  }

  var steps = {
    init: async function (cfg) {
      window.personalize.setEdgeApiUrl(cfg.edgeApiUrl);
      var cookiesBefore = readCookies();
      current = await window.personalize.init(cfg.projectUid);
      var result = snapshot(current);
      result.cookiesBefore = cookiesBefore;
      result.cookiesAfter = readCookies();
      return result;
    },
    set: async function (cfg) {
      await requireSdk().set(cfg.attributes);
      return { attributes: cfg.attributes };
    },
    impressions: async function () {
      var sdk = requireSdk();
      var experiences = sdk.getExperiences();
      var firstActive = experiences.filter(function (e) { return e.activeVariantShortUid !== null; })[0];
      if (!firstActive) throw new Error('the manifest has no active variant');
      var others = experiences.filter(function (e) { return e !== firstActive; }).map(function (e) { return e.shortUid; });
      await sdk.triggerImpression(firstActive.shortUid);
      await sdk.triggerImpressions({ experienceShortUids: others });
      return { triggerImpression: firstActive.shortUid, triggerImpressions: others };
    },
    event: async function (cfg) {
      await requireSdk().triggerEvent(cfg.eventKey);
      return { eventKey: cfg.eventKey };
    },
    clearManifestCookie: async function () {
      document.cookie = 'cs-personalize-manifest=; Max-Age=0; Path=/';
      return { cookies: readCookies() };
    },
    setUserId: async function (cfg) {
      var sdk = requireSdk();
      var before = sdk.getUserId();
      await sdk.setUserId(cfg.newUserId, { preserveUserAttributes: true });
      return { before: before, after: sdk.getUserId(), cookies: readCookies() };
    }
  };

  window.sdkConformance = {
    readCookies: readCookies,
    // Show the steps of the whole flow (those run before a reload too), for the screenshot.
    renderAll: function (entries) {
      var tbody = document.querySelector('#results tbody');
      if (tbody) tbody.textContent = '';
      entries.forEach(render);
    },
    run: async function (step, cfg) {
      var entry = { step: step, at: new Date().toISOString() };
      try {
        if (!steps[step]) throw new Error('unknown step ' + step);
        entry.result = await steps[step](cfg || {});
      } catch (error) {
        entry.error = String(error && error.message ? error.message : error);
      }
      results.push(entry);
      render(entry);
      return entry;
    }
  };
})();
