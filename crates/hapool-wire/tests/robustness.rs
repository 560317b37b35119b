//! Decoding is total and bounded: 100,000 random and mutated byte strings
//! go through every decoder; none panics, each gives a message or a typed
//! error with an RFC 5354 cause, a decoded message re-encodes to something
//! that decodes to itself, and no decode allocates more than a fixed
//! multiple of its input.
//!
//! This binary installs a counting allocator; it holds one test so that no
//! other thread allocates while it measures.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use hapool_wire::strategy::{asap_message, enrp_message};
use hapool_wire::{AsapMessage, EnrpMessage, FrameDecoder, Message};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates to the system allocator; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes a decode may allocate per input byte, plus a constant. The
/// densest structure (a pool element in 32 bytes of input) becomes about
/// 100 bytes of `PoolElement`; vectors grow by doubling, which at most
/// doubles that again, and error values copy the input once.
const ALLOC_PER_BYTE: usize = 16;
const ALLOC_FIXED: usize = 4096;

fn check_decoder<M: Message + PartialEq + std::fmt::Debug>(input: &[u8]) {
    let before = ALLOCATED.load(Ordering::Relaxed);
    let result = M::decode(input);
    let used = ALLOCATED.load(Ordering::Relaxed) - before;
    assert!(
        used <= ALLOC_FIXED + ALLOC_PER_BYTE * input.len(),
        "{} decode of {} bytes allocated {used} bytes: {}",
        M::PROTOCOL,
        input.len(),
        hex::encode(input)
    );
    match result {
        Ok(decoded) => {
            // Decoding is a function of the message, so a re-encoding of
            // the result decodes to the same message.
            if let Ok(bytes) = decoded.message.to_bytes() {
                let again = M::decode(&bytes).expect("re-encoded message decodes");
                assert_eq!(again.message, decoded.message);
            }
        }
        Err(e) => {
            // Every error has a cause or is an explicit silent discard.
            let _ = e.cause();
            let _ = e.to_string();
        }
    }
    // The stream decoder sees the same bytes with arbitrary framing.
    let mut buf = BytesMut::from(input);
    let mut decoder = FrameDecoder::<M>::default();
    for _ in 0..input.len() + 1 {
        match decoder.decode(&mut buf) {
            Ok(Some(_)) | Err(_) if !buf.is_empty() => continue,
            _ => break,
        }
    }
}

/// Mutations of a valid message: bit flips, byte overwrites, truncation,
/// insertion, and length fields set to nearby or extreme values.
fn mutate(mut bytes: Vec<u8>, ops: &[(u8, usize, u8)]) -> Vec<u8> {
    for &(op, pos, value) in ops {
        if bytes.is_empty() {
            break;
        }
        let i = pos % bytes.len();
        match op % 6 {
            0 => bytes[i] ^= 1 << (value % 8),
            1 => bytes[i] = value,
            2 => bytes.truncate(i),
            3 => bytes.insert(i, value),
            // Rewrite a 16-bit length field (at offset 2 of a TLV or header).
            4 => {
                let at = (i & !3) + 2;
                if at + 2 <= bytes.len() {
                    let len = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
                    let new = match value % 4 {
                        0 => len.wrapping_add(u16::from(value % 8)),
                        1 => len.wrapping_sub(u16::from(value % 8)),
                        2 => 0xFFFF,
                        _ => u16::from(value % 8),
                    };
                    bytes[at..at + 2].copy_from_slice(&new.to_be_bytes());
                }
            }
            // Keep the message length field consistent with the new size.
            _ => {
                if bytes.len() >= 4 {
                    let len = (bytes.len() as u16).to_be_bytes();
                    bytes[2..4].copy_from_slice(&len);
                }
            }
        }
    }
    bytes
}

#[test]
fn random_and_mutated_input_never_panics() {
    let cases: u32 = std::env::var("HAPOOL_ROBUSTNESS_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mutations = proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..6);
    let input = prop_oneof![
        // Pure noise, with a length field that matches about half the time.
        (
            proptest::collection::vec(any::<u8>(), 0..300),
            any::<bool>()
        )
            .prop_map(|(mut b, fix)| {
                if fix && b.len() >= 4 {
                    let len = (b.len() as u16).to_be_bytes();
                    b[2..4].copy_from_slice(&len);
                }
                b
            }),
        (asap_message(), mutations.clone())
            .prop_map(|(m, ops)| mutate(m.to_bytes().unwrap().to_vec(), &ops)),
        (enrp_message(), mutations)
            .prop_map(|(m, ops)| mutate(m.to_bytes().unwrap().to_vec(), &ops)),
    ];
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&input, |bytes| {
            check_decoder::<AsapMessage>(&bytes);
            check_decoder::<EnrpMessage>(&bytes);
            Ok(())
        })
        .unwrap();
}
