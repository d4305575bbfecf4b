// The job page: header and cancel, Pareto front, history and hypervolume, learning curves,
// per-layer densities, lineage, and the trials table (sorted, filtered and paged on the server).

import { api, subscribe } from '../api.js';
import { COLORS, Heatmap, Scatter, paretoIndices } from '../charts.js';
import {
  badge, card, clear, copyButton, curveMetric, debounce, elapsed, errorBox, fmt, formatMetric, h, isFraction, kpi,
  metricDirection, metricLabel, selectionMetric, throttle, toast,
} from '../ui.js';
import { bestSummary, progress, setup } from './jobs.js';
import { jobControls } from './jobcontrols.js';
import { mountAnalysis } from '../analysis.js';
import { notesCard } from '../notes.js';

const STATES = ['queued', 'running', 'complete', 'pruned', 'failed', 'infeasible', 'cancelled'];
const TABLE_METRICS = ['val_accuracy', 'accuracy', 'val_loss', 'loss', 'sparsity', 'latency_ms', 'predicted_latency_ms', 'nonzero_params', 'flops', 'train_time_s'];
const X_CHOICES = ['latency_ms', 'predicted_latency_ms', 'nonzero_params', 'flops'];

/** Whether a metric's table column sorts best-first descending: the registry's direction, else a guess from its name. */
function higherFirst(name) {
  const direction = metricDirection(name);
  return direction ? direction === 'maximize' : !/loss|latency|params|flops|time/.test(name);
}
const MAX_CURVES = 10;
/** The top of the density colour scale: the smallest of 5%, 10%, 25%, 50%, 100% above every cell. */
const densityCeiling = (rows) => {
  const top = Math.max(0, ...rows.flat().filter((v) => v !== null));
  return [0.05, 0.1, 0.25, 0.5, 1].find((c) => top <= c) ?? 1;
};
const pctTick = (v) => `${Number((v * 100).toFixed(1))}%`;

/** The dataset's name; an uploaded one links to its page. */
function datasetChip(dataset) {
  const id = dataset?.name === 'upload' ? dataset.params?.id : null;
  return id ? h('a', { href: `#/datasets/${id}`, title: 'the uploaded dataset' }, `upload ${fmt.shortId(id)}`) : dataset?.name;
}
const nextFrame = () => new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));

export async function render(view, jobId) {
  performance.mark('nas:job-start');

  const saved = JSON.parse(sessionStorage.getItem(`nas.table.${jobId}`) || 'null');
  const state = {
    job: null,
    objectives: [],
    points: null,
    index: new Map(),
    table: saved || { sort: 'number', order: 'desc', states: [], filters: '', offset: 0, limit: 50 },
    chosen: [],
    curvesPicked: false,  // the user ticked or unticked a curve: stop choosing the best five
    histories: new Map(),
    curveMetric: null,
    xMetric: null,
    xPicked: false,  // the user chose the Pareto x axis: stop following the best available one
    disposed: false,
  };

  // -- skeleton ----------------------------------------------------------------------------
  const head = h('div', { class: 'job-head' });
  const kpis = h('div', { class: 'kpis' });
  const live = h('span', { class: 'live', title: 'live updates' }, 'connecting');
  const el = {
    pareto: h('div', { class: 'chart', id: 'chart-pareto' }),
    history: h('div', { class: 'chart', id: 'chart-history' }),
    hv: h('div', { class: 'chart', id: 'chart-hypervolume' }),
    curves: h('div', { class: 'chart', id: 'chart-curves' }),
    density: h('div', { class: 'chart chart-tall', id: 'chart-density' }),
    lineage: h('div', { class: 'chart', id: 'chart-lineage' }),
  };
  const xSelect = h('select', { 'aria-label': 'x axis', onchange: () => { state.xMetric = xSelect.value; state.xPicked = true; paintPareto(); } });
  const curveSelect = h('select', { 'aria-label': 'curve metric', onchange: () => { state.curveMetric = curveSelect.value; paintCurves(); } });
  const densityNote = h('span', { class: 'muted small' });
  const hvNote = h('span', { class: 'muted small' });
  const lineageNote = h('span', { class: 'muted small' });
  const tableBox = h('div', { class: 'table-wrap' });
  const tableErrors = h('div', { class: 'field-error', id: 'filter-error' });
  const pager = h('div', { class: 'pager' });

  const stateChips = h('div', { class: 'chips', role: 'group', 'aria-label': 'Filter by state' },
    STATES.map((s) => h('button', {
      type: 'button', class: `chip-toggle chip-${s}`, dataset: { state: s }, 'aria-pressed': String(state.table.states.includes(s)),
      onclick: (e) => {
        const on = !state.table.states.includes(s);
        state.table.states = on ? [...state.table.states, s] : state.table.states.filter((x) => x !== s);
        e.currentTarget.setAttribute('aria-pressed', String(on));
        state.table.offset = 0;
        loadTable();
      },
    }, s)));
  const filterInput = h('input', {
    type: 'search', id: 'trial-filter', value: state.table.filters, placeholder: 'accuracy>0.9, depth=2, activation=relu',
    'aria-label': 'Filters on metrics and architecture keys', onkeydown: (e) => { if (e.key === 'Enter') applyFilter(); },
  });
  const applyFilter = () => { state.table.filters = filterInput.value; state.table.offset = 0; loadTable(); };
  const pageSize = h('select', {
    'aria-label': 'Rows per page',
    onchange: () => { state.table.limit = Number(pageSize.value); state.table.offset = 0; loadTable(); },
  }, [25, 50, 100, 200].map((n) => h('option', { value: n, selected: n === state.table.limit }, `${n} rows`)));

  const notesSlot = h('div'), analysisSlot = h('div');
  let analysis = null;
  view.append(
    head,
    kpis,
    notesSlot,
    h('div', { class: 'grid-2' },
      card('Pareto front', el.pareto, { actions: [h('label', { class: 'inline' }, 'x ', xSelect)], id: 'card-pareto' }),
      card('Optimisation history', el.history, { id: 'card-history' }),
      card('Hypervolume over time', [el.hv, hvNote], { id: 'card-hv' }),
      card('Learning curves', el.curves, { actions: [h('label', { class: 'inline' }, 'metric ', curveSelect)], id: 'card-curves' }),
    ),
    card('Per-layer density', [el.density, densityNote], { id: 'card-density' }),
    card('Lineage (parent → child)', [el.lineage, lineageNote], { id: 'card-lineage' }),
    analysisSlot,
    card('Trials', [
      h('div', { class: 'toolbar' }, stateChips,
        h('div', { class: 'filter' }, filterInput, h('button', { class: 'btn btn-sm', type: 'button', onclick: applyFilter }, 'Filter')),
        pageSize),
      tableErrors, tableBox, pager,
    ], { id: 'card-trials', cls: 'flush-body' }),
  );

  // -- header and KPIs ---------------------------------------------------------------------
  const controls = jobControls((updated, resumed) => {
    if (resumed) { window.dispatchEvent(new HashChangeEvent('hashchange')); return; }  // watch the resumed job live
    state.job = { ...state.job, ...updated };
    paintHead();
  });
  function paintHead() {
    const job = state.job;
    const spec = job.spec || {};
    const active = job.status === 'queued' || job.status === 'running';
    controls.update(job);
    const cancel = h('button', {
      class: 'btn btn-danger', type: 'button', id: 'cancel-job', hidden: !active,
      onclick: async () => {
        if (!window.confirm(`Cancel job "${job.name}"? Running trials are stopped.`)) return;
        try {
          const updated = await api.post(`/jobs/${jobId}/cancel`);
          state.job = { ...state.job, ...updated };
          paintHead();
          toast('Cancellation requested');
        } catch (error) { toast(`Could not cancel: ${error.detail ?? error.message}`, 'error', 6000); }
      },
    }, 'Cancel job');
    const specBox = h('pre', { class: 'code', hidden: true }, JSON.stringify(spec, null, 2));
    const sparsifier = spec.sparsifier ? `${spec.sparsifier.name}${spec.sparsifier.params?.sparsity != null ? ` ${fmt.pct(spec.sparsifier.params.sparsity, 0)}` : ''}` : null;
    clear(head,
      h('div', { class: 'crumbs' }, h('a', { href: '#/jobs' }, 'Jobs'), ' / ', h('span', {}, job.name)),
      h('div', { class: 'title-row' },
        h('h1', {}, job.name), badge(job.status), live,
        h('div', { class: 'spacer' }),
        h('button', { class: 'btn btn-ghost', type: 'button', onclick: () => { specBox.hidden = !specBox.hidden; } }, 'Spec'),
        controls.buttons, cancel),
      h('div', { class: 'meta' },
        h('span', { class: 'mono' }, job.id), copyButton(job.id),
        h('span', {}, `created ${fmt.time(job.created_at)}`),
        job.started_at ? h('span', {}, `ran ${fmt.duration(elapsed(job.started_at, job.finished_at))}`) : null,
        h('span', {}, `owner ${job.owner}`)),
      h('div', { class: 'chips' },
        [spec.search_space?.name, spec.strategy?.name, sparsifier, datasetChip(spec.dataset),
          spec.training ? `${spec.training.epochs} epochs` : null, spec.early_stopping ? `early stop: ${spec.early_stopping.name}` : null]
          .filter(Boolean).map((t) => h('span', { class: 'chip' }, t)),
        state.objectives.map((o) => h('span', { class: 'chip chip-objective' }, `${o.direction === 'maximize' ? '↑' : '↓'} ${metricLabel(o.metric)}`))),
      job.error ? h('div', { class: 'alert alert-error' }, job.error) : null,
      controls.form,
      specBox);
    const counts = countStates();
    clear(kpis,
      kpi('Progress', progress(job)),
      kpi('Complete', fmt.int(job.n_complete), `${fmt.int(counts.pruned)} pruned · ${fmt.int(counts.failed + counts.infeasible)} failed/infeasible${counts.cancelled ? ` · ${fmt.int(counts.cancelled)} cancelled` : ''}`),
      kpi('Running', fmt.int(counts.running), `${fmt.int(counts.queued)} queued`),
      kpi('Best trial', bestSummary(job)),
      kpi('Elapsed', job.started_at ? fmt.duration(elapsed(job.started_at, job.finished_at)) : '—', job.finished_at ? `finished ${fmt.ago(job.finished_at)}` : null));
  }

  function countStates() {
    const counts = Object.fromEntries(STATES.map((s) => [s, 0]));
    if (state.points) for (const s of state.points.state) counts[s] = (counts[s] || 0) + 1;
    return counts;
  }

  // -- the trials table ----------------------------------------------------------------------
  const metricColumns = () => [...new Set([...TABLE_METRICS, ...state.objectives.map((o) => o.metric)])];

  async function loadTable() {
    sessionStorage.setItem(`nas.table.${jobId}`, JSON.stringify(state.table));
    const t = state.table;
    const filters = t.filters.split(',').map((f) => f.trim()).filter(Boolean);
    try {
      const page = await api.get(`/jobs/${jobId}/trials/table`, {
        state: t.states, filter: filters, sort: t.sort, order: t.order, offset: t.offset, limit: t.limit,
      });
      if (state.disposed) return;
      clear(tableErrors);
      filterInput.classList.remove('invalid');
      paintTable(page);
    } catch (error) {
      if (error.status === 422) {
        filterInput.classList.add('invalid');
        clear(tableErrors, Array.isArray(error.detail) ? error.detail.map((d) => d.msg).join('; ') : error.detail);
      } else if (error.status !== 401) clear(tableErrors, errorBox(error));
    }
  }
  const reloadTable = debounce(loadTable, 700);

  function sortHeader(label, key, numeric = false) {
    const active = state.table.sort === key;
    const arrow = active ? (state.table.order === 'asc' ? ' ▲' : ' ▼') : '';
    return h('th', {
      class: `sortable ${numeric ? 'num' : ''} ${active ? 'sorted' : ''}`, dataset: { sort: key },
      'aria-sort': active ? (state.table.order === 'asc' ? 'ascending' : 'descending') : 'none',
      title: `Sort by ${label}`,
      onclick: () => {
        if (state.table.sort === key) state.table.order = state.table.order === 'asc' ? 'desc' : 'asc';
        else { state.table.sort = key; state.table.order = key.startsWith('metrics.') && higherFirst(key.slice('metrics.'.length)) ? 'desc' : 'asc'; }
        state.table.offset = 0;
        loadTable();
      },
    }, label + arrow);
  }

  function paintTable(page) {
    const metrics = metricColumns();
    const keys = page.arch_keys || [];
    const numeric = new Set(keys.filter((k) => page.items.every((t) => t.arch[k] === undefined || typeof t.arch[k] === 'number')));
    const head = h('tr', {},
      h('th', { class: 'narrow', title: 'Show in learning curves' }, 'Plot'),
      sortHeader('#', 'number', true), sortHeader('State', 'state'),
      keys.map((k) => sortHeader(k, `arch.${k}`, numeric.has(k))),
      metrics.map((m) => sortHeader(metricLabel(m), `metrics.${m}`, true)),
      sortHeader('Finished', 'finished_at'), h('th', {}, 'Parent'));
    const rows = page.items.map((t) => h('tr', { class: 'clickable', dataset: { id: t.id, number: t.number }, onclick: (e) => {
      if (e.target.closest('input,a')) return;
      location.hash = `#/trials/${t.id}`;
    } },
      h('td', { class: 'narrow' }, h('input', {
        type: 'checkbox', checked: state.chosen.includes(t.id), 'aria-label': `learning curve of trial ${t.number}`,
        onchange: (e) => toggleCurve(t.id, e.target.checked, e.target),
      })),
      h('td', { class: 'num' }, h('a', { href: `#/trials/${t.id}`, class: 'mono', title: `trial ${t.id}` }, `#${t.number}`)),
      h('td', {}, badge(t.state), t.error ? h('span', { class: 'err-dot', title: t.error }, '!') : null),
      keys.map((k) => h('td', { class: numeric.has(k) ? 'num arch' : 'arch' }, t.arch[k] === undefined ? h('span', { class: 'muted' }, '—') : String(t.arch[k]))),
      metrics.map((m) => h('td', { class: 'num' }, formatMetric(m, t.metrics[m]))),
      h('td', { title: fmt.time(t.finished_at) }, t.finished_at ? fmt.ago(t.finished_at) : h('span', { class: 'muted' }, '—')),
      h('td', {}, t.parent_id ? h('a', { href: `#/trials/${t.parent_id}`, class: 'mono' }, `#${t.parent_number ?? numberOf(t.parent_id) ?? fmt.shortId(t.parent_id)}`) : h('span', { class: 'muted' }, '—'))));
    if (!rows.length) {
      rows.push(h('tr', {}, h('td', { colspan: keys.length + metrics.length + 5, class: 'empty' },
        page.total === 0 && !state.table.states.length && !state.table.filters ? 'No trials yet; they appear here as the job runs.' : 'No trial matches the filters.')));
    }
    clear(tableBox, h('table', { class: 'table', id: 'trials-table' }, h('thead', {}, head), h('tbody', {}, rows)));
    const { offset, limit } = state.table;
    const last = Math.max(0, Math.floor((page.total - 1) / limit) * limit);
    const go = (o) => { state.table.offset = Math.max(0, Math.min(o, last)); loadTable(); };
    clear(pager,
      h('span', { class: 'muted', id: 'trials-count' }, page.total ? `${fmt.int(offset + 1)}–${fmt.int(Math.min(offset + limit, page.total))} of ${fmt.int(page.total)}` : '0 trials'),
      h('div', { class: 'pager-buttons' },
        h('button', { class: 'btn btn-sm', type: 'button', disabled: offset === 0, onclick: () => go(0), title: 'First page' }, '«'),
        h('button', { class: 'btn btn-sm', type: 'button', disabled: offset === 0, onclick: () => go(offset - limit), title: 'Previous page' }, '‹ Prev'),
        h('button', { class: 'btn btn-sm', type: 'button', disabled: offset + limit >= page.total, onclick: () => go(offset + limit), title: 'Next page', id: 'next-page' }, 'Next ›'),
        h('button', { class: 'btn btn-sm', type: 'button', disabled: offset + limit >= page.total, onclick: () => go(last), title: 'Last page' }, '»')));
  }

  const numberOf = (id) => { const i = state.index.get(id); return i === undefined ? null : state.points.number[i]; };

  /** Trial ``i``'s architecture as tooltip lines, three keys a line, nine at most (the table has them all). */
  function archLines(i) {
    const parts = Object.entries(state.points.arch?.[i] || {}).map(([k, v]) => `${k} ${v}`);
    const lines = [];
    for (let k = 0; k < Math.min(parts.length, 9); k += 3) lines.push(parts.slice(k, k + 3).join(' · '));
    if (parts.length > 9) lines.push(`+${parts.length - 9} more keys`);
    return lines;
  }

  // -- chart data ----------------------------------------------------------------------------
  function indexPoints() {
    state.index = new Map(state.points.id.map((id, i) => [id, i]));
  }

  function upsertPoint(t) {
    const p = state.points;
    if (!p) return;
    let i = state.index.get(t.id);
    if (i === undefined) {
      i = p.id.length;
      p.id.push(t.id); p.number.push(t.number); p.state.push(t.state); p.parent_id.push(t.parent_id); p.finished_at.push(null);
      for (const column of Object.values(p.metrics)) column.push(null);
      state.index.set(t.id, i);
    }
    p.state[i] = t.state;
    p.finished_at[i] = t.finished_at ? new Date(t.finished_at).getTime() / 1000 : null;
    for (const [name, column] of Object.entries(p.metrics)) {
      const v = t.metrics[name];
      column[i] = typeof v === 'number' && Number.isFinite(v) ? v : null;
    }
  }

  // The Pareto chart, history and default curves rank as the server's front and best trial do: on
  // validation accuracy or loss where the trials have it (trials recorded before: the metric itself).
  const ranked = (metric) => {
    const selected = selectionMetric(metric);
    return state.points?.metrics?.[selected]?.some((v) => v !== null) ? selected : metric;
  };
  const primary = () => {
    const objective = state.objectives[0] || { metric: 'accuracy', direction: 'maximize' };
    return { ...objective, metric: ranked(objective.metric) };
  };

  function completeIdx() {
    const out = [];
    const s = state.points.state;
    for (let i = 0; i < s.length; i++) if (s[i] === 'complete') out.push(i);
    return out;
  }

  function defaultCurves() {
    const { metric, direction } = primary();
    const col = state.points.metrics[metric] || [];
    const idx = completeIdx().filter((i) => col[i] !== null);
    idx.sort((a, b) => (direction === 'maximize' ? col[b] - col[a] : col[a] - col[b]));
    const chosen = idx.slice(0, 5).map((i) => state.points.id[i]);
    if (chosen.length < 5) {
      const running = state.points.state.map((s, i) => (s === 'running' ? state.points.id[i] : null)).filter(Boolean);
      chosen.push(...running.slice(0, 5 - chosen.length));
    }
    return chosen;
  }

  // -- charts ----------------------------------------------------------------------------------
  const openTrial = (id) => { location.hash = `#/trials/${id}`; };

  const charts = {};
  /** The canvas chart in `target`, made again if an empty-state message replaced it. */
  function scatter(name, target, options) {
    if (!charts[name] || !target.contains(charts[name].canvas)) {
      charts[name]?.destroy();
      charts[name] = new Scatter(target, { onClick: openTrial, ...options });
    }
    return charts[name];
  }

  function paintPareto() {
    const p = state.points;
    const y = primaryMaximized();
    // the x choices the complete trials have; measured latency comes first as soon as one has it,
    // while the running trials' predicted latency is all there is at the start of a job
    const complete = completeIdx();
    const available = X_CHOICES.filter((m) => complete.some((i) => p.metrics[m]?.[i] != null));
    if (!(state.xPicked && available.includes(state.xMetric))) state.xMetric = available[0] || 'latency_ms';
    clear(xSelect, (available.length ? available : [state.xMetric]).map((m) => h('option', { value: m, selected: m === state.xMetric }, metricLabel(m))));
    const xs = p.metrics[state.xMetric] || [], ys = p.metrics[y] || [], sp = p.metrics.sparsity || [];
    const idx = complete.filter((i) => xs[i] !== null && ys[i] !== null);
    if (!idx.length) { showEmpty(el.pareto, 'No complete trial yet.'); return; }
    const front = paretoIndices(idx.map((i) => xs[i]), idx.map((i) => ys[i])).map((k) => idx[k]);
    const xm = state.xMetric, pct = isFraction(y);
    const tip = (rows) => (k) => {
      const i = rows[k];
      return [`Trial #${p.number[i]}`, `${metricLabel(y)} ${formatMetric(y, ys[i])}`, `${metricLabel(xm)} ${formatMetric(xm, xs[i])}`, `sparsity ${fmt.pct(sp[i])}`, ...archLines(i)];
    };
    const log = /params|flops/.test(xm);
    scatter('pareto', el.pareto).set([
      { type: 'points', x: idx.map((i) => xs[i]), y: idx.map((i) => ys[i]), values: idx.map((i) => sp[i]), size: idx.length > 2000 ? 2.6 : 4, alpha: 0.8, ids: idx.map((i) => p.id[i]), tip: tip(idx) },
      { type: 'line', x: front.map((i) => xs[i]), y: front.map((i) => ys[i]), step: true, color: '#e8590c', width: 2 },
      { type: 'points', x: front.map((i) => xs[i]), y: front.map((i) => ys[i]), ring: true, color: '#e8590c', size: 5, ids: front.map((i) => p.id[i]), tip: tip(front) },
    ], {
      x: { label: metricLabel(xm) + (xm.endsWith('_ms') ? ' (ms)' : ''), log, format: log ? fmt.compact : undefined },
      y: { label: metricLabel(y), format: pct ? pctTick : undefined },
      colorbar: { label: 'sparsity', min: 0, max: 1, format: pctTick, scale: 'viridis' },
      legend: [{ label: `Pareto front (${front.length})`, color: '#e8590c', kind: 'line' }, { label: `${fmt.int(idx.length)} complete trial${idx.length === 1 ? '' : 's'}`, color: '#35b779' }],
    });
  }

  function primaryMaximized() {
    const maximize = state.objectives.find((o) => o.direction === 'maximize');
    return ranked(maximize ? maximize.metric : 'accuracy');
  }

  function paintHistory() {
    const p = state.points;
    const { metric, direction } = primary();
    const col = p.metrics[metric] || [];
    const idx = completeIdx().filter((i) => col[i] !== null).sort((a, b) => p.number[a] - p.number[b]);
    if (!idx.length) { showEmpty(el.history, 'No complete trial yet.'); return; }
    const bestX = [], bestY = [];
    let best = null;
    for (const i of idx) {
      const v = col[i];
      if (best === null || (direction === 'maximize' ? v > best : v < best)) { best = v; bestX.push(p.number[i]); bestY.push(v); }
    }
    const pct = isFraction(metric);
    scatter('history', el.history).set([
      { type: 'points', x: idx.map((i) => p.number[i]), y: idx.map((i) => col[i]), color: COLORS[0], alpha: 0.45, size: idx.length > 2000 ? 2.2 : 3.5,
        ids: idx.map((i) => p.id[i]), tip: (k) => [`Trial #${p.number[idx[k]]}`, `${metricLabel(metric)} ${formatMetric(metric, col[idx[k]])}`, ...archLines(idx[k])] },
      { type: 'line', x: bestX, y: bestY, step: true, color: '#e8590c', width: 2, extendTo: 'right' },
    ], {
      x: { label: 'trial number', integer: true, format: fmt.int }, y: { label: metricLabel(metric), format: pct ? pctTick : undefined },
      legend: [{ label: metricLabel(metric), color: COLORS[0] }, { label: 'best so far', color: '#e8590c', kind: 'line' }],
    });
  }

  async function loadHypervolume() {
    if (state.objectives.length < 2) {
      showEmpty(el.hv, 'Hypervolume needs two or more objectives; this job has one.');
      return;
    }
    const hv = await api.get(`/jobs/${jobId}/hypervolume`);
    if (state.disposed) return;
    hvNote.textContent = `Objectives ${hv.objectives.map((o) => `${o.direction === 'maximize' ? '↑' : '↓'} ${o.metric}`).join(', ')}, each scaled to the range its complete trials span; reference point 1% beyond the worst.`;
    if (!hv.items.length) { showEmpty(el.hv, 'No complete trial yet.'); return; }
    const xs = hv.items.map((p) => p.finished_at), ys = hv.items.map((p) => p.hypervolume);
    scatter('hv', el.hv).set([
      { type: 'line', x: xs, y: ys, step: true, color: COLORS[4], width: 2, extendTo: 'right', fill: 'rgba(112,72,232,0.08)' },
      { type: 'points', x: xs, y: ys, color: COLORS[4], size: 3, ids: hv.items.map((p) => p.trial_id),
        tip: (k) => [`after trial #${hv.items[k].number}`, fmt.time(new Date(xs[k] * 1000).toISOString()), `hypervolume ${ys[k].toFixed(4)}`] },
    ], { x: { label: 'finished at', time: true }, y: { label: 'hypervolume', zero: true } });
  }

  async function loadCurves(ids) {
    const missing = ids.filter((id) => !state.histories.has(id) || state.points.state[state.index.get(id)] === 'running');
    if (missing.length) {
      const res = await api.get(`/jobs/${jobId}/history`, { trial: missing });
      for (const item of res.items) state.histories.set(item.trial_id, item);
    }
  }

  function paintCurves() {
    const keys = new Set();
    for (const id of state.chosen) for (const e of state.histories.get(id)?.history || []) Object.keys(e.metrics).forEach((k) => keys.add(k));
    const options = [...keys].sort();
    if (options.length && !options.includes(state.curveMetric)) state.curveMetric = curveMetric(options, primary().metric);
    const metric = state.curveMetric ?? primary().metric;  // no epoch reported yet: the objective names the axis
    clear(curveSelect, (options.length ? options : [metric]).map((k) => h('option', { value: k, selected: k === metric }, metricLabel(k))));
    const layers = [], legend = [];
    state.chosen.forEach((id, n) => {
      const hist = state.histories.get(id);
      if (!hist) return;
      const pts = hist.history.filter((e) => typeof e.metrics[metric] === 'number');
      const color = COLORS[n % COLORS.length];
      layers.push({ type: 'line', x: pts.map((e) => e.epoch), y: pts.map((e) => e.metrics[metric]), color, width: 2 });
      layers.push({ type: 'points', x: pts.map((e) => e.epoch), y: pts.map((e) => e.metrics[metric]), color, size: 3.2, alpha: 1, ids: pts.map(() => id),
        tip: (k) => [`Trial #${hist.number}`, `epoch ${pts[k].epoch}`, `${metricLabel(metric)} ${formatMetric(metric, pts[k].metrics[metric])}`] });
      legend.push({ label: `#${hist.number}`, color, kind: 'line' });
    });
    if (!layers.length) { showEmpty(el.curves, 'Tick trials in the table to compare their learning curves.'); return; }
    scatter('curves', el.curves).set(layers, {
      x: { label: 'epoch', integer: true }, y: { label: metricLabel(metric), format: isFraction(metric) ? pctTick : undefined }, legend,
    });
  }

  async function toggleCurve(id, on, box) {
    if (on && state.chosen.length >= MAX_CURVES) {
      box.checked = false;
      toast(`At most ${MAX_CURVES} learning curves at once`, 'warn');
      return;
    }
    state.chosen = on ? [...state.chosen, id] : state.chosen.filter((x) => x !== id);
    state.curvesPicked = true;
    if (on) await loadCurves([id]);
    paintCurves();
  }

  async function loadDensity() {
    const { metric, direction } = primary();
    const m = await api.get(`/jobs/${jobId}/density`, { sort: `metrics.${metric}`, order: direction === 'maximize' ? 'desc' : 'asc', limit: 100 });
    if (state.disposed) return;
    if (!m.trials.length) { showEmpty(el.density, 'No trial has reported its layers yet.'); densityNote.textContent = ''; return; }
    densityNote.textContent = `Fraction of nonzero weights per prunable layer, for the ${m.trials.length} best trials by ${metricLabel(metric).toLowerCase()} (best on the left). Click a column to open the trial.`;
    el.density.style.height = `${Math.max(200, 80 + 30 * m.layers.length)}px`;
    if (!charts.density || !el.density.contains(charts.density.canvas)) {
      charts.density?.destroy();
      charts.density = new Heatmap(el.density, { onClick: openTrial });
    }
    charts.density.set({
      rows: m.layers, columns: m.trials.map((t) => `#${t.number}`), columnIds: m.trials.map((t) => t.id), z: m.density,
      tip: (r, c) => [`Trial #${m.trials[c].number}`, m.layers[r], `density ${m.density[r][c] === null ? '— (no such layer)' : fmt.pct(m.density[r][c])}`, `${metricLabel(metric)} ${formatMetric(metric, m.trials[c].metrics[metric])}`],
    }, { min: 0, max: densityCeiling(m.density), label: 'density', format: pctTick, scale: 'blues' });
  }

  function paintLineage() {
    const p = state.points;
    const children = p.parent_id.filter(Boolean).length;
    if (!children) {
      showEmpty(el.lineage, 'No parent → child links: this strategy samples every trial independently. Lottery-ticket chains, DASS and SuperTickets draw their lineage here.');
      lineageNote.textContent = '';
      el.lineage.classList.add('chart-short');
      return;
    }
    el.lineage.classList.remove('chart-short');
    const order = p.number.map((_, i) => i).sort((a, b) => p.number[a] - p.number[b]);
    const depth = new Array(p.id.length).fill(0);
    const ex = [], ey = [];
    for (const i of order) {
      const parent = p.parent_id[i] ? state.index.get(p.parent_id[i]) : undefined;
      if (parent === undefined) continue;
      depth[i] = depth[parent] + 1;
      ex.push(p.number[parent], p.number[i], null);
      ey.push(depth[parent], depth[i], null);
    }
    const y = primaryMaximized();
    const col = p.metrics[y] || [];
    const values = order.map((i) => col[i]);
    const known = values.filter((v) => v !== null);
    lineageNote.textContent = `${fmt.int(children)} trials started from a parent's weights or mask; a node's height is its generation. Colour: ${metricLabel(y).toLowerCase()} (grey: none).`;
    scatter('lineage', el.lineage).set([
      { type: 'segments', x: ex, y: ey, color: '#adb5bd', width: 1, alpha: 0.7 },
      { type: 'points', x: order.map((i) => p.number[i]), y: order.map((i) => depth[i]), values, size: p.id.length > 2000 ? 2.8 : 4.5, alpha: 0.95,
        ids: order.map((i) => p.id[i]),
        tip: (k) => { const i = order[k]; const parent = p.parent_id[i] ? numberOf(p.parent_id[i]) : null; return [`Trial #${p.number[i]} · ${p.state[i]}`, parent !== null ? `parent #${parent}` : 'no parent', `generation ${depth[i]}`, `${metricLabel(y)} ${formatMetric(y, col[i])}`]; } },
    ], {
      x: { label: 'trial number', integer: true, format: fmt.int }, y: { label: 'generation', integer: true, min: -0.5 },
      colorbar: { label: metricLabel(y).toLowerCase(), min: known.length ? Math.min(...known) : 0, max: known.length ? Math.max(...known) : 1, format: isFraction(y) ? pctTick : undefined, scale: 'blues' },
    });
  }

  function showEmpty(target, text) {
    for (const [name, chart] of Object.entries(charts)) if (chart.el === target) { chart.destroy(); delete charts[name]; }
    clear(target, h('div', { class: 'chart-empty' }, text));
  }

  const paintLocalCharts = async () => {
    if (!state.points || state.disposed) return;
    await paintPareto(); await nextFrame();
    await paintHistory(); await nextFrame();
    await paintLineage();
  };
  const refreshLocal = throttle(() => { paintLocalCharts(); paintHead(); }, 2000);
  const refreshRemote = throttle(async () => {
    try { await loadHypervolume(); await loadDensity(); } catch (e) { if (e.status !== 401) console.warn(e); }
  }, 8000);
  const refreshCurves = throttle(async () => { await loadCurves(state.chosen); paintCurves(); }, 3000);

  // -- first load ------------------------------------------------------------------------------
  let loaded;
  try {
    const [overview, table] = await Promise.all([
      api.getWithDate(`/dashboard/jobs/${jobId}`),
      api.get(`/jobs/${jobId}/trials/table`, tableParams()),
    ]);
    loaded = overview;
    state.job = overview.data;
    state.objectives = state.job.spec?.objectives || [];
    paintHead();
    paintTable(table);
    analysis = mountAnalysis(jobId, state.job, openTrial);
    analysisSlot.replaceWith(analysis.element);
    notesSlot.replaceWith(notesCard(`/jobs/${jobId}`));
  } catch (error) {
    if (error.status === 401) return null;
    clear(view, errorBox(error));
    return null;
  }
  performance.mark('nas:interactive');

  function tableParams() {
    const t = state.table;
    return { state: t.states, filter: t.filters.split(',').map((f) => f.trim()).filter(Boolean), sort: t.sort, order: t.order, offset: t.offset, limit: t.limit };
  }

  const serverNow = loaded.date ? new Date(loaded.date).getTime() / 1000 : Date.now() / 1000;
  const stream = subscribe(`/jobs/${jobId}/events`, {
    job(job) {
      const finished = job.status !== state.job.status && !['queued', 'running'].includes(job.status);
      state.job = { ...state.job, ...job };  // events carry no spec: keep the one loaded with the page
      analysis?.update(state.job);
      refreshLocal();
      if (finished) { refreshRemote(); reloadTable(); }
    },
    trial(t) {
      upsertPoint(t);
      reloadTable();
      refreshLocal();
      if (t.state !== 'running' && t.state !== 'queued') refreshRemote();
      // until the user picks curves, they follow the best five as trials complete
      const before = state.chosen.join();
      if (!state.curvesPicked && state.points) state.chosen = defaultCurves();
      if (state.chosen.includes(t.id) || state.chosen.join() !== before) refreshCurves();
    },
    epoch(e) {
      const hist = state.histories.get(e.trial_id);
      if (hist) {
        if (!hist.history.some((x) => x.epoch === e.epoch)) hist.history.push({ epoch: e.epoch, metrics: e.metrics });
        if (state.chosen.includes(e.trial_id)) refreshCurves();
      }
    },
    reset() { reloadAll(); },
    end() { live.textContent = 'finished'; live.dataset.state = 'closed'; refreshRemote(); reloadTable(); },
  }, { since: serverNow - 2, onState: (s) => { if (live.dataset.state !== 'closed' || s !== 'closed') { live.textContent = s; live.dataset.state = s; } } });

  async function reloadAll() {
    try {
      state.points = await api.get(`/jobs/${jobId}/points`);
      indexPoints();
      paintHead();
      await paintLocalCharts();
      await Promise.all([loadHypervolume(), loadDensity()]);
    } catch (error) {
      if (error.status !== 401) console.warn(error);
    }
  }

  (async () => {
    try {
      state.points = await api.get(`/jobs/${jobId}/points`);
      if (state.disposed) return;
      performance.mark('nas:points');
      indexPoints();
      paintHead();
      state.chosen = defaultCurves();
      const curves = loadCurves(state.chosen);
      const hv = loadHypervolume();
      const density = loadDensity();
      const mark = (name) => performance.mark(`nas:chart:${name}`);
      await paintPareto(); mark('pareto'); await nextFrame();
      await paintHistory(); mark('history'); await nextFrame();
      await curves; await paintCurves(); mark('curves'); await nextFrame();
      await hv; mark('hypervolume'); await density; mark('density'); await nextFrame();
      await paintLineage(); mark('lineage');
      if (!state.disposed) {
        performance.mark('nas:charts-ready');
        // ticks the learning-curve boxes of the default curves on the current page
        for (const box of tableBox.querySelectorAll('tbody tr')) {
          const input = box.querySelector('input[type=checkbox]');
          if (input) input.checked = state.chosen.includes(box.dataset.id);
        }
      }
    } catch (error) {
      if (error.status !== 401 && !state.disposed) toast(`Charts: ${error.detail ?? error.message}`, 'error', 8000);
    }
  })();

  const ticker = setInterval(() => { if (state.job && state.job.status === 'running') paintHead(); }, 15_000);
  return () => {
    state.disposed = true;
    stream.close();
    clearInterval(ticker);
    refreshLocal.cancel(); refreshRemote.cancel(); refreshCurves.cancel(); reloadTable.cancel();
    Object.values(charts).forEach((c) => c.destroy());
    analysis?.destroy();
  };
}
