//! Any `POST /topics/{t}` body, as JSON and raw, and any `Content-Type` value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmill::http::envelope::{is_json_media_type, parse_publish_body};

fuzz_target!(|data: &[u8]| {
    let _ = parse_publish_body(true, bytes::Bytes::copy_from_slice(data));
    assert!(parse_publish_body(false, bytes::Bytes::copy_from_slice(data)).is_ok());
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = is_json_media_type(s);
    }
});
