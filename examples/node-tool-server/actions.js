'use strict';
// The tool's actions: plain functions from JSON arguments to a JSON result.
// A thrown ToolFailure (or any Error) becomes an is_error result, never an RPC error.

class ToolFailure extends Error {}

const TEXT_INPUT = {
  type: 'object',
  properties: { text: { type: 'string', description: 'The input text.', maxLength: 1000000 } },
  required: ['text'],
  additionalProperties: false,
};

const ACTIONS = {
  reverse: {
    description: 'Reverse a text, by Unicode code points.',
    inputSchema: TEXT_INPUT,
    outputSchema: { type: 'object', properties: { text: { type: 'string' } }, required: ['text'] },
    run: ({ text }) => ({ text: Array.from(text).reverse().join('') }),
  },
  word_count: {
    description: 'Count the words, lines and characters of a text.',
    inputSchema: TEXT_INPUT,
    outputSchema: {
      type: 'object',
      properties: { words: { type: 'integer' }, lines: { type: 'integer' }, characters: { type: 'integer' } },
      required: ['words', 'lines', 'characters'],
    },
    run: ({ text }) => ({
      words: (text.match(/\S+/gu) || []).length,
      lines: text === '' ? 0 : text.split(/\r\n|\r|\n/u).length,
      characters: Array.from(text).length,
    }),
  },
  parse_json: {
    description: 'Parse a JSON document and return it as structured data; invalid JSON is a tool error.',
    inputSchema: TEXT_INPUT,
    outputSchema: { type: 'object', properties: { value: {} }, required: ['value'] },
    run: ({ text }) => {
      try {
        return { value: JSON.parse(text) };
      } catch (err) {
        throw new ToolFailure(`invalid JSON: ${err.message}`);
      }
    },
  },
};

module.exports = { ACTIONS, ToolFailure };
