// The trial page: metrics, per-epoch curves, predicted vs measured latency, the layers as a table,
// lineage, the architecture, the trial's log, and model downloads.

import { api, download, fetchText, subscribe } from '../api.js';
import { COLORS, Scatter } from '../charts.js';
import { notesCard } from '../notes.js';
import { hardwareSummary } from './targets.js';
import {
  badge, card, clear, copyButton, curveMetric, elapsed, errorBox, fmt, formatMetric, h, isFraction, kpi, metricDescription, metricLabel, throttle,
} from '../ui.js';

const FINISHED = ['complete', 'pruned', 'failed', 'infeasible', 'cancelled'];

export async function render(view, trialId) {
  let trial, lineage, job;
  try {
    [trial, lineage] = await Promise.all([api.get(`/trials/${trialId}`), api.get(`/trials/${trialId}/lineage`)]);
    job = await api.get(`/dashboard/jobs/${trial.job_id}`);
  } catch (error) {
    if (error.status !== 401) clear(view, errorBox(error));
    return null;
  }
  const curves = h('div', { class: 'chart', id: 'chart-epochs' });
  const latency = h('div', { class: 'chart', id: 'chart-latency' });
  const curveSelect = h('select', { 'aria-label': 'curve metric', onchange: () => paintCurves() });
  let curvesChart = null;
  const downloads = h('div', { class: 'downloads' });
  const downloadMessage = h('div', { class: 'muted small', id: 'download-message' });
  const metricsBox = h('div', { class: 'kpis' });
  const allMetrics = h('div');
  const head = h('div', { class: 'job-head' });
  const layersBox = h('div', { class: 'table-wrap' });
  const live = h('span', { class: 'live', hidden: true }, 'live');
  let disposed = false;

  function paintHead() {
    const parent = lineage.ancestors[0];
    clear(head,
      h('div', { class: 'crumbs' }, h('a', { href: '#/jobs' }, 'Jobs'), ' / ', h('a', { href: `#/jobs/${job.id}` }, job.name), ' / ', h('span', {}, `Trial #${trial.number}`)),
      h('div', { class: 'title-row' }, h('h1', {}, `Trial #${trial.number}`), badge(trial.state), live),
      h('div', { class: 'meta' },
        h('span', { class: 'mono' }, trial.id), copyButton(trial.id),
        trial.started_at ? h('span', {}, `started ${fmt.time(trial.started_at)}`) : h('span', {}, `created ${fmt.time(trial.created_at)}`),
        trial.started_at ? h('span', {}, `ran ${fmt.duration(elapsed(trial.started_at, trial.finished_at))}`) : null,
        trial.attempts > 1 ? h('span', {}, `${trial.attempts} attempts`) : null,
        trial.node_id ? h('span', { title: 'Ray node' }, `node ${fmt.shortId(trial.node_id)}`) : null,
        measuredBy(trial.outputs?.measured_by),
        parent ? h('span', {}, 'parent ', h('a', { href: `#/trials/${parent.id}`, class: 'mono' }, `#${parent.number}`)) : null),
      trial.error ? h('pre', { class: 'alert alert-error pre' }, trial.error) : null);
  }

  // a trial timed by a measurement agent names the agent, its runtime and its target
  function measuredBy(by) {
    if (!by) return null;
    const runtime = by.runtime || {};
    const title = [hardwareSummary(by.hardware), runtime.device ? `on ${runtime.device}` : null, by.agent_id ? `agent ${by.agent_id}` : null].filter(Boolean).join(' · ');
    return h('span', { id: 'measured-by', title },
      'measured by ', h('strong', {}, by.agent || `agent ${fmt.shortId(by.agent_id)}`), ` (${[runtime.name, runtime.version].filter(Boolean).join(' ')}) on `, h('a', { href: '#/targets' }, by.target));
  }

  function paintMetrics() {
    const m = trial.metrics;
    const predErr = m.latency_ms && m.predicted_latency_ms ? (m.predicted_latency_ms - m.latency_ms) / m.latency_ms : null;
    const latencySub = [
      m.latency_median_ms !== undefined ? `median ${fmt.ms(m.latency_median_ms)}` : null,
      m.masked_latency_ms !== undefined ? `masked dense ${fmt.ms(m.masked_latency_ms)}` : null,
      m.onnx_latency_ms !== undefined ? `ONNX ${fmt.ms(m.onnx_latency_ms)}` : null,
    ].filter(Boolean).join(' · ');
    const metricKpi = (name, sub = null) => {
      const box = kpi(metricLabel(name), formatMetric(name, m[name]), sub);
      box.title = metricDescription(name);
      return box;
    };
    clear(metricsBox,
      // what selection ranked the trial on, then the test numbers beside it
      ...(m.val_accuracy !== undefined ? [metricKpi('val_accuracy', m.val_loss !== undefined ? `loss ${fmt.num(m.val_loss)}` : null)] : []),
      metricKpi('accuracy', m.loss !== undefined ? `loss ${fmt.num(m.loss)}` : null),
      metricKpi('sparsity', m.nonzero_params !== undefined ? `${fmt.compact(m.nonzero_params)} of ${fmt.compact(m.params)} weights nonzero` : null),
      metricKpi('latency_ms', latencySub || metricDescription('latency_ms')),
      metricKpi('predicted_latency_ms', predErr !== null ? `${predErr >= 0 ? '+' : ''}${(predErr * 100).toFixed(0)}% vs measured` : null),
      metricKpi('flops', m.nonzero_flops !== undefined ? `${fmt.compact(m.nonzero_flops)} nonzero` : null),
      metricKpi('train_time_s'));
    const names = Object.keys(m).sort();
    clear(allMetrics, names.length
      ? h('dl', { class: 'metric-list' }, names.map((k) => [h('dt', { title: metricDescription(k) || k }, metricLabel(k)), h('dd', {}, formatMetric(k, m[k]))]))
      : h('p', { class: 'muted' }, 'No metrics yet.'));
  }

  function paintDownloads() {
    const reason = trial.has_model ? null : (FINISHED.includes(trial.state) ? `trial ${trial.state} without a saved model` : `no model until the trial completes (now ${trial.state})`);
    const button = (format, suffix, label, title) => h('button', {
      class: 'btn', type: 'button', id: `download-${format}`, disabled: !trial.has_model, title: reason || title,
      onclick: async (e) => {
        const b = e.currentTarget;
        b.disabled = true;
        downloadMessage.className = 'muted small';
        downloadMessage.textContent = `Preparing ${format}…`;
        try {
          const file = await download(`/trials/${trial.id}/model`, { format }, `trial-${trial.id}.${suffix}`);
          downloadMessage.textContent = `Downloaded ${file.name} (${fmt.compact(file.size)} bytes).`;
        } catch (error) {
          downloadMessage.className = 'field-error';
          downloadMessage.textContent = `${format}: ${error.detail ?? error.message}`;
        } finally { b.disabled = false; }
      },
    }, label);
    clear(downloads,
      button('onnx', 'onnx', '⬇ ONNX', 'The sparse inference model in ONNX, checked against torch in onnxruntime'),
      button('inference', 'inference.safetensors', '⬇ Torch inference model', 'The sparse inference model with its CSR layers, for nas.export.load_inference_model'),
      button('safetensors', 'safetensors', '⬇ Masked model · safetensors', 'The trained model: weights and masks'),
      button('report', 'report.json', '⬇ Sparsity report · JSON', 'Per layer: shape, density, pattern, kernel, and how the ONNX file holds it'));
    if (reason) downloadMessage.textContent = reason;
  }

  function modelNote() {
    const csr = (trial.layers || []).filter((l) => l.kernel === 'csr').map((l) => l.name);
    return h('div', { class: 'muted small', id: 'model-note' },
      h('p', {}, 'ONNX: the sparse inference model the latency was measured on, checked against torch in onnxruntime. ',
        'Removed units are gone (smaller layers). onnxruntime has no faster kernel for unstructured sparsity, so ',
        csr.length ? h('strong', {}, `the ${csr.length} layer${csr.length > 1 ? 's' : ''} that run as CSR in torch (${csr.join(', ')}) are stored dense with their zeros in ONNX`) : 'a layer that runs as CSR in torch is stored dense with its zeros in ONNX',
        '; its own latency is measured on first download (ONNX latency).'),
      h('p', {}, 'Torch inference model: that model with its CSR layers, as safetensors plus a JSON description; load it with nas.export.load_inference_model. ',
        'Masked model: the trained weights with their masks and the architecture as metadata. ',
        'Sparsity report: per layer shape, density, pattern, kernel and what ONNX holds.'));
  }

  function paintLayers() {
    const layers = trial.layers || [];
    if (!layers.length) {
      clear(layersBox, h('div', { class: 'empty' }, FINISHED.includes(trial.state) ? 'This trial reported no layers.' : 'Layers are reported when the trial finishes.'));
      return;
    }
    const total = (l) => l.shape.reduce((a, b) => a * b, 1);
    clear(layersBox, h('table', { class: 'table', id: 'layers-table' },
      h('thead', {}, h('tr', {}, ['#', 'Layer', 'Shape', 'Weights', 'Nonzero', 'Density', 'Pattern', 'Kernel'].map((t, i) => h('th', { class: [0, 3, 4].includes(i) ? 'num' : '' }, t)))),
      h('tbody', {}, layers.map((l, i) => h('tr', {},
        h('td', { class: 'num muted' }, i),
        h('td', { class: 'mono' }, l.name),
        h('td', { class: 'mono' }, `${l.shape.join(' × ')}`),
        h('td', { class: 'num' }, fmt.compact(total(l))),
        h('td', { class: 'num' }, fmt.compact(Math.round(total(l) * l.density))),
        h('td', {}, h('div', { class: 'density' }, h('div', { class: 'density-bar', style: { width: `${100 * l.density}%` } }), h('span', {}, fmt.pct(l.density, 1)))),
        h('td', {}, h('span', { class: 'chip' }, l.pattern)),
        h('td', {}, l.kernel ? h('span', { class: 'chip chip-kernel' }, l.kernel) : h('span', { class: 'muted' }, '—')))))));
  }

  function paintCurves() {
    const history = trial.history || [];
    if (!history.length) {
      curvesChart?.destroy(); curvesChart = null;
      clear(curves, h('div', { class: 'chart-empty' }, FINISHED.includes(trial.state) ? 'This trial reported no epochs.' : 'No epoch reported yet.'));
      return;
    }
    const keys = [...new Set(history.flatMap((e) => Object.keys(e.metrics)))].sort();
    const chosen = keys.includes(curveSelect.value) ? curveSelect.value : curveMetric(keys, job.spec?.objectives?.[0]?.metric ?? 'accuracy');
    clear(curveSelect, keys.map((k) => h('option', { value: k, selected: k === chosen }, metricLabel(k))));
    const pts = history.filter((e) => typeof e.metrics[chosen] === 'number');
    if (!curvesChart) curvesChart = new Scatter(curves);
    curvesChart.set([
      { type: 'line', x: pts.map((e) => e.epoch), y: pts.map((e) => e.metrics[chosen]), color: COLORS[0], width: 2 },
      { type: 'points', x: pts.map((e) => e.epoch), y: pts.map((e) => e.metrics[chosen]), color: COLORS[0], size: 3.5, alpha: 1,
        tip: (k) => [`epoch ${pts[k].epoch}`, ...Object.entries(pts[k].metrics).map(([name, v]) => `${metricLabel(name)} ${formatMetric(name, v)}`)] },
    ], { x: { label: 'epoch', integer: true }, y: { label: metricLabel(chosen), format: isFraction(chosen) ? (v) => `${Number((v * 100).toFixed(1))}%` : undefined } });
  }

  let latencyChart = null;
  async function paintLatency() {
    const points = await api.get(`/jobs/${trial.job_id}/points`, { metric: ['latency_ms', 'predicted_latency_ms', 'sparsity'] });
    if (disposed) return;
    const xs = points.metrics.predicted_latency_ms, ys = points.metrics.latency_ms;
    const idx = points.id.map((_, i) => i).filter((i) => xs[i] !== null && ys[i] !== null);
    if (!idx.length) { latencyChart?.destroy(); latencyChart = null; clear(latency, h('div', { class: 'chart-empty' }, 'No trial of this job has both latencies yet.')); return; }
    const me = idx.find((i) => points.id[i] === trial.id);
    let lo = Infinity, hi = -Infinity;
    for (const i of idx) { lo = Math.min(lo, xs[i], ys[i]); hi = Math.max(hi, xs[i], ys[i]); }
    if (!latencyChart) latencyChart = new Scatter(latency, { onClick: (id) => { location.hash = `#/trials/${id}`; } });
    const tip = (i) => [`Trial #${points.number[i]}`, `predicted ${fmt.ms(xs[i])}`, `measured ${fmt.ms(ys[i])}`, `sparsity ${fmt.pct(points.metrics.sparsity[i])}`];
    latencyChart.set([
      { type: 'line', x: [lo, hi], y: [lo, hi], color: '#adb5bd', dash: [5, 4], width: 1, noDomain: true },
      { type: 'points', x: idx.map((i) => xs[i]), y: idx.map((i) => ys[i]), color: '#91a7ff', alpha: 0.6, size: idx.length > 2000 ? 2.4 : 3.5, ids: idx.map((i) => points.id[i]), tip: (k) => tip(idx[k]) },
      me !== undefined ? { type: 'points', x: [xs[me]], y: [ys[me]], color: '#e8590c', size: 6.5, alpha: 1, ids: [trial.id], tip: () => tip(me) } : null,
    ].filter(Boolean), {
      x: { label: 'predicted latency (ms)' }, y: { label: 'measured latency (ms)' },
      legend: [{ label: 'trials of this job', color: '#91a7ff' }, { label: `trial #${trial.number}`, color: '#e8590c' }, { label: 'predicted = measured', color: '#adb5bd', kind: 'line' }],
    });
  }

  function lineageCard() {
    const chain = [...lineage.ancestors].reverse();
    const link = (t) => h('a', { href: `#/trials/${t.id}`, class: 'lineage-node' }, h('span', { class: 'mono' }, `#${t.number}`), ' ', badge(t.state),
      t.metrics.accuracy !== undefined ? h('span', { class: 'muted small' }, ` ${fmt.pct(t.metrics.accuracy)}`) : null,
      t.metrics.sparsity !== undefined ? h('span', { class: 'muted small' }, ` · ${fmt.pct(t.metrics.sparsity, 0)} sparse`) : null);
    if (!chain.length && !lineage.children.length) return h('p', { class: 'muted' }, 'This trial has no parent and no children.');
    return h('div', { class: 'lineage' },
      chain.map((t) => [link(t), h('span', { class: 'arrow' }, '→')]),
      h('span', { class: 'lineage-node current' }, h('span', { class: 'mono' }, `#${trial.number}`), ' (this trial)'),
      lineage.children.length ? [h('span', { class: 'arrow' }, '→'), h('div', { class: 'lineage-children' }, lineage.children.map(link))] : null);
  }

  // textContent: the log is shown as text, never parsed as markup.
  const logBox = h('pre', { class: 'code', id: 'trial-log', hidden: true });
  const logNote = h('p', { class: 'muted', id: 'trial-log-note' });
  function showLog(text, note = '') {
    logBox.textContent = text;
    logBox.hidden = !text;
    logNote.textContent = note;
    logNote.hidden = !note;
  }
  async function paintLog() {
    const finished = FINISHED.includes(trial.state);
    if (!trial.has_log) {  // no request that can only answer 404
      if (!finished) showLog('', 'The log (what the trial logged and warned, and its traceback if it fails) appears with its first epoch.');
      else showLog('', trial.started_at ? 'No log was stored for this trial.' : `No log: the trial never ran (${trial.state}).`);
    } else {
      try {
        const text = await fetchText(`/trials/${trial.id}/log`);
        if (!disposed) showLog(text, finished ? '' : 'The log so far: it is stored with every epoch the trial reports.');
      } catch (error) {
        if (!disposed && error.status !== 401) showLog('', error.detail ?? error.message);
      }
    }
  }

  const archBox = h('pre', { class: 'code' });
  const outputsBox = h('pre', { class: 'code' });
  function paintArch() {
    archBox.textContent = JSON.stringify(trial.arch, null, 2);
    outputsBox.textContent = JSON.stringify(trial.outputs || {}, null, 2);
    outputsBox.closest('.card').hidden = !trial.outputs || !Object.keys(trial.outputs).length;
  }

  view.append(
    head,
    metricsBox,
    notesCard(`/trials/${trialId}`, trial),
    h('div', { class: 'grid-2' },
      card('Model', [downloads, downloadMessage, modelNote()], { id: 'card-downloads' }),
      card('All metrics', allMetrics, { id: 'card-metrics' })),
    h('div', { class: 'grid-2' },
      card('Per-epoch curves', curves, { id: 'card-epochs', actions: [h('label', { class: 'inline' }, 'metric ', curveSelect)] }),
      card('Predicted vs measured latency', latency, { id: 'card-latency' })),
    card('Layers', layersBox, { id: 'card-layers', cls: 'flush-body' }),
    h('div', { class: 'grid-2' },
      card('Lineage', lineageCard(), { id: 'card-lineage' }),
      card('Architecture', archBox, { id: 'card-arch' })),
    card('Strategy outputs', outputsBox, { id: 'card-outputs' }),
    card('Log', [logNote, logBox], { id: 'card-log' }));
  paintHead(); paintMetrics(); paintDownloads(); paintArch();
  performance.mark('nas:interactive');
  paintCurves();
  paintLayers();
  paintLatency().catch((e) => { if (e.status !== 401) console.warn(e); });
  paintLog();

  // A running trial updates as its epochs arrive.
  let stream = null;
  if (!FINISHED.includes(trial.state)) {
    live.hidden = false;
    const refresh = throttle(async () => {
      try {
        trial = await api.get(`/trials/${trialId}`);
        if (disposed) return;
        paintHead(); paintMetrics(); paintDownloads(); paintArch(); paintCurves(); paintLayers(); paintLog();
        if (FINISHED.includes(trial.state)) { stream?.close(); live.hidden = true; paintLatency().catch(() => {}); }
      } catch (e) { if (e.status !== 401) console.warn(e); }
    }, 1500);
    stream = subscribe(`/jobs/${trial.job_id}/events`, {
      trial(t) { if (t.id === trialId) refresh(); },
      epoch(e) { if (e.trial_id === trialId) refresh(); },
    }, { since: Date.now() / 1000 - 5, onState: (s) => { live.textContent = s; live.dataset.state = s; } });
  }
  return () => { disposed = true; stream?.close(); latencyChart?.destroy(); curvesChart?.destroy(); };
}
