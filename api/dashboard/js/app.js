// The single-page app: a hash router over the pages, and the signed-in frame around them.

import { api, session } from './api.js';
import { clear, errorBox, h, setMetrics } from './ui.js';

const routes = [
  { pattern: /^#\/signin$/, page: () => import('./pages/signin.js'), open: true, nav: null },
  { pattern: /^#\/jobs$/, page: () => import('./pages/jobs.js'), nav: 'jobs' },
  { pattern: /^#\/new(?:\?dataset=([0-9a-f]{32})|\?from=([0-9a-f]{1,64}))?$/, page: () => import('./pages/newjob.js'), nav: 'new' },
  { pattern: /^#\/jobs\/([0-9a-f]{1,64})$/, page: () => import('./pages/job.js'), nav: 'jobs' },
  { pattern: /^#\/trials\/([0-9a-f]{1,64})$/, page: () => import('./pages/trial.js'), nav: 'jobs' },
  { pattern: /^#\/compare\?jobs=([0-9a-f,]{1,2000})$/, page: () => import('./pages/compare.js'), nav: 'jobs' },
  { pattern: /^#\/datasets$/, page: () => import('./pages/datasets.js'), nav: 'datasets' },
  { pattern: /^#\/datasets\/upload$/, page: () => import('./pages/upload.js'), nav: 'datasets' },
  { pattern: /^#\/datasets\/([0-9a-f]{32})$/, page: () => import('./pages/dataset.js'), nav: 'datasets' },
  { pattern: /^#\/targets$/, page: () => import('./pages/targets.js'), nav: 'targets' },
];

const view = document.getElementById('view');
let metricsLoaded = null;

/** The metric registry from the catalog, fetched once; pages read labels, units and meanings from it. */
function loadMetrics() {
  metricsLoaded ??= api.get('/catalog').then((catalog) => setMetrics(catalog.metrics), (error) => { metricsLoaded = null; throw error; });
  return metricsLoaded;
}
let cleanup = null;
let generation = 0;
let shownKey = null;

/** Who the key signs in as, in the header beside "Sign out": asked once per key. */
function showIdentity() {
  const key = session.key();
  if (key === shownKey) return;
  shownKey = key;
  const owner = document.getElementById('owner');
  clear(owner);
  api.get('/whoami').then((me) => {
    if (session.key() !== key) return;
    clear(owner, 'Signed in as ', h('strong', {}, me.owner), me.is_admin ? [' ', h('span', { class: 'chip', title: 'sees and manages every owner\'s jobs' }, 'admin')] : null);
  }, () => { shownKey = null; });
}

function frame(signedIn, nav) {
  document.getElementById('nav').hidden = !signedIn;
  document.getElementById('session').hidden = !signedIn;
  for (const link of document.querySelectorAll('[data-nav]')) link.classList.toggle('active', link.dataset.nav === nav);
}

async function route() {
  const hash = location.hash || '#/jobs';
  const match = routes.map((r) => ({ r, m: r.pattern.exec(hash) })).find((x) => x.m);
  if (!match) { location.replace('#/jobs'); return; }
  const { r, m } = match;
  if (!r.open && !session.key()) {
    sessionStorage.setItem('nas.afterSignin', hash);
    location.replace('#/signin');
    return;
  }
  const mine = ++generation;
  if (cleanup) { try { cleanup(); } catch (e) { console.warn(e); } cleanup = null; }
  frame(!r.open, r.nav);
  if (!r.open) showIdentity();
  window.scrollTo(0, 0);
  try {
    const [module] = await Promise.all([r.page(), r.open ? null : loadMetrics()]);
    if (mine !== generation) return;
    clear(view);
    cleanup = (await module.render(view, ...m.slice(1))) || null;
  } catch (error) {
    if (mine !== generation || error?.status === 401) return;
    clear(view, errorBox(error));
  }
}

document.getElementById('signout').addEventListener('click', () => session.signOut('Signed out.'));
window.addEventListener('hashchange', route);
route();
