//! Conversions between the host's [`Message`] and the WIT `message` record.

use bytes::Bytes;

use super::bindings::handler::wasmill::plugin::types;
use crate::error::{ErrorKind, HandlerError};
use crate::message::{Message, new_uuid};

/// The metadata of `m` as the borrowed pairs a [`types::MessageParam`] points to.
pub fn wit_metadata(m: &Message) -> Vec<(&str, &str)> {
    m.metadata.iter().collect()
}

/// `m` as the argument of a guest's `handle`: borrowed, so nothing is copied before the call
/// copies it into the guest's memory. `metadata` comes from [`wit_metadata`].
pub fn to_wit_param<'a>(
    m: &'a Message,
    metadata: &'a [(&'a str, &'a str)],
) -> types::MessageParam<'a> {
    types::MessageParam {
        uuid: &m.uuid,
        metadata,
        payload: &m.payload,
    }
}

/// The owned WIT record for `m` (what an import such as `next` returns to the guest).
pub fn to_wit(m: &Message) -> types::MessageResult {
    types::MessageResult {
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
pub fn to_wit_messages(msgs: &[Message]) -> Vec<types::MessageResult> {
    msgs.iter().map(to_wit).collect()
}

/// A new host message from a guest's record; an empty uuid gets a fresh one.
pub fn from_wit(m: types::MessageResult) -> Message {
    let uuid = if m.uuid.is_empty() {
        new_uuid()
    } else {
        m.uuid
    };
    let mut out = Message::with_uuid(uuid, Bytes::from(m.payload));
    // Collected at once: one map sized for the pairs (a repeated key keeps its last value).
    out.metadata = m.metadata.into_iter().collect();
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
        let fresh = from_wit(types::MessageResult {
            uuid: String::new(),
            metadata: vec![],
            payload: vec![],
        });
        assert!(!fresh.uuid.is_empty());
    }

    #[test]
    fn the_handle_argument_borrows_the_message() {
        let m = Message::with_uuid("u1", "payload").with_metadata("k", "v");
        let metadata = wit_metadata(&m);
        let param = to_wit_param(&m, &metadata);
        assert_eq!(param.uuid, "u1");
        assert_eq!(param.metadata, &[("k", "v")]);
        assert_eq!(
            param.payload.as_ptr(),
            m.payload.as_ptr(),
            "payload not copied"
        );
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
