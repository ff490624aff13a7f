// A Wasmill handler in JavaScript. Build it with `wasmill build .` (needs componentize-js).
import * as wasmill from './wasmill.js';

export const { handle, handleBatch } = wasmill.handler((msg) => {
  // Return what to publish (a message, an array, or nothing); throw to nack the input.
  return msg;
});
