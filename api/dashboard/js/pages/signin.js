// Sign-in: an API key, checked against the API, then kept in this tab's sessionStorage only.

import { api, session } from '../api.js';
import { h } from '../ui.js';

export async function render(view) {
  const message = session.takeMessage();
  const input = h('input', {
    id: 'api-key', type: 'password', name: 'api-key', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'nas_…', required: true, autofocus: true,
  });
  const status = h('div', { class: message ? 'alert alert-warn' : 'alert', id: 'signin-message', hidden: !message }, message || '');
  const button = h('button', { class: 'btn btn-primary', type: 'submit' }, 'Sign in');

  async function submit(event) {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    button.disabled = true;
    status.hidden = true;
    try {
      await api.check(key);
      session.signIn(key);
      const next = sessionStorage.getItem('nas.afterSignin') || '#/jobs';
      sessionStorage.removeItem('nas.afterSignin');
      location.hash = next === '#/signin' ? '#/jobs' : next;
    } catch (error) {
      status.className = 'alert alert-error';
      status.textContent = error.status === 401
        ? `That key was refused: ${error.detail}.`
        : `Could not sign in: ${error.detail ?? error.message}`;
      status.hidden = false;
      button.disabled = false;
      input.select();
    }
  }

  view.append(h('div', { class: 'signin' },
    h('form', { class: 'card signin-card', onsubmit: submit },
      h('h1', {}, 'Sign in'),
      h('p', { class: 'muted' }, 'Paste an API key (', h('code', {}, 'nas keys create NAME'), ' mints one).'),
      status,
      h('label', { for: 'api-key' }, 'API key'),
      input,
      button,
      h('p', { class: 'muted small' },
        'The key stays in this browser tab (session storage) and is sent only in the Authorization header. ',
        'Closing the tab signs you out.'))));
  input.focus();
}
