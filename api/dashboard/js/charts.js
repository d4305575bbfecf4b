// Canvas charts: a scatter/line chart for clouds of thousands of trials, and a heatmap.
//
// plotly's SVG scatter took 12 s to draw the 10,000 markers of a large job on the reference VM
// (one DOM node each), its WebGL traces compile shaders with `new Function`, which the page's
// Content-Security-Policy forbids, and parsing its 5 MB bundle alone held the page for most of a
// second. A 2D canvas draws 10,000 points in a few milliseconds. These charts keep what
// researchers use: hover tooltips, click to open a trial, drag to zoom (double-click resets),
// colour scales, legends.

const FONT = '11px Inter, system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
const TITLE_FONT = '12px Inter, system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
const INK = '#344054', GRID = '#eef0f3', AXIS = '#d0d5dd';

export const COLORS = ['#3b5bdb', '#e8590c', '#2b8a3e', '#c2255c', '#7048e8', '#0b7285', '#e67700', '#5c940d', '#a61e4d', '#364fc7'];

export const SCALES = {
  viridis: ['#440154', '#482878', '#3e4989', '#31688e', '#26828e', '#1f9e89', '#35b779', '#6ece58', '#b5de2b', '#fde725'],
  blues: ['#dbe4ff', '#a5b4fc', '#748ffc', '#4263eb', '#1c2f8f'],
};

function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

/** 64 colours sampled along a scale. */
function lut(stops) {
  const rgb = stops.map(hexToRgb);
  return Array.from({ length: 64 }, (_, k) => {
    const t = (k / 63) * (rgb.length - 1);
    const i = Math.min(rgb.length - 2, Math.floor(t)), f = t - i;
    const c = rgb[i].map((v, j) => Math.round(v + f * (rgb[i + 1][j] - v)));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  });
}

/** About `count` round tick values covering [lo, hi]. */
export function ticks(lo, hi, count = 6) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return out;
}

const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];

/** Round times (seconds since the epoch) covering [lo, hi]: at most `count`, whole weeks beyond the table. */
function timeTicks(lo, hi, count) {
  const week = TIME_STEPS[TIME_STEPS.length - 1];
  const step = TIME_STEPS.find((s) => (hi - lo) / s <= count) || week * Math.ceil((hi - lo) / count / week);
  const zone = new Date(lo * 1000).getTimezoneOffset() * 60;
  const out = [];
  for (let v = Math.ceil((lo - zone) / step) * step + zone; v <= hi; v += step) out.push(v);
  return out;
}

export function timeFormat(span) {
  return (v) => {
    const d = new Date(v * 1000);
    const hm = d.toLocaleTimeString('en-GB', { hour: '2-digit', minute: '2-digit', second: span < 600 ? '2-digit' : undefined });
    return span > 86400 ? `${d.toLocaleDateString('en-GB', { day: '2-digit', month: 'short' })} ${hm}` : hm;
  };
}

/** Distinct whole numbers (trial numbers, epochs, generations) covering [lo, hi], a round step apart. */
function integerTicks(lo, hi, count) {
  const raw = Math.max(1, (hi - lo) / count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = Math.max(1, [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw));
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) out.push(v || 0);  // never -0
  return out;
}

/** The values an axis marks: log, time, integer or round decimal ticks. */
function axisTicks(axis, lo, hi, count) {
  if (axis.log) return logTicks(lo, hi);
  if (axis.time) return timeTicks(lo, hi, count);
  if (axis.integer) return integerTicks(lo, hi, count);
  return ticks(lo, hi, count);
}

const LABEL_HEIGHT = 11, LABEL_GAP = 6;

/**
 * The ticks of `values` that get a label, with the label's box (CSS pixels): ticks outside [a, b],
 * a label another one already shows (a format coarser than the step) and one that would touch the
 * previous label are left out, so labels never merge however narrow the domain.
 * `axis` 'x': labels centred below at `anchor`; 'y': right-aligned left of `anchor`.
 */
function labelTicks(ctx, values, format, position, a, b, axis, anchor) {
  const out = [], seen = new Set();
  let last = -Infinity;
  for (const value of values) {
    const at = position(value);
    if (at < a - 1 || at > b + 1) continue;
    const text = format(value);
    if (seen.has(text)) continue;
    const w = ctx.measureText(text).width;
    const box = axis === 'x' ? [at - w / 2, anchor, at + w / 2, anchor + LABEL_HEIGHT] : [anchor - w, at - LABEL_HEIGHT / 2, anchor, at + LABEL_HEIGHT / 2];
    // x labels run left to right; y labels bottom to top (values rise, pixels fall)
    const [start, end] = axis === 'x' ? [box[0], box[2]] : [-box[3], -box[1]];
    if (start < last + LABEL_GAP) continue;
    last = end;
    seen.add(text);
    out.push({ value, text, at, box: box.map((v) => Math.round(v * 10) / 10) });
  }
  return out;
}

/** [lo, hi] widened a little so points sit off the frame; a single value gets a span of its own kind. */
function padDomain(lo, hi, axis) {
  if (axis.log) return [lo / 1.15, hi * 1.15];
  if (hi === lo) {
    // one point: a minute around a time, one step around a whole number, 5% around any other value
    const half = axis.time ? 60 : axis.integer ? 0.5 : Math.abs(hi) * 0.05 || 1;
    return [lo - half, hi + half];
  }
  const pad = (hi - lo) * 0.04;
  return axis.integer ? [lo - Math.max(pad, 0.5), hi + Math.max(pad, 0.5)] : [lo - pad, hi + pad];
}

function logTicks(lo, hi) {
  const out = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of [1, 2, 5]) { const v = m * 10 ** e; if (v >= lo && v <= hi) out.push(v); }
  }
  return out;
}

const defaultFormat = (v) => {
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(1);
  return Number(v.toPrecision(4)).toString();
};

const parsed = new Map();

/** [r, g, b] of '#rrggbb' or 'rgb(r,g,b)'. */
function rgb(color) {
  let value = parsed.get(color);
  if (!value) {
    value = color.startsWith('#') ? hexToRgb(color) : color.match(/\d+/g).slice(0, 3).map(Number);
    parsed.set(color, value);
  }
  return value;
}

const masks = new Map();

/** Coverage of the pixels around a disc of radius `R` (device pixels) centred on a pixel. */
function mask(R, alpha) {
  const key = `${R}|${alpha}`;
  let m = masks.get(key);
  if (!m) {
    const reach = Math.ceil(R + 0.5), size = 2 * reach + 1;
    const cover = new Float32Array(size * size);
    for (let j = 0; j < size; j++) {
      for (let i = 0; i < size; i++) cover[j * size + i] = Math.max(0, Math.min(1, R + 0.5 - Math.hypot(i - reach, j - reach))) * alpha;
    }
    masks.set(key, (m = { cover, reach, size }));
  }
  return m;
}

/** Anti-aliased discs blended into a pixel buffer, then drawn onto a canvas in one call. */
class Dots {
  constructor(width, height, dpr) {
    this.dpr = dpr;
    this.w = Math.round(width * dpr);
    this.h = Math.round(height * dpr);
    this.image = new ImageData(this.w, this.h);
  }

  /** A disc of `shape` (from `mask`) at (x, y) in CSS pixels. */
  add(x, y, shape, [cr, cg, cb]) {
    const d = this.image.data, w = this.w, h = this.h;
    const { cover, reach, size } = shape;
    const cx = Math.round(x * this.dpr - 0.5), cy = Math.round(y * this.dpr - 0.5);
    for (let j = 0; j < size; j++) {
      const py = cy + j - reach;
      if (py < 0 || py >= h) continue;
      for (let i = 0; i < size; i++) {
        const c = cover[j * size + i];
        const px = cx + i - reach;
        if (c <= 0 || px < 0 || px >= w) continue;
        const p = (py * w + px) * 4;
        const below = d[p + 3] / 255;
        const out = c + below * (1 - c);
        const keep = (below * (1 - c)) / out, take = c / out;
        d[p] = cr * take + d[p] * keep;
        d[p + 1] = cg * take + d[p + 1] * keep;
        d[p + 2] = cb * take + d[p + 2] * keep;
        d[p + 3] = out * 255;
      }
    }
  }

  /** Composite the buffer over what `ctx` holds, inside `clip` (CSS pixels). */
  paint(ctx, clip) {
    const layer = document.createElement('canvas');
    layer.width = this.w;
    layer.height = this.h;
    layer.getContext('2d').putImageData(this.image, 0, 0);
    ctx.save();
    ctx.beginPath();
    ctx.rect(clip.x, clip.y, clip.w, clip.h);
    ctx.clip();
    ctx.drawImage(layer, 0, 0, this.w / this.dpr, this.h / this.dpr);
    ctx.restore();
  }
}

export class Scatter {
  /**
   * @param {HTMLElement} el  the container (sized by CSS)
   * @param {object} options  x/y: {label, format, log}, colorbar: {label, format, scale}, onClick(id)
   */
  constructor(el, options = {}) {
    this.el = el;
    this.options = options;
    this.layers = [];
    this.zoom = null;
    el.classList.add('scatter');
    el.replaceChildren();
    this.canvas = document.createElement('canvas');
    this.overlay = document.createElement('canvas');
    this.overlay.className = 'scatter-overlay';
    this.tip = document.createElement('div');
    this.tip.className = 'scatter-tip';
    this.tip.hidden = true;
    this.reset = document.createElement('button');
    this.reset.type = 'button';
    this.reset.className = 'btn btn-xs scatter-reset';
    this.reset.textContent = 'Reset zoom';
    this.reset.hidden = true;
    this.reset.addEventListener('click', () => this.setZoom(null));
    this.legendBox = document.createElement('div');
    this.legendBox.className = 'scatter-legend';
    el.append(this.canvas, this.overlay, this.tip, this.reset, this.legendBox);
    this.bind();
    this.resizer = new ResizeObserver(() => this.schedule());
    this.resizer.observe(el);
  }

  destroy() { this.resizer.disconnect(); }

  set(layers, options = {}) {
    this.layers = layers;
    Object.assign(this.options, options);
    this.full = undefined;
    this.legend();
    this.schedule();
  }

  setZoom(zoom) {
    this.zoom = zoom;
    this.reset.hidden = !zoom;
    this.schedule();
  }

  schedule() {
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => { this.pending = null; this.draw(); });
  }

  legend() {
    this.legendBox.replaceChildren(...(this.options.legend || []).map((item) => {
      const swatch = document.createElement('span');
      swatch.className = `swatch swatch-${item.kind || 'point'}`;
      swatch.style.background = item.color;
      if (item.kind === 'ring') { swatch.style.background = 'transparent'; swatch.style.borderColor = item.color; }
      const label = document.createElement('span');
      label.textContent = item.label;
      const row = document.createElement('span');
      row.append(swatch, label);
      return row;
    }));
  }

  domain() {
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    const { x = {}, y = {} } = this.options;
    for (const layer of this.layers) {
      if (layer.noDomain) continue;
      for (let i = 0; i < layer.x.length; i++) {
        const a = layer.x[i], b = layer.y[i];
        if (a === null || b === null || !Number.isFinite(a) || !Number.isFinite(b)) continue;
        if (x.log && a <= 0) continue;
        if (a < x0) x0 = a; if (a > x1) x1 = a; if (b < y0) y0 = b; if (b > y1) y1 = b;
      }
    }
    if (!Number.isFinite(x0)) return null;
    if (y.zero && !y.log) y0 = Math.min(y0, 0);
    [x0, x1] = padDomain(x0, x1, x);
    [y0, y1] = padDomain(y0, y1, y);
    if (y.min !== undefined) y0 = Math.max(y0, y.min);
    if (y.max !== undefined) y1 = Math.min(y1, y.max);
    if (x.min !== undefined) x0 = Math.max(x0, x.min);
    return { x0, x1, y0, y1 };
  }

  draw() {
    const el = this.el;
    const width = el.clientWidth, height = el.clientHeight;
    if (!width || !height) return;
    const dpr = window.devicePixelRatio || 1;
    for (const c of [this.canvas, this.overlay]) {
      c.width = Math.round(width * dpr); c.height = Math.round(height * dpr);
      c.style.width = `${width}px`; c.style.height = `${height}px`;
    }
    const ctx = this.canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const { x = {}, y = {}, colorbar } = this.options;
    if (this.full === undefined) this.full = this.domain();
    const full = this.full;
    if (!full) return;
    const d = this.zoom || full;
    const m = { l: 62, r: colorbar ? 74 : 16, t: this.options.legend?.length ? 28 : 12, b: 44 };
    const pw = width - m.l - m.r, ph = height - m.t - m.b;
    const sx = x.log ? (v) => m.l + ((Math.log10(v) - Math.log10(d.x0)) / (Math.log10(d.x1) - Math.log10(d.x0))) * pw : (v) => m.l + ((v - d.x0) / (d.x1 - d.x0)) * pw;
    const sy = y.log ? (v) => m.t + ph - ((Math.log10(v) - Math.log10(d.y0)) / (Math.log10(d.y1) - Math.log10(d.y0))) * ph : (v) => m.t + ph - ((v - d.y0) / (d.y1 - d.y0)) * ph;
    this.frame = { m, pw, ph, d, sx, sy, width, height };

    // grid, ticks and axes
    ctx.font = FONT;
    ctx.fillStyle = '#fff';
    ctx.fillRect(m.l, m.t, pw, ph);
    const xf = x.format || (x.time ? timeFormat(d.x1 - d.x0) : defaultFormat), yf = y.format || defaultFormat;
    ctx.strokeStyle = GRID; ctx.lineWidth = 1; ctx.fillStyle = INK;
    ctx.textAlign = 'center'; ctx.textBaseline = 'top';
    const xCount = Math.max(2, Math.floor(pw / (x.time ? 110 : 90)));
    const xMarks = labelTicks(ctx, axisTicks(x, d.x0, d.x1, xCount), xf, (v) => Math.round(sx(v)) + 0.5, m.l, m.l + pw, 'x', m.t + ph + 6);
    for (const { at, text } of xMarks) {
      ctx.beginPath(); ctx.moveTo(at, m.t); ctx.lineTo(at, m.t + ph); ctx.stroke();
      ctx.fillText(text, at, m.t + ph + 6);
    }
    ctx.textAlign = 'right'; ctx.textBaseline = 'middle';
    const yMarks = labelTicks(ctx, axisTicks(y, d.y0, d.y1, Math.max(2, Math.floor(ph / 50))), yf, (v) => Math.round(sy(v)) + 0.5, m.t, m.t + ph, 'y', m.l - 6);
    for (const { at, text } of yMarks) {
      ctx.beginPath(); ctx.moveTo(m.l, at); ctx.lineTo(m.l + pw, at); ctx.stroke();
      ctx.fillText(text, m.l - 6, at);
    }
    ctx.strokeStyle = AXIS;
    ctx.strokeRect(m.l + 0.5, m.t + 0.5, pw, ph);
    ctx.font = TITLE_FONT; ctx.fillStyle = INK;
    ctx.textAlign = 'center'; ctx.textBaseline = 'bottom';
    if (x.label) ctx.fillText(x.label, m.l + pw / 2, height - 4);
    if (y.label) {
      ctx.save(); ctx.translate(14, m.t + ph / 2); ctx.rotate(-Math.PI / 2); ctx.textBaseline = 'middle'; ctx.fillText(y.label, 0, 0); ctx.restore();
    }

    // layers, clipped to the plot
    ctx.save();
    ctx.beginPath(); ctx.rect(m.l, m.t, pw, ph); ctx.clip();
    this.index = new Map();
    const cell = 12;
    const colors = colorbar ? lut(SCALES[colorbar.scale || 'viridis']) : null;
    const [c0, c1] = colorbar ? [colorbar.min ?? 0, colorbar.max ?? 1] : [0, 1];
    const shown = this.layers.map(() => 0);
    this.layers.forEach((layer, li) => {
      const n = layer.x.length;
      if (layer.type === 'line' || layer.type === 'segments') {
        ctx.strokeStyle = layer.color; ctx.lineWidth = layer.width || 1.5; ctx.globalAlpha = layer.alpha ?? 1;
        ctx.setLineDash(layer.dash || []);
        ctx.beginPath();
        let open = false, px = 0, py = 0;
        for (let i = 0; i < n; i++) {
          const a = layer.x[i], b = layer.y[i];
          if (a === null || b === null) { open = false; continue; }
          const qx = sx(a), qy = sy(b);
          shown[li]++;
          if (!open) { ctx.moveTo(qx, qy); open = true; } else if (layer.step) { ctx.lineTo(qx, py); ctx.lineTo(qx, qy); } else ctx.lineTo(qx, qy);
          px = qx; py = qy;
        }
        if (layer.extendTo !== undefined && open) ctx.lineTo(layer.extendTo === 'right' ? m.l + pw : sx(layer.extendTo), py);
        ctx.stroke(); ctx.setLineDash([]); ctx.globalAlpha = 1;
        if (layer.fill && n) {
          const base = sy(Math.max(d.y0, 0));
          ctx.lineTo(layer.extendTo === 'right' ? m.l + pw : px, base);
          ctx.lineTo(sx(layer.x[0]), base);
          ctx.closePath();
          ctx.fillStyle = layer.fill; ctx.fill();
        }
        return;
      }
      // points: rings (a few, e.g. the Pareto front) as paths; clouds rasterised into pixels, since
      // 10,000 anti-aliased arcs cost a software-rendered canvas 50-200 ms and the pixels about 5 ms
      const r = layer.size ?? 3.5;
      const alpha = layer.alpha ?? 0.85;
      const dots = layer.ring ? null : new Dots(width, height, dpr);
      const shape = mask(r * dpr, alpha);
      if (layer.ring) { ctx.beginPath(); ctx.lineWidth = layer.ringWidth || 2; ctx.strokeStyle = layer.color; ctx.globalAlpha = alpha; }
      for (let i = 0; i < n; i++) {
        const a = layer.x[i], b = layer.y[i];
        if (a === null || b === null || !Number.isFinite(a) || !Number.isFinite(b) || (x.log && a <= 0)) continue;
        const qx = sx(a), qy = sy(b);
        if (qx < m.l - r || qx > m.l + pw + r || qy < m.t - r || qy > m.t + ph + r) continue;
        shown[li]++;
        if (layer.ring) { ctx.moveTo(qx + r, qy); ctx.arc(qx, qy, r, 0, 2 * Math.PI); } else {
          let fill = layer.color;
          if (layer.values && colors) {
            const v = layer.values[i];
            fill = v === null || v === undefined ? '#ced4da' : colors[Math.max(0, Math.min(63, Math.round(((v - c0) / (c1 - c0 || 1)) * 63)))];
          } else if (layer.colors) fill = layer.colors[i];
          dots.add(qx, qy, shape, rgb(fill));
        }
        if (layer.tip || layer.ids) {
          const key = Math.floor(qx / cell) * 65536 + Math.floor(qy / cell);
          let list = this.index.get(key);
          if (!list) this.index.set(key, (list = []));
          list.push(li, i, qx, qy);
        }
      }
      if (layer.ring) { ctx.stroke(); ctx.globalAlpha = 1; } else dots.paint(ctx, { x: m.l, y: m.t, w: pw, h: ph });
    });
    ctx.restore();

    if (colorbar) this.drawColorbar(ctx, colors, m, ph, width, c0, c1);
    this.describe(d, xMarks, yMarks, shown);
  }

  /**
   * What the canvas shows, in words for assistive technology (aria-label) and as data for scripts
   * and tests (data-axes: each axis's title, domain and labelled ticks with their boxes, and the
   * points each layer drew), since a canvas has no DOM of its own.
   */
  describe(d, xMarks, yMarks, shown) {
    const { x = {}, y = {} } = this.options;
    const axis = (options, lo, hi, marks) => ({
      label: options.label || '', min: lo, max: hi, ticks: marks.map(({ value, text, box }) => ({ value, text, box })),
    });
    const axes = {
      x: axis(x, d.x0, d.x1, xMarks), y: axis(y, d.y0, d.y1, yMarks),
      layers: this.layers.map((layer, li) => ({ type: layer.type, points: shown[li] })),
    };
    const range = (a) => (a.ticks.length ? `${a.ticks[0].text} to ${a.ticks[a.ticks.length - 1].text}` : 'no ticks');
    this.canvas.setAttribute('role', 'img');
    this.canvas.setAttribute('aria-label', `${axes.y.label || 'y'} (${range(axes.y)}) against ${axes.x.label || 'x'} (${range(axes.x)})`);
    this.canvas.dataset.axes = JSON.stringify(axes);
  }

  drawColorbar(ctx, colors, m, ph, width, c0, c1) {
    const { colorbar } = this.options;
    const x = width - m.r + 16, w = 10, top = m.t + 6, h = ph - 12;
    colors.forEach((c, k) => { ctx.fillStyle = c; ctx.fillRect(x, top + h - ((k + 1) / 64) * h, w, h / 64 + 0.5); });
    ctx.strokeStyle = AXIS; ctx.strokeRect(x + 0.5, top + 0.5, w, h);
    ctx.font = FONT; ctx.fillStyle = INK; ctx.textAlign = 'left'; ctx.textBaseline = 'middle';
    const f = colorbar.format || defaultFormat;
    for (const v of ticks(c0, c1, 4)) ctx.fillText(f(v), x + w + 4, top + h - ((v - c0) / (c1 - c0 || 1)) * h);
    if (colorbar.label) {
      ctx.save(); ctx.translate(width - 8, top + h / 2); ctx.rotate(-Math.PI / 2); ctx.textAlign = 'center'; ctx.font = TITLE_FONT; ctx.fillText(colorbar.label, 0, 0); ctx.restore();
    }
  }

  nearest(px, py) {
    if (!this.index) return null;
    const cell = 12, cx = Math.floor(px / cell), cy = Math.floor(py / cell);
    let best = null, bestD = 81;
    for (let i = cx - 1; i <= cx + 1; i++) {
      for (let j = cy - 1; j <= cy + 1; j++) {
        const list = this.index.get(i * 65536 + j);
        if (!list) continue;
        for (let k = 0; k < list.length; k += 4) {
          const d = (list[k + 2] - px) ** 2 + (list[k + 3] - py) ** 2;
          if (d < bestD) { bestD = d; best = { layer: this.layers[list[k]], i: list[k + 1], x: list[k + 2], y: list[k + 3] }; }
        }
      }
    }
    return best;
  }

  bind() {
    const o = this.overlay;
    const pos = (e) => { const r = o.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
    let drag = null;
    const paint = (hit, box) => {
      const ctx = o.getContext('2d');
      const dpr = window.devicePixelRatio || 1;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, o.width, o.height);
      if (box) {
        ctx.fillStyle = 'rgba(59,91,219,0.08)'; ctx.strokeStyle = '#3b5bdb'; ctx.lineWidth = 1;
        ctx.fillRect(box[0], box[1], box[2] - box[0], box[3] - box[1]); ctx.strokeRect(box[0] + 0.5, box[1] + 0.5, box[2] - box[0], box[3] - box[1]);
      }
      if (hit) {
        ctx.beginPath(); ctx.arc(hit.x, hit.y, (hit.layer.size ?? 3.5) + 4, 0, 2 * Math.PI);
        ctx.strokeStyle = '#1d2330'; ctx.lineWidth = 2; ctx.stroke();
      }
    };
    o.addEventListener('mousemove', (e) => {
      const [px, py] = pos(e);
      if (drag) { paint(null, [Math.min(drag[0], px), Math.min(drag[1], py), Math.max(drag[0], px), Math.max(drag[1], py)]); return; }
      const hit = this.nearest(px, py);
      paint(hit, null);
      o.style.cursor = hit && hit.layer.ids ? 'pointer' : 'crosshair';
      if (!hit || !hit.layer.tip) { this.tip.hidden = true; return; }
      this.tip.replaceChildren(...hit.layer.tip(hit.i).map((line, k) => {
        const div = document.createElement('div');
        div.textContent = line;
        if (k === 0) div.className = 'tip-head';
        return div;
      }));
      this.tip.hidden = false;
      const left = hit.x + 14 + this.tip.offsetWidth > this.frame.width ? hit.x - 14 - this.tip.offsetWidth : hit.x + 14;
      this.tip.style.left = `${left}px`;
      this.tip.style.top = `${Math.max(0, hit.y - this.tip.offsetHeight / 2)}px`;
    });
    o.addEventListener('mouseleave', () => { this.tip.hidden = true; paint(null, null); drag = null; });
    o.addEventListener('mousedown', (e) => { if (e.button === 0) drag = pos(e); });
    o.addEventListener('mouseup', (e) => {
      const [px, py] = pos(e);
      const start = drag;
      drag = null;
      paint(null, null);
      if (!start || !this.frame) return;
      if (Math.abs(px - start[0]) < 6 && Math.abs(py - start[1]) < 6) {
        const hit = this.nearest(px, py);
        if (hit && hit.layer.ids && this.options.onClick) this.options.onClick(hit.layer.ids[hit.i]);
        return;
      }
      const { m, pw, ph, d } = this.frame;
      const { x = {}, y = {} } = this.options;
      const inv = (p, lo, hi, a, len, log, flip) => {
        const t = Math.min(1, Math.max(0, (p - a) / len));
        const u = flip ? 1 - t : t;
        return log ? 10 ** (Math.log10(lo) + u * (Math.log10(hi) - Math.log10(lo))) : lo + u * (hi - lo);
      };
      const xs = [inv(start[0], d.x0, d.x1, m.l, pw, x.log, false), inv(px, d.x0, d.x1, m.l, pw, x.log, false)].sort((a, b) => a - b);
      const ys = [inv(start[1], d.y0, d.y1, m.t, ph, y.log, true), inv(py, d.y0, d.y1, m.t, ph, y.log, true)].sort((a, b) => a - b);
      this.setZoom({ x0: xs[0], x1: xs[1], y0: ys[0], y1: ys[1] });
    });
    o.addEventListener('dblclick', () => this.setZoom(null));
  }
}

/** A heatmap of values in [min, max]: rows × columns with category labels, hover and click. */
export class Heatmap {
  constructor(el, options = {}) {
    this.el = el;
    this.options = options;
    el.classList.add('scatter');
    el.replaceChildren();
    this.canvas = document.createElement('canvas');
    this.tip = document.createElement('div');
    this.tip.className = 'scatter-tip';
    this.tip.hidden = true;
    el.append(this.canvas, this.tip);
    this.canvas.addEventListener('mousemove', (e) => this.hover(e));
    this.canvas.addEventListener('mouseleave', () => { this.tip.hidden = true; });
    this.canvas.addEventListener('click', (e) => {
      const hit = this.cellAt(e);
      if (hit && this.options.onClick && this.data.columnIds) this.options.onClick(this.data.columnIds[hit.c]);
    });
    this.resizer = new ResizeObserver(() => this.schedule());
    this.resizer.observe(el);
  }

  destroy() { this.resizer.disconnect(); }

  /** data: {rows: [label], columns: [label], columnIds: [id], z: [[value|null]] (rows × columns), tip(r, c) -> [lines]} */
  set(data, options = {}) {
    this.data = data;
    Object.assign(this.options, options);
    this.schedule();
  }

  schedule() {
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => { this.pending = null; this.draw(); });
  }

  draw() {
    const { rows, columns, z } = this.data || {};
    const width = this.el.clientWidth, height = this.el.clientHeight;
    if (!rows || !width || !height) return;
    const dpr = window.devicePixelRatio || 1;
    const c = this.canvas;
    c.width = Math.round(width * dpr); c.height = Math.round(height * dpr);
    c.style.width = `${width}px`; c.style.height = `${height}px`;
    const ctx = c.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = FONT;
    const labelWidth = Math.min(160, Math.max(...rows.map((r) => ctx.measureText(r).width)) + 12);
    const m = { l: labelWidth, r: 74, t: 8, b: 46 };
    const pw = width - m.l - m.r, ph = height - m.t - m.b;
    const cw = pw / Math.max(1, columns.length), ch = ph / Math.max(1, rows.length);
    const { min = 0, max = 1, scale = 'blues' } = this.options;
    const colors = lut(SCALES[scale]);
    for (let r = 0; r < rows.length; r++) {
      for (let k = 0; k < columns.length; k++) {
        const v = z[r][k];
        ctx.fillStyle = v === null || v === undefined ? '#f8f9fa' : colors[Math.max(0, Math.min(63, Math.round(((v - min) / (max - min || 1)) * 63)))];
        ctx.fillRect(m.l + k * cw, m.t + r * ch, Math.max(1, cw - (cw > 4 ? 1 : 0)), Math.max(1, ch - 1));
      }
    }
    ctx.fillStyle = INK; ctx.textAlign = 'right'; ctx.textBaseline = 'middle';
    rows.forEach((label, r) => ctx.fillText(label, m.l - 6, m.t + (r + 0.5) * ch));
    const every = Math.max(1, Math.ceil(columns.length / Math.max(1, Math.floor(pw / 22))));
    ctx.save();
    ctx.textAlign = 'right';
    columns.forEach((label, k) => {
      if (k % every) return;
      ctx.save(); ctx.translate(m.l + (k + 0.5) * cw, m.t + ph + 6); ctx.rotate(-Math.PI / 4); ctx.fillText(label, 0, 0); ctx.restore();
    });
    ctx.restore();
    // colour bar
    const x = width - m.r + 16, w = 10;
    colors.forEach((col, k) => { ctx.fillStyle = col; ctx.fillRect(x, m.t + ph - ((k + 1) / 64) * ph, w, ph / 64 + 0.5); });
    ctx.strokeStyle = AXIS; ctx.strokeRect(x + 0.5, m.t + 0.5, w, ph);
    ctx.fillStyle = INK; ctx.textAlign = 'left';
    const f = this.options.format || defaultFormat;
    for (const v of ticks(min, max, 4)) ctx.fillText(f(v), x + w + 4, m.t + ph - ((v - min) / (max - min || 1)) * ph);
    if (this.options.label) {
      ctx.save(); ctx.translate(width - 8, m.t + ph / 2); ctx.rotate(-Math.PI / 2); ctx.textAlign = 'center'; ctx.font = TITLE_FONT; ctx.fillText(this.options.label, 0, 0); ctx.restore();
    }
    this.frame = { m, pw, ph, cw, ch, width };
  }

  cellAt(e) {
    if (!this.frame) return null;
    const rect = this.canvas.getBoundingClientRect();
    const px = e.clientX - rect.left, py = e.clientY - rect.top;
    const { m, pw, ph, cw, ch } = this.frame;
    if (px < m.l || px >= m.l + pw || py < m.t || py >= m.t + ph) return null;
    return { r: Math.floor((py - m.t) / ch), c: Math.floor((px - m.l) / cw), px, py };
  }

  hover(e) {
    const hit = this.cellAt(e);
    this.canvas.style.cursor = hit ? 'pointer' : 'default';
    if (!hit || !this.data.tip) { this.tip.hidden = true; return; }
    this.tip.replaceChildren(...this.data.tip(hit.r, hit.c).map((line, k) => {
      const div = document.createElement('div');
      div.textContent = line;
      if (k === 0) div.className = 'tip-head';
      return div;
    }));
    this.tip.hidden = false;
    const left = hit.px + 14 + this.tip.offsetWidth > this.frame.width ? hit.px - 14 - this.tip.offsetWidth : hit.px + 14;
    this.tip.style.left = `${left}px`;
    this.tip.style.top = `${Math.max(0, hit.py - this.tip.offsetHeight / 2)}px`;
  }
}

/** Indices of the points not beaten on both axes: larger y better, x better when `xMinimize`. */
export function paretoIndices(xs, ys, xMinimize = true) {
  const idx = [];
  for (let i = 0; i < xs.length; i++) if (Number.isFinite(xs[i]) && Number.isFinite(ys[i])) idx.push(i);
  const sign = xMinimize ? 1 : -1;
  idx.sort((a, b) => sign * (xs[a] - xs[b]) || ys[b] - ys[a]);
  const front = [];
  let best = -Infinity;
  for (const i of idx) {
    if (ys[i] > best) { front.push(i); best = ys[i]; }
  }
  return front;
}
