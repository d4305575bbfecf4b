// A form generated from the catalog's JSON Schemas (the JobSpec schema, and each plug-in's
// params schema), with a small JSON Schema validator for the subset pydantic emits. The API
// validates again; its 422 errors are placed beside the field their `loc` names.

import { clear, h, metricLabel } from './ui.js';

// JobSpec properties that name a registered plug-in, and the catalog list of each.
const PLUGIN_LISTS = {
  search_space: 'search_spaces', strategy: 'strategies', dataset: 'datasets', sparsifier: 'sparsifiers',
  early_stopping: 'early_stopping',
};

const SECTION_TITLES = {
  search_space: 'Search space', strategy: 'Strategy', dataset: 'Dataset', sparsifier: 'Sparsifier', training: 'Training',
  objectives: 'Objectives', constraints: 'Constraints', budget: 'Budget', early_stopping: 'Early stopping',
};

const SECTION_HELP = {
  search_space: 'the family of architectures to search', strategy: 'how the next architecture is chosen',
  dataset: 'what every trial trains and tests on', sparsifier: 'how weights are pruned while a trial trains',
  training: 'optimiser and schedule of every trial', objectives: 'what the search optimises; the first is the primary one',
  constraints: 'limits an architecture must meet; checked before it trains', budget: 'how many trials, how many at once, for how long',
};

export const locKey = (loc) => loc.join('.');

export function resolve(schema, root) {
  let s = schema;
  for (let guard = 0; s && s.$ref && guard < 20; guard++) {
    const name = s.$ref.replace('#/$defs/', '');
    const { $ref, ...rest } = s;
    s = { ...root.$defs?.[name], ...rest };
  }
  return s || {};
}

/** The non-null alternative of `anyOf: [X, {type: null}]`, and whether null is allowed. */
function unwrapNullable(schema, root) {
  const s = resolve(schema, root);
  if (Array.isArray(s.anyOf)) {
    const others = s.anyOf.filter((a) => resolve(a, root).type !== 'null');
    if (others.length === 1 && others.length < s.anyOf.length) {
      const { anyOf, ...rest } = s;
      return { schema: { ...resolve(others[0], root), ...rest }, nullable: true };
    }
  }
  return { schema: s, nullable: false };
}

const TYPE_CHECKS = {
  null: (v) => v === null,
  integer: (v) => Number.isInteger(v),
  number: (v) => typeof v === 'number' && Number.isFinite(v),
  string: (v) => typeof v === 'string',
  boolean: (v) => typeof v === 'boolean',
  array: (v) => Array.isArray(v),
  object: (v) => v !== null && typeof v === 'object' && !Array.isArray(v),
};
const TYPE_NAMES = { integer: 'a whole number', number: 'a number', string: 'text', boolean: 'true or false', array: 'a list', object: 'a mapping', null: 'empty' };

/** Errors of `value` against `schema`: [{loc, msg}] with pydantic-like messages. */
export function validate(schema, value, root, loc = [], out = []) {
  const s = resolve(schema, root);
  if (value === undefined) return out;
  const tag = s.discriminator?.propertyName;
  if (Array.isArray(s.oneOf) && tag && TYPE_CHECKS.object(value)) {
    const ref = s.discriminator.mapping?.[value[tag]];
    if (!ref) out.push({ loc: [...loc, tag], msg: `must be one of: ${Object.keys(s.discriminator.mapping || {}).join(', ')}` });
    else validate({ $ref: ref }, value, root, loc, out);
    return out;
  }
  const alternatives = s.anyOf || s.oneOf;
  if (Array.isArray(alternatives)) {
    const attempts = alternatives.map((alt) => validate(alt, value, root, loc, []));
    if (!attempts.some((e) => e.length === 0)) {
      const useful = attempts.filter((e, i) => !(resolve(alternatives[i], root).type === 'null' && value !== null));
      out.push(...(useful.sort((a, b) => a.length - b.length)[0] || attempts[0]));
    }
    return out;
  }
  const types = Array.isArray(s.type) ? s.type : s.type ? [s.type] : [];
  if (types.length && !types.some((t) => TYPE_CHECKS[t]?.(value))) {
    out.push({ loc, msg: `must be ${types.map((t) => TYPE_NAMES[t] || t).join(' or ')}` });
    return out;
  }
  if (s.enum && !s.enum.some((e) => e === value)) out.push({ loc, msg: `must be one of: ${s.enum.join(', ')}` });
  if (s.const !== undefined && s.const !== value) out.push({ loc, msg: `must be ${s.const}` });
  if (typeof value === 'number') {
    if (s.minimum !== undefined && value < s.minimum) out.push({ loc, msg: `must be ≥ ${s.minimum}` });
    if (s.maximum !== undefined && value > s.maximum) out.push({ loc, msg: `must be ≤ ${s.maximum}` });
    if (s.exclusiveMinimum !== undefined && value <= s.exclusiveMinimum) out.push({ loc, msg: `must be > ${s.exclusiveMinimum}` });
    if (s.exclusiveMaximum !== undefined && value >= s.exclusiveMaximum) out.push({ loc, msg: `must be < ${s.exclusiveMaximum}` });
  }
  if (typeof value === 'string') {
    if (s.minLength !== undefined && value.length < s.minLength) out.push({ loc, msg: s.minLength === 1 ? 'must not be empty' : `needs at least ${s.minLength} characters` });
    if (s.maxLength !== undefined && value.length > s.maxLength) out.push({ loc, msg: `at most ${s.maxLength} characters` });
    if (s.pattern && !new RegExp(s.pattern, 'u').test(value)) out.push({ loc, msg: `must match ${s.pattern}` });
  }
  if (Array.isArray(value)) {
    if (s.minItems !== undefined && value.length < s.minItems) out.push({ loc, msg: `needs at least ${s.minItems} item${s.minItems > 1 ? 's' : ''}` });
    if (s.maxItems !== undefined && value.length > s.maxItems) out.push({ loc, msg: `at most ${s.maxItems} items` });
    if (s.items) value.forEach((item, i) => validate(s.items, item, root, [...loc, i], out));
  }
  if (TYPE_CHECKS.object(value) && (s.properties || s.required)) {
    for (const name of s.required || []) if (value[name] === undefined) out.push({ loc: [...loc, name], msg: 'required' });
    for (const [name, sub] of Object.entries(s.properties || {})) validate(sub, value[name], root, [...loc, name], out);
    if (s.additionalProperties === false) {
      for (const name of Object.keys(value)) if (!(name in (s.properties || {}))) out.push({ loc: [...loc, name], msg: 'unknown field' });
    }
  }
  return out;
}

const title = (name, schema) => schema.title || name.replaceAll('_', ' ').replace(/^./, (c) => c.toUpperCase());

/**
 * The form for a JobSpec; `value()` reads it, `setValue(spec)` fills it, `showErrors(errors)` marks it.
 * `choices` offers a menu for a field the schema only types, keyed by its loc
 * (`{'dataset.params.id': {label, options: [{value, label}], empty}}`; `empty` shows when there are none).
 */
export class SpecForm {
  /** `agentTargets`: the caller's agent targets (GET /targets), offered beside the server's own. */
  constructor(catalog, { choices = {}, agentTargets = [] } = {}) {
    this.catalog = catalog;
    this.choices = choices;
    this.agentTargets = agentTargets;
    this.root = catalog.job_spec_schema;
    this.errorSlots = new Map();
    this.parts = {};
    this.onChange = () => {};
    this.el = h('div', { class: 'spec-form', oninput: () => this.onChange(), onchange: () => this.onChange() });
    this.build();
  }

  slot(loc) {
    const el = h('div', { class: 'field-error', dataset: { loc: locKey(loc) } });
    this.errorSlots.set(locKey(loc), el);
    return el;
  }

  build() {
    const props = this.root.properties;
    const basics = ['name', 'seed', 'target'].filter((p) => props[p]);
    const basicsBox = h('div', { class: 'field-grid' });
    for (const name of basics) {
      const w = name === 'target' ? this.targetWidget() : this.widget(props[name], [name], name);
      this.parts[name] = w;
      basicsBox.append(w.el);
    }
    this.el.append(this.section('Basics', basicsBox, 'name, seed and hardware target'));
    for (const [name, schema] of Object.entries(props)) {
      if (basics.includes(name)) continue;
      let w;
      if (PLUGIN_LISTS[name]) w = this.catalog[PLUGIN_LISTS[name]] ? this.pluginWidget(name, schema) : this.freePluginWidget(name, schema);
      else if (name === 'objectives') w = this.objectivesWidget(schema);
      else w = this.widget(schema, [name], name, { bare: true });
      this.parts[name] = w;
      const s = unwrapNullable(schema, this.root).schema;
      const heading = SECTION_TITLES[name] || name.replaceAll('_', ' ').replace(/^./, (c) => c.toUpperCase());
      this.el.append(this.section(heading, w.el, this.root.properties[name].description || SECTION_HELP[name] || s.description));
    }
  }

  section(name, body, description) {
    return h('fieldset', { class: 'card form-section' }, h('legend', {}, name), description ? h('p', { class: 'muted small' }, description) : null, body);
  }

  /** A widget for one schema at `loc`: {el, get, set}. */
  widget(schema, loc, name, { required = false, bare = false, root = this.root } = {}) {
    const { schema: s, nullable } = unwrapNullable(schema, root);
    const id = `f-${locKey(loc).replaceAll('.', '-')}`;
    const label = h('label', { for: id }, title(name, s), nullable ? h('span', { class: 'muted small' }, ' (optional)') : null);
    const help = s.description ? h('div', { class: 'help' }, s.description) : null;
    const wrap = (control) => h('div', { class: 'field', dataset: { loc: locKey(loc) } }, label, control, help, this.slot(loc));
    const type = Array.isArray(s.type) ? s.type[0] : s.type;

    const choice = this.choices[locKey(loc)];
    if (choice) return this.choiceWidget(choice, id, loc);
    if (type === 'object' && s.properties) {
      const subs = Object.entries(s.properties).map(([k, sub]) => [k, this.widget(sub, [...loc, k], k, { required: (s.required || []).includes(k), root })]);
      const el = h('div', { class: 'field-grid' }, subs.map(([, w]) => w.el));
      const box = bare ? h('div', {}, el, this.slot(loc)) : h('div', { class: 'field field-object' }, label, help, el, this.slot(loc));
      return {
        el: box,
        get: () => {
          const out = {};
          for (const [k, w] of subs) { const v = w.get(); if (v !== undefined) out[k] = v; }
          return out;
        },
        set: (v) => { for (const [k, w] of subs) w.set(v?.[k]); },
      };
    }
    if (s.enum) {
      const select = h('select', { id, name: locKey(loc) },
        nullable || !required ? h('option', { value: '' }, s.default === undefined || s.default === null ? '—' : `default (${s.default})`) : null,
        s.enum.map((e) => h('option', { value: String(e) }, String(e))));
      const set = (v) => { select.value = v === undefined || v === null ? (s.default ?? '') : String(v); };
      set(s.default);
      return { el: wrap(select), get: () => (select.value === '' ? undefined : s.enum.find((e) => String(e) === select.value)), set };
    }
    if (type === 'boolean') {
      const box = h('input', { id, type: 'checkbox', name: locKey(loc) });
      const set = (v) => { box.checked = v ?? s.default ?? false; };
      set();
      return { el: h('div', { class: 'field field-check', dataset: { loc: locKey(loc) } }, h('label', {}, box, ' ', title(name, s)), help, this.slot(loc)), get: () => box.checked, set };
    }
    if (type === 'integer' || type === 'number') {
      const input = h('input', {
        id, name: locKey(loc), type: 'number', step: type === 'integer' ? '1' : 'any', inputmode: type === 'integer' ? 'numeric' : 'decimal',
        min: s.minimum, max: s.maximum, placeholder: s.default === null || s.default === undefined ? (nullable ? 'none' : '') : String(s.default),
      });
      const set = (v) => { input.value = v === undefined || v === null ? (s.default ?? '') : String(v); };
      set();
      return {
        el: wrap(input),
        get: () => {
          if (input.value.trim() === '') return input.validity.badInput ? input.value : undefined;
          const n = Number(input.value);
          return Number.isNaN(n) ? input.value : n;
        },
        set,
      };
    }
    if (type === 'array') {
      const items = resolve(s.items || {}, root);
      if (items.properties || items.discriminator) return this.listWidget(s, items, loc, name, label, help, root);
      if (items.enum) {
        const boxes = items.enum.map((e) => h('input', { type: 'checkbox', value: String(e), name: locKey(loc) }));
        const set = (v) => { const on = (v ?? s.default ?? []).map(String); boxes.forEach((b) => { b.checked = on.includes(b.value); }); };
        set();
        const group = h('div', { class: 'checks', id }, boxes.map((b) => h('label', { class: 'check' }, b, ` ${b.value}`)));
        return { el: wrap(group), get: () => boxes.filter((b) => b.checked).map((b) => items.enum.find((e) => String(e) === b.value)), set };
      }
      if (['integer', 'number', 'string'].includes(items.type)) {
        const input = h('input', { id, name: locKey(loc), type: 'text', placeholder: nullable ? 'none (comma-separated list)' : 'comma-separated' });
        const set = (v) => { const x = v ?? s.default; input.value = Array.isArray(x) ? x.join(', ') : ''; };
        set();
        return {
          el: wrap(input),
          get: () => {
            const text = input.value.trim();
            if (!text) return nullable ? undefined : [];
            return text.split(',').map((t) => t.trim()).filter(Boolean).map((t) => (items.type === 'string' ? t : Number.isNaN(Number(t)) ? t : Number(t)));
          },
          set,
        };
      }
    }
    if (type === 'string') {
      const input = h('input', { id, name: locKey(loc), type: 'text', maxlength: s.maxLength, placeholder: s.default ?? '' });
      const set = (v) => { input.value = v ?? s.default ?? ''; };
      set();
      return { el: wrap(input), get: () => (input.value === '' && (nullable || s.default !== undefined) ? undefined : input.value), set };
    }
    // anything else (free-form mappings, nested lists): JSON
    const area = h('textarea', { id, name: locKey(loc), rows: 3, class: 'mono', placeholder: 'JSON' });
    const set = (v) => { const x = v ?? s.default; area.value = x === undefined || x === null ? '' : JSON.stringify(x); };
    set();
    return {
      el: wrap(area),
      get: () => {
        if (!area.value.trim()) return undefined;
        try { return JSON.parse(area.value); } catch { return { __invalid_json__: area.value }; }
      },
      set,
    };
  }

  /**
   * A list of objects with add, remove and reorder; an item of tagged alternatives (pydantic's
   * discriminated union, such as a declarative space's blocks) gets a menu of its tag that
   * rebuilds its fields. Items are redrawn from their values after every move, so each field's
   * loc (and the API's error beside it) follows its item's place in the list.
   */
  listWidget(s, items, loc, name, label, help, root) {
    const tag = items.discriminator?.propertyName;
    const kinds = tag ? Object.keys(items.discriminator.mapping) : [];
    const itemSchema = (value) => resolve(tag ? { $ref: items.discriminator.mapping[value?.[tag]] || items.discriminator.mapping[kinds[0]] } : items, root);
    const noun = (title(name, s).replace(/s$/, '') || 'item').toLowerCase();
    const rows = h('div', { class: 'list-items' });
    let entries = [];
    const values = () => entries.map((e) => e.get());
    const draw = (list) => {
      for (const key of [...this.errorSlots.keys()]) if (key.startsWith(`${locKey(loc)}.`)) this.errorSlots.delete(key);
      clear(rows);
      entries = list.map((value, i) => {
        const schema = itemSchema(value);
        const kind = tag ? (value?.[tag] ?? kinds[0]) : null;
        const fields = Object.entries(schema.properties || {}).filter(([k]) => k !== tag)
          .map(([k, sub]) => [k, this.widget(sub, [...loc, i, k], k, { required: (schema.required || []).includes(k), root })]);
        fields.forEach(([k, w]) => w.set(value?.[k]));
        const move = (to) => { const list2 = values(); const [item] = list2.splice(i, 1); list2.splice(to, 0, item); draw(list2); this.onChange(); };
        const select = tag ? h('select', { id: `f-${[...loc, i, tag].join('-')}`, name: locKey([...loc, i, tag]), 'aria-label': `${noun} ${i + 1} ${tag}`,
          onchange: (event) => { const list2 = values(); list2[i] = { [tag]: event.target.value }; draw(list2); this.onChange(); } },
          kinds.map((k) => h('option', { value: k }, resolve({ $ref: items.discriminator.mapping[k] }, root).title || k))) : null;
        if (select) select.value = kind;
        const button = (text, what, onclick, disabled = false) => h('button', { type: 'button', class: 'btn btn-ghost btn-sm', title: what, 'aria-label': `${what} ${noun} ${i + 1}`, onclick, disabled }, text);
        rows.append(h('div', { class: 'card list-item', dataset: { loc: locKey([...loc, i]) } },
          h('div', { class: 'row' }, h('strong', {}, `${noun[0].toUpperCase()}${noun.slice(1)} ${i + 1}`), select,
            button('↑', 'Move up', () => move(i - 1), i === 0), button('↓', 'Move down', () => move(i + 1), i === list.length - 1),
            button('✕', 'Remove', () => { const list2 = values(); list2.splice(i, 1); draw(list2); this.onChange(); })),
          schema.description ? h('div', { class: 'help' }, schema.description) : null,
          tag ? this.slot([...loc, i, tag]) : null,
          h('div', { class: 'field-grid' }, fields.map(([, w]) => w.el)), this.slot([...loc, i])));
        return { get: () => { const out = tag ? { [tag]: select.value } : {}; for (const [k, w] of fields) { const v = w.get(); if (v !== undefined) out[k] = v; } return out; } };
      });
    };
    const add = h('button', { type: 'button', class: 'btn btn-sm', 'aria-label': `Add ${noun}`,
      onclick: () => { if (entries.length < (s.maxItems ?? Infinity)) { draw([...values(), tag ? { [tag]: kinds[0] } : {}]); this.onChange(); } } }, `+ Add ${noun}`);
    draw(s.default ?? []);
    return {
      el: h('div', { class: 'field field-list', dataset: { loc: locKey(loc) } }, label, help, rows, add, this.slot(loc)),
      get: values,
      set: (v) => draw(v ?? s.default ?? []),
    };
  }

  /** A menu of the values `choice` offers; a value it does not list is kept, so the API names the problem. */
  choiceWidget(choice, id, loc) {
    const select = h('select', { id, name: locKey(loc) },
      h('option', { value: '' }, choice.options.length ? '— choose —' : 'none yet'),
      choice.options.map((o) => h('option', { value: o.value }, o.label)));
    const set = (v) => {
      if (v && !choice.options.some((o) => o.value === v)) select.append(h('option', { value: v }, `${v} (unknown)`));
      select.value = v ?? (choice.options.length === 1 ? choice.options[0].value : '');
    };
    set();
    return {
      el: h('div', { class: 'field field-choice', dataset: { loc: locKey(loc) } }, h('label', { for: id }, choice.label), select,
        choice.options.length ? null : h('div', { class: 'help' }, choice.empty), this.slot(loc)),
      get: () => (select.value === '' ? undefined : select.value),
      set,
    };
  }

  targetWidget() {
    const agents = this.agentTargets.map((t) => ({
      name: t.name,
      device: `agent target: ${t.online_agents} of ${t.agents.length} agents online`,
      description: t.runtimes.length ? `runtimes ${t.runtimes.join(', ')}` : t.description,
    }));
    const targets = [...this.catalog.targets, ...agents];
    const select = h('select', { id: 'f-target', name: 'target' }, targets.map((t) => h('option', { value: t.name }, t.name)));
    const help = h('div', { class: 'help' });
    const describe = () => {
      const t = targets.find((x) => x.name === select.value);
      help.textContent = t ? [t.device, t.description].filter(Boolean).join(' — ') : 'hardware the latency is predicted and measured on';
    };
    select.addEventListener('change', describe);
    describe();
    return {
      el: h('div', { class: 'field', dataset: { loc: 'target' } }, h('label', { for: 'f-target' }, 'Target'), select, help, this.slot(['target'])),
      get: () => select.value,
      set: (v) => { select.value = v ?? targets[0]?.name; describe(); },
    };
  }

  pluginWidget(name, schema) {
    const entries = this.catalog[PLUGIN_LISTS[name]];
    const { nullable } = unwrapNullable(schema, this.root);
    const id = `f-${name}-name`;
    const select = h('select', { id, name: `${name}.name` },
      nullable ? h('option', { value: '' }, 'none') : null,
      entries.map((e) => h('option', { value: e.name }, e.name)));
    const description = h('div', { class: 'help' });
    const paramsBox = h('div', { class: 'plugin-params' });
    let params = null;
    const rebuild = (values) => {
      const entry = entries.find((e) => e.name === select.value);
      description.textContent = entry?.description || '';
      params = null;
      clear(paramsBox);
      if (!entry) return;
      const props = entry.params_schema?.properties || {};
      if (!Object.keys(props).length) { paramsBox.append(h('div', { class: 'muted small' }, 'No parameters.')); return; }
      params = this.widget(entry.params_schema, [name, 'params'], 'params', { bare: true, root: entry.params_schema });
      paramsBox.append(params.el);
      if (values) params.set(values);
    };
    select.addEventListener('change', () => rebuild(null));
    const defaults = { search_space: 'sparse_mlp', strategy: 'random', dataset: 'digits', sparsifier: 'magnitude' };
    select.value = nullable ? '' : (entries.some((e) => e.name === defaults[name]) ? defaults[name] : entries[0]?.name);
    rebuild(null);
    return {
      el: h('div', {},
        h('div', { class: 'field', dataset: { loc: name } }, h('label', { for: id }, 'Name'), select, description, this.slot([name, 'name']), this.slot([name])),
        paramsBox, this.slot([name, 'params'])),
      get: () => (select.value === '' ? undefined : { name: select.value, params: params ? params.get() : {} }),
      set: (v) => {
        select.value = v?.name ?? (nullable ? '' : select.value);
        if (v?.name && select.value !== v.name) { // a name the catalog does not list: keep it so the API names the problem
          select.append(h('option', { value: v.name }, `${v.name} (unknown)`));
          select.value = v.name;
        }
        rebuild(v?.params || {});
      },
      schemaFor: () => entries.find((e) => e.name === select.value)?.params_schema,
    };
  }

  /** A plug-in the catalog does not list: its name as text, its params as JSON; the API checks both. */
  freePluginWidget(name, schema) {
    const { nullable } = unwrapNullable(schema, this.root);
    const id = `f-${name}-name`;
    const input = h('input', { id, name: `${name}.name`, type: 'text', placeholder: nullable ? 'none' : '' });
    const params = h('textarea', { id: `f-${name}-params`, name: `${name}.params`, rows: 2, class: 'mono', placeholder: '{} (JSON)' });
    return {
      el: h('div', { class: 'field-grid' },
        h('div', { class: 'field', dataset: { loc: name } }, h('label', { for: id }, 'Name'), input, this.slot([name, 'name']), this.slot([name])),
        h('div', { class: 'field' }, h('label', { for: `f-${name}-params` }, 'Params'), params, this.slot([name, 'params']))),
      get: () => {
        const value = input.value.trim();
        if (!value) return nullable ? undefined : '';
        if (!params.value.trim()) return { name: value, params: {} };
        try { return { name: value, params: JSON.parse(params.value) }; } catch { return { name: value, params: { __invalid_json__: params.value } }; }
      },
      set: (v) => { input.value = v?.name ?? ''; params.value = v?.params && Object.keys(v.params).length ? JSON.stringify(v.params) : ''; },
    };
  }

  objectivesWidget(schema) {
    const s = resolve(schema, this.root);
    const metrics = this.catalog.metrics.filter((m) => m.objective).map((m) => m.name);
    const rows = h('div', { class: 'objective-rows' });
    let items = [];
    const add = (value = { metric: 'accuracy', direction: 'maximize' }) => {
      const i = items.length;
      const metric = h('select', { name: `objectives.${i}.metric`, 'aria-label': `objective ${i + 1} metric` }, metrics.map((m) => h('option', { value: m, title: this.catalog.metrics.find((x) => x.name === m)?.description }, metricLabel(m))));
      const direction = h('select', { name: `objectives.${i}.direction`, 'aria-label': `objective ${i + 1} direction` }, ['maximize', 'minimize'].map((d) => h('option', { value: d }, d)));
      metric.value = value.metric;
      direction.value = value.direction;
      const row = h('div', { class: 'objective-row', dataset: { loc: `objectives.${i}` } }, metric, direction,
        h('button', { type: 'button', class: 'btn btn-ghost btn-sm', title: 'Remove', onclick: () => { items = items.filter((x) => x.row !== row); row.remove(); this.onChange(); } }, '✕'),
        this.slot(['objectives', i, 'metric']), this.slot(['objectives', i, 'direction']), this.slot(['objectives', i]));
      items.push({ row, metric, direction });
      rows.append(row);
    };
    const set = (v) => { items = []; clear(rows); (v ?? [{ metric: 'accuracy', direction: 'maximize' }, { metric: 'latency_ms', direction: 'minimize' }]).forEach(add); };
    set();
    return {
      el: h('div', {}, rows,
        h('button', { type: 'button', class: 'btn btn-sm', onclick: () => { if (items.length < (s.maxItems || 4)) { add({ metric: 'sparsity', direction: 'maximize' }); this.onChange(); } } }, '+ Objective'),
        this.slot(['objectives'])),
      get: () => items.map((x) => ({ metric: x.metric.value, direction: x.direction.value })),
      set,
    };
  }

  value() {
    const spec = {};
    for (const [name, w] of Object.entries(this.parts)) {
      const v = w.get();
      if (v !== undefined) spec[name] = v;
    }
    return spec;
  }

  setValue(spec) {
    for (const [name, w] of Object.entries(this.parts)) w.set(spec?.[name]);
  }

  /** Errors of the current value in the browser, against the JobSpec and the chosen plug-ins' params schemas. */
  validate() {
    const spec = this.value();
    const errors = validate(this.root, spec, this.root);
    for (const name of Object.keys(PLUGIN_LISTS)) {
      const part = this.parts[name];
      const schema = part?.schemaFor?.();
      if (schema && spec[name]) validate(schema, spec[name].params || {}, schema, [name, 'params'], errors);
    }
    for (const [key, w] of Object.entries(this.parts)) {
      const v = w.get();
      if (v && typeof v === 'object' && JSON.stringify(v).includes('__invalid_json__')) errors.push({ loc: [key], msg: 'not valid JSON' });
    }
    return errors;
  }

  clearErrors() {
    for (const slot of this.errorSlots.values()) { slot.textContent = ''; slot.closest('.field, .objective-row')?.classList.remove('has-error'); }
  }

  /** Put each error beside the deepest field its loc names; returns those that matched no field. */
  showErrors(errors) {
    const unmatched = [];
    for (const error of errors) {
      const loc = (error.loc || []).filter((p, i) => !(i === 0 && p === 'body'));
      let slot = null;
      for (let n = loc.length; n > 0 && !slot; n--) slot = this.errorSlots.get(locKey(loc.slice(0, n)));
      if (!slot) { unmatched.push({ ...error, loc }); continue; }
      const more = loc.length > 0 && slot.dataset.loc !== locKey(loc) ? `${loc.slice(slot.dataset.loc.split('.').length).join('.')}: ` : '';
      slot.textContent = slot.textContent ? `${slot.textContent}; ${more}${error.msg}` : `${more}${error.msg}`;
      slot.closest('.field, .objective-row')?.classList.add('has-error');
    }
    return unmatched;
  }
}
