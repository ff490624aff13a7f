//! `always-fail`: fails every message with the retryable error `always fails`.
//!
//! For testing retries, the poison queue and the failure counters. Each failure is also
//! written to stderr (the host logs it at WARN), which shows a plugin's output on the
//! synchronous call path.

use wasmill_guest::{Error, Handler, Message, export_handler};

struct AlwaysFail;

impl Handler for AlwaysFail {
    fn handle(msg: Message) -> Result<Vec<Message>, Error> {
        eprintln!("always-fail: failing message {}", msg.uuid());
        Err(Error::retryable("always fails"))
    }
}

export_handler!(AlwaysFail);
