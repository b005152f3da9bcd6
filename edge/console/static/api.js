// The console's one door to the mesh: the edge's public REST API, same origin (JSON, and server-sent
// events for what it follows as it happens). The admin token
// lives in this tab's sessionStorage, is sent only as `Authorization: Bearer`, and never goes into
// a URL, the page, or a log.

const TOKEN_KEY = 'toolscore.admin_token';

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || '',
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

/** A refusal from the edge (HTTP 4xx/5xx), with the mesh's error shape when it sent one. */
export class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.message || body.error)) || `HTTP ${status}`);
    this.status = status;
    this.reason = (body && body.reason) || '';
    this.code = (body && body.code) || '';
    this.body = body;
  }
}

/** `method path` with an optional JSON body; the answer's JSON, or ApiError. */
export async function api(method, path, body, { signal } = {}) {
  const headers = { Accept: 'application/json' };
  const secret = token.get();
  if (secret) headers.Authorization = `Bearer ${secret}`;
  const init = { method, headers, signal, cache: 'no-store', credentials: 'omit' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, { message: `the edge did not answer (${err.message})`, reason: 'UNREACHABLE' });
  }
  let data = null;
  try {
    data = await resp.json();
  } catch {
    data = null;
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

/** A sentence for a refusal, saying what to do when the admin token is the problem. */
export function explain(err) {
  if (!(err instanceof ApiError)) return String(err && err.message ? err.message : err);
  const where = err.status ? `HTTP ${err.status}${err.reason ? ' ' + err.reason : ''}` : err.reason;
  if (err.status === 401) {
    const hint = token.get() ? 'the admin token kept in this tab was refused' : 'enter the admin token at the top';
    return `This needs the admin token: ${hint}. (${where}: ${err.message})`;
  }
  return `${err.message} (${where})`;
}

/** Follow `path` as server-sent events: onEvent(event, data) for each, data parsed as JSON. Resolves
 * when the edge ends the stream (or `signal` aborts it); a refusal is an ApiError, as with api(). */
export async function follow(path, onEvent, { signal } = {}) {
  const headers = { Accept: 'text/event-stream' };
  const secret = token.get();
  if (secret) headers.Authorization = `Bearer ${secret}`;
  let resp;
  try {
    resp = await fetch(path, { headers, signal, cache: 'no-store', credentials: 'omit' });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, { message: `the edge did not answer (${err.message})`, reason: 'UNREACHABLE' });
  }
  if (!resp.ok) {
    let data = null;
    try {
      data = await resp.json();
    } catch {
      data = null;
    }
    throw new ApiError(resp.status, data);
  }
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event: ')) event = line.slice(7);
        else if (line.startsWith('data: ')) data.push(line.slice(6));
      }
      if (data.length) onEvent(event, JSON.parse(data.join('\n')));
    }
  }
}
