//! Conversions between the host's [`Message`] and the WIT `message` record.

use bytes::Bytes;

use super::bindings::handler::wasmill::plugin::types;
use crate::error::{ErrorKind, HandlerError};
use crate::message::{Message, new_uuid};

/// The WIT record for `m` (the payload is copied: it is about to be copied into the guest).
pub fn to_wit(m: &Message) -> types::Message {
    types::Message {
        uuid: m.uuid.clone(),
        metadata: m
            .metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        payload: m.payload.to_vec(),
    }
}

/// The WIT records for `msgs`.
pub fn to_wit_messages(msgs: &[Message]) -> Vec<types::Message> {
    msgs.iter().map(to_wit).collect()
}

/// A new host message from a guest's record; an empty uuid gets a fresh one.
pub fn from_wit(m: types::Message) -> Message {
    let uuid = if m.uuid.is_empty() {
        new_uuid()
    } else {
        m.uuid
    };
    let mut out = Message::with_uuid(uuid, Bytes::from(m.payload));
    for (k, v) in m.metadata {
        out.metadata.set(k, v);
    }
    out
}

/// A guest's error as a handler error, keeping its retryable flag.
pub fn from_wit_error(e: types::HandlerError) -> HandlerError {
    HandlerError::with_kind(ErrorKind::Handler, e.reason).with_retryable(e.retryable)
}

/// A handler error as the guest sees it (from `next`).
pub fn to_wit_error(e: &HandlerError) -> types::HandlerError {
    types::HandlerError {
        reason: e.reason().to_string(),
        retryable: e.is_retryable(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_uuid_metadata_payload() {
        let m = Message::with_uuid("u1", "p").with_metadata("k", "v");
        let back = from_wit(to_wit(&m));
        assert_eq!(back, m);
        let fresh = from_wit(types::Message {
            uuid: String::new(),
            metadata: vec![],
            payload: vec![],
        });
        assert!(!fresh.uuid.is_empty());
    }

    #[test]
    fn errors_keep_retryable() {
        let e = from_wit_error(types::HandlerError {
            reason: "bad".into(),
            retryable: false,
        });
        assert!(!e.is_retryable());
        assert_eq!(to_wit_error(&e).reason, "bad");
    }
}
