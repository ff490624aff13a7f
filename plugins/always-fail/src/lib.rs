//! `always-fail`: fails every message with the retryable error `always fails`.
//!
//! For testing retries, the poison queue and the failure counters.

use wasmill_guest::{Error, Handler, Message, export_handler};

struct AlwaysFail;

impl Handler for AlwaysFail {
    fn handle(_msg: Message) -> Result<Vec<Message>, Error> {
        Err(Error::retryable("always fails"))
    }
}

export_handler!(AlwaysFail);
