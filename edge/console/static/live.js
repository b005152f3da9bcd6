// The mesh as the console sees it, kept live: the tools (GET /api/v1/tools, then the events
// WebSocket resumed from the listing's revision), the registry events, the steps of installs as
// they happen (the same socket, `installs=1`), and the recent calls (GET /api/v1/calls, polled from
// the last sequence number seen). Pages subscribe to changes.

import { api } from './api.js';

const MAX_EVENTS = 200;
const MAX_CALLS = 1000;
const CALLS_EVERY_MS = 1000;
const STATS_EVERY_MS = 2000;

class Live {
  constructor() {
    this.tools = new Map();
    this.revision = 0;
    this.events = [];
    this.calls = [];
    this.lastSeq = 0;
    this.connected = false;
    this.problem = '';
    this._listeners = new Set();
    this._socket = null;
    this._retryMs = 500;
    this._statsDue = false;
    this._lastStats = 0;
  }

  /** fn(kind, detail) on every change: 'tools', 'events', 'calls', 'status', and 'install' with
   * one install step (an `install_progress` message) as detail; returns the unsubscribe call. */
  subscribe(fn) {
    this._listeners.add(fn);
    return () => this._listeners.delete(fn);
  }

  _emit(kind, detail) {
    for (const fn of [...this._listeners]) {
      try {
        fn(kind, detail);
      } catch (err) {
        console.error('console listener failed', err);
      }
    }
  }

  async start() {
    await this.reload();
    this._connect();
    this._pollCalls();
  }

  async reload() {
    try {
      const listing = await api('GET', '/api/v1/tools');
      this.tools = new Map(listing.tools.map((t) => [t.tool_id, t]));
      this.revision = Math.max(this.revision, listing.revision);
      this._lastStats = Date.now();
      this.problem = '';
    } catch (err) {
      this.problem = `cannot list the tools: ${err.message}`;
    }
    this._emit('tools');
    this._emit('status');
  }

  _connect() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = `${scheme}//${location.host}/api/v1/events/tools?since=${this.revision}&installs=1`;
    const ws = new WebSocket(url);
    this._socket = ws;
    ws.onopen = () => {
      this.connected = true;
      this._retryMs = 500;
      this._emit('status');
    };
    ws.onmessage = (msg) => {
      let ev;
      try {
        ev = JSON.parse(msg.data);
      } catch {
        return;
      }
      this._onEvent(ev);
    };
    ws.onclose = () => {
      this.connected = false;
      this._emit('status');
      // Reconnect from the last revision seen: the edge replays what was missed.
      setTimeout(() => this._connect(), this._retryMs);
      this._retryMs = Math.min(this._retryMs * 2, 10000);
    };
  }

  _onEvent(ev) {
    if (ev.type === 'install_progress') {
      this._emit('install', ev);
      return;
    }
    if (ev.type === 'resync_required') {
      this.revision = ev.revision || 0;
      this.reload();
      return;
    }
    if (!ev.type || !ev.type.startsWith('tool_')) return;
    if (typeof ev.revision === 'number') this.revision = Math.max(this.revision, ev.revision);
    if (ev.type === 'tool_uninstalled') this.tools.delete(ev.tool_id);
    else if (ev.tool) this.tools.set(ev.tool_id, ev.tool);
    this.events.push({
      type: ev.type,
      tool_id: ev.tool_id,
      status: ev.status,
      health: ev.health,
      revision: ev.revision,
      timestamp: ev.timestamp,
      replayed: Boolean(ev.replayed),
    });
    if (this.events.length > MAX_EVENTS) this.events.splice(0, this.events.length - MAX_EVENTS);
    this._emit('tools');
    this._emit('events');
  }

  async _pollCalls() {
    try {
      const page = await api('GET', `/api/v1/calls?after=${this.lastSeq}`);
      if (page.last_seq < this.lastSeq) this.calls = []; // the edge restarted: its sequence too
      this.lastSeq = page.last_seq;
      if (page.calls.length) {
        this.calls.push(...page.calls);
        if (this.calls.length > MAX_CALLS) this.calls.splice(0, this.calls.length - MAX_CALLS);
        this._statsDue = true;
        this._emit('calls');
      }
      // The tools' usage figures change with calls, not with registry events: list again, at most
      // every STATS_EVERY_MS, after calls were seen.
      if (this._statsDue && Date.now() - this._lastStats >= STATS_EVERY_MS) {
        this._statsDue = false;
        await this.reload();
      }
    } catch {
      // The edge is away: the WebSocket's status says so; try again on the next tick.
    }
    setTimeout(() => this._pollCalls(), CALLS_EVERY_MS);
  }

  /** {count, errors, mean, p95} (ms) of the recent calls of `toolId`, or null. */
  recentFigures(toolId) {
    const durations = [];
    let errors = 0;
    for (const c of this.calls) {
      if (c.tool_id !== toolId) continue;
      durations.push(c.duration_ms);
      if (c.is_error) errors += 1;
    }
    if (!durations.length) return null;
    durations.sort((a, b) => a - b);
    const mean = durations.reduce((a, b) => a + b, 0) / durations.length;
    const p95 = durations[Math.min(durations.length - 1, Math.ceil(0.95 * durations.length) - 1)];
    return { count: durations.length, errors, mean, p95 };
  }
}

export const live = new Live();
