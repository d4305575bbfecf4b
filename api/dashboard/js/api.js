// The JSON API, the signed-in key and server-sent events.
//
// The API key lives in sessionStorage only: it goes with this tab and is sent only in the
// Authorization header. A 401 from any call signs the user out with the server's reason.

const KEY = 'nas.apiKey';
const MESSAGE = 'nas.signinMessage';

export const session = {
  key: () => sessionStorage.getItem(KEY),
  signIn(key) { sessionStorage.setItem(KEY, key); sessionStorage.removeItem(MESSAGE); },
  signOut(message = null) {
    sessionStorage.removeItem(KEY);
    if (message) sessionStorage.setItem(MESSAGE, message); else sessionStorage.removeItem(MESSAGE);
    closeAllStreams();
    if (location.hash !== '#/signin') location.hash = '#/signin';
    else window.dispatchEvent(new HashChangeEvent('hashchange'));
  },
  takeMessage() {
    const message = sessionStorage.getItem(MESSAGE);
    sessionStorage.removeItem(MESSAGE);
    return message;
  },
};

export class ApiError extends Error {
  constructor(status, detail, requestId) {
    super(typeof detail === 'string' ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
    this.requestId = requestId;
  }
}

function url(path, params) {
  const u = new URL(`/api/v1${path}`, location.origin);
  for (const [name, value] of Object.entries(params || {})) {
    if (value === undefined || value === null || value === '') continue;
    for (const v of Array.isArray(value) ? value : [value]) u.searchParams.append(name, v);
  }
  return u;
}

async function request(method, path, { params, body, key } = {}) {
  const apiKey = key ?? session.key();
  const headers = { Accept: 'application/json' };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(url(path, params), { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const requestId = res.headers.get('x-request-id');
  let data = null;
  if (res.status !== 204) {
    const text = await res.text();
    try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text }; }
  }
  if (res.status === 401 && key === undefined) {
    session.signOut(`Signed out: ${data?.detail || 'the API key was rejected'}. Sign in with a valid key.`);
  }
  if (!res.ok) throw new ApiError(res.status, data?.detail ?? res.statusText, requestId);
  return { data, date: res.headers.get('date') };
}

export const api = {
  async get(path, params) { return (await request('GET', path, { params })).data; },
  async getWithDate(path, params) { return request('GET', path, { params }); },
  async post(path, body, params) { return (await request('POST', path, { body, params })).data; },
  async delete(path) { return (await request('DELETE', path)).data; },
  async patch(path, body) { return (await request('PATCH', path, { body })).data; },
  /** Check a key before keeping it: the user stays on the sign-in page if it is refused. */
  async check(key) { return (await request('GET', '/jobs', { params: { limit: 1 }, key })).data; },
};

/** A file the API serves, fetched with the key (an <img> or a link cannot send it). */
async function fetchFile(path, params) {
  const res = await fetch(url(path, params), { headers: { Authorization: `Bearer ${session.key()}` } });
  if (!res.ok) {
    let detail = res.statusText;
    try { detail = (await res.json()).detail; } catch { /* not JSON */ }
    if (res.status === 401) session.signOut(`Signed out: ${detail}.`);
    throw new ApiError(res.status, detail, res.headers.get('x-request-id'));
  }
  return res;
}

/** An object URL of a file the API serves, for an <img>; the caller revokes it. */
export async function objectUrl(path, params) {
  return URL.createObjectURL(await (await fetchFile(path, params)).blob());
}

/** A text the API serves (text/plain), fetched with the key. */
export async function fetchText(path, params) {
  return (await fetchFile(path, params)).text();
}

/** Fetch a file with the key and hand it to the browser as a download. */
export async function download(path, params, filename) {
  const res = await fetchFile(path, params);
  const name = /filename="?([^";]+)"?/.exec(res.headers.get('content-disposition') || '')?.[1] || filename;
  const blob = await res.blob();
  const href = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = href;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10_000);
  return { name, size: blob.size };
}

/**
 * POST a multipart form. XMLHttpRequest rather than fetch: only it reports how much of the body
 * has been sent (`onProgress(sent, total)`). Aborting `signal` stops the upload.
 */
export function upload(path, form, { onProgress = () => {}, signal = null } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', url(path));
    xhr.setRequestHeader('Accept', 'application/json');
    xhr.setRequestHeader('Authorization', `Bearer ${session.key()}`);
    xhr.upload.addEventListener('progress', (event) => onProgress(event.loaded, event.lengthComputable ? event.total : null));
    xhr.addEventListener('load', () => {
      let data = null;
      try { data = xhr.responseText ? JSON.parse(xhr.responseText) : null; } catch { data = { detail: xhr.responseText }; }
      const requestId = xhr.getResponseHeader('x-request-id');
      if (xhr.status === 401) session.signOut(`Signed out: ${data?.detail || 'the API key was rejected'}. Sign in with a valid key.`);
      if (xhr.status >= 200 && xhr.status < 300) resolve({ data, status: xhr.status });
      else reject(new ApiError(xhr.status, data?.detail ?? xhr.statusText, requestId));
    });
    // a server that refuses a body part-way (413) may close the connection before the browser reads the answer
    xhr.addEventListener('error', () => reject(new ApiError(0, 'The connection closed during the upload; the server may have refused its size.')));
    xhr.addEventListener('abort', () => reject(new ApiError(0, 'Upload cancelled.')));
    signal?.addEventListener('abort', () => xhr.abort());
    xhr.send(form);
  });
}

// -- server-sent events --------------------------------------------------------------------

const open = new Set();

function closeAllStreams() {
  for (const stream of [...open]) stream.close();
}

/**
 * Follow an event stream. EventSource cannot send headers, so each (re)connection first gets a
 * short-lived token from POST /events/token and passes it as ?token=; the key itself never goes
 * into a URL. After a drop the stream resumes from the last event's time.
 */
export function subscribe(path, handlers, { since = null, onState = () => {} } = {}) {
  let source = null, closed = false, resume = since, retry = 1000, timer = null;
  const stream = {
    close() {
      closed = true;
      clearTimeout(timer);
      source?.close();
      open.delete(stream);
      onState('closed');
    },
  };
  open.add(stream);

  const listen = (type) => (event) => {
    if (event.lastEventId) resume = Number(event.lastEventId.split('-')[0]) / 1000;
    retry = 1000;
    handlers[type]?.(JSON.parse(event.data));
  };

  async function connect() {
    if (closed) return;
    onState('connecting');
    let token;
    try {
      token = (await api.post('/events/token')).token;
    } catch (error) {
      if (error.status === 401 || closed) return;
      timer = setTimeout(connect, retry = Math.min(retry * 2, 30_000));
      return;
    }
    if (closed) return;
    const params = { token };
    if (resume !== null) params.since = Math.max(0, resume).toFixed(3);
    source = new EventSource(url(path, params));
    source.onopen = () => onState('live');
    for (const type of ['job', 'trial', 'epoch', 'reset']) source.addEventListener(type, listen(type));
    source.addEventListener('end', (event) => { listen('end')(event); stream.close(); });
    source.addEventListener('denied', (event) => {
      stream.close();
      session.signOut(`Signed out: ${JSON.parse(event.data).detail}.`);
    });
    source.onerror = () => {
      if (closed) return;
      if (source.readyState === EventSource.CLOSED) {
        // refused (an expired token) or dropped for good: a new token, then reconnect
        onState('connecting');
        timer = setTimeout(connect, retry = Math.min(retry * 2, 30_000));
      } else {
        onState('connecting');
      }
    };
  }
  connect();
  return stream;
}
