// `json-enrich` in JavaScript (as plugins/json-enrich): the payload, a JSON object, gets
// `"enriched": true` and `"handled_by": "json-enrich"`; anything else is a permanent error
// whose reason starts with `invalid json: `. `content-type` is set to `application/json`.
import * as wasmill from './wasmill.js';

export const { handle, handleBatch } = wasmill.handler((msg) => {
  let value;
  try {
    value = JSON.parse(wasmill.text(msg));
  } catch (e) {
    throw new wasmill.Permanent(`invalid json: ${e.message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new wasmill.Permanent('invalid json: payload is not an object');
  }
  value.enriched = true;
  value.handled_by = 'json-enrich';
  wasmill.setText(msg, JSON.stringify(value));
  msg.set('content-type', 'application/json');
  return msg;
});
