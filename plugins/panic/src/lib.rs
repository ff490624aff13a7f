//! `panic`: panics with `boom` on every message.
//!
//! Built with `panic = "abort"`, the panic becomes a wasm trap: the host must turn it into a
//! failed message and throw the instance away, never crash.

use wasmill_guest::{Error, Handler, Message, export_handler};

struct Panic;

impl Handler for Panic {
    fn handle(_msg: Message) -> Result<Vec<Message>, Error> {
        panic!("boom")
    }
}

export_handler!(Panic);
