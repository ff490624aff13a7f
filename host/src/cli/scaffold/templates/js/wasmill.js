// Wasmill's JavaScript SDK: a handler or a middleware is one function.
//
//   import * as wasmill from './wasmill.js';
//
//   export const { handle, handleBatch } = wasmill.handler((msg) => {
//     wasmill.setText(msg, wasmill.text(msg).toUpperCase());
//     return msg;
//   });
//
// The function returns what to publish: a message, an array of messages, or nothing.
// Throwing fails the message (the input is nacked; the host's retry and poison-queue policy
// decides what follows): `throw new wasmill.Permanent("reason")` says trying again cannot
// help, anything else thrown is retryable, with its message as the reason.
//
// `Message` is the host's message: uuid(), get(key), set(key, value), remove(key),
// metadata() (an array of [key, value]), payload() (a Uint8Array), payloadLen(),
// setPayload(bytes); `wasmill.message()` makes a new one. A middleware imports the rest of
// the chain itself (`import next from 'next';`) and calls `next(msg)`.
// Written into the project by `wasmill new`; edit freely.

import { log as hostLog, publish as hostPublish } from 'wasmill:plugin/host@0.2.0';
import { Message } from 'wasmill:plugin/types@0.2.0';

export { Message };

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A failure that trying again cannot fix: no retries, straight to the poison queue. */
export class Permanent extends Error {
  get retryable() {
    return false;
  }
}

/** A new message; an empty uuid gets a fresh one from the host. */
export function message(payload, metadata = {}, uuid = '') {
  const body = typeof payload === 'string' ? encoder.encode(payload) : payload;
  return new Message(uuid, Object.entries(metadata).map(([k, v]) => [k, String(v)]), body);
}

/** The payload as UTF-8 text. */
export function text(msg) {
  return decoder.decode(msg.payload());
}

/** Replaces the payload with `value` encoded as UTF-8. */
export function setText(msg, value) {
  msg.setPayload(encoder.encode(value));
}

/** Publishes `msg` to `topic` now (the topic must be granted in the handler's config). */
export function publish(topic, msg) {
  try {
    hostPublish(topic, msg);
  } catch (e) {
    throw new Error(`publish to ${topic}: ${e.payload ?? e}`);
  }
}

/** Writes a record to the host's log: level is trace, debug, info, warn or error. */
export function log(level, value, fields = {}) {
  hostLog(level, String(value), Object.entries(fields).map(([k, v]) => [k, String(v)]));
}

function outputs(result) {
  if (result === undefined || result === null) return [];
  if (Array.isArray(result)) return result;
  return [result];
}

// What a thrown value means to the host: `{ reason, retryable }`.
function handlerError(e) {
  const inner = e && e.payload; // a failure of `next`, passed on unchanged
  if (inner && typeof inner.reason === 'string') return inner;
  const reason = (e && e.message) || String(e) || 'error';
  return { reason, retryable: !(e && e.retryable === false) };
}

function run(fn, msg) {
  try {
    return { tag: 'ok', val: outputs(fn(msg)) };
  } catch (e) {
    return { tag: 'err', val: handlerError(e) };
  }
}

/** The exports of a handler calling `fn(msg)`: `export const { handle, handleBatch } = ...`. */
export function handler(fn) {
  return {
    handle(msg) {
      const r = run(fn, msg);
      if (r.tag === 'err') throw r.val;
      return r.val;
    },
    handleBatch(msgs) {
      return msgs.map((msg) => run(fn, msg));
    },
  };
}

/** The exports of a middleware calling `fn(msg)`: `export const { handle } = ...`. */
export function middleware(fn) {
  return handler(fn);
}
