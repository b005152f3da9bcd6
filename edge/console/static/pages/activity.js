// Activity: the registry's events and the recent calls through this edge, with a latency
// histogram and calls per second for the busiest tools (uPlot, vendored).

import { fmtMs, fmtTime, h, fill } from '../dom.js';
import { live } from '../live.js';
import uPlot from '../vendor/uPlot.esm.js';

const BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, Infinity];
const WINDOW_S = 60;
const COLOURS = ['#1f5fa8', '#a8321f', '#2d7a2d', '#7a4f9e', '#9e6a00'];

function histogram(calls) {
  const counts = BUCKETS_MS.map(() => 0);
  for (const c of calls) counts[BUCKETS_MS.findIndex((b) => c.duration_ms <= b)] += 1;
  return [BUCKETS_MS.map((_, i) => i), counts];
}

function perSecond(calls) {
  const now = Math.floor(Date.now() / 1000);
  const xs = Array.from({ length: WINDOW_S }, (_, i) => now - WINDOW_S + 1 + i);
  const byTool = new Map();
  for (const c of calls) {
    const at = Math.floor(c.at);
    if (at <= now - WINDOW_S) continue;
    if (!byTool.has(c.tool_id)) byTool.set(c.tool_id, new Array(WINDOW_S).fill(0));
    const i = at - (now - WINDOW_S + 1);
    if (i >= 0 && i < WINDOW_S) byTool.get(c.tool_id)[i] += 1;
  }
  const busiest = [...byTool.entries()].sort((a, b) => b[1].reduce((x, y) => x + y, 0) - a[1].reduce((x, y) => x + y, 0)).slice(0, COLOURS.length);
  return { xs, tools: busiest };
}

function chartWidth(el) {
  return Math.max(300, Math.min(720, el.clientWidth || 600));
}

export function render(main) {
  const events = h('tbody');
  const calls = h('tbody');
  const histEl = h('div.chart', { role: 'img', 'aria-label': 'Latency histogram of the recent calls' });
  const rateEl = h('div.chart', { role: 'img', 'aria-label': 'Calls per second per tool, last minute' });
  let hist = null;
  let rate = null;
  let rateTools = '';

  const drawEvents = () => {
    fill(
      events,
      live.events
        .slice(-100)
        .reverse()
        .map((e) => h('tr', {}, h('td', {}, fmtTime(e.timestamp)), h('td', {}, e.type), h('td', {}, e.tool_id), h('td', {}, e.status || ''), h('td.num', {}, String(e.revision ?? '')))),
    );
  };
  const drawCalls = () => {
    fill(
      calls,
      live.calls
        .slice(-100)
        .reverse()
        .map((c) =>
          h(
            'tr',
            {},
            h('td', {}, fmtTime(c.at)),
            h('td', {}, c.tool_id),
            h('td', {}, c.action),
            h('td', {}, c.caller),
            h(`td.${c.is_error ? 'bad' : 'good'}`, {}, c.outcome),
            h('td.num', {}, fmtMs(c.duration_ms)),
          ),
        ),
    );
    const data = histogram(live.calls);
    if (!hist) {
      hist = new uPlot(
        {
          width: chartWidth(histEl),
          height: 200,
          scales: { x: { time: false } },
          axes: [{ values: (_, ticks) => ticks.map((t) => (BUCKETS_MS[t] === Infinity ? '>5s' : BUCKETS_MS[t] !== undefined ? `≤${BUCKETS_MS[t]}ms` : '')) }, {}],
          series: [{}, { label: 'calls', stroke: COLOURS[0], fill: 'rgba(31,95,168,0.3)', paths: uPlot.paths.bars({ size: [0.8] }) }],
        },
        data,
        histEl,
      );
    } else hist.setData(data);
    const { xs, tools } = perSecond(live.calls);
    const names = tools.map(([id]) => id).join('\n');
    const series = [xs, ...tools.map(([, counts]) => counts)];
    if (!rate || names !== rateTools) {
      if (rate) rate.destroy();
      rateTools = names;
      rate = new uPlot(
        {
          width: chartWidth(rateEl),
          height: 200,
          series: [{}, ...tools.map(([id], i) => ({ label: id, stroke: COLOURS[i], width: 2 }))],
        },
        series,
        rateEl,
      );
    } else rate.setData(series);
  };

  const table = (caption, heads, body) =>
    h('div.scroll', {}, h('table', {}, h('caption', {}, caption), h('thead', {}, h('tr', {}, heads.map((t) => h('th', { scope: 'col' }, t)))), body));
  fill(
    main,
    h('h1', {}, 'Activity'),
    h(
      'div.grid',
      {},
      h('section', { 'aria-labelledby': 'h-hist' }, h('h2', { id: 'h-hist' }, 'Latency of the recent calls'), histEl),
      h('section', { 'aria-labelledby': 'h-rate' }, h('h2', { id: 'h-rate' }, 'Calls per second (busiest tools)'), rateEl),
    ),
    h('section', { 'aria-labelledby': 'h-calls' }, h('h2', { id: 'h-calls' }, 'Recent calls'), table('The newest first, through this edge', ['When', 'Tool', 'Action', 'Caller', 'Outcome', 'Duration'], calls)),
    h('section', { 'aria-labelledby': 'h-events' }, h('h2', { id: 'h-events' }, 'Registry events'), table('The newest first, since this page was opened', ['When', 'Event', 'Tool', 'Status', 'Revision'], events)),
  );
  drawEvents();
  drawCalls();
  const tick = setInterval(drawCalls, 1000); // the per-second chart moves on even without calls
  const stop = live.subscribe((what) => {
    if (what === 'events') drawEvents();
  });
  return () => {
    clearInterval(tick);
    stop();
    if (hist) hist.destroy();
    if (rate) rate.destroy();
  };
}
