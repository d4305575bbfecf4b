// The job page's controls beside "Cancel job": clone the job into the new-job form, raise its
// budget (a finished job is queued again and resumed with its trials), delete it.

import { api } from '../api.js';
import { h, toast } from '../ui.js';

const ACTIVE = ['queued', 'running'];

/** A field error list (422) or a message, as one line. */
function message(error) {
  if (!Array.isArray(error.detail)) return error.detail ?? error.message;
  return error.detail.map((d) => `${(d.loc || []).slice(1).join('.')}: ${d.msg}`).join('; ');
}

/**
 * The controls, made once per page so that an open budget form survives live repaints.
 * `changed(job)` gets the job as the server answers a budget change. `update(job)` follows the
 * job as it changes; `buttons` go in the title row, `form` under it.
 */
export function jobControls(changed) {
  let job = null;
  const trials = h('input', { type: 'number', id: 'extend-trials', step: 1, 'aria-label': 'max trials' });
  const timeout = h('input', { type: 'number', id: 'extend-timeout', step: 'any', 'aria-label': 'time limit in seconds' });
  const error = h('div', { class: 'field-error', id: 'extend-error' });
  const note = h('p', { class: 'muted small' });
  const form = h('form', {
    class: 'extend-form card', id: 'extend-form', hidden: true, novalidate: true,
    onsubmit: async (event) => {
      event.preventDefault();
      error.textContent = '';
      const budget = { max_trials: Number(trials.value) };
      if (!timeout.disabled && timeout.value !== '') budget.timeout_s = Number(timeout.value);
      try {
        const updated = await api.patch(`/jobs/${job.id}`, { budget });
        const resumed = !ACTIVE.includes(job.status) && updated.status === 'queued';
        toast(resumed ? 'Budget raised: the job is queued and resumes with its trials' : 'Budget raised', 'success');
        form.hidden = true;
        changed(updated, resumed);
      } catch (err) {
        if (err.status !== 401) error.textContent = message(err);
      }
    },
  },
  note,
  h('div', { class: 'row' },
    h('label', { class: 'inline' }, 'max trials ', trials),
    h('label', { class: 'inline' }, 'time limit (s) ', timeout),
    h('button', { class: 'btn btn-primary btn-sm', type: 'submit', id: 'extend-submit' }, 'Raise budget'),
    h('button', { class: 'btn btn-ghost btn-sm', type: 'button', onclick: () => { form.hidden = true; } }, 'Close')),
  error);

  const clone = h('a', { class: 'btn', id: 'clone-job', title: 'Open this job\'s spec in the new-job form, to edit and submit as a new job' }, 'Clone');
  const extend = h('button', {
    class: 'btn', type: 'button', id: 'extend-job', title: 'More trials or a longer time limit',
    onclick: () => { if (form.hidden) fill(); form.hidden = !form.hidden; },
  }, 'Extend');
  const remove = h('button', {
    class: 'btn btn-danger', type: 'button', id: 'delete-job', title: 'Delete the job, its trials and their models',
    onclick: async () => {
      if (!window.confirm(`Delete job "${job.name}" with its ${job.n_trials} trials and their models? This cannot be undone.`)) return;
      try {
        await api.delete(`/jobs/${job.id}`);
        toast(`Job "${job.name}" deleted`, 'success');
        location.hash = '#/jobs';
      } catch (err) {
        if (err.status !== 401) toast(`Could not delete: ${message(err)}`, 'error', 6000);
      }
    },
  }, 'Delete');

  /** The form starts at the job's budget: each value may only go up. */
  function fill() {
    const budget = job.spec?.budget || {};
    trials.min = trials.value = budget.max_trials;
    const timed = budget.timeout_s != null;
    timeout.disabled = !timed;
    timeout.min = timed ? budget.timeout_s : '';
    timeout.value = timed ? budget.timeout_s : '';
    timeout.placeholder = timed ? '' : 'no limit';
    note.textContent = ACTIVE.includes(job.status)
      ? 'The running job takes up the new budget within seconds.'
      : `The ${job.status} job is queued again and resumes with its ${job.n_trials} trials; its time limit counts from the restart.`;
    error.textContent = '';
  }

  function update(current) {
    job = current;
    clone.href = `#/new?from=${job.id}`;
    remove.hidden = ACTIVE.includes(job.status);  // a running job is cancelled first
  }

  return { buttons: [clone, extend, remove], form, update };
}
