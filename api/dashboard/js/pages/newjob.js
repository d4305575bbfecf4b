// New job: a form generated from GET /catalog, and a box for a YAML (or JSON) spec.

import { api } from '../api.js';
import { SpecForm } from '../schemaform.js';
import { clear, debounce, errorBox, h, toast } from '../ui.js';
import { allDatasets, describe } from './datasets.js';

const EXAMPLE = `name: lenet-tickets
search_space: {name: sparse_mlp, params: {max_depth: 2}}
strategy: {name: random}
dataset: {name: digits}
sparsifier: {name: magnitude, params: {sparsity: 0.9}}
training: {epochs: 3, batch_size: 64, lr: 0.003}
objectives:
  - {metric: accuracy, direction: maximize}
  - {metric: latency_ms, direction: minimize}
budget: {max_trials: 8, max_concurrent: 2}
`;

/** The user's datasets as the menu of the `upload` dataset's id. */
function datasetChoice(datasets) {
  return {
    label: 'Dataset',
    options: datasets.map((d) => ({ value: d.id, label: describe(d) })),
    empty: h('span', {}, 'You have no datasets yet: ', h('a', { href: '#/datasets/upload' }, 'upload one'), '.'),
  };
}

/** `datasetId` (from `#/new?dataset=ID`) starts the form on that dataset; `fromJob` (from
 * `#/new?from=JOB`, the job page's Clone) fills it with that job's stored spec, to edit and submit. */
export async function render(view, datasetId, fromJob) {
  let catalog, datasets, source, targets;
  try {
    [catalog, datasets, source, targets] = await Promise.all([
      api.get('/catalog'), allDatasets(), fromJob ? api.get(`/jobs/${fromJob}`) : null, api.get('/targets')]);
  } catch (error) {
    if (error.status !== 401) view.append(errorBox(error));
    return null;
  }
  const agentTargets = targets.items.filter((t) => t.kind === 'agent');
  const form = new SpecForm(catalog, { choices: { 'dataset.params.id': datasetChoice(datasets) }, agentTargets });
  if (datasetId) form.parts.dataset.set({ name: 'upload', params: { id: datasetId } });
  if (source) form.setValue(source.spec);
  const summary = h('div', { class: 'alert alert-error', id: 'form-errors', hidden: true });
  const preview = h('pre', { class: 'code preview', id: 'spec-preview' });
  const submit = h('button', { class: 'btn btn-primary btn-lg', type: 'submit', id: 'submit-job' }, 'Submit job');
  const yamlBox = h('textarea', { id: 'yaml', class: 'mono', rows: 14, spellcheck: 'false', placeholder: EXAMPLE, 'aria-label': 'Job spec as YAML or JSON' });
  const yamlErrors = h('div', { class: 'field-error', id: 'yaml-errors' });

  const showPreview = debounce(() => { preview.textContent = JSON.stringify(form.value(), null, 2); }, 150);
  form.onChange = showPreview;
  showPreview();

  function report(errors, title) {
    const unmatched = form.showErrors(errors);
    summary.hidden = false;
    clear(summary,
      h('strong', {}, title),
      unmatched.length ? h('ul', {}, unmatched.map((e) => h('li', {}, h('code', {}, (e.loc || []).join('.') || 'spec'), ` ${e.msg}`))) : h('div', {}, 'See the marked fields.'));
    const first = form.el.querySelector('.has-error');
    (first || summary).scrollIntoView({ behavior: 'smooth', block: 'center' });
  }

  async function send(spec) {
    form.clearErrors();
    summary.hidden = true;
    submit.disabled = true;
    try {
      const job = await api.post('/jobs', spec);
      toast(`Job "${job.name}" submitted`, 'success');
      location.hash = `#/jobs/${job.id}`;
    } catch (error) {
      if (error.status === 422 && Array.isArray(error.detail)) report(error.detail, 'The server refused the spec:');
      else if (error.status !== 401) { summary.hidden = false; clear(summary, `${error.status ?? ''} ${error.detail ?? error.message}`); }
      return error;
    } finally {
      submit.disabled = false;
    }
    return null;
  }

  async function onSubmit(event) {
    event.preventDefault();
    form.clearErrors();
    const errors = form.validate();
    if (errors.length) { report(errors, 'Please fix the marked fields:'); return; }
    await send(form.value());
  }

  async function parseYaml() {
    clear(yamlErrors);
    const text = yamlBox.value.trim();
    if (!text) { yamlErrors.textContent = 'Paste a spec first.'; return null; }
    try {
      return (await api.post('/specs/parse', { yaml: text })).spec;
    } catch (error) {
      if (error.status !== 401) yamlErrors.textContent = Array.isArray(error.detail) ? error.detail.map((d) => d.msg).join('; ') : error.detail;
      return null;
    }
  }

  view.append(
    h('div', { class: 'page-head' },
      h('div', {}, h('div', { class: 'crumbs' }, h('a', { href: '#/jobs' }, 'Jobs'), ' / New job'), h('h1', {}, 'New job'),
        source
          ? h('p', { class: 'muted', id: 'clone-source' }, 'A clone of job ', h('a', { href: `#/jobs/${source.id}` }, source.name),
            ': its spec fills the form; edit it and submit a new job (the original is left as it is).')
          : h('p', { class: 'muted' }, 'Fields and choices come from the server\'s catalog; values are checked here and again by the API.'))),
    h('div', { class: 'new-job' },
      h('form', { class: 'new-job-form', onsubmit: onSubmit, novalidate: true }, summary, form.el,
        h('div', { class: 'form-actions' }, submit, h('a', { class: 'btn btn-ghost', href: '#/jobs' }, 'Cancel'))),
      h('aside', { class: 'new-job-side' },
        h('section', { class: 'card' },
          h('div', { class: 'card-head' }, h('h2', {}, 'Paste YAML or JSON')),
          h('div', { class: 'card-body' },
            h('p', { class: 'muted small' }, 'The same spec ', h('code', {}, 'nas submit spec.yaml'), ' takes.'),
            yamlBox, yamlErrors,
            h('div', { class: 'row' },
              h('button', { class: 'btn', type: 'button', id: 'yaml-fill', onclick: async () => { const spec = await parseYaml(); if (spec) { form.setValue(spec); showPreview(); toast('Form filled from the spec'); } } }, 'Fill the form'),
              h('button', { class: 'btn btn-primary', type: 'button', id: 'yaml-submit', onclick: async () => { const spec = await parseYaml(); if (spec) { form.setValue(spec); showPreview(); const err = await send(spec); if (err?.status === 422) yamlErrors.textContent = 'The server refused the spec; see the marked fields.'; } } }, 'Submit as is')))),
        h('section', { class: 'card' },
          h('div', { class: 'card-head' }, h('h2', {}, 'Spec preview')),
          h('div', { class: 'card-body' }, preview)))));
  return () => showPreview.cancel();
}
