// A Wasmill middleware in JavaScript. Build it with `wasmill build .` (needs componentize-js).
import next from 'next';
import * as wasmill from './wasmill.js';

export const { handle } = wasmill.middleware((msg) => {
  // Change the message, run the rest of the chain, change what comes back.
  return next(msg);
});
