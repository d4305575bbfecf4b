// The job page's analysis: parameter importance (GET /jobs/{id}/importance), parallel coordinates
// over the architecture dimensions and the objectives, and slice plots (an objective against one
// dimension). Charts are SVG drawn here; the slice plot reuses the canvas scatter of charts.js.

import { api } from './api.js';
import { SCALES, Scatter, ticks } from './charts.js';
import { card, clear, errorBox, fmt, formatMetric, h, metricLabel, selectionMetric } from './ui.js';

const SVG = 'http://www.w3.org/2000/svg';
const MAX_TRIALS = 5000;  // complete trials drawn; a larger job shows its first ones and says so
const RELOAD_MS = 5000;   // a running job's analysis follows its new complete trials at most this often

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, v);
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

/** A colour for `t` in [0, 1] along the viridis stops. */
function viridis(t) {
  const stops = SCALES.viridis;
  const x = Math.max(0, Math.min(1, Number.isFinite(t) ? t : 0)) * (stops.length - 1);
  return stops[Math.round(x)];
}

const label = (value) => (typeof value === 'string' ? value : JSON.stringify(value));

/**
 * One axis per dimension or metric: numeric (a linear range) when every value is a number, else
 * categorical (the distinct values, evenly spaced). `position(v)` maps a value to [0, 1] (bottom to
 * top), or null when the trial has none.
 */
function axis(name, values, kind) {
  const present = values.filter((v) => v !== undefined && v !== null);
  if (present.every((v) => typeof v === 'number')) {
    let lo = Math.min(...present), hi = Math.max(...present);
    if (!(hi > lo)) { lo -= 0.5; hi += 0.5; }
    // a dimension with a few values (depth, a width's choices) is labelled at each of them
    const distinct = [...new Set(present)].sort((a, b) => a - b);
    const marks = kind === 'dimension' && distinct.length <= 8 ? distinct : ticks(lo, hi, 4).filter((t) => t >= lo && t <= hi);
    return {
      name, kind, numeric: true, lo, hi,
      position: (v) => (typeof v === 'number' ? (v - lo) / (hi - lo) : null),
      ticks: marks.map((t) => ({ at: (t - lo) / (hi - lo), text: kind === 'metric' ? formatMetric(name, t) : fmt.num(t, 3) })),
    };
  }
  const categories = [...new Set(present.map(label))].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  const step = categories.length > 1 ? 1 / (categories.length - 1) : 0;
  const at = new Map(categories.map((c, i) => [c, categories.length > 1 ? i * step : 0.5]));
  return {
    name, kind, numeric: false, categories,
    position: (v) => (v === undefined || v === null ? null : at.get(label(v))),
    ticks: categories.map((c) => ({ at: at.get(c), text: c.length > 14 ? `${c.slice(0, 13)}…` : c })),
  };
}

/** The architecture keys that take more than one value across `trials`, in the order the trials list them. */
function varyingDimensions(trials) {
  const keys = [];
  for (const t of trials) for (const k of Object.keys(t.arch || {})) if (!keys.includes(k)) keys.push(k);
  return keys.filter((k) => new Set(trials.map((t) => label(t.arch?.[k] ?? null))).size > 1);
}

function parallelCoordinates(box, trials, dims, metrics, openTrial) {
  if (!trials.length) { clear(box, h('p', { class: 'muted' }, 'No complete trial yet.')); return; }
  const axes = [
    ...dims.map((d) => axis(d, trials.map((t) => t.arch?.[d]), 'dimension')),
    ...metrics.map((m) => axis(m, trials.map((t) => t.metrics?.[m]), 'metric')),
  ];
  // drawn at the box's own width, so its text keeps the page's size; a narrow box scrolls
  const width = Math.max(640, box.clientWidth, 130 * axes.length), height = 340;
  const m = { l: 60, r: 70, t: 34, b: 22 };
  const x = (i) => m.l + (axes.length > 1 ? (i * (width - m.l - m.r)) / (axes.length - 1) : (width - m.l - m.r) / 2);
  const y = (p) => m.t + (1 - p) * (height - m.t - m.b);
  const colorAxis = axes[dims.length];  // the first objective
  const svg = s('svg', { viewBox: `0 0 ${width} ${height}`, class: 'parcoords', role: 'img', 'aria-label': 'Parallel coordinates' });
  const lines = s('g', { class: 'parcoords-lines' });
  for (const t of trials) {
    let d = '', open = false;
    axes.forEach((a, i) => {
      const p = a.position(i < dims.length ? t.arch?.[a.name] : t.metrics?.[a.name]);
      if (p === null || p === undefined || !Number.isFinite(p)) { open = false; return; }
      d += `${open ? 'L' : 'M'}${x(i).toFixed(1)},${y(p).toFixed(1)}`;
      open = true;
    });
    const c = colorAxis ? colorAxis.position(t.metrics?.[colorAxis.name]) : 0.5;
    const path = s('path', { d, stroke: viridis(c), 'data-trial': t.id, class: 'parcoords-line' },
      s('title', {}, [`Trial #${t.number}`, ...axes.map((a, i) => `${a.name} ${i < dims.length ? label(t.arch?.[a.name] ?? '—') : formatMetric(a.name, t.metrics?.[a.name])}`)].join('\n')));
    path.addEventListener('click', () => openTrial(t.id));
    lines.append(path);
  }
  svg.append(lines);
  axes.forEach((a, i) => {
    const g = s('g', { class: `parcoords-axis parcoords-${a.kind}`, 'data-axis': a.name, 'data-kind': a.numeric ? 'numeric' : 'categorical' });
    g.append(s('line', { x1: x(i), x2: x(i), y1: y(0), y2: y(1) }));
    g.append(s('text', { x: x(i), y: m.t - 14, 'text-anchor': 'middle', class: 'parcoords-title' }, a.kind === 'metric' ? metricLabel(a.name) : a.name));
    for (const t of a.ticks) {
      g.append(s('line', { x1: x(i) - 3, x2: x(i), y1: y(t.at), y2: y(t.at) }));
      g.append(s('text', { x: x(i) - 6, y: y(t.at), 'text-anchor': 'end', 'dominant-baseline': 'middle', class: 'parcoords-tick' }, t.text));
    }
    svg.append(g);
  });
  clear(box, h('div', { class: 'parcoords-scroll' }, svg),
    colorAxis ? h('p', { class: 'muted small' }, `One line per complete trial, coloured by ${metricLabel(colorAxis.name)} (dark: low, yellow: high). Click a line to open its trial.`) : null);
}

function importanceBars(box, result) {
  const rows = result.importances;
  const width = 560, bar = 22, gap = 8, left = 150, right = 64;
  const height = rows.length * (bar + gap) + 8;
  const max = Math.max(...rows.map((r) => r.importance), 1e-9);
  const svg = s('svg', { viewBox: `0 0 ${width} ${height}`, class: 'importance', role: 'img', 'aria-label': 'Parameter importance' });
  rows.forEach((r, i) => {
    const top = 4 + i * (bar + gap), w = ((width - left - right) * r.importance) / max;
    svg.append(s('g', { class: 'importance-row', 'data-name': r.name },
      s('text', { x: left - 8, y: top + bar / 2, 'text-anchor': 'end', 'dominant-baseline': 'middle' }, r.name),
      s('rect', { x: left, y: top, width: Math.max(1, w).toFixed(1), height: bar, rx: 3, fill: '#3b5bdb' }),
      s('text', { x: left + w + 6, y: top + bar / 2, 'dominant-baseline': 'middle', class: 'importance-value' }, fmt.pct(r.importance))));
  });
  const leftOut = result.left_out.length ? ` Not ranked (in only some architectures, or never changing): ${result.left_out.join(', ')}.` : '';
  clear(box, svg, h('p', { class: 'muted small' },
    `${result.evaluator} over ${fmt.int(result.n_trials)} complete trials, ranking ${metricLabel(result.metric)} (${result.direction}).${leftOut}`));
}

/**
 * The analysis cards for a job; `update(job)` follows a running job's complete trials.
 * Returns { element, update, destroy }.
 */
export function mountAnalysis(jobId, job, openTrial) {
  const objectives = (job.spec?.objectives || []).map((o) => o.metric);
  const el = {
    importance: h('div', { class: 'analysis-box', id: 'importance' }),
    parallel: h('div', { class: 'analysis-box', id: 'parallel' }),
    slice: h('div', { class: 'chart', id: 'chart-slice' }),
  };
  const objectiveSelect = h('select', { 'aria-label': 'Importance objective', onchange: () => loadImportance() },
    objectives.map((m) => h('option', { value: m }, metricLabel(m))));
  const evaluatorSelect = h('select', { 'aria-label': 'Importance evaluator', onchange: () => loadImportance() },
    [['fanova', 'fANOVA'], ['ped_anova', 'PED-ANOVA'], ['mdi', 'MDI (random forest)']].map(([v, t]) => h('option', { value: v }, t)));
  const sliceDim = h('select', { 'aria-label': 'Slice dimension', onchange: () => paintSlice() });
  const sliceMetric = h('select', { 'aria-label': 'Slice objective', onchange: () => paintSlice() },
    objectives.map((m) => h('option', { value: m }, metricLabel(m))));
  const note = h('p', { class: 'muted small' });
  const element = h('div', { class: 'analysis' },
    h('div', { class: 'grid-2' },
      card('Parameter importance', el.importance, { id: 'card-importance', actions: [objectiveSelect, evaluatorSelect] }),
      card('Slice', el.slice, { id: 'card-slice', actions: [h('label', { class: 'inline' }, 'x ', sliceDim), h('label', { class: 'inline' }, 'y ', sliceMetric)] })),
    card('Parallel coordinates', [el.parallel, note], { id: 'card-parallel' }));

  let trials = [], dims = [], scatter = null, loadedComplete = -1, timer = null, latest = job;

  async function loadImportance() {
    // A young job cannot be analysed yet: say so here rather than ask the server for a 422.
    if (trials.length < 2 || !dims.length) {
      clear(el.importance, h('p', { class: 'muted', id: 'importance-why' },
        trials.length < 2 ? 'Parameter importance needs at least two complete trials.' : 'No architecture dimension varies yet.'));
      return;
    }
    try {
      importanceBars(el.importance, await api.get(`/jobs/${jobId}/importance`, { objective: objectiveSelect.value, evaluator: evaluatorSelect.value }));
    } catch (error) {
      if (error.status === 401) return;
      // 422 says why no importance can be computed yet (too few trials, nothing varies)
      clear(el.importance, error.status === 422 ? h('p', { class: 'muted', id: 'importance-why' }, errorText(error)) : errorBox(error));
    }
  }

  async function loadTrials() {
    const found = [];
    let cursor = null;
    do {
      const page = await api.get(`/jobs/${jobId}/trials`, { state: 'complete', limit: 1000, cursor });
      found.push(...page.items);
      cursor = page.next_cursor;
    } while (cursor && found.length < MAX_TRIALS);
    trials = found.slice(0, MAX_TRIALS);
    note.textContent = cursor ? `The first ${fmt.int(MAX_TRIALS)} complete trials are shown.` : '';
    dims = varyingDimensions(trials);
    const chosen = sliceDim.value;
    clear(sliceDim, dims.map((d) => h('option', { value: d, selected: d === chosen }, d)));
    // each objective on the value selection ranks it on (val_accuracy for accuracy) where trials record it
    const ranked = objectives.map((m) => (trials.some((t) => Number.isFinite(t.metrics?.[selectionMetric(m)])) ? selectionMetric(m) : m));
    parallelCoordinates(el.parallel, trials, dims, ranked, openTrial);
    paintSlice();
  }

  function paintSlice() {
    const dim = sliceDim.value, metric = sliceMetric.value;
    if (!dim || !trials.length) {
      scatter?.destroy(); scatter = null;
      clear(el.slice, h('p', { class: 'muted' }, trials.length ? 'No architecture dimension varies yet.' : 'No complete trial yet.'));
      return;
    }
    const a = axis(dim, trials.map((t) => t.arch?.[dim]), 'dimension');
    const rows = trials.filter((t) => a.position(t.arch?.[dim]) !== null && Number.isFinite(t.metrics?.[metric]));
    // categorical values sit at 0, 1, 2, ...; a small seeded jitter keeps equal values apart
    const xOf = (t, k) => (a.numeric ? t.arch[dim] : a.categories.indexOf(label(t.arch[dim])) + (((k * 7919) % 100) / 100 - 0.5) * 0.3);
    if (!scatter || !el.slice.contains(scatter.canvas)) { clear(el.slice); scatter = new Scatter(el.slice, { onClick: openTrial }); }
    scatter.set([{
      type: 'points', x: rows.map(xOf), y: rows.map((t) => t.metrics[metric]), values: rows.map((t) => t.number), size: 4, alpha: 0.8,
      ids: rows.map((t) => t.id),
      tip: (k) => [`Trial #${rows[k].number}`, `${dim} ${label(rows[k].arch[dim])}`, `${metricLabel(metric)} ${formatMetric(metric, rows[k].metrics[metric])}`],
    }], {
      x: { label: dim, format: a.numeric ? undefined : (v) => (Math.abs(v - Math.round(v)) < 1e-9 ? a.categories[Math.round(v)] ?? '' : '') },
      y: { label: metricLabel(metric) },
      colorbar: { label: 'trial number', min: 0, max: Math.max(1, ...rows.map((t) => t.number)), format: (v) => fmt.int(v), scale: 'viridis' },
    });
  }

  async function refresh(nComplete) {
    if (nComplete === loadedComplete) return;
    loadedComplete = nComplete;
    try { await loadTrials(); await loadImportance(); } catch (error) { if (error.status !== 401) clear(el.parallel, errorBox(error)); }
  }

  refresh(job.n_complete ?? 0);
  return {
    element,
    update(updated) {
      latest = updated;
      if (timer) return;
      timer = setTimeout(() => { timer = null; refresh(latest.n_complete ?? 0); }, loadedComplete < 2 ? 0 : RELOAD_MS);
    },
    destroy() { clearTimeout(timer); scatter?.destroy(); },
  };
}

/** A 422's text: its messages without locations. */
function errorText(error) {
  const detail = error.detail ?? error.message;
  return Array.isArray(detail) ? detail.map((d) => d.msg).join('; ') : String(detail);
}
