// Upload a dataset: a file (or a path under the server's data roots) and the options its format
// takes, sent as multipart/form-data with the upload's progress shown.

import { upload } from '../api.js';
import { clear, fmt, h, toast } from '../ui.js';
import { formatName } from './datasets.js';

// The server tells formats apart by extension the same way; knowing it here shows the options that
// apply and spares sending a file it would refuse.
const EXTENSIONS = [['.tar.gz', 'images'], ['.tgz', 'images'], ['.tar', 'images'], ['.zip', 'images'],
  ['.npz', 'npz'], ['.csv', 'csv'], ['.parquet', 'parquet'], ['.pq', 'parquet']];
const ACCEPT = EXTENSIONS.map(([ext]) => ext).join(',');

export function detectFormat(filename) {
  const lower = filename.toLowerCase();
  return EXTENSIONS.find(([ext]) => lower.endsWith(ext))?.[1] ?? null;
}

const FIELDS = ['file', 'path', 'name', 'label_column', 'image_size', 'color', 'test_fraction', 'split_seed'];

export async function render(view) {
  const slots = Object.fromEntries(FIELDS.map((f) => [f, h('div', { class: 'field-error', dataset: { loc: f } })]));
  const field = (name, label, control, help = null) =>
    h('div', { class: 'field', dataset: { loc: name } }, h('label', { for: `dataset-${name}` }, label), control, help ? h('div', { class: 'help' }, help) : null, slots[name]);

  const fromFile = h('input', { type: 'radio', name: 'source', value: 'file', id: 'source-file', checked: true });
  const fromPath = h('input', { type: 'radio', name: 'source', value: 'path', id: 'source-path' });
  const file = h('input', { type: 'file', id: 'dataset-file', name: 'file', accept: ACCEPT });
  const path = h('input', { type: 'text', id: 'dataset-path', name: 'path', placeholder: '/data/my-set.parquet or file:///data/images.zip', spellcheck: 'false' });
  const name = h('input', { type: 'text', id: 'dataset-name', name: 'name', maxlength: 200, placeholder: 'the file name' });
  const labelColumn = h('input', { type: 'text', id: 'dataset-label_column', name: 'label_column', placeholder: 'label', spellcheck: 'false' });
  const imageSize = h('input', { type: 'number', id: 'dataset-image_size', name: 'image_size', min: 1, max: 1024, step: 1, placeholder: '32' });
  const color = h('select', { id: 'dataset-color', name: 'color' }, h('option', { value: 'rgb' }, 'RGB'), h('option', { value: 'grayscale' }, 'grayscale'));
  const testFraction = h('input', { type: 'number', id: 'dataset-test_fraction', name: 'test_fraction', min: 0, max: 1, step: 'any', placeholder: '0.2' });
  const splitSeed = h('input', { type: 'number', id: 'dataset-split_seed', name: 'split_seed', min: 0, step: 1, placeholder: '0' });
  const formatLine = h('div', { class: 'help', id: 'dataset-format' });

  const fileField = field('file', 'File', file, 'NumPy .npz (x, y, optionally x_test, y_test); CSV or Parquet with a label column; a .zip, .tar or .tar.gz of images, one folder per class.');
  const pathField = field('path', 'Path on the server', path, 'A file or folder the workers can read, under a root the administrator allows (NAS_DATA_ROOTS).');
  const tableOptions = h('div', { class: 'field-grid', id: 'table-options' },
    field('label_column', 'Label column', labelColumn, 'the column that holds the classes; every other column is a feature'));
  const imageOptions = h('div', { class: 'field-grid', id: 'image-options' },
    field('image_size', 'Image size', imageSize, 'every image is resized to this many pixels square'),
    field('color', 'Colour', color, 'grayscale gives one channel, RGB three'));

  const summary = h('div', { class: 'alert alert-error', id: 'upload-errors', hidden: true });
  const bar = h('progress', { id: 'upload-progress', max: 1, value: 0 });
  const status = h('div', { class: 'muted small', id: 'upload-status' });
  const progressBox = h('div', { class: 'upload-progress', hidden: true }, bar, status);
  const submit = h('button', { class: 'btn btn-primary btn-lg', type: 'submit', id: 'upload-submit' }, 'Upload');
  const cancel = h('button', { class: 'btn btn-ghost', type: 'button', id: 'upload-cancel', hidden: true, onclick: () => controller?.abort() }, 'Cancel upload');
  let controller = null;

  const source = () => (fromPath.checked ? 'path' : 'file');
  const sourceName = () => (source() === 'path' ? path.value.trim().replace(/\/+$/, '') : file.files[0]?.name || '');

  /** The format of what is chosen: by extension; a folder given by path is read as images. */
  function format() {
    const chosen = sourceName();
    if (!chosen) return null;
    return detectFormat(chosen) ?? (source() === 'path' ? 'images' : null);
  }

  function refresh() {
    fileField.hidden = source() !== 'file';
    pathField.hidden = source() !== 'path';
    const f = format();
    const chosen = sourceName();
    formatLine.textContent = !chosen ? '' : f ? `Read as: ${formatName(f)}` : 'Not a format the server reads: .npz, .csv, .parquet, .pq, .zip, .tar, .tar.gz, .tgz.';
    tableOptions.hidden = !['csv', 'parquet'].includes(f);
    imageOptions.hidden = f !== 'images';
  }

  function clearErrors() {
    summary.hidden = true;
    for (const slot of Object.values(slots)) { slot.textContent = ''; slot.closest('.field')?.classList.remove('has-error'); }
  }

  /** Each error beside the form field its `loc` names (["body", field]); the rest above the form. */
  function showErrors(errors) {
    const unmatched = [];
    for (const error of errors) {
      const slot = slots[(error.loc || []).filter((p) => p !== 'body')[0]];
      if (!slot || slot.closest('[hidden]')) { unmatched.push(error.msg); continue; }
      slot.textContent = slot.textContent ? `${slot.textContent}; ${error.msg}` : error.msg;
      slot.closest('.field')?.classList.add('has-error');
    }
    if (unmatched.length) { summary.hidden = false; clear(summary, unmatched.join('\n')); }
    (view.querySelector('.has-error') || summary).scrollIntoView({ behavior: 'smooth', block: 'center' });
  }

  /** What the browser can tell before sending: something chosen, a format the server reads, a label column. */
  function check() {
    const errors = [];
    const f = format();
    if (!sourceName()) errors.push({ loc: [source()], msg: source() === 'file' ? 'choose a file' : 'give a path' });
    else if (!f) errors.push({ loc: [source()], msg: 'not a format the server reads' });
    if (['csv', 'parquet'].includes(f) && !labelColumn.value.trim()) errors.push({ loc: ['label_column'], msg: 'name the column that holds the classes' });
    for (const [input, key] of [[imageSize, 'image_size'], [testFraction, 'test_fraction'], [splitSeed, 'split_seed']]) {
      if (input.validity.badInput || (input.value !== '' && !input.checkValidity())) errors.push({ loc: [key], msg: input.validationMessage || 'not a valid number' });
    }
    return errors;
  }

  function formData() {
    const f = format();
    const data = new FormData();
    const fields = {
      name: name.value.trim(),
      label_column: ['csv', 'parquet'].includes(f) ? labelColumn.value.trim() : '',
      image_size: f === 'images' ? imageSize.value : '',
      color: f === 'images' ? color.value : '',
      test_fraction: testFraction.value,
      split_seed: splitSeed.value,
    };
    for (const [key, value] of Object.entries(fields)) if (value !== '') data.append(key, value);
    if (source() === 'path') data.append('path', path.value.trim());
    else data.append('file', file.files[0]); // last: the options arrive before the file's bytes
    return data;
  }

  function progress(sent, total) {
    bar.max = total || 1;
    bar.value = total ? sent : 0;
    status.textContent = total && sent >= total
      ? 'Uploaded. The server is reading and checking the data…'
      : `Sent ${fmt.bytes(sent)}${total ? ` of ${fmt.bytes(total)} (${fmt.pct(sent / total, 0)})` : ''}`;
  }

  async function onSubmit(event) {
    event.preventDefault();
    clearErrors();
    const errors = check();
    if (errors.length) { showErrors(errors); return; }
    controller = new AbortController();
    submit.disabled = true;
    cancel.hidden = source() !== 'file';
    progressBox.hidden = false;
    progress(0, source() === 'file' ? file.files[0].size : null);
    if (source() === 'path') status.textContent = 'The server is reading and checking the data…';
    try {
      const { data, status: code } = await upload('/datasets', formData(), { onProgress: progress, signal: controller.signal });
      toast(code === 201 ? `Dataset "${data.name}" stored` : `You already have this data with these options: "${data.name}"`, 'success');
      location.hash = `#/datasets/${data.id}`;
    } catch (error) {
      progressBox.hidden = true;
      if (error.status === 401) return;
      if (Array.isArray(error.detail)) showErrors(error.detail);
      else if (error.status === 413) showErrors([{ loc: [source()], msg: error.detail }]);
      else showErrors([{ loc: [], msg: `${error.status ? `${error.status} ` : ''}${error.detail ?? error.message}` }]);
    } finally {
      submit.disabled = false;
      cancel.hidden = true;
      controller = null;
    }
  }

  for (const input of [fromFile, fromPath, file, path]) input.addEventListener(input === path ? 'input' : 'change', refresh);
  refresh();

  view.append(
    h('div', { class: 'page-head' },
      h('div', {}, h('div', { class: 'crumbs' }, h('a', { href: '#/datasets' }, 'Datasets'), ' / Upload'), h('h1', {}, 'Upload a dataset'),
        h('p', { class: 'muted' }, 'The server reads the data once, checks it, makes the test split and stores it; every trial of every job on it sees the same split.'))),
    h('form', { class: 'upload-form', id: 'upload-form', onsubmit: onSubmit, novalidate: true },
      summary,
      h('fieldset', { class: 'card form-section' }, h('legend', {}, 'Data'),
        h('div', { class: 'checks' }, h('label', { class: 'check' }, fromFile, ' a file from this computer'), h('label', { class: 'check' }, fromPath, ' a path on the server')),
        h('div', { class: 'field-grid' }, fileField, pathField, field('name', 'Name', name, 'how lists show it; the file name when empty')),
        formatLine),
      h('fieldset', { class: 'card form-section' }, h('legend', {}, 'Format options'),
        h('p', { class: 'muted small' }, 'Tables name their label column; image archives are resized and converted.'),
        tableOptions, imageOptions,
        h('div', { class: 'field-grid' },
          field('test_fraction', 'Test fraction', testFraction, 'held out for testing, stratified by class, when the data brings no test split of its own'),
          field('split_seed', 'Split seed', splitSeed, 'the same seed makes the same split'))),
      progressBox,
      h('div', { class: 'form-actions' }, submit, cancel, h('a', { class: 'btn btn-ghost', href: '#/datasets' }, 'Back to datasets'))));
  return () => controller?.abort();
}
