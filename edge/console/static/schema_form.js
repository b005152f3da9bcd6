// A form generated from a capability's JSON Schema: one labelled field per property (text,
// number, checkbox, choice, or JSON for anything structured). What is required is enforced by the
// mesh, which checks every call against the schema and says what is wrong; the form only refuses
// what it cannot send (a JSON field that does not parse, a number that is not one).

import { h } from './dom.js';

let counter = 0;

function isObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** A (sub)schema's own keywords in an object without a prototype: reading `type`, `enum`... never
 * finds something inherited, whatever the tool named its keywords or properties. */
function plain(value) {
  return Object.assign(Object.create(null), isObject(value) ? value : {});
}

function isCode(name, schema) {
  return /^(code|script|source|program|sql|query_text)$/.test(name) || (schema.maxLength || 0) > 500;
}

function typeOf(schema) {
  const t = schema.type;
  if (Array.isArray(t)) {
    const real = t.filter((x) => x !== 'null');
    return real.length === 1 ? real[0] : 'json';
  }
  if (Array.isArray(schema.enum)) return 'enum';
  return typeof t === 'string' && t ? t : 'json';
}

function field(name, schema, required) {
  const id = `f${++counter}`;
  const kind = typeOf(schema);
  const hintId = schema.description ? `${id}-hint` : undefined;
  const common = { id, name, 'aria-describedby': hintId, 'aria-required': required ? 'true' : undefined };
  let input;
  let read;
  if (kind === 'enum' || (kind === 'string' && Array.isArray(schema.enum))) {
    const options = (required ? [] : [h('option', { value: '' }, '(not set)')]).concat(
      schema.enum.map((v, i) => h('option', { value: String(i) }, JSON.stringify(v))),
    );
    input = h('select', common, options);
    read = () => (input.value === '' ? undefined : schema.enum[Number(input.value)]);
  } else if (kind === 'boolean') {
    input = h('input', { ...common, type: 'checkbox', checked: schema.default === true });
    read = () => (input.checked ? true : required ? false : undefined);
  } else if (kind === 'number' || kind === 'integer') {
    input = h('input', { ...common, type: 'text', inputmode: 'decimal', autocomplete: 'off' });
    read = () => {
      const raw = input.value.trim();
      if (raw === '') return undefined;
      const n = Number(raw);
      if (!Number.isFinite(n)) throw new Error(`${name}: ${JSON.stringify(raw)} is not a number`);
      return n;
    };
  } else if (kind === 'string') {
    input = isCode(name, schema)
      ? h('textarea.code', { ...common, rows: 6, spellcheck: 'false' })
      : h('input', { ...common, type: 'text', autocomplete: 'off' });
    read = () => (input.value === '' ? undefined : input.value);
  } else {
    input = h('textarea.code', { ...common, rows: 3, spellcheck: 'false', placeholder: 'JSON' });
    read = () => {
      const raw = input.value.trim();
      if (raw === '') return undefined;
      try {
        return JSON.parse(raw);
      } catch (err) {
        throw new Error(`${name}: not valid JSON (${err.message})`);
      }
    };
  }
  const label = h('label', { for: id }, name, required ? h('span.req', {}, ' (required)') : null);
  const typeNote = h('span.muted', {}, ` ${Array.isArray(schema.type) ? schema.type.join(' | ') : kind}`);
  const row = h(
    'div.field',
    {},
    h('div.label', {}, label, typeNote),
    input,
    hintId ? h('p.hint', { id: hintId }, schema.description) : null,
  );
  return { name, row, read };
}

/** {element, read()}: read() gives the arguments object, or throws an Error naming the field. */
export function schemaForm(schema) {
  // Own keywords and properties only: a property named `constructor` or `__proto__` is a field like
  // any other, never Object.prototype's.
  const s = plain(schema);
  const props = isObject(s.properties) ? s.properties : null;
  const required = new Set(Array.isArray(s.required) ? s.required : []);
  const fields = props ? Object.entries(props).map(([n, sub]) => field(n, plain(sub), required.has(n))) : [];
  let extra = null;
  if (!props || s.additionalProperties !== false) {
    extra = field(props ? 'more arguments' : 'arguments', { type: 'object', description: props ? 'Other arguments, as a JSON object' : 'The arguments, as a JSON object' }, false);
  }
  const element = h('div.fields', {}, fields.map((f) => f.row), extra ? extra.row : null);
  const read = () => {
    // Property names are the tool's (untrusted): on a plain object, `out['__proto__'] = v` (or
    // Object.assign of a parsed `{"__proto__": ...}`) would swap the object's prototype instead of
    // setting an argument. An object without a prototype has no such setter: every name is an own
    // property, and JSON.stringify sends it as one.
    const out = Object.create(null);
    if (extra) {
      const more = extra.read();
      if (more !== undefined) {
        if (typeof more !== 'object' || Array.isArray(more) || more === null) {
          throw new Error(`${extra.name}: must be a JSON object`);
        }
        for (const [key, value] of Object.entries(more)) out[key] = value;
      }
    }
    for (const f of fields) {
      const value = f.read();
      if (value !== undefined) out[f.name] = value;
    }
    return out;
  };
  return { element, read };
}
