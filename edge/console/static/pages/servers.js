// MCP servers: search the catalog (scores and why each matched), install one while its progress
// shows live (GET /api/v1/tools/servers lists installs under way with their progress), and the
// installed servers with state, restarts and sandbox level; uninstall.

import { api, explain } from '../api.js';
import { fmtTime, h, fill } from '../dom.js';

const WATCH_EVERY_MS = 300;

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
  let installing = null; // name of the server being installed from this page
  const steps = [];

  const showProblem = (err) => {
    problem.hidden = !err;
    problem.textContent = err ? explain(err) : '';
  };

  const drawProgress = (server, final) => {
    if (!server) return;
    const message = server.status_message || server.state;
    if (message && steps[steps.length - 1] !== message) steps.push(message);
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
      const tail = await api('GET', `${serverPath(name)}/log?max_bytes=16384`);
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

  const drawInstalled = (servers) => {
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
          h('td', {}, (s.tools || []).join(', ')),
          h('td.num', {}, String(s.restarts ?? 0)),
          h('td', {}, s.isolation || '–', s.network ? ' · network' : ''),
          h('td', {}, fmtTime(s.installed_at)),
          h('td.actions', {}, showLog, remove),
        );
      }),
    );
  };

  const refresh = async () => {
    try {
      const listing = await api('GET', '/api/v1/tools/servers');
      drawInstalled(listing.servers);
      if (installing) drawProgress(listing.servers.find((s) => s.name === installing), false);
    } catch (err) {
      showProblem(err);
    }
  };

  const watch = async () => {
    while (alive && installing) {
      await refresh();
      await new Promise((r) => setTimeout(r, WATCH_EVERY_MS));
    }
  };

  const install = async (candidate, button) => {
    installing = candidate.name;
    steps.length = 0;
    button.disabled = true;
    showProblem(null);
    fill(progress, h('h2', {}, `Installing ${candidate.name}`), h('p.muted', {}, 'starting…'));
    watch();
    try {
      const done = await api('POST', '/mcp/install', { name: candidate.name });
      installing = null;
      button.textContent = 'Installed';
      for (const p of done.progress || []) if (p.message && !steps.includes(p.message)) steps.push(p.message);
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
          h('thead', {}, h('tr', {}, ['Server', 'State', 'Tools', 'Restarts', 'Sandbox', 'Installed', ''].map((t) => h('th', { scope: 'col' }, t || h('span.sr-only', {}, 'Actions'))))),
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
  return () => {
    alive = false;
  };
}
