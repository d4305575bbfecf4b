// The targets page: where latency is measured. Each target (the server's built-in ones and the
// agent targets of the signed-in user), its predictor's accuracy, and the agents that measure on it:
// online or not, when last seen, what they have leased and done, and the hardware they run on.
// GET /targets has no event stream, so the page asks again every few seconds.

import { api } from '../api.js';
import { card, clear, copyButton, errorBox, fmt, h } from '../ui.js';

const REFRESH_MS = 5000;

/** The command that fits a target's predictor, shown where a target has none. */
export const calibrateCommand = (name) => `nas hardware calibrate --target ${name} --quick`;

/** "onnxruntime 1.32.0" (and " · cuda" where the device is not the CPU): a runtime an agent reported. */
function runtimeLabel(runtime) {
  const device = runtime.device && runtime.device !== 'cpu' ? ` · ${runtime.device}` : '';
  return `${runtime.name}${runtime.version ? ` ${runtime.version}` : ''}${device}`;
}

/** One line of an agent's hardware: CPU, cores, memory and accelerator, as the agent reported them. */
export function hardwareSummary(hardware) {
  const hw = hardware || {};
  return [
    hw.cpu || hw.machine,
    typeof hw.cores === 'number' ? `${hw.cores} core${hw.cores === 1 ? '' : 's'}` : null,
    typeof hw.memory_gb === 'number' ? `${fmt.num(hw.memory_gb, 3)} GB` : null,
    hw.accelerator || 'no accelerator',
  ].filter(Boolean).join(' · ');
}

/** How long ago, to the second while it is recent: an online agent calls every few seconds. */
function seenAgo(seconds) {
  if (!Number.isFinite(seconds)) return '—';
  const s = Math.max(0, seconds);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function onlineBadge(online) {
  return h('span', { class: `badge badge-${online ? 'online' : 'offline'}` }, online ? 'online' : 'offline');
}

/** One fitted predictor: its version and how it did on held-out models measured on the target. */
function predictorSummary(p) {
  return h('div', { class: 'predictor-version', title: `fitted with ${p.runtime}, ${fmt.time(p.created_at)}` },
    h('div', { class: 'chips' },
      h('span', { class: 'chip chip-objective' }, `v${p.version}`),
      h('span', { class: 'chip', title: 'share of held-out models whose predicted latency is within ±10% of the measured one' }, `${fmt.pct(p.within_10, 0)} within ±10%`),
      h('span', { class: 'chip', title: 'Spearman rank correlation of predicted and measured latency' }, `ρ ${fmt.num(p.spearman, 3)}`),
      h('span', { class: 'chip', title: 'share of those models whose two measurements agree within ±10%: the best a predictor can do' }, `noise ceiling ${fmt.pct(p.noise_ceiling_within_10, 0)}`)),
    h('div', { class: 'muted small' }, [p.runtime, typeof p.models === 'number' ? `${fmt.int(p.models)} models` : null, fmt.ago(p.created_at)].filter(Boolean).join(' · ')));
}

function predictorCell(target) {
  const fitted = target.predictors?.length ? target.predictors : (target.predictor ? [target.predictor] : []);
  if (fitted.length) return h('td', { class: 'predictor' }, fitted.map(predictorSummary));
  if (target.kind === 'builtin') {
    // the server keeps its own targets' predictors where it runs; the API does not describe them
    const command = `nas hardware evaluate --target ${target.name}`;
    return h('td', { class: 'predictor' },
      h('div', { class: 'muted' }, 'the server’s own'),
      h('div', { class: 'command muted small' }, h('code', {}, command), copyButton(command)));
  }
  const command = calibrateCommand(target.name);
  return h('td', { class: 'predictor' },
    h('div', { class: 'uncalibrated' }, 'not calibrated'),
    h('div', { class: 'command' }, h('code', {}, command), copyButton(command)));
}

function targetRow(target) {
  const agents = target.agents || [];
  const agentCell = target.kind === 'agent'
    ? h('td', { class: 'num' }, h('strong', {}, fmt.int(target.online_agents)), ` / ${fmt.int(agents.length)}`)
    : h('td', { class: 'num muted', title: 'the server measures built-in targets itself' }, 'server');
  return h('tr', { dataset: { target: target.name } },
    h('td', {},
      target.kind === 'agent' && agents.length
        ? h('a', { href: `#/targets`, class: 'strong', onclick: (e) => { e.preventDefault(); document.getElementById(`agents-${target.name}`)?.scrollIntoView({ behavior: 'smooth' }); } }, target.name)
        : h('span', { class: 'strong' }, target.name),
      target.description ? h('div', { class: 'muted small' }, target.description) : null),
    h('td', {}, h('span', { class: `chip chip-${target.kind}` }, target.kind), target.owner ? h('div', { class: 'muted small owner' }, target.owner) : null),
    h('td', {}, h('div', { class: 'chips' }, (target.runtimes || []).map((r) => h('span', { class: 'chip' }, r)))),
    agentCell,
    h('td', { class: 'num' }, fmt.int(target.queued)),
    predictorCell(target));
}

function agentsCard(target, age) {
  const agents = [...(target.agents || [])].sort((a, b) => Number(b.online) - Number(a.online) || a.name.localeCompare(b.name));
  const body = agents.length
    ? h('table', { class: 'table agents-table' },
      h('thead', {}, h('tr', {}, ['Agent', 'State', 'Last seen', 'Leased', 'Measurements done', 'Hardware', 'Runtimes'].map((t) =>
        h('th', { class: ['Leased', 'Measurements done'].includes(t) ? 'num' : null }, t)))),
      h('tbody', {}, agents.map((agent) => {
        const hw = agent.hardware || {};
        return h('tr', { dataset: { agent: agent.id } },
          h('td', {}, h('span', { class: 'strong agent-name' }, agent.name), h('div', { class: 'mono muted small' }, fmt.shortId(agent.id))),
          h('td', {}, onlineBadge(agent.online)),
          h('td', { class: 'last-seen', title: fmt.time(agent.last_seen_at) }, agent.last_seen_at ? seenAgo(age(agent.last_seen_at)) : '—'),
          h('td', { class: 'num', title: `runs up to ${agent.concurrency} at once` }, `${fmt.int(agent.leased)} / ${fmt.int(agent.concurrency)}`),
          h('td', { class: 'num' }, fmt.int(agent.measurements_done)),
          h('td', { class: 'hardware', title: [hw.os, hw.machine, hw.python ? `Python ${hw.python}` : null].filter(Boolean).join(' · ') }, hardwareSummary(hw)),
          h('td', {}, h('div', { class: 'chips' }, (agent.runtimes || []).map((r) => h('span', { class: 'chip' }, runtimeLabel(r))))));
      })))
    : h('div', { class: 'empty' }, 'No agent has registered for this target.');
  return card(`Agents of ${target.name}`, body, {
    id: `agents-${target.name}`, cls: 'flush-body',
    actions: h('span', { class: 'muted small' }, `${fmt.int(target.online_agents)} online · ${fmt.int(target.queued)} queued`),
  });
}

function noAgentsHelp() {
  return card('Measure on your own hardware', [
    h('p', { class: 'muted' }, 'An agent measures latency on the machine it runs on and calls the server for work; its first registration creates the target. On the server, mint an agent key for your name; then start the agent on the machine to measure:'),
    h('pre', { class: 'code' }, 'nas keys create OWNER --agent\nnas agent --url URL --key AGENT_KEY --target lab-pi --runtime onnxruntime'),
    h('p', { class: 'muted small' }, 'A job whose spec names the target has its trials measured by that target’s agents.'),
  ], { id: 'card-agent-help' });
}

export async function render(view) {
  const tbody = h('tbody');
  const agentCards = h('div', { id: 'agent-cards' });
  const errors = h('div');
  const live = h('span', { class: 'live', title: `asked again every ${REFRESH_MS / 1000} s` }, 'connecting');
  view.append(
    h('div', { class: 'page-head' },
      h('div', {}, h('h1', {}, 'Targets'), h('p', { class: 'muted' }, 'Where trial latency is measured: the server’s own targets and your agents’, with how well each predictor matches its measurements.')),
      h('div', { class: 'page-actions' }, live)),
    errors,
    h('section', { class: 'card flush' },
      h('div', { class: 'table-wrap' },
        h('table', { class: 'table', id: 'targets-table' },
          h('thead', {}, h('tr', {}, ['Target', 'Kind', 'Runtimes', 'Online agents', 'Queued', 'Predictor'].map((t) =>
            h('th', { class: ['Online agents', 'Queued'].includes(t) ? 'num' : null }, t)))),
          tbody))),
    agentCards);

  let disposed = false;
  let timer = null;

  async function load() {
    try {
      const { data, date } = await api.getWithDate('/targets');
      if (disposed) return;
      // ages by the server's clock, so a browser clock that is off does not age the agents
      const now = date ? new Date(date).getTime() : Date.now();
      const age = (iso) => (now - new Date(iso).getTime()) / 1000;
      const targets = data.items;
      clear(tbody, targets.length ? targets.map(targetRow) : h('tr', {}, h('td', { colspan: 6, class: 'empty' }, 'No targets.')));
      const agentTargets = targets.filter((t) => t.kind === 'agent');
      clear(agentCards, agentTargets.length ? agentTargets.map((t) => agentsCard(t, age)) : noAgentsHelp());
      clear(errors);
      live.textContent = 'live';
      live.dataset.state = 'live';
    } catch (error) {
      if (disposed || error.status === 401) return;
      clear(errors, errorBox(error));
      live.textContent = 'retrying';
      live.dataset.state = 'connecting';
    }
    if (!disposed) timer = setTimeout(load, REFRESH_MS);
  }

  await load();
  return () => { disposed = true; clearTimeout(timer); };
}
