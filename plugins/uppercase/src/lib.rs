//! `uppercase`: returns the message with its payload in ASCII upper case.
//!
//! Bytes outside `a..=z` are kept as they are, so any payload (UTF-8 or not) is accepted; the
//! uuid and metadata are kept too.

use wasmill_guest::{Error, Handler, Message, export_handler};

struct Uppercase;

impl Handler for Uppercase {
    fn handle(mut msg: Message) -> Result<Vec<Message>, Error> {
        msg.payload_mut().make_ascii_uppercase();
        Ok(vec![msg])
    }
}

export_handler!(Uppercase);
