// Tasks: submit a task to the reasoning runtime (when the edge has an LLM endpoint) and follow it
// to its result: status, answer, steps taken, tokens.

import { api, explain } from '../api.js';
import { fmtTime, h, fill, json } from '../dom.js';

const FINAL = new Set(['completed', 'failed', 'budget_exhausted']);
const WATCH_EVERY_MS = 1000;

function taskView(task) {
  const r = task.result || {};
  const usage = r.usage || {};
  const item = (term, value) => [h('dt', {}, term), h('dd', {}, value)];
  return h(
    'div.result',
    { 'data-status': task.status },
    h('dl.summary', {},
      item('Task', task.task_id),
      item('Status', task.status),
      item('Submitted', fmtTime(task.created_at)),
      item('Attempts', String(task.attempts)),
      item('Steps', String(r.steps ?? '–')),
      item('Tokens', usage.total_tokens !== undefined ? `${usage.total_tokens} (${usage.prompt_tokens} prompt, ${usage.completion_tokens} completion)` : '–'),
      item('Tool calls', String(usage.tool_calls ?? '–')),
    ),
    r.final_answer ? h('section', { 'aria-label': 'Answer' }, h('h2', {}, r.partial ? 'Partial answer' : 'Answer'), h('pre.out', {}, r.final_answer)) : null,
    task.error || r.error ? h('pre.error-message', {}, json(task.error || r.error)) : null,
  );
}

export function render(main) {
  const input = h('textarea', { id: 'task-input', rows: 4 });
  const out = h('div', { 'aria-live': 'polite' });
  const button = h('button', { type: 'submit' }, 'Submit');
  let alive = true;
  const submit = async (e) => {
    e.preventDefault();
    button.disabled = true;
    try {
      const created = await api('POST', '/api/v1/tasks', { input: input.value });
      while (alive) {
        const task = await api('GET', `/api/v1/tasks/${encodeURIComponent(created.task_id)}`);
        fill(out, taskView(task));
        if (FINAL.has(task.status)) break;
        await new Promise((r) => setTimeout(r, WATCH_EVERY_MS));
      }
    } catch (err) {
      fill(out, h('p.outcome.error', { role: 'alert' }, `✗ ${explain(err)}`));
    } finally {
      button.disabled = false;
    }
  };
  fill(
    main,
    h('h1', {}, 'Tasks'),
    h('p.muted', {}, 'Tasks run on the reasoning runtime; the edge needs an LLM endpoint (OPENAI_BASE_URL) for them.'),
    h('form.call', { novalidate: true, onsubmit: submit, 'aria-label': 'Submit a task' }, h('div.field', {}, h('label', { for: 'task-input' }, 'Task'), input), button),
    out,
  );
  return () => {
    alive = false;
  };
}
