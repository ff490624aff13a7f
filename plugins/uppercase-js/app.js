// `uppercase` in JavaScript: the payload upper-cased, uuid and metadata kept (as
// plugins/uppercase). ASCII only, byte for byte, like the Rust one.
import * as wasmill from './wasmill.js';

export const { handle, handleBatch } = wasmill.handler((msg) => {
  const bytes = msg.payload();
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] >= 0x61 && bytes[i] <= 0x7a) bytes[i] -= 0x20;
  }
  msg.setPayload(bytes);
  return msg;
});
