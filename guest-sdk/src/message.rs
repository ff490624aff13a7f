//! [`Message`] and [`Metadata`]: the friendly side of the WIT `message` record.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::wit;

/// String key/value pairs attached to a message. Keys are unique; insertion order is kept
/// (it is not significant, but it makes output stable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(Vec<(String, String)>);

impl Metadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `key`, or `None` when it is not set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or `default` when it is not set.
    pub fn get_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).unwrap_or(default)
    }

    /// Sets `key` to `value`, returning the value it replaces.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        let key = key.into();
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => Some(std::mem::replace(v, value)),
            None => {
                self.0.push((key, value));
                None
            }
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let at = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(at).1)
    }

    /// Whether `key` is set.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The pairs, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Metadata {
    /// Collects pairs; a repeated key keeps its last value.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut m = Metadata::new();
        for (k, v) in iter {
            m.set(k, v);
        }
        m
    }
}

impl From<Metadata> for Vec<(String, String)> {
    fn from(m: Metadata) -> Self {
        m.0
    }
}

/// A message: an id, string metadata and a payload.
///
/// It converts to and from the WIT record with `From`/`Into`; the export macros do that for
/// you.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// An identifier for debugging and deduplication; may be empty.
    pub uuid: String,
    /// Key/value pairs.
    pub metadata: Metadata,
    /// The body.
    pub payload: Vec<u8>,
}

impl Message {
    /// A message with `payload`, no metadata and a freshly generated [`new_uuid`].
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Self::with_uuid(new_uuid(), payload)
    }

    /// A message with the given `uuid` and `payload` and no metadata.
    pub fn with_uuid(uuid: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            uuid: uuid.into(),
            metadata: Metadata::new(),
            payload: payload.into(),
        }
    }

    /// Builder form of [`Metadata::set`].
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.set(key, value);
        self
    }

    /// The payload as UTF-8 text.
    pub fn payload_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.payload)
    }

    /// A copy with the same metadata and payload but a fresh uuid: what a handler returns when
    /// it forwards a message as a new one.
    #[must_use]
    pub fn derive(&self) -> Self {
        Self {
            uuid: new_uuid(),
            ..self.clone()
        }
    }
}

impl From<wit::Message> for Message {
    /// Takes the record's fields as they are: the WIT contract has the host send unique
    /// metadata keys, so the pairs become the [`Metadata`] without a copy or a check.
    fn from(m: wit::Message) -> Self {
        Self {
            uuid: m.uuid,
            metadata: Metadata(m.metadata),
            payload: m.payload,
        }
    }
}

impl From<Message> for wit::Message {
    fn from(m: Message) -> Self {
        Self {
            uuid: m.uuid,
            metadata: m.metadata.into(),
            payload: m.payload,
        }
    }
}

/// A random version-4 UUID in its hyphenated text form.
///
/// The randomness comes from the standard library's hash seeds (on `wasm32-wasip2`,
/// `wasi:random`, which every host provides without granting anything), mixed with a
/// per-instance counter so two calls never return the same value.
pub fn new_uuid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Each RandomState has fresh keys (the thread's random seed, incremented per call).
    let mix = |salt: u64| {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u64(salt);
        h.finish()
    };
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&mix(0x5157_a1b2).to_le_bytes());
    b[8..].copy_from_slice(&mix(0x9e37_79b9).to_le_bytes());
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex =
        |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!(
        "{}-{}-{}-{}-{}",
        hex(0..4),
        hex(4..6),
        hex(6..8),
        hex(8..10),
        hex(10..16)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn metadata_get_set_remove() {
        let mut m = Metadata::new();
        assert_eq!(m.get("a"), None);
        assert_eq!(m.get_or("a", "dflt"), "dflt");
        assert_eq!(m.set("a", "1"), None);
        assert_eq!(m.set("b", "2"), None);
        assert_eq!(m.set("a", "3"), Some("1".to_string()));
        assert_eq!(m.get("a"), Some("3"));
        assert_eq!(m.len(), 2);
        assert!(m.contains("b"));
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![("a", "3"), ("b", "2")]);
        assert_eq!(m.remove("a"), Some("3".to_string()));
        assert_eq!(m.remove("a"), None);
        assert!(!m.contains("a"));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn metadata_from_pairs_keeps_last_duplicate() {
        let m: Metadata = [("k", "1"), ("j", "x"), ("k", "2")].into_iter().collect();
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("k"), Some("2"));
    }

    #[test]
    fn message_round_trips_through_the_wit_record() {
        let m = Message::with_uuid("id-1", "hello").with_metadata("tenant", "acme");
        let w: wit::Message = m.clone().into();
        assert_eq!(w.uuid, "id-1");
        assert_eq!(w.metadata, vec![("tenant".to_string(), "acme".to_string())]);
        assert_eq!(w.payload, b"hello");
        assert_eq!(Message::from(w), m);
    }

    #[test]
    fn message_new_has_a_v4_uuid() {
        let m = Message::new(b"x".to_vec());
        assert_eq!(m.payload_str(), Ok("x"));
        let u = m.uuid.as_bytes();
        assert_eq!(u.len(), 36);
        for i in [8, 13, 18, 23] {
            assert_eq!(u[i], b'-');
        }
        assert_eq!(u[14], b'4');
        assert!(matches!(u[19], b'8' | b'9' | b'a' | b'b'));
    }

    #[test]
    fn uuids_are_unique() {
        let ids: HashSet<String> = (0..10_000).map(|_| new_uuid()).collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn derive_keeps_content_with_a_new_uuid() {
        let m = Message::with_uuid("same", "p").with_metadata("k", "v");
        let d = m.derive();
        assert_ne!(d.uuid, m.uuid);
        assert_eq!(d.metadata, m.metadata);
        assert_eq!(d.payload, m.payload);
    }
}
