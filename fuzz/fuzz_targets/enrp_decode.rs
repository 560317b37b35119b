//! ENRP decoding never panics and round-trips what it accepts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hapool_fuzz::decode_round_trip::<hapool_wire::EnrpMessage>(data);
});
