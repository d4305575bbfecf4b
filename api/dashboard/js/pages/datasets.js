// The datasets list: what each of the user's datasets holds, newest first.

import { api } from '../api.js';
import { clear, errorBox, fmt, h } from '../ui.js';

const FORMAT_NAMES = { npz: 'NumPy .npz', csv: 'CSV', parquet: 'Parquet', images: 'image archive' };

export const formatName = (format) => FORMAT_NAMES[format] || format;

/** One line that tells datasets apart in a menu: name, shape, classes. */
export function describe(dataset) {
  return `${dataset.name} · ${fmt.shape(dataset.input_shape)} · ${dataset.num_classes} classes`;
}

/** Every dataset of the user, all pages (the new-job form offers each). */
export async function allDatasets() {
  const items = [];
  let cursor = null;
  do {
    const page = await api.get('/datasets', { limit: 100, cursor });
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  return items;
}

function row(dataset) {
  return h('tr', { class: 'clickable', dataset: { id: dataset.id }, onclick: () => { location.hash = `#/datasets/${dataset.id}`; } },
    h('td', {}, h('a', { href: `#/datasets/${dataset.id}`, class: 'strong' }, dataset.name), h('div', { class: 'mono muted small' }, fmt.shortId(dataset.id))),
    h('td', {}, formatName(dataset.format), dataset.source === 'path' ? h('span', { class: 'chip', title: dataset.path }, 'by path') : null),
    h('td', { class: 'mono' }, fmt.shape(dataset.input_shape)),
    h('td', { class: 'num' }, fmt.int(dataset.num_classes)),
    h('td', { class: 'num' }, `${fmt.int(dataset.n_train)} / ${fmt.int(dataset.n_test)}`),
    h('td', { class: 'num' }, fmt.bytes(dataset.size_bytes)),
    h('td', { title: fmt.time(dataset.created_at) }, fmt.ago(dataset.created_at)));
}

export async function render(view) {
  let cursor = null;
  const tbody = h('tbody');
  const more = h('button', { class: 'btn btn-ghost', type: 'button', onclick: () => load() }, 'Load more');
  const foot = h('div', { class: 'table-foot', hidden: true }, more);
  const errors = h('div');
  let count = 0;

  view.append(
    h('div', { class: 'page-head' },
      h('div', {}, h('h1', {}, 'Datasets'), h('p', { class: 'muted' }, 'Data you uploaded to search on, newest first. Only you see them.')),
      h('div', { class: 'page-actions' }, h('a', { class: 'btn btn-primary', href: '#/datasets/upload', id: 'upload-dataset' }, 'Upload dataset'))),
    errors,
    h('section', { class: 'card flush' },
      h('table', { class: 'table', id: 'datasets-table' },
        h('thead', {}, h('tr', {}, ['Dataset', 'Format', 'Input shape', 'Classes', 'Train / test', 'Size', 'Created'].map((t) =>
          h('th', { class: ['Classes', 'Train / test', 'Size'].includes(t) ? 'num' : null }, t)))),
        tbody),
      foot));

  async function load() {
    try {
      const page = await api.get('/datasets', { limit: 50, cursor });
      if (!count && !page.items.length) {
        clear(tbody, h('tr', {}, h('td', { colspan: 7, class: 'empty' },
          'No datasets yet. ', h('a', { href: '#/datasets/upload' }, 'Upload one'), ': a NumPy .npz, a CSV or Parquet table, or a zip or tar of images in one folder per class.')));
      }
      tbody.append(...page.items.map(row));
      count += page.items.length;
      cursor = page.next_cursor;
      foot.hidden = !cursor;
      clear(errors);
    } catch (error) {
      if (error.status !== 401) clear(errors, errorBox(error));
    }
  }

  await load();
}
