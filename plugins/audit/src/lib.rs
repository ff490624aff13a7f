//! `audit`: a MIDDLEWARE that requires a tenant and marks messages on both sides of the chain.
//!
//! - A message without the metadata key `tenant` fails with the permanent error
//!   `missing metadata tenant`, and the rest of the chain is not called.
//! - Otherwise the message passed to `next` carries `audit_before=1`, and every message `next`
//!   returns gets `audit_after=1`. An error from `next` is returned unchanged.

use wasmill_guest::{Error, Message, Middleware, Next, export_middleware};

struct Audit;

impl Middleware for Audit {
    fn handle(mut msg: Message, next: &Next) -> Result<Vec<Message>, Error> {
        if !msg.metadata().contains("tenant") {
            return Err(Error::permanent("missing metadata tenant"));
        }
        msg.metadata_mut().set("audit_before", "1");
        let mut out = next.call(msg)?;
        for m in &mut out {
            m.metadata_mut().set("audit_after", "1");
        }
        Ok(out)
    }
}

export_middleware!(Audit);
