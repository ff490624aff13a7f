//! A Wasmill middleware.

use wasmill_guest::{Error, Message, Middleware, Next, export_middleware};

struct Plugin;

impl Middleware for Plugin {
    fn handle(msg: Message, next: &Next) -> Result<Vec<Message>, Error> {
        // Change the message, call the rest of the chain, change what comes back.
        next.call(msg)
    }
}

export_middleware!(Plugin);
