//! `passthrough`: returns every message unchanged (same uuid, metadata and payload).
//!
//! The smallest possible handler: a baseline for the component's size and the host's
//! per-message overhead.

use wasmill_guest::{Error, Handler, Message, export_handler};

struct Passthrough;

impl Handler for Passthrough {
    fn handle(msg: Message) -> Result<Vec<Message>, Error> {
        Ok(vec![msg])
    }
}

export_handler!(Passthrough);
