//! The JSON marshaler: a command or event as a message whose payload is its JSON and whose
//! metadata `name` is its type name.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::message::Message;

/// The metadata key holding a command's or event's name.
pub const NAME: &str = "name";

/// `value` as a message named `name` (a fresh uuid).
pub fn marshal<T: Serialize>(name: &str, value: &T) -> Result<Message, String> {
    let payload = serde_json::to_vec(value).map_err(|e| format!("marshal {name}: {e}"))?;
    let mut msg = Message::new(payload);
    msg.metadata.set(NAME, name);
    Ok(msg)
}

/// The value of a message made by [`marshal`].
pub fn unmarshal<T: DeserializeOwned>(msg: &Message) -> Result<T, String> {
    serde_json::from_slice(&msg.payload)
        .map_err(|e| format!("unmarshal {}: {e}", name_of(msg).unwrap_or("(no name)")))
}

/// The name a message carries, if any.
pub fn name_of(msg: &Message) -> Option<&str> {
    msg.metadata.get_opt(NAME).filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, PartialEq, Debug)]
    struct PlaceOrder {
        id: u32,
    }

    #[test]
    fn a_value_goes_through_a_message_with_its_name() {
        let m = marshal("PlaceOrder", &PlaceOrder { id: 7 }).unwrap();
        assert_eq!(name_of(&m), Some("PlaceOrder"));
        assert_eq!(unmarshal::<PlaceOrder>(&m).unwrap(), PlaceOrder { id: 7 });
        let bad = Message::new("nope");
        assert_eq!(name_of(&bad), None);
        assert!(
            unmarshal::<PlaceOrder>(&bad)
                .unwrap_err()
                .contains("(no name)")
        );
    }
}
