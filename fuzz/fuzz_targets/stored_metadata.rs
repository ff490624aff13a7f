//! Any stored metadata value of the durable backends: metadata or a reason, and what decodes
//! encodes back to the same metadata.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmill::pubsub::stored::{encode_metadata, try_decode_metadata};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = try_decode_metadata(data) {
        let again = try_decode_metadata(encode_metadata(&m).as_bytes()).unwrap();
        assert_eq!(again, m);
    }
});
