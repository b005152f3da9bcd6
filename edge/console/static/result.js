// A call's answer on the page: success or a clearly marked error, each content block (text, JSON,
// images shown inline from blob: URLs, resources and resource links as their JSON), the structured
// result and the duration. All as text.

import { ApiError, explain } from './api.js';
import { fmtMs, h, json } from './dom.js';

const IMAGE_TYPES = new Set(['image/png', 'image/jpeg', 'image/gif', 'image/webp', 'image/svg+xml']);

export function imageOf(block, label) {
  if (!IMAGE_TYPES.has(block.mime_type)) return h('p.muted', {}, `(an image of type ${block.mime_type}, not shown)`);
  const bytes = Uint8Array.from(atob(block.data), (c) => c.charCodeAt(0));
  const url = URL.createObjectURL(new Blob([bytes], { type: block.mime_type }));
  const img = h('img.result-image', { src: url, alt: label });
  // The blob: URL lives only until the image is loaded: opened as a page of its own (Open image in
  // new tab, a drag into the tab bar), an SVG's scripts would run in the console's origin, where
  // the CSP of /ui does not reach. A loaded image stays shown; the memory is freed too.
  const revoke = () => URL.revokeObjectURL(url);
  img.addEventListener('load', revoke, { once: true });
  img.addEventListener('error', revoke, { once: true });
  return img;
}

/** The nodes showing `resp` (the clean call shape) that took `roundTripMs` in the browser. */
export function resultView(resp, roundTripMs) {
  const ok = !resp.is_error;
  const head = ok
    ? h('p.outcome.ok', {}, '✓ Success')
    : h('p.outcome.error', { role: 'alert' }, `✗ Error: ${resp.error ? resp.error.type : 'UnknownError'}`);
  const blocks = [];
  let images = 0;
  for (const block of resp.content || []) {
    if (block.type === 'text') blocks.push(h('pre.out', {}, block.text));
    else if (block.type === 'json') blocks.push(h('pre.out', {}, json(block.value)));
    else if (block.type === 'image') blocks.push(imageOf(block, `image result ${++images}`));
    else if (block.type === 'audio') blocks.push(h('p.muted', {}, `(audio of type ${block.mime_type}, not played)`));
    else blocks.push(h('pre.out', {}, json(block))); // an MCP server's resource or resource link, as it came
  }
  return h(
    'div.result' + (ok ? '' : '.is-error'),
    { 'data-outcome': ok ? 'ok' : 'error' },
    head,
    !ok && resp.error ? h('pre.error-message', {}, resp.error.message) : null,
    blocks,
    resp.structured ? h('details', {}, h('summary', {}, 'Structured result'), h('pre.out', {}, json(resp.structured))) : null,
    h('p.muted.duration', {}, `tool: ${fmtMs(resp.duration_ms)} · round trip: ${fmtMs(roundTripMs)}`),
  );
}

/** The nodes showing a refused request (HTTP error) or an argument the form could not read. */
export function faultView(err) {
  const title = err instanceof ApiError ? `✗ Refused by the edge (HTTP ${err.status || '–'})` : '✗ Not sent';
  return h('div.result.is-error', { 'data-outcome': 'refused' }, h('p.outcome.error', { role: 'alert' }, title), h('pre.error-message', {}, explain(err)));
}
