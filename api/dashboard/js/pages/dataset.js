// One dataset: where it came from, its splits and class balance, sample images or its columns,
// and deleting it.

import { api, objectUrl } from '../api.js';
import { card, clear, copyButton, errorBox, fmt, h, kpi, toast } from '../ui.js';
import { formatName } from './datasets.js';

const TABLES = ['csv', 'parquet'];
const SAMPLE_ROWS = 64; // the server's grid shows the first 64 classes

/** A definition list of [label, value] pairs; pairs without a value are left out. */
function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter(([, value]) => value !== null && value !== undefined && value !== '')
    .map(([label, value]) => [h('dt', {}, label), h('dd', {}, value)]));
}

/** Class balance: a bar per class and split, its length the class's share of that split. */
function balance(dataset) {
  const names = dataset.class_names?.length ? dataset.class_names : Array.from({ length: dataset.num_classes }, (_, i) => String(i));
  const splits = [['train', dataset.n_train], ['test', dataset.n_test]];
  const shares = Object.fromEntries(splits.map(([split, total]) => [split, (dataset.class_counts?.[split] || []).map((n) => (total ? n / total : 0))]));
  const widest = Math.max(...Object.values(shares).flat(), 1e-9);
  const bar = (split, i) => {
    const count = dataset.class_counts?.[split]?.[i] ?? 0;
    const share = shares[split][i] ?? 0;
    return h('div', { class: `balance-cell balance-${split}`, title: `${names[i]}: ${fmt.int(count)} ${split} examples (${fmt.pct(share)})` },
      h('div', { class: 'balance-track' }, h('div', { class: 'balance-bar', style: { width: `${(100 * share) / widest}%` } })),
      h('span', { class: 'balance-count' }, `${fmt.int(count)} · ${fmt.pct(share)}`));
  };
  return h('div', { class: 'balance', id: 'class-balance' },
    h('div', { class: 'balance-row balance-head' }, h('span', {}, 'Class'),
      splits.map(([split, total]) => h('span', {}, `${split === 'train' ? 'Train' : 'Test'} (${fmt.int(total)})`))),
    names.map((name, i) => h('div', { class: 'balance-row', dataset: { class: name } },
      h('span', { class: 'balance-name', title: name }, name), bar('train', i), bar('test', i))));
}

/** The columns of a table as ingested: kind, and the training split's mean and std or the categories. */
function columns(summary) {
  const list = summary?.columns || [];
  if (!list.length) return h('p', { class: 'muted' }, 'No column summary.');
  return h('div', {},
    h('div', { class: 'table-wrap' }, h('table', { class: 'table', id: 'columns-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Column'), h('th', {}, 'Kind'), h('th', { class: 'num' }, 'Mean'), h('th', { class: 'num' }, 'Std'), h('th', {}, 'Categories'))),
      h('tbody', {}, list.map((column) => h('tr', { dataset: { column: column.name } },
        h('td', { class: 'mono' }, column.name),
        h('td', {}, column.kind),
        h('td', { class: 'num' }, fmt.num(column.mean)),
        h('td', { class: 'num' }, fmt.num(column.std)),
        h('td', {}, column.categories ? h('div', { class: 'chips' }, column.categories.map((c) => h('span', { class: 'chip' }, String(c)))) : null)))))),
    summary.features ? h('p', { class: 'muted small' },
      `${fmt.int(summary.features.length)} input features after one-hot encoding; numeric columns are standardised with the training split's mean and std.`) : null);
}

/**
 * The grid the server drew at upload: up to eight examples per class, one row per class. Shown
 * at a whole multiple of its size near 480 pixels wide, so small images stay sharp and square.
 */
function samples(dataset, image) {
  const names = (dataset.class_names || []).slice(0, SAMPLE_ROWS);
  image.addEventListener('load', () => { image.style.width = `${image.naturalWidth * Math.max(1, Math.round(480 / image.naturalWidth))}px`; }, { once: true });
  return h('div', { class: 'samples' },
    h('div', { class: 'samples-labels', 'aria-hidden': 'true' }, names.map((name) => h('span', { title: name }, name))),
    image);
}

const channelList = (values) => (Array.isArray(values) ? values.map((v) => fmt.num(v, 3)).join(', ') : null);

/** The range of the archive's image sizes before resizing: `28 × 28 px`, `20–640 × 18–480 px`. */
function sourceSizes(sizes) {
  if (!sizes?.width || !sizes?.height) return null;
  const range = ([low, high]) => (low === high ? `${low}` : `${low}–${high}`);
  return `${range(sizes.width)} × ${range(sizes.height)} px`;
}

export async function render(view, datasetId) {
  let dataset;
  try {
    dataset = await api.get(`/datasets/${datasetId}`);
  } catch (error) {
    if (error.status !== 401) clear(view, errorBox(error));
    return null;
  }
  const options = dataset.options || {};
  const isTable = TABLES.includes(dataset.format);
  const isImages = dataset.format === 'images';
  const perChannel = dataset.summary?.per === 'channel';
  // the server draws samples for every dataset of images, an archive or arrays shaped (C, H, W)
  const hasSamples = dataset.input_shape.length === 3 && [1, 3, 4].includes(dataset.input_shape[0]);
  const deleteMessage = h('div', { id: 'delete-message' });

  const remove = h('button', {
    class: 'btn btn-danger', type: 'button', id: 'delete-dataset',
    onclick: async () => {
      if (!window.confirm(`Delete dataset "${dataset.name}"? Its stored data is removed; jobs can no longer name it.`)) return;
      remove.disabled = true;
      clear(deleteMessage);
      try {
        await api.delete(`/datasets/${dataset.id}`);
        toast(`Dataset "${dataset.name}" deleted`, 'success');
        location.hash = '#/datasets';
      } catch (error) {
        remove.disabled = false;
        if (error.status !== 401) clear(deleteMessage, errorBox(error));
      }
    },
  }, 'Delete');

  const details = facts([
    ['Format', formatName(dataset.format)],
    ['Source', dataset.source === 'path' ? h('span', {}, 'registered by path ', h('code', {}, dataset.path)) : 'uploaded'],
    ['SHA-256', h('span', { class: 'hash' }, h('span', { class: 'mono', id: 'dataset-sha256' }, dataset.sha256), copyButton(dataset.sha256))],
    ['File size', fmt.bytes(dataset.size_bytes)],
    ['Stored size', fmt.bytes(dataset.stored_bytes)],
    ['Label column', isTable ? h('code', {}, options.label_column) : null],
    ['Image size', isImages && options.image_size ? `${options.image_size} × ${options.image_size}` : null],
    ['Colour', isImages ? options.color : null],
    ['Test split', dataset.test_given
      ? 'given by the upload'
      : `${fmt.pct(options.test_fraction ?? null, 0)} held out, stratified, seed ${options.split_seed ?? '—'}`],
    ['Channel mean', perChannel ? channelList(dataset.summary.mean) : null],
    ['Channel std', perChannel ? channelList(dataset.summary.std) : null],
    ['Source image sizes', isImages ? sourceSizes(dataset.summary?.source_sizes) : null],
    ['Files skipped', dataset.summary?.skipped_files ? fmt.int(dataset.summary.skipped_files) : null],
  ]);

  const sampleBox = h('div', {}, hasSamples ? h('div', { class: 'loading' }, h('span', { class: 'spin' }), 'Loading samples…') : null);

  view.append(
    h('div', { class: 'job-head' },
      h('div', { class: 'crumbs' }, h('a', { href: '#/datasets' }, 'Datasets'), ' / ', h('span', {}, dataset.name)),
      h('div', { class: 'title-row' },
        h('h1', {}, dataset.name), h('span', { class: 'chip' }, formatName(dataset.format)),
        h('div', { class: 'spacer' }),
        h('a', { class: 'btn btn-primary', href: `#/new?dataset=${dataset.id}`, id: 'search-dataset' }, 'New job on it'),
        remove),
      h('div', { class: 'meta' },
        h('span', { class: 'mono', id: 'dataset-id' }, dataset.id), copyButton(dataset.id),
        h('span', {}, `created ${fmt.time(dataset.created_at)}`),
        h('span', {}, `owner ${dataset.owner}`)),
      deleteMessage),
    h('div', { class: 'kpis' },
      kpi('Input shape', fmt.shape(dataset.input_shape), { 1: 'features', 3: 'channels × height × width' }[dataset.input_shape.length]),
      kpi('Classes', fmt.int(dataset.num_classes)),
      kpi('Train', fmt.int(dataset.n_train), 'examples'),
      kpi('Test', fmt.int(dataset.n_test), dataset.test_given ? 'examples, as uploaded' : 'examples, split at upload'),
      kpi('Size', fmt.bytes(dataset.size_bytes), `${fmt.bytes(dataset.stored_bytes)} stored`)),
    h('div', { class: 'grid-2' },
      card('Details', details, { id: 'card-details' }),
      card('Class balance', balance(dataset), { id: 'card-balance' })),
    ...(hasSamples ? [card('Samples', sampleBox, { id: 'card-samples' })] : []),
    ...(isTable ? [card('Columns', columns(dataset.summary), { id: 'card-columns', cls: 'flush-body' })] : []));

  let disposed = false, imageUrl = null;
  if (hasSamples) {
    objectUrl(`/datasets/${dataset.id}/samples.png`).then((url) => {
      if (disposed) { URL.revokeObjectURL(url); return; }
      imageUrl = url;
      const image = h('img', { id: 'samples', src: url, alt: `up to eight training examples of each class of ${dataset.name}` });
      clear(sampleBox, samples(dataset, image), h('p', { class: 'muted small' }, `Up to eight training examples per class, one row per class${dataset.num_classes > SAMPLE_ROWS ? ` (the first ${SAMPLE_ROWS} classes)` : ''}, as stored.`));
    }, (error) => {
      if (!disposed && error.status !== 401) clear(sampleBox, errorBox(error));
    });
  }
  return () => {
    disposed = true;
    if (imageUrl) URL.revokeObjectURL(imageUrl);
  };
}
