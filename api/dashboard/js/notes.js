// Notes and user attributes of a job or a trial: shown, edited and saved with PATCH.

import { api } from './api.js';
import { card, clear, errorBox, h, toast } from './ui.js';

/** An attribute value as typed in "key=value": a number, true/false, or text (as `nas note --attr` reads it). */
function parseValue(text) {
  if (text === 'true' || text === 'false') return text === 'true';
  if (text.trim() !== '' && Number.isFinite(Number(text))) return Number(text);
  return text;
}

/** "key=value" lines as attributes; an error names the first line that is not one. */
function parseAttrs(text) {
  const attrs = {};
  text.split('\n').map((line) => line.trim()).filter(Boolean).forEach((line, i) => {
    const at = line.indexOf('=');
    if (at < 1) throw new Error(`line ${i + 1} ("${line}") is not key=value`);
    attrs[line.slice(0, at).trim()] = parseValue(line.slice(at + 1).trim());
  });
  return attrs;
}

const attrLines = (attrs) => Object.entries(attrs || {}).map(([k, v]) => `${k}=${v}`).join('\n');

/**
 * A card showing the note and attributes of `/jobs/{id}` or `/trials/{id}` (`path`), with an Edit
 * form. Saving sends the note and the attributes as edited: keys removed from the list are sent as
 * null, which removes them.
 */
export function notesCard(path, record = null) {
  const body = h('div', { class: 'notes' });
  let current = record;

  function show() {
    const attrs = Object.entries(current.user_attrs || {});
    clear(body,
      current.note ? h('p', { class: 'note-text', id: 'note-text' }, current.note) : h('p', { class: 'muted', id: 'note-text' }, 'No note.'),
      attrs.length ? h('div', { class: 'chips', id: 'note-attrs' }, attrs.map(([k, v]) => h('span', { class: 'chip' }, `${k} = ${v}`))) : null);
  }

  function edit() {
    const note = h('textarea', { id: 'note-input', rows: 4, 'aria-label': 'Note', placeholder: 'What you want to remember about it' });
    note.value = current.note || '';
    const attrs = h('textarea', { id: 'attrs-input', class: 'mono', rows: 3, 'aria-label': 'User attributes', placeholder: 'key=value, one a line' });
    attrs.value = attrLines(current.user_attrs);
    const errors = h('div');
    const save = async () => {
      let given;
      try { given = parseAttrs(attrs.value); } catch (error) { clear(errors, errorBox(error)); return; }
      const removed = Object.fromEntries(Object.keys(current.user_attrs || {}).filter((k) => !(k in given)).map((k) => [k, null]));
      try {
        current = await api.patch(path, { note: note.value, user_attrs: { ...removed, ...given } });
        show();
        toast('Note saved');
      } catch (error) { clear(errors, errorBox(error)); }
    };
    clear(body,
      h('label', { class: 'field' }, h('span', {}, 'Note'), note),
      h('label', { class: 'field' }, h('span', {}, 'Attributes (key=value, one a line)'), attrs),
      errors,
      h('div', { class: 'form-actions notes-actions' },
        h('button', { class: 'btn btn-primary btn-sm', type: 'button', id: 'note-save', onclick: save }, 'Save'),
        h('button', { class: 'btn btn-ghost btn-sm', type: 'button', onclick: show }, 'Cancel')));
    note.focus();
  }

  const editButton = h('button', { class: 'btn btn-sm', type: 'button', id: 'note-edit', onclick: () => current && edit() }, 'Edit');
  if (current) show();
  else {
    api.get(path).then((loaded) => { current = loaded; show(); }, (error) => { if (error.status !== 401) clear(body, errorBox(error)); });
  }
  return card('Notes', body, { id: 'card-notes', actions: editButton });
}
