// Tasks: submit a task to the reasoning runtime (when the edge has an LLM endpoint), watch its
// steps as they happen (GET /api/v1/tasks/{id}/steps as server-sent events: each note as the agent
// records it, then the end), and read its trajectory step by step once it ends (tool call,
// arguments, result, tokens).

import { api, explain, follow } from '../api.js';
import { fmtTime, h, fill, json } from '../dom.js';

const MAX_NOTES = 500; // as many as the edge keeps of a task
const RETRY_MS = 1000; // before following again a stream that broke before the task's end

function summaryView(task) {
  const r = task.result || {};
  const usage = r.usage || {};
  const item = (term, value) => [h('dt', {}, term), h('dd', {}, value)];
  return h(
    'div.result',
    { 'data-status': task.status },
    h(
      'dl.summary',
      {},
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

function noteText(n) {
  switch (n.kind) {
    case 'step':
      return `step ${n.index}`;
    case 'thinking':
      return `thinking: ${n.text}`;
    case 'tool_call':
      return `calls ${n.name} ${JSON.stringify(n.arguments)}`;
    case 'observation':
      return `${n.success ? '✓' : '✗'} ${n.name}: ${n.text}`;
    case 'event':
      return `registry: ${n.type} ${n.tool_id}`;
    case 'invalid_action':
      return `invalid action: ${n.message}`;
    case 'finished':
      return `finished: ${n.status}`;
    default:
      return `${n.kind}`;
  }
}

function notesView(log) {
  return h(
    'section.notes',
    { 'aria-labelledby': 'h-live' },
    h('h2', { id: 'h-live' }, 'As it happens'),
    log.dropped_notes ? h('p.muted', {}, `${log.dropped_notes} earlier notes not kept`) : null,
    h('ol.steps', {}, log.notes.map((n) => h('li', { 'data-kind': n.kind }, h('span.muted', {}, `${fmtTime(n.at)} `), noteText(n)))),
  );
}

function callView(c) {
  return h(
    'div.tool-call' + (c.success ? '' : '.is-error'),
    {},
    h('h4', {}, `${c.success ? '✓' : '✗'} ${c.name}`, c.tool_id ? h('span.muted', {}, ` (${c.tool_id} · ${c.action}, ${(c.duration_s ?? 0).toFixed(3)} s)`) : null),
    h('p.label', {}, 'Arguments'),
    h('pre.out', {}, c.arguments === null ? c.raw_arguments || '' : json(c.arguments)),
    h('p.label', {}, 'Result'),
    h('pre.out', {}, c.result !== null && c.result !== undefined ? json(c.result) : c.observation || ''),
    c.error ? h('pre.error-message', {}, `${c.error.type}: ${c.error.message}`) : null,
  );
}

function stepView(step) {
  const usage = step.llm && step.llm.response && step.llm.response.usage;
  return h(
    'section.step',
    { 'aria-label': `Step ${step.index}`, 'data-step': step.index },
    h('h3', {}, `Step ${step.index}`, h('span.muted', {}, ` · ${(step.duration_s ?? 0).toFixed(3)} s`, usage ? ` · ${usage.total_tokens} tokens (${usage.prompt_tokens} prompt, ${usage.completion_tokens} completion)` : '')),
    step.thinking ? h('pre.out', {}, step.thinking) : null,
    (step.tool_calls || []).map(callView),
    step.error ? h('pre.error-message', {}, `${step.error.type}: ${step.error.message}`) : null,
  );
}

function trajectoryView(log) {
  if (!log.steps) return null;
  return h(
    'section.trajectory',
    { 'aria-labelledby': 'h-trajectory' },
    h('h2', { id: 'h-trajectory' }, 'Trajectory'),
    log.steps.map(stepView),
    log.omitted_steps ? h('p.muted', {}, `${log.omitted_steps} later steps not kept by the edge (the trajectory file has them)`) : null,
  );
}

export function render(main) {
  const input = h('textarea', { id: 'task-input', rows: 4 });
  const out = h('div', { 'aria-live': 'polite' });
  const live = h('div');
  const button = h('button', { type: 'submit' }, 'Submit');
  const stop = new AbortController(); // leaving the page ends the stream
  const submit = async (e) => {
    e.preventDefault();
    button.disabled = true;
    fill(live);
    try {
      const created = await api('POST', '/api/v1/tasks', { input: input.value });
      const path = `/api/v1/tasks/${encodeURIComponent(created.task_id)}`;
      fill(out, summaryView(await api('GET', path)));
      const notes = [];
      let lastSeq = 0;
      let end = null;
      const onEvent = (kind, data) => {
        if (kind === 'restart') {
          notes.length = 0;
          lastSeq = 0;
        } else if (kind === 'note' && data.seq > lastSeq) {
          lastSeq = data.seq;
          notes.push(data);
          if (notes.length > MAX_NOTES) notes.splice(0, notes.length - MAX_NOTES);
          fill(live, notesView({ notes, dropped_notes: 0 }));
          // A new step: the summary (status, steps, tokens so far) as the task service has it.
          if (data.kind === 'step') api('GET', path).then((task) => end || fill(out, summaryView(task)), () => {});
        } else if (kind === 'end') {
          end = data;
        }
      };
      while (!end) {
        try {
          await follow(`${path}/steps`, onEvent, { signal: stop.signal });
        } catch (err) {
          if (err.name === 'AbortError' || err.status) throw err;
        }
        if (!end) await new Promise((r) => setTimeout(r, RETRY_MS)); // the stream broke: follow again
      }
      fill(out, summaryView(await api('GET', path)));
      fill(live, end.kept ? [notesView(end), trajectoryView(end)] : h('p.muted', {}, 'The steps of this task are no longer kept by the edge.'));
    } catch (err) {
      if (err.name !== 'AbortError') fill(out, h('p.outcome.error', { role: 'alert' }, `✗ ${explain(err)}`));
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
    live,
  );
  return () => stop.abort();
}
