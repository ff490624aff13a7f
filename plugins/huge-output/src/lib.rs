//! `huge-output`: returns far more than a handler should.
//!
//! - metadata `mode=bytes` (the default): one message with a 100 MiB payload;
//! - metadata `mode=count`: 1,000,000 one-byte messages with empty uuids.
//!
//! Another mode is a permanent error. The host must enforce its output limits (or its memory
//! limit) and fail the message rather than publish it all.

use wasmill_guest::{Error, Handler, Message, export_handler};

const BYTES: usize = 100 << 20;
const COUNT: usize = 1_000_000;

struct HugeOutput;

impl Handler for HugeOutput {
    fn handle(msg: Message) -> Result<Vec<Message>, Error> {
        match msg.metadata().get_or("mode", "bytes") {
            "bytes" => Ok(vec![Message::with_uuid(msg.uuid(), vec![b'x'; BYTES])]),
            // Empty uuids and a one-byte payload: as cheap to produce as a message can be, so
            // the host's limits, not the guest's fuel, are what a test exercises.
            "count" => Ok((0..COUNT).map(|_| Message::with_uuid("", "x")).collect()),
            other => Err(Error::permanent(format!(
                "invalid metadata mode {other:?}: expected bytes or count"
            ))),
        }
    }
}

export_handler!(HugeOutput);
