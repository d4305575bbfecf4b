// Small DOM and formatting helpers shared by every page.

/** Build an element: h('a', {href: '#', class: 'x', onclick: f}, 'text', child). */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key === 'style' && typeof value === 'object') Object.assign(el.style, value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key in el && typeof value !== 'string') el[key] = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// one formatter for every timestamp: toLocaleString builds a new one on each call
const TIME_FORMAT = new Intl.DateTimeFormat('en-GB', { year: 'numeric', month: 'short', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit' });
const INT_FORMAT = new Intl.NumberFormat('en-US');
const isNum = (v) => typeof v === 'number' && Number.isFinite(v);

export const fmt = {
  num(v, digits = 4) {
    if (!isNum(v)) return '—';
    if (v !== 0 && (Math.abs(v) >= 1e5 || Math.abs(v) < 1e-3)) return v.toExponential(2);
    return Number(v.toPrecision(digits)).toString();
  },
  pct(v, digits = 1) { return isNum(v) ? `${(v * 100).toFixed(digits)}%` : '—'; },
  ms(v) {
    if (!isNum(v)) return '—';
    if (v < 0.01) return `${(v * 1000).toFixed(1)} µs`;
    if (v < 10) return `${v.toFixed(3)} ms`;
    if (v < 1000) return `${v.toFixed(1)} ms`;
    return `${(v / 1000).toFixed(2)} s`;
  },
  compact(v) {
    if (!isNum(v)) return '—';
    const a = Math.abs(v);
    if (a >= 1e9) return `${(v / 1e9).toFixed(2)}G`;
    if (a >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
    if (a >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
    return Number.isInteger(v) ? INT_FORMAT.format(v) : fmt.num(v);
  },
  int(v) { return isNum(v) ? INT_FORMAT.format(Math.round(v)) : '—'; },
  duration(seconds) {
    if (!isNum(seconds) || seconds < 0) return '—';
    if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
    const m = Math.floor(seconds / 60), s = Math.round(seconds % 60);
    if (m < 60) return `${m} min ${s.toString().padStart(2, '0')} s`;
    const hrs = Math.floor(m / 60);
    return `${hrs} h ${(m % 60).toString().padStart(2, '0')} min`;
  },
  time(iso) {
    if (!iso) return '—';
    return TIME_FORMAT.format(new Date(iso));
  },
  ago(iso) {
    if (!iso) return '—';
    const s = (Date.now() - new Date(iso).getTime()) / 1000;
    if (s < 45) return 'just now';
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  },
  shortId(id) { return id ? id.slice(0, 8) : '—'; },
  bytes(v) {
    if (!isNum(v)) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
  },
  shape(dims) { return Array.isArray(dims) && dims.length ? dims.join('×') : '—'; },
};

/** Seconds between two ISO times (the second defaults to now). */
export function elapsed(startIso, endIso) {
  if (!startIso) return null;
  return ((endIso ? new Date(endIso) : new Date()) - new Date(startIso)) / 1000;
}

// The server's metric registry (GET /catalog's metrics: name, label, unit, description, direction,
// kind), filled by setMetrics once signed in; metrics it does not list (per-epoch ones, a
// strategy's own) fall back to their names.
const METRICS = new Map();

export function setMetrics(list) {
  METRICS.clear();
  for (const metric of list) METRICS.set(metric.name, metric);
}

/** How a metric reads best in tables and tooltips. */
export function formatMetric(name, value) {
  if (value === undefined || value === null) return '—';
  const metric = METRICS.get(name);
  const unit = metric ? metric.unit : name.endsWith('_ms') ? 'ms' : name.endsWith('_s') ? 's' : '';
  if (metric?.kind === 'fraction') return fmt.pct(value, 2);
  if (unit === 'ms') return fmt.ms(value);
  if (unit === 's') return fmt.duration(value);
  if (metric?.kind === 'integer') return fmt.compact(value);
  return fmt.num(value);
}

export const metricLabel = (name) => METRICS.get(name)?.label || name.replaceAll('_', ' ');
/** What a metric means, as the server's registry says; empty for one it does not list. */
export const metricDescription = (name) => METRICS.get(name)?.description || '';
/** Which way a metric is better (maximize, minimize, none); undefined for one the registry does not list. */
export const metricDirection = (name) => METRICS.get(name)?.direction;
/** The metric the server ranks an objective on (accuracy: val_accuracy), as the registry says; else the name itself. */
export const selectionMetric = (name) => METRICS.get(name)?.selected_on || name;
/** Whether a metric is a fraction (0..1), which charts label in percent. */
export const isFraction = (name) => METRICS.get(name)?.kind === 'fraction';

/**
 * The per-epoch metric among `keys` that learning curves show first for a job whose first objective
 * is `objective`: the metric the registry says selection ranks it on (`val_accuracy` for
 * `accuracy`) where the epochs report it, else the objective itself, else the first key.
 */
export function curveMetric(keys, objective) {
  return [selectionMetric(objective), objective].find((k) => keys.includes(k)) ?? keys[0];
}

export function badge(state) {
  return h('span', { class: `badge badge-${state}` }, state);
}

export function toast(message, kind = 'info', ms = 4000) {
  const box = document.getElementById('toasts');
  const el = h('div', { class: `toast toast-${kind}` }, message);
  box.append(el);
  setTimeout(() => el.remove(), ms);
}

export function copyButton(text, label = 'Copy') {
  return h('button', {
    class: 'btn btn-ghost btn-xs', type: 'button', title: `Copy ${text}`,
    onclick: async (e) => {
      e.stopPropagation();
      try { await navigator.clipboard.writeText(text); toast('Copied'); } catch { toast(text); }
    },
  }, label);
}

export function card(title, body, { actions = null, id = null, cls = '' } = {}) {
  return h('section', { class: `card ${cls}`, id },
    title ? h('div', { class: 'card-head' }, h('h2', {}, title), actions ? h('div', { class: 'card-actions' }, actions) : null) : null,
    h('div', { class: 'card-body' }, body));
}

export function kpi(label, value, sub = null) {
  return h('div', { class: 'kpi' }, h('div', { class: 'kpi-label' }, label), h('div', { class: 'kpi-value' }, value),
    sub ? h('div', { class: 'kpi-sub' }, sub) : null);
}

export function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

/** Run at most once per `ms`, always running the last call. */
export function throttle(fn, ms) {
  let last = 0, timer = null;
  const wrapped = () => {
    const wait = last + ms - Date.now();
    if (wait <= 0) { last = Date.now(); fn(); return; }
    if (!timer) timer = setTimeout(() => { timer = null; last = Date.now(); fn(); }, wait);
  };
  wrapped.cancel = () => { clearTimeout(timer); timer = null; };
  return wrapped;
}

export function errorBox(error) {
  const detail = error?.detail ?? error?.message ?? String(error);
  const text = Array.isArray(detail) ? detail.map((d) => `${(d.loc || []).join('.')}: ${d.msg}`).join('\n') : detail;
  return h('div', { class: 'alert alert-error' }, text, error?.requestId ? h('div', { class: 'muted small' }, `request id ${error.requestId}`) : null);
}

export function spinner(text = 'Loading…') {
  return h('div', { class: 'loading' }, h('span', { class: 'spin' }), text);
}
