// The jobs list: status, progress and best trial of each job, kept live by /events.

import { api, subscribe } from '../api.js';
import { badge, clear, elapsed, errorBox, fmt, formatMetric, h, metricLabel } from '../ui.js';
import { compareSelection } from './compare.js';

const STATUSES = ['', 'queued', 'running', 'succeeded', 'failed', 'cancelled'];

export function progress(job) {
  const total = job.max_trials || job.n_trials || 1;
  const done = Math.min(job.n_finished, total);
  const running = Math.max(0, job.n_trials - job.n_finished);
  return h('div', { class: 'progress-cell' },
    h('div', { class: 'progress', title: `${done} finished, ${running} running or queued, of ${total}` },
      h('div', { class: `progress-bar progress-${job.status}`, style: { width: `${(100 * done) / total}%` } }),
      h('div', { class: 'progress-run', style: { width: `${(100 * Math.min(running, total - done)) / total}%` } })),
    h('span', { class: 'progress-text' }, `${done} / ${total}`));
}

export function bestSummary(job) {
  const best = job.best_trial;
  if (!best) return h('span', { class: 'muted' }, '—');
  const objectives = (job.outline?.objectives || []).map((o) => o.metric);
  const names = [...new Set([...objectives, 'sparsity'])].slice(0, 3);
  return h('a', { href: `#/trials/${best.id}`, class: 'best', onclick: (e) => e.stopPropagation() },
    h('span', { class: 'mono' }, `#${best.number}`),
    names.filter((n) => best.metrics[n] !== undefined).map((n) =>
      h('span', { class: 'chip', title: metricLabel(n) }, `${shortName(n)} ${formatMetric(n, best.metrics[n])}`)));
}

function shortName(name) {
  return { accuracy: 'acc', latency_ms: 'lat', predicted_latency_ms: 'pred lat', sparsity: 'sparse', nonzero_params: 'nnz', loss: 'loss' }[name] || name;
}

// A listed job's outline names its plug-ins (lists and streams carry no spec).
export function setup(outline) {
  const parts = [outline?.search_space, outline?.strategy, outline?.sparsifier, outline?.dataset].filter(Boolean);
  return h('span', { class: 'muted small' }, parts.join(' · '));
}

function row(job, selection) {
  const duration = job.started_at ? fmt.duration(elapsed(job.started_at, job.finished_at)) : '—';
  return h('tr', { class: 'clickable', dataset: { id: job.id }, onclick: () => { location.hash = `#/jobs/${job.id}`; } },
    selection.cell(job),
    h('td', {}, h('a', { href: `#/jobs/${job.id}`, class: 'strong' }, job.name), h('div', { class: 'mono muted small' }, fmt.shortId(job.id))),
    h('td', {}, badge(job.status)),
    h('td', {}, progress(job)),
    h('td', {}, bestSummary(job)),
    h('td', {}, setup(job.outline)),
    h('td', { title: fmt.time(job.created_at) }, fmt.ago(job.created_at)),
    h('td', { class: 'num' }, duration));
}

export async function render(view) {
  let statusFilter = sessionStorage.getItem('nas.jobsFilter') || '';
  let cursor = null;
  const jobs = new Map();
  const tbody = h('tbody');
  const more = h('button', { class: 'btn btn-ghost', type: 'button', onclick: () => load(false) }, 'Load more');
  const foot = h('div', { class: 'table-foot', hidden: true }, more);
  const live = h('span', { class: 'live', title: 'live updates' }, 'connecting');
  const select = h('select', {
    'aria-label': 'Filter by status',
    onchange: () => { statusFilter = select.value; sessionStorage.setItem('nas.jobsFilter', statusFilter); load(true); },
  }, STATUSES.map((s) => h('option', { value: s, selected: s === statusFilter }, s || 'All statuses')));
  const errors = h('div');
  const selection = compareSelection();

  view.append(
    h('div', { class: 'page-head' },
      h('div', {}, h('h1', {}, 'Jobs'), h('p', { class: 'muted' }, 'Searches you submitted, newest first.')),
      h('div', { class: 'page-actions' }, live, select, selection.button, h('a', { class: 'btn btn-primary', href: '#/new' }, 'New job'))),
    errors,
    h('section', { class: 'card flush' },
      h('table', { class: 'table', id: 'jobs-table' },
        h('thead', {}, h('tr', {}, ['', 'Job', 'Status', 'Progress', 'Best trial', 'Search', 'Created', 'Duration'].map((t) => h('th', {}, t)))),
        tbody),
      foot));

  function paint() {
    const items = [...jobs.values()].filter((j) => !statusFilter || j.status === statusFilter)
      .sort((a, b) => b.created_at.localeCompare(a.created_at));
    if (!items.length) {
      clear(tbody, h('tr', {}, h('td', { colspan: 8, class: 'empty' },
        statusFilter ? `No ${statusFilter} jobs.` : h('span', {}, 'No jobs yet. ', h('a', { href: '#/new' }, 'Submit one'), '.'))));
      return;
    }
    clear(tbody, items.map((job) => row(job, selection)));
  }

  async function load(reset) {
    if (reset) { jobs.clear(); cursor = null; }
    try {
      const page = await api.get('/dashboard/jobs', { status: statusFilter || null, limit: 50, cursor });
      for (const job of page.items) jobs.set(job.id, job);
      cursor = page.next_cursor;
      foot.hidden = !cursor;
      clear(errors);
      paint();
    } catch (error) {
      if (error.status !== 401) clear(errors, errorBox(error));
    }
  }

  await load(true);
  const stream = subscribe('/events', {
    job(job) { jobs.set(job.id, job); paint(); },
  }, { onState: (s) => { live.textContent = s === 'live' ? 'live' : s; live.dataset.state = s; } });
  // relative times ("3 min ago") and running durations age while the page is open
  const ticker = setInterval(paint, 30_000);
  return () => { stream.close(); clearInterval(ticker); };
}
