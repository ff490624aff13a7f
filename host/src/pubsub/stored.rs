//! How the durable backends (SQLite, PostgreSQL, MySQL, Redis Streams) store a message's
//! metadata: a JSON object of strings, in a column or stream field of its own. One encoding,
//! one decoder: a stored value that is not such an object (written by something else, or
//! damaged) never stops the message: it is delivered with the metadata that could be read
//! (none), and the problem is logged.

use std::collections::HashMap;

use crate::message::Metadata;

/// The stored form of `metadata`.
pub fn encode_metadata(metadata: &Metadata) -> String {
    // A map of strings always serialises.
    serde_json::to_string(metadata.as_map()).unwrap_or_else(|_| "{}".into())
}

/// Metadata from its stored form, or why it is not one.
pub fn try_decode_metadata(stored: &[u8]) -> Result<Metadata, String> {
    if stored.is_empty() {
        return Ok(Metadata::new());
    }
    serde_json::from_slice::<HashMap<String, String>>(stored)
        .map(Metadata::from)
        .map_err(|e| format!("stored metadata is not a JSON object of strings: {e}"))
}

/// Metadata from its stored form; a damaged value is logged (with `backend` and the message's
/// `uuid`) and read as no metadata, so the message is still delivered.
pub fn decode_metadata(backend: &str, uuid: &str, stored: &[u8]) -> Metadata {
    try_decode_metadata(stored).unwrap_or_else(|e| {
        tracing::warn!(backend, uuid, "{e}; delivered without metadata");
        Metadata::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn damaged_metadata_is_read_as_none() {
        assert!(try_decode_metadata(b"[1,2]").is_err());
        assert!(try_decode_metadata(b"{\"k\": 1}").is_err());
        assert_eq!(decode_metadata("t", "u", b"{oops"), Metadata::new());
        assert_eq!(try_decode_metadata(b"").unwrap(), Metadata::new());
    }

    proptest! {
        // The fuzz target `stored_metadata` (fuzz/) run as a property, briefly, in every test
        // run: any bytes give metadata or an error, never a panic; what is encoded reads back.
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = try_decode_metadata(&bytes);
        }

        #[test]
        fn encoded_metadata_reads_back(pairs in proptest::collection::hash_map(".{0,12}", ".{0,40}", 0..8)) {
            let m = Metadata::from(pairs);
            prop_assert_eq!(try_decode_metadata(encode_metadata(&m).as_bytes()).unwrap(), m);
        }
    }
}
