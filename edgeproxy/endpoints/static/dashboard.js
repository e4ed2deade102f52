// edgeproxy dashboard: fetches data.json and draws everything with plain DOM + inline SVG (no libraries, no CDN).
'use strict';
(function () {
  const SVG = 'http://www.w3.org/2000/svg';
  const PALETTE = ['#3b5bdb', '#e8590c', '#2b8a3e', '#ae3ec9', '#1098ad', '#f59f00', '#c92a2a', '#5c7cfa'];
  const REFRESH_MS = 15000;
  const body = document.body;
  const token = new URLSearchParams(window.location.search).get('token');
  const dataUrl = body.dataset.url + (token ? '?token=' + encodeURIComponent(token) : '');
  const chosenMetric = {};  // experience short uid -> metric key picked in its selector
  let timer = null;
  let last = null;

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'text') node.textContent = v; else if (v !== null && v !== undefined) node.setAttribute(k, v);
    }
    for (const child of children || []) if (child) node.appendChild(child);
    return node;
  }
  function svg(tag, attrs, children) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'text') node.textContent = v; else if (v !== null && v !== undefined) node.setAttribute(k, String(v));
    }
    for (const child of children || []) if (child) node.appendChild(child);
    return node;
  }
  const int = (n) => (n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US'));
  const pct = (x, d) => (x === null || x === undefined ? '—' : (x * 100).toFixed(d === undefined ? 2 : d) + '%');
  const signed = (x) => (x === null || x === undefined ? '—' : (x >= 0 ? '+' : '') + (x * 100).toFixed(1) + '%');
  const colorOf = (i) => PALETTE[i % PALETTE.length];

  // -- charts --------------------------------------------------------------------------------------------
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // The y-axis: [top, tick values]. Counts get whole-number ticks (never "1, 1, 2, 2" on a chart of two
  // impressions); fractions get four equal steps.
  function yTicks(maxValue, opts) {
    if (opts.integer) {
      const top = Math.max(1, Math.ceil(maxValue));
      const step = Math.max(1, Math.ceil(niceMax(top / 4)));
      const yMax = step * Math.ceil(top / step);
      const ticks = [];
      for (let v = 0; v <= yMax; v += step) ticks.push(v);
      return [yMax, ticks];
    }
    const yMax = opts.max !== undefined ? opts.max : niceMax(maxValue);
    return [yMax, [0, 1, 2, 3, 4].map((k) => (yMax * k) / 4)];
  }

  // Tick labels, with more digits while two would read the same (a rate chart topping at 0.1%).
  function tickLabels(ticks, opts) {
    let labels = ticks.map((v) => opts.format(v));
    for (let digits = 1; opts.tickFormat && new Set(labels).size < labels.length && digits <= 6; digits++) {
      labels = ticks.map((v) => opts.tickFormat(v, digits));
    }
    return labels;
  }

  // series: [{name, color, values: [number|null per day]}]; opts: {format, max, threshold, integer, tickFormat}
  function lineChart(days, series, opts) {
    const W = 380, H = 190, L = 44, R = 10, T = 10, B = 24;
    const values = series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined));
    const box = el('div');
    if (!days.length || !values.length) {
      box.appendChild(el('div', { class: 'empty', text: 'no data yet' }));
      box.dataset.points = '0';
      return box;
    }
    const [yMax, yValues] = yTicks(Math.max(...values), opts);
    const x = (i) => L + (days.length === 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (days.length - 1));
    const y = (v) => T + (H - T - B) * (1 - v / yMax);
    const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img' });
    const labels = tickLabels(yValues, opts);
    yValues.forEach((v, k) => {
      root.appendChild(svg('line', { class: k ? 'grid' : 'axis', x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      root.appendChild(svg('text', { class: 'ytick', x: L - 6, y: y(v) + 3, 'text-anchor': 'end', text: labels[k] }));
    });
    const ticks = Math.min(days.length, 5);
    for (let k = 0; k < ticks; k++) {
      const i = ticks === 1 ? 0 : Math.round((k * (days.length - 1)) / (ticks - 1));
      const anchor = ticks > 1 && k === 0 ? 'start' : ticks > 1 && k === ticks - 1 ? 'end' : 'middle';
      root.appendChild(svg('text', { x: x(i), y: H - 6, 'text-anchor': anchor, text: days[i].slice(5) }));
    }
    if (opts.threshold !== undefined) {
      root.appendChild(svg('line', { class: 'threshold', x1: L, x2: W - R, y1: y(opts.threshold), y2: y(opts.threshold) }));
    }
    let points = 0;
    for (const s of series) {
      let d = '';
      let pen = false;
      s.values.forEach((v, i) => {
        if (v === null || v === undefined) { pen = false; return; }
        d += (pen ? 'L' : 'M') + x(i).toFixed(1) + ' ' + y(v).toFixed(1) + ' ';
        pen = true;
        points += 1;
      });
      if (d) root.appendChild(svg('path', { d, fill: 'none', stroke: s.color, 'stroke-width': 2, 'stroke-linejoin': 'round' }));
      if (days.length <= 45) {
        s.values.forEach((v, i) => {
          if (v !== null && v !== undefined) root.appendChild(svg('circle', { cx: x(i), cy: y(v), r: 2.2, fill: s.color }));
        });
      }
    }
    // One transparent column per day with a native tooltip listing every series' value.
    const step = days.length > 1 ? (W - L - R) / (days.length - 1) : W - L - R;
    days.forEach((day, i) => {
      const lines = [day].concat(series.map((s) => `${s.name}: ${s.values[i] === null || s.values[i] === undefined ? '—' : opts.format(s.values[i], true)}`));
      root.appendChild(svg('rect', { x: x(i) - step / 2, y: T, width: step, height: H - T - B, fill: 'transparent' },
        [svg('title', { text: lines.join('\n') })]));
    });
    box.appendChild(root);
    box.dataset.points = String(points);
    return box;
  }

  function chartCard(title, chart, legend) {
    const card = el('div', { class: 'chart' }, [el('h3', { text: title }), chart]);
    card.dataset.points = chart.dataset.points;
    card.appendChild(el('div', { class: 'legend' }, legend.map((item) =>
      el('span', {}, [swatch(item.color), document.createTextNode(item.name)]))));
    return card;
  }

  function swatch(color) {
    const s = el('span', { class: 'swatch' });
    s.style.background = color;
    return s;
  }

  // -- experience cards -----------------------------------------------------------------------------------
  function badge(text, cls) { return el('span', { class: 'badge ' + (cls || ''), text }); }

  function experienceCard(exp, series, live) {
    const isAb = exp.type === 'AB_TEST';
    const metricKeys = exp.metrics.map((m) => m.key);
    let metricKey = chosenMetric[exp.shortUid];
    if (!metricKeys.includes(metricKey)) metricKey = exp.primaryMetric;
    const metric = exp.metrics.find((m) => m.key === metricKey) || null;
    const card = el('section', { class: 'card exp', id: 'exp-' + exp.shortUid });
    card.dataset.experience = exp.shortUid;

    const badges = el('div', { class: 'badges' }, [
      badge(isAb ? 'A/B test' : 'Segmented', isAb ? 'ab' : ''),
      badge(exp.status, exp.status === 'ACTIVE' ? 'active' : 'paused'),
    ]);
    if (isAb && metric) {
      if (metric.winner !== null) badges.appendChild(badge('Winner: ' + variantName(exp, metric.winner), 'winner'));
      else if (metric.leader !== null && metric.insightsAvailable) badges.appendChild(badge('Leader: ' + variantName(exp, metric.leader), 'leader'));
      if (!metric.insightsAvailable) badges.appendChild(badge('Insights not available yet', 'info'));
    }
    if (exp.srm && exp.srm.mismatch) badges.appendChild(badge('Sample ratio mismatch', 'warn'));

    const head = el('div', { class: 'exp-head' }, [
      el('div', { class: 'exp-title' }, [
        el('span', { class: 'prio', text: '[' + exp.shortUid + ']' }),  // as `edgeproxy report` names it
        el('h2', { text: exp.name }),
        el('span', { class: 'muted', text: 'priority ' + exp.priority }),
      ]),
      badges,
    ]);
    card.appendChild(head);

    const facts = el('div', { class: 'facts' });
    const factParts = [['impressions', int(exp.impressions)]];
    if (exp.firstImpressionAt) factParts.push(['running', exp.runningDays.toFixed(1) + ' days'], ['since', exp.firstImpressionAt.slice(0, 10)]);
    if (metric) factParts.push(['metric', metric.name + (metric.primary ? ' (primary)' : '')], ['conversions', int(metric.conversions)]);
    factParts.forEach(([k, v], i) => {
      if (i) facts.appendChild(document.createTextNode(' · '));
      facts.appendChild(document.createTextNode(k + ' '));
      facts.appendChild(el('b', { text: v }));
    });
    card.appendChild(facts);

    if (exp.metrics.length > 1) {
      const select = el('select', { 'aria-label': 'metric' }, exp.metrics.map((m) => {
        const o = el('option', { value: m.key, text: m.name + (m.primary ? ' (primary)' : '') });
        if (m.key === metricKey) o.selected = true;
        return o;
      }));
      select.addEventListener('change', () => { chosenMetric[exp.shortUid] = select.value; render(last); });
      card.appendChild(el('div', { class: 'metric-pick' }, [document.createTextNode('Metric'), select]));
    }

    // Variants table
    const liveExp = (live.experiences || {})[exp.shortUid] || {};
    const cols = ['Variant'];
    if (isAb) cols.push('Split');
    cols.push('Live decisions', 'Impressions');
    if (metric) cols.push('Conversions', 'Conversion rate (95% interval)');
    if (isAb && metric) cols.push('Uplift', 'Probability to be best');
    const table = el('table', {}, [el('thead', {}, [el('tr', {}, cols.map((c) => el('th', { text: c })))])]);
    const tbody = el('tbody');
    exp.variants.forEach((v, i) => {
      const cells = [];
      const name = el('td', {}, [swatch(colorOf(i)), document.createTextNode(v.shortUid + ' · ' + v.name)]);
      if (v.control) name.appendChild(el('span', { class: 'ctl', text: 'control' }));
      cells.push(name);
      if (isAb) cells.push(el('td', { text: pct(v.split, 0) }));
      const lv = liveExp[v.shortUid];
      cells.push(el('td', { text: lv ? `${int(lv.total)} (${int(lv.last5Minutes)} in 5 min)` : '0' }));
      cells.push(el('td', { text: int(v.impressions) }));
      if (metric) {
        const m = v.metrics[metric.key];
        cells.push(el('td', { text: int(m.conversions) }));
        const rate = el('td', { text: pct(m.rate) + ' ' });
        if (m.interval) rate.appendChild(el('span', { class: 'ci', text: `[${pct(m.interval[0])} – ${pct(m.interval[1])}]` }));
        cells.push(rate);
        if (isAb) {
          const up = el('td', { text: v.control ? 'baseline' : signed(m.uplift) });
          if (!v.control && m.uplift !== null) up.className = m.uplift >= 0 ? 'up' : 'down';
          cells.push(up);
          const bar = el('span', { class: 'bar' }, [el('i')]);
          bar.firstChild.style.width = ((m.probabilityToBeBest || 0) * 100).toFixed(1) + '%';
          cells.push(el('td', {}, [el('span', { class: 'p2bb' }, [bar, document.createTextNode(pct(m.probabilityToBeBest, 1))])]));
        }
      }
      tbody.appendChild(el('tr', {}, cells));
    });
    const noVariant = liveExp['-'];
    if (noVariant) {
      const cells = [el('td', { class: 'muted', text: 'no variant (not targeted / not allocated)' })];
      if (isAb) cells.push(el('td'));
      cells.push(el('td', { text: `${int(noVariant.total)} (${int(noVariant.last5Minutes)} in 5 min)` }));
      while (cells.length < cols.length) cells.push(el('td'));
      tbody.appendChild(el('tr', {}, cells));
    }
    table.appendChild(tbody);
    card.appendChild(table);

    // Notes
    const notes = el('ul', { class: 'notes' });
    if (exp.srm && exp.srm.mismatch) {
      const observed = Object.values(exp.srm.observed).map(int).join(' / ');
      const expected = Object.values(exp.srm.expected).map((s) => pct(s, 0)).join(' / ');
      notes.appendChild(el('li', { class: 'warn', text: `Sample ratio mismatch: impressions ${observed} vs configured split ${expected} (p = ${Number(exp.srm.pValue).toPrecision(2)} < 0.001). Check for lost or duplicated impressions, bots, or a split changed mid-test before trusting these results.` }));
    }
    if (isAb && metric && !metric.insightsAvailable) {
      notes.appendChild(el('li', { text: `Insights start after 1,000 impressions or 30 conversions (now ${int(exp.impressions)} and ${int(metric.conversions)}).` }));
    } else if (isAb && metric && metric.leader !== null && metric.winner === null) {
      const why = [];
      if (!(metric.leaderProbability >= 0.95)) why.push(`its probability to be best is ${pct(metric.leaderProbability, 1)} (needs 95%)`);
      if (!(exp.runningDays >= 14)) why.push(`the test has run ${exp.runningDays === null ? 0 : exp.runningDays.toFixed(1)} days (needs 14)`);
      notes.appendChild(el('li', { text: `No winner yet: ${variantName(exp, metric.leader)} leads, but ${why.join(' and ')}.` }));
    }
    if (Object.keys(exp.unknownVariants || {}).length) {
      notes.appendChild(el('li', { text: 'Impressions of variants not in this snapshot: ' + Object.entries(exp.unknownVariants).map(([v, n]) => `${v} (${int(n)})`).join(', ') }));
    }
    if (notes.childNodes.length) card.appendChild(notes);

    // Charts
    const s = series || { days: [], variants: {}, probabilityToBeBest: {} };
    const label = (v) => v.shortUid + ' · ' + v.name;  // variants as the table and `edgeproxy report` name them
    const legend = exp.variants.map((v, i) => ({ name: label(v), color: colorOf(i) }));
    const pick = (fn) => exp.variants.map((v, i) => ({ name: label(v), color: colorOf(i), values: fn(s.variants[v.shortUid] || null, v) }));
    const charts = el('div', { class: 'charts' });
    charts.appendChild(chartCard('New unique impressions per day',
      lineChart(s.days, pick((d) => (d ? d.impressions : [])), { format: (v) => int(Math.round(v)), integer: true }), legend));
    if (metric) {
      const rates = pick((d) => (d && d.conversionRate[metric.key] ? d.conversionRate[metric.key] : []));
      const top = Math.max(0, ...rates.flatMap((r) => r.values.filter((v) => v !== null)));
      charts.appendChild(chartCard('Conversion rate, cumulative — ' + metric.name,
        lineChart(s.days, rates, { format: (v, exact) => pct(v, exact ? 2 : 1), tickFormat: (v, d) => pct(v, d), max: niceMax(top) }), legend));
    }
    if (isAb && metric && metric.primary) {
      const p = exp.variants.map((v, i) => ({ name: label(v), color: colorOf(i), values: (s.probabilityToBeBest || {})[v.shortUid] || [] }));
      charts.appendChild(chartCard('Probability to be best, cumulative',
        lineChart(s.days, p, { format: (v, exact) => pct(v, exact ? 1 : 0), max: 1, threshold: 0.95 }), legend));
    } else if (isAb && metric) {
      charts.appendChild(el('div', { class: 'chart' }, [el('h3', { text: 'Probability to be best, cumulative' }),
        el('div', { class: 'empty', text: 'charted for the primary metric' })]));
    }
    card.appendChild(charts);
    return card;
  }

  function variantName(exp, shortUid) {
    const v = exp.variants.find((x) => x.shortUid === shortUid);
    return v ? v.name : shortUid;
  }

  function sparkline(perMinute) {
    const W = 600, H = 56;
    const max = Math.max(1, ...perMinute);
    const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none' });
    const bw = W / Math.max(1, perMinute.length);
    perMinute.forEach((n, i) => {
      const h = (n / max) * (H - 4);
      root.appendChild(svg('rect', { x: i * bw + 1, y: H - h, width: Math.max(1, bw - 2), height: h, fill: '#3b5bdb', rx: 1 },
        [svg('title', { text: `${perMinute.length - 1 - i} min ago: ${int(n)} decisions` })]));
    });
    return root;
  }

  // Preview links (SPEC §10): one per variant of each experience, drafts marked; absent when previews are off.
  function renderPreviews(previews) {
    const section = document.getElementById('previews');
    section.hidden = !previews || previews.length === 0;
    if (section.hidden) return;
    document.getElementById('preview-list').replaceChildren(...previews.map((exp) => el('div', { class: 'row' }, [
      el('strong', { text: `[${exp.shortUid}] ${exp.name}` }),
      exp.draft ? el('span', { class: 'badge', text: 'draft' }) : null,
      ...exp.variants.map((v) => el('a', { href: v.link, target: '_blank', rel: 'noopener noreferrer',
                                            class: 'preview-link', 'data-variant': exp.shortUid + '=' + v.shortUid,
                                            text: `preview ${v.shortUid} · ${v.name}` })),
    ])));
  }

  // -- page -----------------------------------------------------------------------------------------------
  function render(data) {
    if (!data) return;
    renderPreviews(data.previews);
    const live = data.live || { decisions: 0, perMinute: [], experiences: {} };
    document.getElementById('live-total').textContent = int(live.decisions);
    document.getElementById('live-since').textContent = live.since ? new Date(live.since * 1000).toISOString().slice(0, 16).replace('T', ' ') + ' UTC' : '—';
    const spark = document.getElementById('live-chart');
    spark.replaceChildren(sparkline(live.perMinute || []));
    const list = document.getElementById('experiences');
    const toc = document.getElementById('toc');
    if (!data.ready) {
      list.replaceChildren(el('div', { class: 'card muted', text: data.message || 'not ready' }));
      return;
    }
    const report = data.report;
    document.getElementById('project').textContent =
      `project ${report.projectUid} · snapshot ${report.snapshotVersion.slice(0, 19)}… · ${report.experiences.length} live experiences`;
    list.replaceChildren(...report.experiences.map((exp) => experienceCard(exp, data.series[exp.shortUid], live)));
    toc.replaceChildren(...report.experiences.map((exp) => el('a', { href: '#exp-' + exp.shortUid, text: `[${exp.shortUid}] ${exp.name}` })));
    document.getElementById('footer').textContent =
      `Unique impressions per user and variant from any source; conversions once per user and metric within 30 days after the impression, credited to the variant the user saw; probability to be best from ${int(report.settings.draws)} seeded draws of Beta(1 + conversions, 1 + impressions − conversions). Computed in ${data.computeSeconds}s from ${report.source}.`;
  }

  async function refresh() {
    const banner = document.getElementById('error');
    try {
      const response = await fetch(dataUrl, { headers: { Accept: 'application/json' }, cache: 'no-store' });
      const data = await response.json();
      if (!response.ok) throw new Error(data.message || ('HTTP ' + response.status));
      last = data;
      render(data);
      banner.hidden = true;
      document.getElementById('updated').textContent = 'updated ' + new Date().toLocaleTimeString() + (data.stale ? ' (refreshing…)' : '');
      body.dataset.state = 'ready';
    } catch (err) {
      banner.textContent = 'Could not load the analytics: ' + err.message;
      banner.hidden = false;
      if (body.dataset.state === 'loading') body.dataset.state = 'error';
    }
  }

  function schedule() {
    if (timer) clearInterval(timer);
    timer = document.getElementById('auto').checked ? setInterval(refresh, REFRESH_MS) : null;
  }
  document.getElementById('auto').addEventListener('change', schedule);
  refresh();
  schedule();
})();
