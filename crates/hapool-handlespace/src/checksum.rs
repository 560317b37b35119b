//! The ENRP PE checksum (RFC 5353): a 16-bit one's-complement sum over the
//! pool handle and PE identifier of every PE a registrar is home for.
//!
//! Each PE contributes the 16-bit big-endian words of its pool handle
//! (padded with one zero byte when odd) and of its identifier. Sums are kept
//! as exact integers, so PEs can be added and removed in any order without
//! the underflow a folded running sum would risk; the carries are folded and
//! the result inverted only when the checksum is read.

use hapool_wire::PoolElementId;

/// The sum of a pool handle's 16-bit words (odd length padded with zero).
pub fn handle_sum(handle: &[u8]) -> u64 {
    handle
        .chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum()
}

/// What one PE adds to its owner's sum, given its pool's [`handle_sum`].
pub fn element_sum(handle_sum: u64, id: PoolElementId) -> u64 {
    handle_sum + u64::from(id.0 >> 16) + u64::from(id.0 & 0xFFFF)
}

/// A running checksum over a set of PEs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checksum {
    sum: u64,
}

impl Checksum {
    /// Adds a PE's [`element_sum`].
    pub fn add(&mut self, part: u64) {
        self.sum += part;
    }

    /// Removes a PE's [`element_sum`] that was added before.
    pub fn remove(&mut self, part: u64) {
        debug_assert!(self.sum >= part, "removing a PE that was never added");
        self.sum -= part;
    }

    /// The unfolded sum, to merge one set into another.
    pub(crate) fn raw(self) -> u64 {
        self.sum
    }

    /// The 16-bit checksum as carried in ENRP_PRESENCE (0xFFFF when empty).
    pub fn value(self) -> u16 {
        let mut acc = self.sum;
        while acc > 0xFFFF {
            acc = (acc & 0xFFFF) + (acc >> 16);
        }
        !(acc as u16)
    }
}

/// The checksum of a set of (pool handle, PE id) pairs, computed from scratch.
pub fn checksum_of<'a>(elements: impl IntoIterator<Item = (&'a [u8], PoolElementId)>) -> u16 {
    let mut c = Checksum::default();
    for (handle, id) in elements {
        c.add(element_sum(handle_sum(handle), id));
    }
    c.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vectors of the wire reference (section D.5).
    #[test]
    fn reference_vectors() {
        assert_eq!(
            checksum_of([(&b"Odd"[..], PoolElementId(0x0102_0304))]),
            0x4895
        );
        assert_eq!(
            checksum_of([
                (&b"EchoPool"[..], PoolElementId(0x1122_3344)),
                (&b"EchoPool"[..], PoolElementId(0x5566_7788)),
                (&b"DiscardPool1"[..], PoolElementId(0x0000_ABCD)),
                (&b"Odd"[..], PoolElementId(0x0102_0304)),
            ]),
            0x56E5
        );
        assert_eq!(checksum_of([]), 0xFFFF);
    }

    #[test]
    fn add_and_remove_in_any_order() {
        let parts: Vec<u64> = (0..1000u32)
            .map(|i| {
                element_sum(
                    handle_sum(b"pool"),
                    PoolElementId(i.wrapping_mul(2_654_435_761)),
                )
            })
            .collect();
        let mut c = Checksum::default();
        for p in &parts {
            c.add(*p);
        }
        for p in parts.iter().rev().step_by(2) {
            c.remove(*p);
        }
        let mut fresh = Checksum::default();
        for p in parts.iter().rev().skip(1).step_by(2) {
            fresh.add(*p);
        }
        assert_eq!(c.value(), fresh.value());
    }
}
