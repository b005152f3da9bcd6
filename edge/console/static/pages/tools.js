// Tools: every tool with its kind, endpoint, node and replicas (in a cluster), health and usage,
// filtered as you type, live.

import { fmtAgo, fmtMs, fmtPct, h, fill } from '../dom.js';
import { live } from '../live.js';

const KINDS = ['function', 'grpc_server', 'websocket_server', 'mcp_server'];

function matches(tool, text, kind, health) {
  if (kind && tool.kind !== kind) return false;
  if (health && tool.health !== health) return false;
  if (!text) return true;
  const hay = [tool.tool_id, tool.name, tool.description, tool.endpoint, tool.node_id, ...(tool.tags || []), ...(tool.capabilities || []).map((c) => c.name), ...replicasOf(tool).map((r) => r.node_id)]
    .join(' ')
    .toLowerCase();
  return text.toLowerCase().split(/\s+/).every((word) => hay.includes(word));
}

function replicasOf(tool) {
  return Array.isArray(tool.replicas) ? tool.replicas : [];
}

/** The other nodes' copies of the tool (a cluster's replicas): each node with its endpoint. */
export function replicasView(tool) {
  const replicas = replicasOf(tool);
  if (!replicas.length) return '–';
  return h('ul.replica-list', {}, replicas.map((r) => h('li', { 'data-node': r.node_id }, r.node_id, h('div.muted.endpoint', {}, r.endpoint))));
}

function row(tool) {
  const stats = tool.stats || {};
  const recent = live.recentFigures(tool.tool_id);
  return h(
    'tr',
    { 'data-tool-id': tool.tool_id },
    h(
      'th',
      { scope: 'row' },
      h('a', { href: `#/tools/${encodeURIComponent(tool.tool_id)}` }, tool.name || tool.tool_id),
      h('div.muted.id', {}, tool.tool_id),
      tool.description ? h('div.desc', {}, tool.description) : null,
    ),
    h('td', {}, tool.kind),
    h('td.endpoint', {}, tool.endpoint),
    h('td.node', {}, tool.node_id || '–'),
    h('td.replicas', {}, replicasView(tool)),
    h('td', {}, h(`span.health.${tool.health}`, {}, tool.health), tool.enabled ? null : h('div.muted', {}, 'disabled')),
    h('td.num', {}, String(stats.usage_count ?? 0)),
    h('td.num', {}, stats.usage_count ? fmtPct(stats.success_rate) : '–'),
    h('td.num', {}, stats.usage_count ? fmtMs(stats.mean_latency_ms) : '–'),
    h('td.num', {}, recent ? fmtMs(recent.p95) : '–'),
    h('td', {}, fmtAgo(stats.last_used)),
  );
}

export function render(main) {
  const search = h('input', { id: 'tool-search', type: 'search', placeholder: 'name, id, tag, capability…', autocomplete: 'off' });
  const kind = h('select', { id: 'tool-kind' }, h('option', { value: '' }, 'any'), KINDS.map((k) => h('option', { value: k }, k)));
  const health = h('select', { id: 'tool-health' }, h('option', { value: '' }, 'any'), ['healthy', 'unhealthy', 'unknown'].map((k) => h('option', { value: k }, k)));
  const body = h('tbody');
  const count = h('p.muted', { role: 'status' });
  const table = h(
    'table.tools',
    {},
    h('caption', {}, 'Registered tools. Node: the cluster node that reaches the endpoint; replicas: its copies on other nodes (none on a single hub). Calls, success and mean: every call, hub-wide; p95: the recent calls through this edge.'),
    h(
      'thead',
      {},
      h('tr', {}, ['Tool', 'Kind', 'Endpoint', 'Node', 'Replicas', 'Health', 'Calls', 'Success', 'Mean', 'p95', 'Last used'].map((t) => h('th', { scope: 'col' }, t))),
    ),
    body,
  );
  const draw = () => {
    const all = [...live.tools.values()].sort((a, b) => a.tool_id.localeCompare(b.tool_id));
    const shown = all.filter((t) => matches(t, search.value.trim(), kind.value, health.value));
    fill(body, shown.map(row));
    count.textContent = `${shown.length} of ${all.length} tools`;
  };
  for (const el of [search, kind, health]) el.addEventListener('input', draw);
  fill(
    main,
    h('h1', {}, 'Tools'),
    h(
      'div.filters',
      {},
      h('label', { for: 'tool-search' }, 'Search'),
      search,
      h('label', { for: 'tool-kind' }, 'Kind'),
      kind,
      h('label', { for: 'tool-health' }, 'Health'),
      health,
    ),
    count,
    h('div.scroll', {}, table),
  );
  draw();
  return live.subscribe((what) => {
    if (what === 'tools' || what === 'calls') draw();
  });
}
