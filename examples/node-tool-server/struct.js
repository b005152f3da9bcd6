'use strict';
// google.protobuf.Struct <-> plain JSON, for @grpc/proto-loader loaded with
// { oneofs: true, enums: String }: a decoded Value names its set field in
// `kind` ("stringValue", "structValue", ...); to encode, set that one field.

function toValue(x) {
  if (x === null || x === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof x === 'number') return { numberValue: x };
  if (typeof x === 'string') return { stringValue: x };
  if (typeof x === 'boolean') return { boolValue: x };
  if (Array.isArray(x)) return { listValue: { values: x.map(toValue) } };
  if (typeof x === 'object') return { structValue: toStruct(x) };
  throw new TypeError(`cannot encode ${typeof x} as google.protobuf.Value`);
}

function toStruct(obj) {
  const fields = {};
  for (const [k, v] of Object.entries(obj)) {
    if (v !== undefined) fields[k] = toValue(v);
  }
  return { fields };
}

function fromValue(v) {
  if (!v) return null;
  switch (v.kind) {
    case 'numberValue': return v.numberValue;
    case 'stringValue': return v.stringValue;
    case 'boolValue': return v.boolValue;
    case 'structValue': return fromStruct(v.structValue);
    case 'listValue': return ((v.listValue && v.listValue.values) || []).map(fromValue);
    default: return null; // nullValue or unset
  }
}

function fromStruct(s) {
  const out = {};
  for (const [k, v] of Object.entries((s && s.fields) || {})) out[k] = fromValue(v);
  return out;
}

module.exports = { toValue, toStruct, fromValue, fromStruct };
