//! What the fuzz targets share.

use hapool_wire::Message;

/// Decoding never panics, and whatever decodes re-encodes to bytes that
/// decode to the same message.
pub fn decode_round_trip<M: Message + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(decoded) = M::decode(data)
        && let Ok(bytes) = decoded.message.to_bytes()
    {
        let again = M::decode(&bytes).expect("re-encoded message decodes");
        assert_eq!(again.message, decoded.message);
    }
}
