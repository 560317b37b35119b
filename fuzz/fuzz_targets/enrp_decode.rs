//! ENRP decoding never panics, and whatever decodes re-encodes to bytes
//! that decode to the same message.
#![no_main]

use hapool_wire::{EnrpMessage, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = EnrpMessage::decode(data)
        && let Ok(bytes) = decoded.message.to_bytes()
    {
        let again = EnrpMessage::decode(&bytes).expect("re-encoded message decodes");
        assert_eq!(again.message, decoded.message);
    }
});
