// The console's shell: the admin token box, the live status, and the page router (#/tools,
// #/tools/<id>, #/activity, #/python, #/servers, #/tasks). Each page module exports
// `render(main, arg)` returning an optional cleanup function.

import { token } from './api.js';
import { fill } from './dom.js';
import { live } from './live.js';
import * as activity from './pages/activity.js';
import * as python from './pages/python.js';
import * as servers from './pages/servers.js';
import * as tasks from './pages/tasks.js';
import * as tool from './pages/tool.js';
import * as tools from './pages/tools.js';

const PAGES = { tools, tool, activity, python, servers, tasks };
let cleanup = null;

function route() {
  const parts = location.hash.replace(/^#\/?/, '').split('/');
  const name = parts[0] || 'tools';
  if (name === 'tools' && parts.length > 1 && parts[1]) return ['tool', decodeURIComponent(parts.slice(1).join('/'))];
  return [PAGES[name] ? name : 'tools', ''];
}

function show() {
  if (cleanup) cleanup();
  const [name, arg] = route();
  const main = document.getElementById('main');
  fill(main);
  for (const link of document.querySelectorAll('nav a[data-page]')) {
    const here = link.dataset.page === name || (name === 'tool' && link.dataset.page === 'tools');
    if (here) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  cleanup = PAGES[name].render(main, arg) || null;
}

function showToken() {
  document.getElementById('token-state').textContent = token.get() ? 'kept in this tab' : 'none in this tab';
}

function showStatus() {
  const el = document.getElementById('live-status');
  el.textContent = live.problem
    ? live.problem
    : `${live.connected ? 'live' : 'reconnecting…'} · ${live.tools.size} tools · revision ${live.revision}`;
  el.classList.toggle('down', !live.connected || Boolean(live.problem));
}

function start() {
  const form = document.getElementById('token-form');
  const input = document.getElementById('token-input');
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    if (input.value) token.set(input.value);
    input.value = '';
    showToken();
  });
  document.getElementById('token-forget').addEventListener('click', () => {
    token.clear();
    input.value = '';
    showToken();
  });
  showToken();
  live.subscribe((kind) => {
    if (kind === 'status' || kind === 'tools') showStatus();
  });
  window.addEventListener('hashchange', show);
  show();
  live.start();
}

start();
