// One tool: what it is, its capabilities with their schemas, and a form per capability (made from
// its input schema) that calls it and shows the result.

import { api } from '../api.js';
import { fmtAgo, fmtMs, fmtPct, h, fill, json } from '../dom.js';
import { live } from '../live.js';
import { faultView, resultView } from '../result.js';
import { schemaForm } from '../schema_form.js';
import { replicasView } from './tools.js';

function summary(tool) {
  const stats = tool.stats || {};
  const recent = live.recentFigures(tool.tool_id);
  const item = (term, ...value) => [h('dt', {}, term), h('dd', {}, ...value)];
  return h(
    'dl.summary',
    {},
    item('Id', tool.tool_id),
    item('Kind', tool.kind),
    item('Endpoint', h('span.endpoint', {}, tool.endpoint)),
    item('Node', tool.node_id || '–'),
    item('Replicas', replicasView(tool)),
    item('Health', h(`span.health.${tool.health}`, {}, tool.health), tool.enabled ? '' : ' (disabled)'),
    item('Version', tool.version || '–'),
    item('Owner', tool.owner || '–'),
    item('Tags', (tool.tags || []).join(', ') || '–'),
    item('Calls', `${stats.usage_count ?? 0}, ${stats.usage_count ? fmtPct(stats.success_rate) : '–'} successful, mean ${fmtMs(stats.usage_count ? stats.mean_latency_ms : null)}`),
    item('Recent calls here', recent ? `${recent.count}, ${recent.errors} failed, mean ${fmtMs(recent.mean)}, p95 ${fmtMs(recent.p95)}` : 'none seen'),
    item('Last used', fmtAgo(stats.last_used)),
  );
}

function capabilityView(tool, cap) {
  const form = schemaForm(cap.input_schema);
  const timeoutId = `timeout-${cap.name}`;
  const timeout = h('input', { id: timeoutId, type: 'text', inputmode: 'decimal', size: 6, autocomplete: 'off' });
  const out = h('div.call-result', { 'aria-live': 'polite' });
  const button = h('button', { type: 'submit' }, `Call ${cap.name}`);
  const submit = async (e) => {
    e.preventDefault();
    let args;
    try {
      args = form.read();
      if (timeout.value.trim() !== '' && !(Number(timeout.value) > 0)) throw new Error('timeout: a number of seconds above 0');
    } catch (err) {
      fill(out, faultView(err));
      return;
    }
    const body = { action: cap.name, arguments: args };
    if (timeout.value.trim() !== '') body.timeout_s = Number(timeout.value);
    button.disabled = true;
    fill(out, h('p.muted', {}, 'calling…'));
    const t0 = performance.now();
    try {
      const resp = await api('POST', `/api/v1/tools/${encodeURIComponent(tool.tool_id)}/call`, body);
      fill(out, resultView(resp, performance.now() - t0));
    } catch (err) {
      fill(out, faultView(err));
    } finally {
      button.disabled = false;
    }
  };
  return h(
    'section.capability',
    { 'aria-labelledby': `cap-${cap.name}`, 'data-capability': cap.name },
    h('h2', { id: `cap-${cap.name}` }, cap.name),
    cap.description ? h('p.desc', {}, cap.description) : null,
    h('details', {}, h('summary', {}, 'Input schema'), h('pre.out', {}, json(cap.input_schema || {}))),
    cap.output_schema ? h('details', {}, h('summary', {}, 'Output schema'), h('pre.out', {}, json(cap.output_schema))) : null,
    h(
      'form.call',
      { novalidate: true, onsubmit: submit, 'aria-label': `Call ${cap.name}` },
      form.element,
      h('div.field.inline', {}, h('label', { for: timeoutId }, 'Timeout (s, optional)'), timeout),
      button,
    ),
    out,
  );
}

export function render(main, toolId) {
  const head = h('div');
  const gone = h('p.banner', { role: 'status', hidden: true }, 'This tool was removed from the registry.');
  let shownCaps = null;
  const caps = h('div');
  const draw = () => {
    const tool = live.tools.get(toolId);
    gone.hidden = Boolean(tool) || live.tools.size === 0;
    if (!tool) return;
    title.textContent = tool.name && tool.name !== tool.tool_id ? `${tool.name} (${tool.tool_id})` : tool.tool_id;
    fill(head, tool.description ? h('p.desc.lead', {}, tool.description) : null, summary(tool));
    const names = JSON.stringify((tool.capabilities || []).map((c) => [c.name, c.input_schema]));
    if (names !== shownCaps) {
      shownCaps = names;
      fill(caps, (tool.capabilities || []).map((c) => capabilityView(tool, c)));
    }
  };
  const title = h('h1', {}, toolId);
  fill(main, h('p', {}, h('a', { href: '#/tools' }, '← all tools')), title, gone, head, caps);
  draw();
  return live.subscribe((what) => {
    if (what === 'tools' || what === 'calls') draw();
  });
}
