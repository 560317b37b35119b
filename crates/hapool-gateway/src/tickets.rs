//! TLS session tickets: what lets a client resume its TLS session with an
//! abbreviated handshake, and (with TLS-session affinity) carries the
//! session the gateway keeps it on.
//!
//! By default a gateway makes its own ticket keys (random, rotated every
//! six hours), so a ticket resumes only at the gateway that issued it.
//! With [`TicketKeys`] from a file that every gateway of a site reads,
//! a ticket issued by one resumes at any other: after a handover to a
//! successor, or when the virtual address moves to another machine. The
//! first key of the file encrypts new tickets and every key decrypts,
//! which is what lets operators rotate keys without a failed resumption
//! (docs/operations.md says how).
//!
//! A ticket is `name ‖ nonce ‖ AEAD(issued ‖ session)`: the 16-byte name
//! of the key that sealed it, a random 12-byte nonce, and, sealed with
//! ChaCha20-Poly1305 under the name as associated data, the second it was
//! issued (8 bytes, big-endian Unix time) followed by what rustls keeps of
//! the session. Both the name and the key are derived from the file's
//! 32-byte secret with HKDF-SHA256, so a line of the file is all a gateway
//! needs. A ticket older than the lifetime is refused even while its key
//! is still listed; the keys' removal is what ends the damage a stolen key
//! can do, since whoever holds a key can read the session secrets of the
//! tickets it sealed.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

/// Bytes of a ticket key's secret (64 hex digits on a line of the file).
pub const SECRET_LEN: usize = 32;
/// Bytes of the name a ticket carries to say which key sealed it.
const NAME_LEN: usize = 16;
/// Bytes of the time a ticket was issued, sealed with the session.
const ISSUED_LEN: usize = 8;
/// Bytes of the AEAD tag.
const TAG_LEN: usize = 16;
/// The longest ticket opened. What rustls keeps of a session (secrets,
/// the server name, the protocol) takes a few hundred bytes; anything far
/// longer was not made by a gateway.
const MAX_TICKET_LEN: usize = 4096;
/// The longest lifetime TLS 1.3 allows a ticket (RFC 8446, 4.6.1).
pub const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long tickets are good for unless configured otherwise.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(6 * 3600);
/// How far in the future a ticket's issue time may lie (another gateway's
/// clock running ahead) before the ticket is refused.
const CLOCK_SKEW: u64 = 300;

/// What is wrong with a ticket key file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TicketKeysError {
    /// A line that is not a key.
    #[error("line {line}: {why}")]
    Line {
        /// Its number, from 1.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
    /// The same key twice.
    #[error("line {line}: the key of line {first} again")]
    Duplicate {
        /// The line of the second.
        line: usize,
        /// The line of the first.
        first: usize,
    },
    /// No key at all.
    #[error("no key: one line of 64 hex digits at least (hapool gateway ticket-key makes one)")]
    Empty,
    /// A lifetime TLS cannot give a ticket.
    #[error("ticket lifetime {0:?}: from 1s to 7 days")]
    Lifetime(Duration),
}

/// One key: the name tickets carry and the key that seals them.
struct TicketKey {
    name: [u8; NAME_LEN],
    key: LessSafeKey,
}

/// HKDF output lengths that are not an AEAD key.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl TicketKey {
    fn derive(secret: &[u8; SECRET_LEN]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"hapool session tickets").extract(secret);
        let mut name = [0; NAME_LEN];
        prk.expand(&[b"key name"], Len(NAME_LEN))
            .and_then(|okm| okm.fill(&mut name))
            .expect("16 bytes are within what HKDF-SHA256 can expand to");
        let key: UnboundKey = prk
            .expand(&[b"key"], &CHACHA20_POLY1305)
            .expect("an AEAD key is within what HKDF-SHA256 can expand to")
            .into();
        Self {
            name,
            key: LessSafeKey::new(key),
        }
    }
}

/// Ticket keys shared by gateways, from a file: one key per line, 64 hex
/// digits (32 random bytes); empty lines and lines starting with `#` are
/// skipped. The first key seals new tickets; every key opens them.
#[derive(Clone)]
pub struct TicketKeys {
    keys: Arc<[TicketKey]>,
    lifetime: Duration,
}

impl TicketKeys {
    /// Reads the keys from `text` (a file's contents); tickets are good
    /// for `lifetime`.
    pub fn parse(text: &str, lifetime: Duration) -> Result<Self, TicketKeysError> {
        if lifetime < Duration::from_secs(1) || lifetime > MAX_LIFETIME {
            return Err(TicketKeysError::Lifetime(lifetime));
        }
        let mut keys: Vec<(usize, TicketKey)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| TicketKeysError::Line {
                line: line_no,
                why: why.to_owned(),
            };
            if line.len() != 2 * SECRET_LEN {
                return Err(bad(&format!(
                    "{} characters where a key is 64 hex digits",
                    line.chars().count()
                )));
            }
            let mut secret = [0; SECRET_LEN];
            hex::decode_to_slice(line, &mut secret)
                .map_err(|_| bad("not hex digits (a key is 64 of 0-9, a-f)"))?;
            let key = TicketKey::derive(&secret);
            if let Some((first, _)) = keys.iter().find(|(_, k)| k.name == key.name) {
                return Err(TicketKeysError::Duplicate {
                    line: line_no,
                    first: *first,
                });
            }
            keys.push((line_no, key));
        }
        if keys.is_empty() {
            return Err(TicketKeysError::Empty);
        }
        Ok(Self {
            keys: keys.into_iter().map(|(_, k)| k).collect(),
            lifetime,
        })
    }

    /// A new key, as a line of the file (64 hex digits).
    pub fn new_key() -> Result<String, rustls::Error> {
        let mut secret = [0; SECRET_LEN];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| rustls::Error::FailedToGetRandomBytes)?;
        Ok(hex::encode(secret))
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How long a ticket is good for.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The first four bytes of the sealing key's name, in hex: the same
    /// on every gateway that reads the same first key, and nothing of
    /// the secret.
    pub fn sealing_id(&self) -> String {
        hex::encode(&self.keys[0].name[..4])
    }

    fn seal(&self, session: &[u8], now: u64) -> Option<Vec<u8>> {
        let key = &self.keys[0];
        let mut nonce = [0; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let mut ticket =
            Vec::with_capacity(NAME_LEN + NONCE_LEN + ISSUED_LEN + session.len() + TAG_LEN);
        ticket.extend_from_slice(&key.name);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&now.to_be_bytes());
        ticket.extend_from_slice(session);
        let tag = key
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.name),
                &mut ticket[NAME_LEN + NONCE_LEN..],
            )
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        Some(ticket)
    }

    fn open(&self, ticket: &[u8], now: u64) -> Option<Vec<u8>> {
        if ticket.len() < NAME_LEN + NONCE_LEN + ISSUED_LEN + TAG_LEN
            || ticket.len() > MAX_TICKET_LEN
        {
            return None;
        }
        let (name, rest) = ticket.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let key = self.keys.iter().find(|k| k.name == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut opened = sealed.to_vec();
        let len = key
            .key
            .open_in_place(nonce, Aad::from(&key.name), &mut opened)
            .ok()?
            .len();
        opened.truncate(len);
        let issued = u64::from_be_bytes(opened[..ISSUED_LEN].try_into().ok()?);
        let fresh =
            issued <= now + CLOCK_SKEW && now.saturating_sub(issued) <= self.lifetime.as_secs();
        fresh.then(|| opened.split_off(ISSUED_LEN))
    }
}

impl PartialEq for TicketKeys {
    /// The same keys (by their derived names) in the same order, and the
    /// same lifetime.
    fn eq(&self, other: &Self) -> bool {
        self.lifetime == other.lifetime
            && self.keys.len() == other.keys.len()
            && self
                .keys
                .iter()
                .zip(other.keys.iter())
                .all(|(a, b)| a.name == b.name)
    }
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys themselves.
        f.debug_struct("TicketKeys")
            .field("keys", &self.keys.len())
            .field("sealing", &self.sealing_id())
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.lifetime.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain, unix_now())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open(cipher, unix_now())
    }
}

/// Which keys a gateway's session tickets are sealed with, as `/status`
/// shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TicketStatus {
    /// Keys from `ticket_keys`, shared with other gateways; else the
    /// gateway's own.
    pub shared: bool,
    /// How many shared keys there are.
    pub keys: usize,
    /// The first four bytes of the sealing key's name, in hex
    /// ([`TicketKeys::sealing_id`]).
    pub sealing: Option<String>,
    /// How long a ticket resumes, in seconds.
    pub lifetime_s: Option<u64>,
}

/// The tickets of every TLS listener of a gateway: the gateway's own keys,
/// or keys from a file, which a reload may change. Every listener's
/// configuration holds this one object, so a reload changes the keys of
/// all at once, and a listener's new certificates keep them.
#[derive(Debug)]
pub(crate) struct SessionTickets(RwLock<Current>);

#[derive(Debug, Clone)]
enum Current {
    Own(Arc<dyn ProducesTickets>),
    Shared(TicketKeys),
}

/// Keys a reload has made ready for [`SessionTickets::install`].
pub(crate) struct Prepared(Current);

impl Current {
    /// `keys`, or new keys of the gateway's own.
    fn of(keys: Option<&TicketKeys>) -> Result<Self, rustls::Error> {
        Ok(match keys {
            Some(keys) => Self::Shared(keys.clone()),
            None => Self::Own(rustls::crypto::ring::Ticketer::new()?),
        })
    }
}

impl SessionTickets {
    /// Tickets sealed with `keys`, or with keys of the gateway's own.
    pub(crate) fn new(keys: Option<&TicketKeys>) -> Result<Self, rustls::Error> {
        Ok(Self(RwLock::new(Current::of(keys)?)))
    }

    fn current(&self) -> Current {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// What taking `keys` would change, if anything: the tickets to
    /// install with [`Self::install`], and a line saying what changed.
    /// Going back to the gateway's own keys makes new ones (the shared
    /// ones are no longer trusted).
    pub(crate) fn prepare(
        &self,
        keys: Option<&TicketKeys>,
    ) -> Result<Option<(Prepared, String)>, rustls::Error> {
        match (self.current(), keys) {
            (Current::Shared(now), Some(new)) if now == *new => return Ok(None),
            (Current::Own(_), None) => return Ok(None),
            _ => {}
        }
        let next = Prepared(Current::of(keys)?);
        let line = match keys {
            Some(keys) => format!(
                "ticket_keys: {} key(s), sealing with {}, tickets good for {} (new handshakes at once)",
                keys.len(),
                keys.sealing_id(),
                humantime::format_duration(keys.lifetime())
            ),
            None => "ticket_keys: none, the gateway's own keys from now on (tickets of the shared keys no longer resume)".to_owned(),
        };
        Ok(Some((next, line)))
    }

    /// What `/status` says of them.
    pub(crate) fn status(&self) -> TicketStatus {
        match self.current() {
            Current::Own(_) => TicketStatus {
                shared: false,
                keys: 0,
                sealing: None,
                lifetime_s: None,
            },
            Current::Shared(keys) => TicketStatus {
                shared: true,
                keys: keys.len(),
                sealing: Some(keys.sealing_id()),
                lifetime_s: Some(keys.lifetime().as_secs()),
            },
        }
    }

    /// Takes what [`Self::prepare`] made.
    pub(crate) fn install(&self, next: Prepared) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = next.0;
    }
}

impl ProducesTickets for SessionTickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        match self.current() {
            Current::Own(own) => own.lifetime(),
            Current::Shared(keys) => ProducesTickets::lifetime(&keys),
        }
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        match self.current() {
            Current::Own(own) => own.encrypt(plain),
            Current::Shared(keys) => keys.encrypt(plain),
        }
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        match self.current() {
            Current::Own(own) => own.decrypt(cipher),
            Current::Shared(keys) => keys.decrypt(cipher),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
    const HOUR: Duration = Duration::from_secs(3600);
    const NOW: u64 = 1_800_000_000;

    fn keys(text: &str) -> TicketKeys {
        TicketKeys::parse(text, HOUR).unwrap()
    }

    #[test]
    fn a_ticket_opens_with_the_key_that_sealed_it_wherever_it_is_listed() {
        let session = b"what rustls keeps of a session";
        let ticket = keys(A).seal(session, NOW).unwrap();
        assert_eq!(keys(A).open(&ticket, NOW).unwrap(), session);
        // A gateway that has moved on to B still opens tickets sealed with A.
        let rotated = keys(&format!("{B}\n{A}\n"));
        assert_eq!(rotated.open(&ticket, NOW).unwrap(), session);
        // And seals with B, which a gateway knowing only A cannot open.
        let newer = rotated.seal(session, NOW).unwrap();
        assert_eq!(keys(B).open(&newer, NOW).unwrap(), session);
        assert_eq!(keys(A).open(&newer, NOW), None);
        assert_eq!(keys(B).open(&ticket, NOW), None);
    }

    #[test]
    fn two_tickets_of_one_session_differ() {
        let a = keys(A).seal(b"session", NOW).unwrap();
        let b = keys(A).seal(b"session", NOW).unwrap();
        assert_ne!(a, b, "a fresh nonce for each");
        assert_eq!(a[..NAME_LEN], b[..NAME_LEN]);
    }

    #[test]
    fn a_changed_byte_anywhere_spoils_a_ticket() {
        let ticket = keys(A).seal(b"session", NOW).unwrap();
        for i in 0..ticket.len() {
            let mut spoilt = ticket.clone();
            spoilt[i] ^= 0x01;
            assert_eq!(keys(A).open(&spoilt, NOW), None, "byte {i}");
        }
        assert_eq!(keys(A).open(&ticket[..ticket.len() - 1], NOW), None);
        let mut longer = ticket.clone();
        longer.push(0);
        assert_eq!(keys(A).open(&longer, NOW), None);
        assert_eq!(keys(A).open(&[], NOW), None);
        assert_eq!(keys(A).open(&vec![0; MAX_TICKET_LEN + 1], NOW), None);
    }

    #[test]
    fn a_ticket_past_its_lifetime_or_from_far_ahead_is_refused() {
        let ticket = keys(A).seal(b"session", NOW).unwrap();
        assert!(keys(A).open(&ticket, NOW + 3600).is_some());
        assert_eq!(keys(A).open(&ticket, NOW + 3601), None);
        // Another gateway's clock a little ahead is fine; far ahead is not.
        assert!(keys(A).open(&ticket, NOW - CLOCK_SKEW).is_some());
        assert_eq!(keys(A).open(&ticket, NOW - CLOCK_SKEW - 1), None);
    }

    #[test]
    fn the_file_is_read_line_by_line_and_its_faults_named() {
        let read = |text: &str| TicketKeys::parse(text, HOUR);
        let two = read(&format!(
            "# rotated 2026-12-01\n\n  {B}  \n{}\n",
            A.to_uppercase()
        ))
        .unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two.sealing_id(), keys(B).sealing_id());
        assert_ne!(two.sealing_id(), keys(A).sealing_id());
        assert_eq!(
            read("# nothing yet\n\n").unwrap_err(),
            TicketKeysError::Empty
        );
        assert_eq!(
            read(&format!("{A}\n{}\n", &A[..63]))
                .unwrap_err()
                .to_string(),
            "line 2: 63 characters where a key is 64 hex digits"
        );
        assert_eq!(
            read(&format!("{}x", &A[..63])).unwrap_err().to_string(),
            "line 1: not hex digits (a key is 64 of 0-9, a-f)"
        );
        assert_eq!(
            read(&format!("{A}\n{B}\n{A}")).unwrap_err(),
            TicketKeysError::Duplicate { line: 3, first: 1 }
        );
        assert_eq!(
            TicketKeys::parse(A, Duration::ZERO).unwrap_err(),
            TicketKeysError::Lifetime(Duration::ZERO)
        );
        assert!(TicketKeys::parse(A, MAX_LIFETIME + Duration::from_secs(1)).is_err());
        let made = TicketKeys::new_key().unwrap();
        assert_eq!(read(&made).unwrap().len(), 1);
        assert_ne!(made, TicketKeys::new_key().unwrap());
    }

    #[test]
    fn keys_show_no_secret_and_compare_by_name() {
        let shown = format!("{:?}", keys(A));
        assert!(!shown.contains(&A[..8]), "{shown}");
        assert_eq!(keys(A), keys(A));
        assert_ne!(keys(A), keys(B));
        assert_ne!(keys(A), TicketKeys::parse(A, 2 * HOUR).unwrap());
        assert_ne!(keys(&format!("{A}\n{B}")), keys(&format!("{B}\n{A}")));
    }

    #[test]
    fn the_gateways_tickets_change_keys_in_place() {
        let tickets = SessionTickets::new(None).unwrap();
        let own = tickets.encrypt(b"session").unwrap();
        assert_eq!(tickets.decrypt(&own).unwrap(), b"session");
        assert!(
            tickets.prepare(None).unwrap().is_none(),
            "nothing to change"
        );
        let (next, line) = tickets.prepare(Some(&keys(A))).unwrap().unwrap();
        assert!(
            line.starts_with("ticket_keys: 1 key(s), sealing with "),
            "{line}"
        );
        tickets.install(next);
        assert_eq!(tickets.decrypt(&own), None, "the own keys are gone");
        let shared = tickets.encrypt(b"session").unwrap();
        assert_eq!(keys(A).decrypt(&shared).unwrap(), b"session");
        assert_eq!(ProducesTickets::lifetime(&tickets), 3600);
        assert!(tickets.prepare(Some(&keys(A))).unwrap().is_none());
        let (next, _) = tickets.prepare(None).unwrap().unwrap();
        tickets.install(next);
        assert_eq!(tickets.decrypt(&shared), None, "the shared keys are gone");
    }
}
