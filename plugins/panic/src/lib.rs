//! `panic`: panics with `boom` on every message but one whose payload is `spare me`, which it
//! returns (so a test can tell a batch's trapping message from the others).
//!
//! Built with `panic = "abort"`, the panic becomes a wasm trap: the host must turn it into a
//! failed message and throw the instance away, never crash.

use wasmill_guest::{Error, Handler, Message, export_handler};

struct Panic;

impl Handler for Panic {
    fn handle(msg: Message) -> Result<Vec<Message>, Error> {
        if msg.payload() == b"spare me" {
            return Ok(vec![msg]);
        }
        panic!("boom")
    }
}

export_handler!(Panic);
