//! [`Message`] and [`Metadata`]: the friendly side of the WIT `message` resource.

use std::cell::OnceCell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::wit;

/// String key/value pairs attached to a message. Keys are unique; insertion order is kept
/// (it is not significant, but it makes output stable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(pub(crate) Vec<(String, String)>);

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
/// A message a handler receives stays in the host (a `message` resource of
/// `wasmill:plugin@0.2.0`): its uuid, metadata and payload are copied into the plugin only
/// when first read, and only what was changed is written back when it is returned. Returning
/// the message unchanged copies nothing at all; reading only its metadata never copies the
/// payload.
#[derive(Default)]
pub struct Message {
    /// The host's message, for one that came from the host.
    handle: Option<wit::Message>,
    uuid: OnceCell<String>,
    metadata: OnceCell<Metadata>,
    payload: OnceCell<Vec<u8>>,
    /// Which parts changed since they came from the host.
    changed: Changed,
}

#[derive(Debug, Default, Clone, Copy)]
struct Changed {
    uuid: bool,
    metadata: bool,
    payload: bool,
}

impl Message {
    /// A message with `payload`, no metadata and a freshly generated [`new_uuid`].
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Self::with_uuid(new_uuid(), payload)
    }

    /// A message with the given `uuid` and `payload` and no metadata.
    pub fn with_uuid(uuid: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            handle: None,
            uuid: OnceCell::from(uuid.into()),
            metadata: OnceCell::from(Metadata::new()),
            payload: OnceCell::from(payload.into()),
            changed: Changed::default(),
        }
    }

    /// Builder form of [`Metadata::set`].
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata_mut().set(key, value);
        self
    }

    /// The identifier, for debugging and deduplication; may be empty.
    pub fn uuid(&self) -> &str {
        self.uuid
            .get_or_init(|| self.handle.as_ref().map(|h| h.uuid()).unwrap_or_default())
    }

    /// Replaces the identifier.
    pub fn set_uuid(&mut self, uuid: impl Into<String>) {
        self.uuid = OnceCell::from(uuid.into());
        self.changed.uuid = true;
    }

    /// The metadata (read from the host on first use).
    pub fn metadata(&self) -> &Metadata {
        self.metadata.get_or_init(|| {
            Metadata(
                self.handle
                    .as_ref()
                    .map(|h| h.metadata())
                    .unwrap_or_default(),
            )
        })
    }

    /// The metadata, to change.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        self.metadata();
        self.changed.metadata = true;
        self.metadata.get_mut().expect("metadata loaded above")
    }

    /// The body (read from the host on first use).
    pub fn payload(&self) -> &[u8] {
        self.payload.get_or_init(|| {
            self.handle
                .as_ref()
                .map(|h| h.payload())
                .unwrap_or_default()
        })
    }

    /// The body, to change in place.
    pub fn payload_mut(&mut self) -> &mut Vec<u8> {
        self.payload();
        self.changed.payload = true;
        self.payload.get_mut().expect("payload loaded above")
    }

    /// Replaces the body (without reading the old one from the host).
    pub fn set_payload(&mut self, payload: impl Into<Vec<u8>>) {
        self.payload = OnceCell::from(payload.into());
        self.changed.payload = true;
    }

    /// The body's length in bytes (asked of the host, not copied, when not read yet).
    pub fn payload_len(&self) -> usize {
        match (self.payload.get(), &self.handle) {
            (Some(p), _) => p.len(),
            (None, Some(h)) => h.payload_len() as usize,
            (None, None) => 0,
        }
    }

    /// The body, taken out of the message.
    pub fn into_payload(mut self) -> Vec<u8> {
        self.payload();
        self.payload.take().unwrap_or_default()
    }

    /// The payload as UTF-8 text.
    pub fn payload_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(self.payload())
    }

    /// A copy with the same metadata and payload but a fresh uuid: what a handler returns when
    /// it forwards a message as a new one.
    #[must_use]
    pub fn derive(&self) -> Self {
        let mut m = Self::with_uuid(new_uuid(), self.payload().to_vec());
        m.metadata = OnceCell::from(self.metadata().clone());
        m
    }

    /// A message the host handed in: nothing is read yet.
    pub fn from_wit(handle: wit::Message) -> Self {
        Self {
            handle: Some(handle),
            ..Self::default()
        }
    }

    /// The host's message for this one: the handle it came with, updated with what changed,
    /// or a new one.
    pub fn into_wit(mut self) -> wit::Message {
        let pairs =
            |m: Option<Metadata>| -> Vec<(String, String)> { m.map(Vec::from).unwrap_or_default() };
        match self.handle.take() {
            Some(h) => {
                if self.changed.uuid {
                    h.set_uuid(self.uuid.get().map_or("", String::as_str));
                }
                if self.changed.metadata {
                    h.set_metadata(&pairs(self.metadata.take()));
                }
                if self.changed.payload {
                    h.set_payload(self.payload.get().map_or(&[][..], Vec::as_slice));
                }
                h
            }
            None => wit::Message::new(
                self.uuid.get().map_or("", String::as_str),
                &pairs(self.metadata.take()),
                self.payload.get().map_or(&[][..], Vec::as_slice),
            ),
        }
    }
}

impl Clone for Message {
    /// A copy with the same uuid, metadata and payload (read from the host if need be); it is
    /// a new message to the host.
    fn clone(&self) -> Self {
        let mut m = Self::with_uuid(self.uuid(), self.payload().to_vec());
        m.metadata = OnceCell::from(self.metadata().clone());
        m
    }
}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.uuid() == other.uuid()
            && self.metadata() == other.metadata()
            && self.payload() == other.payload()
    }
}

impl Eq for Message {}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("uuid", &self.uuid())
            .field("metadata", self.metadata())
            .field("payload_len", &self.payload_len())
            .finish()
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
    fn a_new_message_reads_and_changes_its_parts() {
        let mut m = Message::with_uuid("id-1", "hello").with_metadata("tenant", "acme");
        assert_eq!(m.uuid(), "id-1");
        assert_eq!(m.metadata().get("tenant"), Some("acme"));
        assert_eq!(m.payload_len(), 5);
        m.payload_mut().make_ascii_uppercase();
        assert_eq!(m.payload_str(), Ok("HELLO"));
        m.set_uuid("id-2");
        assert_eq!(m.uuid(), "id-2");
        assert_eq!(m.clone(), m);
        assert_eq!(m.into_payload(), b"HELLO");
    }

    #[test]
    fn message_new_has_a_v4_uuid() {
        let m = Message::new(b"x".to_vec());
        assert_eq!(m.payload_str(), Ok("x"));
        let u = m.uuid().as_bytes();
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
        assert_ne!(d.uuid(), m.uuid());
        assert_eq!(d.metadata(), m.metadata());
        assert_eq!(d.payload(), m.payload());
    }
}
