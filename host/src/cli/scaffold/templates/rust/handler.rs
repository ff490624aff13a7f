//! A Wasmill handler.

use wasmill_guest::{Error, Handler, Message, export_handler};

struct Plugin;

impl Handler for Plugin {
    fn handle(msg: Message) -> Result<Vec<Message>, Error> {
        // Return the messages to publish; an Err nacks the input.
        Ok(vec![msg])
    }
}

export_handler!(Plugin);
