// Python: run code in the sandboxed executor (the tool with a python_execute capability), in a
// fresh interpreter or a session that keeps its state; stdout, stderr, the last expression's
// value and image artifacts.

import { api } from '../api.js';
import { fmtMs, h, fill } from '../dom.js';
import { live } from '../live.js';
import { faultView, imageOf } from '../result.js';

const sessions = []; // minted by the executor for this tab; lost on reload, like the tab's state

function executor() {
  const preferred = live.tools.get('python-executor-mcp-server');
  if (preferred) return preferred;
  return [...live.tools.values()].find((t) => (t.capabilities || []).some((c) => c.name === 'python_execute'));
}

function outputView(resp, roundTripMs) {
  const s = resp.structured || {};
  const ok = !resp.is_error;
  const images = (resp.content || []).filter((b) => b.type === 'image');
  const section = (title, cls, text) =>
    text ? h('section.stream', { 'aria-label': title }, h('h2', {}, title), h(`pre.out.${cls}`, {}, text)) : null;
  return h(
    'div.result' + (ok ? '' : '.is-error'),
    { 'data-outcome': ok ? 'ok' : 'error' },
    ok
      ? h('p.outcome.ok', {}, '✓ Ran')
      : h('p.outcome.error', { role: 'alert' }, `✗ ${resp.error ? resp.error.type : 'Error'}: ${resp.error ? resp.error.message.split('\n')[0] : ''}`),
    section('stdout', 'stdout', s.stdout),
    section('stderr', 'stderr', s.stderr),
    s.result !== undefined && s.result !== null ? section('Value', 'value', s.result) : null,
    s.error_reason ? h('p.muted', {}, s.error_reason) : null,
    images.map((b, i) => imageOf(b, `figure ${i + 1}`)),
    s.session_id ? h('p.muted', {}, `session ${s.session_id}`) : null,
    h('p.muted.duration', {}, `run: ${fmtMs(s.duration_ms ?? resp.duration_ms)} · round trip: ${fmtMs(roundTripMs)}`),
  );
}

export function render(main) {
  const code = h('textarea.code', { id: 'py-code', rows: 10, spellcheck: 'false' });
  code.value = 'print(6*7)';
  const session = h('select', { id: 'py-session' });
  const fillSessions = (selected) => {
    fill(
      session,
      h('option', { value: '' }, 'fresh interpreter (no state kept)'),
      h('option', { value: 'new' }, 'new session (keeps state)'),
      sessions.map((id) => h('option', { value: id }, `session ${id}`)),
    );
    session.value = selected;
  };
  fillSessions('');
  const out = h('div.call-result', { 'aria-live': 'polite' });
  const run = h('button', { type: 'submit' }, 'Run');
  const note = h('p.muted', { role: 'status' });
  const submit = async (e) => {
    e.preventDefault();
    const tool = executor();
    if (!tool) {
      fill(out, faultView(new Error('no Python executor is registered (a tool with the python_execute capability)')));
      return;
    }
    const args = { code: code.value };
    if (session.value === 'new') args.new_session = true;
    else if (session.value) args.session_id = session.value;
    run.disabled = true;
    fill(out, h('p.muted', {}, 'running…'));
    const t0 = performance.now();
    try {
      const resp = await api('POST', `/api/v1/tools/${encodeURIComponent(tool.tool_id)}/call`, {
        action: 'python_execute',
        arguments: args,
      });
      const minted = resp.structured && resp.structured.session_id;
      if (minted && !sessions.includes(minted)) {
        sessions.push(minted);
        fillSessions(minted);
      }
      fill(out, outputView(resp, performance.now() - t0));
    } catch (err) {
      fill(out, faultView(err));
    } finally {
      run.disabled = false;
    }
  };
  code.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) submit(e);
  });
  const drawNote = () => {
    const tool = executor();
    note.textContent = tool ? `runs in ${tool.tool_id} (${tool.health})` : 'no Python executor registered yet';
  };
  fill(
    main,
    h('h1', {}, 'Python'),
    h(
      'form.call',
      { novalidate: true, onsubmit: submit, 'aria-label': 'Run Python' },
      h('div.field', {}, h('label', { for: 'py-code' }, 'Code (Ctrl+Enter runs it)'), code),
      h('div.field.inline', {}, h('label', { for: 'py-session' }, 'Session'), session),
      run,
    ),
    note,
    out,
  );
  drawNote();
  return live.subscribe((what) => {
    if (what === 'tools') drawNote();
  });
}
