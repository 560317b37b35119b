//! Round trip of every message type with generated contents: decoding an
//! encoded message gives the message back, with no reports, and the
//! encoding is a whole number of 32-bit words.

use std::collections::HashSet;

use hapool_wire::strategy::{asap_message, enrp_message};
use hapool_wire::{AsapMessage, EnrpMessage, FrameDecoder, Message};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn asap_round_trip(msg in asap_message()) {
        let bytes = msg.to_bytes().unwrap();
        prop_assert_eq!(bytes.len() % 4, 0);
        let decoded = AsapMessage::decode(&bytes).unwrap();
        prop_assert_eq!(&decoded.message, &msg);
        prop_assert!(decoded.reports.is_empty());
    }

    #[test]
    fn enrp_round_trip(msg in enrp_message()) {
        let bytes = msg.to_bytes().unwrap();
        prop_assert_eq!(bytes.len() % 4, 0);
        let decoded = EnrpMessage::decode(&bytes).unwrap();
        prop_assert_eq!(&decoded.message, &msg);
        prop_assert!(decoded.reports.is_empty());
    }

    /// A stream of messages cut at arbitrary points comes out whole.
    #[test]
    fn framed_stream_round_trip(
        msgs in proptest::collection::vec(asap_message(), 1..6),
        cuts in proptest::collection::vec(1usize..200, 1..20),
    ) {
        let mut stream = Vec::new();
        for m in &msgs {
            stream.extend_from_slice(&m.to_bytes().unwrap());
        }
        let mut decoder = FrameDecoder::<AsapMessage>::default();
        let mut buf = bytes::BytesMut::new();
        let mut got = Vec::new();
        let mut rest = &stream[..];
        let mut cut = cuts.iter().cycle();
        while !rest.is_empty() {
            let n = (*cut.next().unwrap()).min(rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(d) = decoder.decode(&mut buf).unwrap() {
                got.push(d.message);
            }
        }
        prop_assert_eq!(got, msgs);
    }
}

/// The strategies reach every message type, so the properties above cover
/// all 14 ASAP and all 10 ENRP types.
#[test]
fn strategies_cover_every_type() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (asap, enrp) = (asap_message(), enrp_message());
    let mut asap_types = HashSet::new();
    let mut enrp_types = HashSet::new();
    for _ in 0..2000 {
        let m = asap.new_tree(&mut runner).unwrap().current();
        asap_types.insert(m.message_type() as u8);
        let m = enrp.new_tree(&mut runner).unwrap().current();
        enrp_types.insert(m.body.message_type() as u8);
    }
    assert_eq!(asap_types, (1..=14).collect());
    assert_eq!(enrp_types, (1..=10).collect());
}
