//! `fanout`: one message in, N out.
//!
//! N comes from the metadata key `fanout` (default 3; 0 is allowed and produces nothing; a
//! value that is not a number is a permanent error). Each output is a copy of the input with a
//! fresh uuid and the metadata `fanout_index` set to its position, `0..N`.

use wasmill_guest::{Error, Handler, Message, export_handler};

/// A bound that keeps a typo in the metadata from producing millions of messages.
const MAX_FANOUT: usize = 10_000;

struct Fanout;

impl Handler for Fanout {
    fn handle(msg: Message) -> Result<Vec<Message>, Error> {
        let n = match msg.metadata().get("fanout") {
            None => 3,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .map_err(|e| Error::permanent(format!("invalid metadata fanout {v:?}: {e}")))?,
        };
        if n > MAX_FANOUT {
            return Err(Error::permanent(format!(
                "metadata fanout {n} exceeds the maximum {MAX_FANOUT}"
            )));
        }
        Ok((0..n)
            .map(|i| msg.derive().with_metadata("fanout_index", i.to_string()))
            .collect())
    }
}

export_handler!(Fanout);
