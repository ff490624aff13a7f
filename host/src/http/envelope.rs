//! The JSON shape of a message on the HTTP API.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::message::{Message, new_uuid};

/// `{"uuid", "metadata", "payload"}` (or `payload_base64` when the payload is not UTF-8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The message id (a fresh one when publishing without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// A UTF-8 payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// A binary payload, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

impl From<&Message> for Envelope {
    fn from(m: &Message) -> Self {
        let (payload, payload_base64) = match std::str::from_utf8(&m.payload) {
            Ok(s) => (Some(s.to_string()), None),
            Err(_) => (None, Some(STANDARD.encode(&m.payload))),
        };
        Envelope {
            uuid: Some(m.uuid.clone()),
            metadata: m
                .metadata
                .iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            payload,
            payload_base64,
        }
    }
}

impl Envelope {
    /// The message this envelope describes, or why it describes none.
    pub fn into_message(self) -> Result<Message, String> {
        let payload = match (self.payload, self.payload_base64) {
            (Some(_), Some(_)) => {
                return Err("give either \"payload\" or \"payload_base64\", not both".into());
            }
            (Some(p), None) => Bytes::from(p),
            (None, Some(b)) => Bytes::from(
                STANDARD
                    .decode(b.as_bytes())
                    .map_err(|e| format!("payload_base64: invalid base64: {e}"))?,
            ),
            (None, None) => return Err("missing \"payload\" (or \"payload_base64\")".into()),
        };
        let uuid = self.uuid.filter(|u| !u.is_empty()).unwrap_or_else(new_uuid);
        let mut m = Message::with_uuid(uuid, payload);
        for (k, v) in self.metadata {
            m.metadata.set(k, v);
        }
        crate::pubsub::delay::due_from_now(&mut m)?;
        Ok(m)
    }
}

/// The message of a `POST /topics/{topic}` body: a JSON envelope when `json`, else the raw
/// body as the payload.
pub fn parse_publish_body(json: bool, body: Bytes) -> Result<Message, String> {
    if !json {
        return Ok(Message::new(body));
    }
    let env: Envelope =
        serde_json::from_slice(&body).map_err(|e| format!("invalid JSON body: {e}"))?;
    env.into_message()
}

/// Whether a `Content-Type` value is JSON: the media type before any parameters
/// (`; charset=utf-8`), compared without regard to case, as RFC 9110 says.
pub fn is_json_media_type(value: &str) -> bool {
    value
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_raw_bodies() {
        let m = parse_publish_body(false, Bytes::from_static(b"hi")).unwrap();
        assert_eq!(m.payload, "hi");
        let m = parse_publish_body(
            true,
            Bytes::from_static(br#"{"uuid":"u","metadata":{"k":"v"},"payload":"p"}"#),
        )
        .unwrap();
        assert_eq!((m.uuid.as_str(), m.metadata.get("k")), ("u", "v"));
        let m =
            parse_publish_body(true, Bytes::from_static(br#"{"payload_base64":"AAE="}"#)).unwrap();
        assert_eq!(&m.payload[..], &[0, 1]);
        assert!(
            parse_publish_body(true, Bytes::from_static(b"{bad"))
                .unwrap_err()
                .contains("invalid JSON")
        );
        assert!(
            parse_publish_body(
                true,
                Bytes::from_static(br#"{"payload":"a","payload_base64":"AA=="}"#)
            )
            .is_err()
        );
        assert!(
            parse_publish_body(true, Bytes::from_static(br#"{"metadata":{}}"#))
                .unwrap_err()
                .contains("missing")
        );
    }

    #[test]
    fn non_utf8_payload_goes_base64() {
        let m = Message::with_uuid("u", vec![0xff, 0x00]);
        let e = Envelope::from(&m);
        assert_eq!(e.payload, None);
        assert_eq!(e.payload_base64.as_deref(), Some("/wA="));
    }

    #[test]
    fn json_media_types_are_matched_without_case_and_with_parameters() {
        assert!(is_json_media_type("application/json"));
        assert!(is_json_media_type("APPLICATION/JSON"));
        assert!(is_json_media_type("Application/Json ; charset=utf-8"));
        assert!(!is_json_media_type("application/jsonx"));
        assert!(!is_json_media_type("text/plain"));
    }

    proptest::proptest! {
        // The fuzz target `envelope` (fuzz/) as a property, briefly, in every test run: any
        // body, JSON or not, gives a message or a reason, never a panic.
        #[test]
        fn any_body_is_answered(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse_publish_body(true, Bytes::from(body.clone()));
            proptest::prop_assert!(parse_publish_body(false, Bytes::from(body)).is_ok());
        }

        #[test]
        fn any_envelope_shaped_json_is_answered(
            uuid in proptest::option::of("\\PC{0,40}"),
            key in "\\PC{0,10}",
            value in "\\PC{0,10}",
            payload in proptest::option::of("\\PC{0,40}"),
            b64 in proptest::option::of("[A-Za-z0-9+/=]{0,16}"),
        ) {
            let body = serde_json::json!({
                "uuid": uuid, "metadata": { key: value }, "payload": payload, "payload_base64": b64,
            });
            let _ = parse_publish_body(true, Bytes::from(body.to_string()));
        }

        #[test]
        fn any_content_type_is_classified(value in "\\PC{0,60}") {
            let _ = is_json_media_type(&value);
        }
    }
}
