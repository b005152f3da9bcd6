// MCP servers: search the catalog (scores and why each matched), install one while its progress
// shows live (each step pushed on the events WebSocket as it happens, live.js), and the installed
// servers with state, health, restarts and sandbox level; uninstall.

import { api, explain } from '../api.js';
import { fmtTime, h, fill } from '../dom.js';
import { live } from '../live.js';

const ENDED = new Set(['running', 'stopped']);

/** A server's health: its tool's, as the hub's health checks last found it (live.js). */
function healthOf(server) {
  const tool = live.tools.get(server.tool_id);
  const health = tool ? tool.health : 'unknown';
  return h(`span.health.${health}`, {}, health);
}

function percent(p) {
  return `${Math.round((p || 0) * 100)}%`;
}

export function render(main) {
  const query = h('input', { id: 'catalog-query', type: 'search', autocomplete: 'off', placeholder: 'what should a server do? e.g. time zones' });
  const found = h('div', { 'aria-live': 'polite' });
  const progress = h('div.install', { 'aria-live': 'polite' });
  const installed = h('tbody');
  const problem = h('p.banner.error', { role: 'alert', hidden: true });
  const logPanel = h('section.log', { 'aria-live': 'polite', hidden: true });
  let alive = true;
  let logOf = null; // the server whose log tail is shown (refreshed while shown)
  let logRead = Promise.resolve(); // the log read in flight
  let installing = null; // name of the server being installed from this page
  const steps = [];

  const showProblem = (err) => {
    problem.hidden = !err;
    problem.textContent = err ? explain(err) : '';
  };

  const drawProgress = (server, final) => {
    if (!server) return;
    fill(
      progress,
      h('h2', {}, `Installing ${server.name}`),
      h('p', {}, h('span.state', { 'data-state': server.state }, server.state), ' · ', percent(server.progress)),
      h('progress', { max: 1, value: server.progress || 0, 'aria-label': `install progress of ${server.name}` }),
      h('ol.steps', {}, steps.map((s) => h('li', {}, s))),
      final ? h('p.outcome.ok', {}, `✓ ${server.name} is ${server.state}, tools: ${(server.tools || []).join(', ') || 'none'}`) : null,
    );
  };

  const serverPath = (name) => `/api/v1/tools/servers/${encodeURIComponent(name).replaceAll('%2F', '/')}`;

  const drawLog = async () => {
    if (!logOf) return;
    const name = logOf;
    let body;
    try {
      logRead = api('GET', `${serverPath(name)}/log?max_bytes=16384`);
      const tail = await logRead;
      body = [tail.truncated ? h('p.muted', {}, 'the last 16 KiB') : null, h('pre.out.log-text', {}, tail.text || '(nothing written yet)')];
    } catch (err) {
      body = h('p.outcome.error', { role: 'alert' }, `✗ ${explain(err)}`);
    }
    if (logOf !== name) return;
    const close = h('button', { type: 'button' }, 'Close the log');
    close.addEventListener('click', () => {
      logOf = null;
      logPanel.hidden = true;
    });
    logPanel.hidden = false;
    fill(logPanel, h('h2', {}, `Log of ${name} (stderr)`), body, close);
  };

  const watchLog = async () => {
    while (alive && logOf) {
      await drawLog();
      await new Promise((r) => setTimeout(r, 1000));
    }
  };

  let shown = []; // the servers listed last (drawn again when a tool's health changes)
  const drawInstalled = (servers) => {
    shown = servers;
    fill(
      installed,
      servers.map((s) => {
        const remove = h('button', { type: 'button' }, 'Uninstall');
        remove.addEventListener('click', async () => {
          if (remove.dataset.armed !== '1') {
            remove.dataset.armed = '1';
            remove.textContent = `Confirm uninstall of ${s.name}`;
            return;
          }
          remove.disabled = true;
          if (logOf === s.name) {
            logOf = null; // its log goes with it: stop reading it first
            logPanel.hidden = true;
            await logRead.catch(() => {});
          }
          try {
            await api('DELETE', serverPath(s.name));
            showProblem(null);
          } catch (err) {
            showProblem(err);
          }
          refresh();
        });
        const showLog = h('button', { type: 'button' }, 'Log');
        showLog.addEventListener('click', () => {
          const watching = logOf !== null;
          logOf = s.name;
          if (!watching) watchLog();
          else drawLog();
        });
        return h(
          'tr',
          { 'data-server': s.name },
          h('th', { scope: 'row' }, s.name, h('div.muted', {}, `${s.registry_type || ''} ${s.identifier || ''} ${s.version || ''}`)),
          h('td', {}, h('span.state', { 'data-state': s.state }, s.state), s.state !== 'running' && s.progress < 1 ? ` ${percent(s.progress)}` : '', s.status_message ? h('div.muted', {}, s.status_message) : null),
          h('td', {}, healthOf(s)),
          h('td', {}, (s.tools || []).join(', ')),
          h('td.num', {}, String(s.restarts ?? 0)),
          h('td', {}, s.isolation || '–', s.network ? ' · network' : ''),
          h('td', {}, fmtTime(s.installed_at)),
          h('td.actions', {}, showLog, remove),
        );
      }),
    );
  };

  let listed = new Set();
  const refresh = async () => {
    try {
      const listing = await api('GET', '/api/v1/tools/servers');
      listed = new Set(listing.servers.map((s) => s.name));
      drawInstalled(listing.servers);
    } catch (err) {
      showProblem(err);
    }
  };

  // One install step, as it happens (the events WebSocket): the install started here shows each
  // one; the table is listed again when an install appears or ends.
  const onStep = (step) => {
    if (step.name === installing && !ENDED.has(step.state)) {
      if (step.message && steps[steps.length - 1] !== step.message) steps.push(step.message);
      drawProgress(step.server, false);
    }
    if (!listed.has(step.name) || ENDED.has(step.state)) refresh();
  };

  const install = async (candidate, button) => {
    installing = candidate.name;
    steps.length = 0;
    button.disabled = true;
    showProblem(null);
    fill(progress, h('h2', {}, `Installing ${candidate.name}`), h('p.muted', {}, 'starting…'));
    try {
      const done = await api('POST', '/mcp/install', { name: candidate.name });
      installing = null;
      button.textContent = 'Installed';
      // The answer lists every step: a step the socket missed (it was away) is shown too.
      steps.splice(0, steps.length, ...(done.progress || []).map((p) => p.message).filter(Boolean));
      drawProgress(done.server, true);
    } catch (err) {
      installing = null;
      fill(progress, h('h2', {}, `Installing ${candidate.name}`), h('p.outcome.error', { role: 'alert' }, `✗ ${explain(err)}`), h('ol.steps', {}, steps.map((s) => h('li', {}, s))));
      button.disabled = false;
    }
    refresh();
  };

  const candidateView = (c) => {
    const button = h('button', { type: 'button', disabled: c.installed || !c.installable }, c.installed ? 'Installed' : 'Install');
    button.addEventListener('click', () => install(c, button));
    return h(
      'li.candidate',
      { 'data-candidate': c.name },
      h('h3', {}, c.title || c.name),
      h('p.muted', {}, `${c.name} ${c.version || ''} · ${c.install_method || 'remote'} · score ${Number(c.score).toFixed(2)}`),
      c.description ? h('p.desc', {}, c.description) : null,
      (c.why_matched || []).length ? h('p', {}, 'Why: ', c.why_matched.join('; ')) : null,
      (c.capabilities || []).length ? h('p', {}, 'Tools: ', c.capabilities.join(', ')) : null,
      !c.installable ? h('p.muted', {}, `Not installable: ${c.policy_denial || 'refused by the install policy'}`) : null,
      button,
    );
  };

  const search = async (e) => {
    e.preventDefault();
    fill(found, h('p.muted', {}, 'searching…'));
    try {
      const result = await api('POST', '/mcp/search', { query: query.value, max_candidates: 10 });
      fill(
        found,
        h('p.muted', {}, `${result.total_found} found${(result.unreachable_registries || []).length ? ` · unreachable: ${result.unreachable_registries.join(', ')}` : ''}`),
        h('ol.candidates', {}, result.candidates.map(candidateView)),
      );
    } catch (err) {
      fill(found, h('p.outcome.error', { role: 'alert' }, `✗ ${explain(err)}`));
    }
  };

  fill(
    main,
    h('h1', {}, 'MCP servers'),
    problem,
    h(
      'section',
      { 'aria-labelledby': 'h-installed' },
      h('h2', { id: 'h-installed' }, 'Installed'),
      h(
        'div.scroll',
        {},
        h(
          'table',
          {},
          h('caption', {}, 'Installed and federated servers, installs under way included'),
          h('thead', {}, h('tr', {}, ['Server', 'State', 'Health', 'Tools', 'Restarts', 'Sandbox', 'Installed', ''].map((t) => h('th', { scope: 'col' }, t || h('span.sr-only', {}, 'Actions'))))),
          installed,
        ),
      ),
    ),
    logPanel,
    progress,
    h(
      'section',
      { 'aria-labelledby': 'h-catalog' },
      h('h2', { id: 'h-catalog' }, 'Catalog'),
      h('form.filters', { novalidate: true, onsubmit: search, role: 'search' }, h('label', { for: 'catalog-query' }, 'Search the catalog'), query, h('button', { type: 'submit' }, 'Search')),
      found,
    ),
  );
  refresh();
  const unsubscribe = live.subscribe((what, step) => {
    if (what === 'install') onStep(step);
    else if (what === 'tools') drawInstalled(shown);
  });
  return () => {
    alive = false;
    unsubscribe();
  };
}
