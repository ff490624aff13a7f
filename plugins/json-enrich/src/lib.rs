//! `json-enrich`: parses the payload as a JSON object and adds `"enriched": true` and
//! `"handled_by": "json-enrich"` to it.
//!
//! A payload that is not JSON, or is JSON but not an object, is a permanent error whose
//! reason starts with `invalid json: `: retrying cannot fix it. The uuid and metadata are kept,
//! and `content-type` is set to `application/json`.

use serde_json::Value;
use wasmill_guest::{Error, Handler, Message, ResultExt, export_handler};

struct JsonEnrich;

impl Handler for JsonEnrich {
    fn handle(mut msg: Message) -> Result<Vec<Message>, Error> {
        let mut value: Value = serde_json::from_slice(msg.payload()).permanent("invalid json")?;
        let Some(object) = value.as_object_mut() else {
            return Err(Error::permanent("invalid json: payload is not an object"));
        };
        object.insert("enriched".into(), Value::Bool(true));
        object.insert("handled_by".into(), Value::from("json-enrich"));
        msg.set_payload(serde_json::to_vec(&value).permanent("encoding json")?);
        msg.metadata_mut().set("content-type", "application/json");
        Ok(vec![msg])
    }
}

export_handler!(JsonEnrich);
