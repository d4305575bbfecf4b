// Two or more jobs on one Pareto plot (#/compare?jobs=ID,ID,...), and the selection on the jobs
// list that opens it.

import { api } from '../api.js';
import { COLORS, Scatter, paretoIndices } from '../charts.js';
import { card, clear, errorBox, fmt, formatMetric, h, metricDirection, metricLabel, selectionMetric } from '../ui.js';

const X_CHOICES = ['latency_ms', 'predicted_latency_ms', 'nonzero_params', 'flops', 'nonzero_flops', 'params', 'train_time_s'];

/** The jobs list's checkboxes and the button that compares the ticked jobs. */
export function compareSelection() {
  const chosen = new Set();
  const button = h('button', {
    class: 'btn', type: 'button', id: 'compare-jobs', disabled: true, title: 'Tick two or more jobs to compare them',
    onclick: () => { location.hash = `#/compare?jobs=${[...chosen].join(',')}`; },
  }, 'Compare');
  const sync = () => {
    button.disabled = chosen.size < 2;
    button.textContent = chosen.size ? `Compare (${chosen.size})` : 'Compare';
  };
  return {
    button,
    cell(job) {
      return h('td', { class: 'select-cell', onclick: (e) => e.stopPropagation() },
        h('input', {
          type: 'checkbox', 'aria-label': `Select ${job.name} to compare`, checked: chosen.has(job.id),
          onchange: (e) => { if (e.target.checked) chosen.add(job.id); else chosen.delete(job.id); sync(); },
        }));
    },
  };
}

export async function render(view, ids) {
  const jobIds = [...new Set(ids.split(',').filter(Boolean))];
  const plot = h('div', { class: 'chart chart-tall', id: 'chart-compare' });
  const summary = h('tbody');
  const xSelect = h('select', { 'aria-label': 'x axis', onchange: () => load() });
  const ySelect = h('select', { 'aria-label': 'y axis', onchange: () => load() });
  const errors = h('div');
  const bestHead = h('span', {}, 'Best');
  view.append(
    h('div', { class: 'page-head' },
      h('div', {}, h('h1', {}, 'Compare jobs'), h('p', { class: 'muted' }, 'Every complete trial of each job, and each job’s Pareto front, on one plot.')),
      h('div', { class: 'page-actions' }, h('a', { class: 'btn btn-ghost', href: '#/jobs' }, 'Back to jobs'))),
    errors,
    card('Pareto fronts', plot, { id: 'card-compare', actions: [h('label', { class: 'inline' }, 'x ', xSelect), h('label', { class: 'inline' }, 'y ', ySelect)] }),
    h('section', { class: 'card flush' },
      h('table', { class: 'table', id: 'compare-table' },
        h('thead', {}, h('tr', {}, ['Job', 'Status', 'Complete trials', 'On its front', bestHead].map((t) => h('th', {}, t)))),
        summary)));

  let jobs;
  try {
    jobs = await Promise.all(jobIds.map((id) => api.get(`/dashboard/jobs/${id}`)));
  } catch (error) {
    if (error.status !== 401) clear(errors, errorBox(error));
    return null;
  }
  const objectives = jobs.flatMap((j) => j.spec?.objectives || []);
  // the value selection ranks each objective on (val_accuracy for accuracy) first, then the objective itself
  const yChoices = [...new Set(objectives.filter((o) => o.direction === 'maximize').flatMap((o) => [selectionMetric(o.metric), o.metric]).concat('accuracy'))];
  const xChoices = [...new Set(objectives.filter((o) => o.direction === 'minimize').map((o) => o.metric).concat(X_CHOICES))];
  clear(ySelect, yChoices.map((m) => h('option', { value: m }, metricLabel(m))));
  clear(xSelect, xChoices.map((m) => h('option', { value: m }, metricLabel(m))));
  const chart = new Scatter(plot, { onClick: (id) => { location.hash = `#/trials/${id}`; } });

  async function load() {
    const x = xSelect.value, y = ySelect.value;
    let points;
    try {
      points = await Promise.all(jobs.map((j) => api.get(`/jobs/${j.id}/points`, { metric: [x, y] })));
    } catch (error) {
      if (error.status !== 401) clear(errors, errorBox(error));
      return;
    }
    clear(errors);
    const ySign = metricDirection(y) === 'minimize' ? -1 : 1;
    const layers = [], legend = [], rows = [];
    jobs.forEach((job, k) => {
      const p = points[k], color = COLORS[k % COLORS.length];
      const xs = p.metrics[x] || [], ys = p.metrics[y] || [];
      const idx = p.state.map((s, i) => i).filter((i) => p.state[i] === 'complete' && xs[i] !== null && ys[i] !== null);
      const front = paretoIndices(idx.map((i) => xs[i]), idx.map((i) => ySign * ys[i])).map((j) => idx[j]);
      const tip = (list) => (n) => [job.name, `Trial #${p.number[list[n]]}`, `${metricLabel(y)} ${formatMetric(y, ys[list[n]])}`, `${metricLabel(x)} ${formatMetric(x, xs[list[n]])}`];
      layers.push(
        { type: 'points', x: idx.map((i) => xs[i]), y: idx.map((i) => ys[i]), color, size: 3.5, alpha: 0.45, ids: idx.map((i) => p.id[i]), tip: tip(idx) },
        { type: 'line', x: front.map((i) => xs[i]), y: front.map((i) => ys[i]), step: true, color, width: 2 },
        { type: 'points', x: front.map((i) => xs[i]), y: front.map((i) => ys[i]), ring: true, color, size: 5, ids: front.map((i) => p.id[i]), tip: tip(front) },
      );
      legend.push({ label: `${job.name} (${fmt.shortId(job.id)})`, color, kind: 'line' });
      const best = front.length ? front.reduce((a, b) => (ySign * ys[b] > ySign * ys[a] ? b : a)) : null;
      rows.push(h('tr', { dataset: { id: job.id } },
        h('td', {}, h('span', { class: 'swatch swatch-line', style: { background: color } }), ' ', h('a', { href: `#/jobs/${job.id}`, class: 'strong' }, job.name)),
        h('td', {}, job.status),
        h('td', { class: 'num' }, fmt.int(idx.length)),
        h('td', { class: 'num' }, fmt.int(front.length)),
        h('td', { class: 'num' }, best === null ? '—' : formatMetric(y, ys[best]))));
    });
    const log = /params|flops/.test(x);
    chart.set(layers, {
      x: { label: metricLabel(x) + (x.endsWith('_ms') ? ' (ms)' : ''), log, format: log ? fmt.compact : undefined },
      // a fraction's ticks as short percentages (80%, 82.5%), which leave room for the axis title
      y: { label: metricLabel(y), format: formatMetric(y, 0.5).endsWith('%') ? (v) => `${Number((v * 100).toFixed(1))}%` : undefined },
      legend,
    });
    clear(summary, rows);
    bestHead.textContent = `Best ${metricLabel(y)}`;
  }

  await load();
  return () => chart.destroy();
}
