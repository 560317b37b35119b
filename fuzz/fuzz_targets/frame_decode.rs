//! The stream decoder never panics on any byte stream cut at any point,
//! and never holds more than one maximum-size message of buffer.
#![no_main]

use bytes::BytesMut;
use hapool_wire::{AsapMessage, EnrpMessage, FrameDecoder, Message};
use libfuzzer_sys::fuzz_target;

fn run<M: Message>(data: &[u8], chunk: usize) {
    let mut decoder = FrameDecoder::<M>::new(4096);
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(e) if e.breaks_framing() => return,
                Err(_) => continue,
            }
        }
        // A length above the maximum is refused before any reservation,
        // so the buffer never grows far past what was fed plus one message.
        assert!(buf.capacity() <= 2 * (4096 + data.len()) + 64);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first).max(1);
    run::<AsapMessage>(rest, chunk);
    run::<EnrpMessage>(rest, chunk);
});
