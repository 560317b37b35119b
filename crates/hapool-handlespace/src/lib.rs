//! The handlespace: a registrar's memory of every pool, every pool element
//! (PE), which registrar is home for each PE, when each registration runs
//! out, and how the next PE of a pool is chosen.
//!
//! Main types: [`Handlespace`] (all pools, with an owner index carrying
//! the ENRP PE checksum per home registrar and an expiry index), [`Pool`]
//! and [`PeEntry`]; [`HandlespaceConfig`] holds every limit.
//!
//! Rules (RFC 5352, RFC 5356): the first PE of a pool fixes its policy type
//! and transport; a PE that differs is refused with the matching error
//! cause. A PE already present is updated only by the connection or the
//! authenticated identity that registered it. Selection follows the pool's
//! policy (see the `selection` module for every policy's meaning).
//!
//! This crate never does I/O, never reads the clock (`now` is an argument)
//! and never makes its own randomness (the RNG is an argument).

#![forbid(unsafe_code)]

mod checksum;
mod expiry;
mod order;
mod pool;
mod selection;
mod weights;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hapool_wire::{
    CauseCode, ErrorCause, ParamType, Policy, PolicyType, PoolElement, PoolElementId, PoolHandle,
    RegistrarId, Transport, TransportUse,
};
use rand::Rng;

use crate::expiry::{ExpiryEntry, ExpiryIndex};

pub use checksum::{Checksum, checksum_of, element_sum, handle_sum};
pub use pool::{ConnectionId, PeEntry, Pool, Registrant};

/// Limits of a handlespace. Every one refuses what goes past it with a
/// clear error, never by dropping what was already accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlespaceConfig {
    /// Longest pool handle accepted, in bytes. Default 64.
    pub max_pool_handle_len: usize,
    /// Most pools. Default 10,000.
    pub max_pools: usize,
    /// Most PEs in one pool. Default 100,000.
    pub max_elements_per_pool: usize,
    /// PEs returned by a handle resolution that does not say how many.
    /// Default 3 (as rsplib).
    pub default_items: usize,
    /// Most PEs returned by one handle resolution. Default 128.
    pub max_items: usize,
    /// How many of the PEs a resolution returns count as selected (get a
    /// new round-robin position, accumulate degradation); 0 means all.
    /// Default 1, so that a 3-item resolution moves the window by one.
    pub max_increment: usize,
    /// Distinct pool users that must report a PE unreachable, within
    /// `bad_report_window`, before it is removed. Default 3.
    pub max_bad_pe_reports: usize,
    /// How long an unreachability report counts. Default 60 s.
    pub bad_report_window: Duration,
}

impl Default for HandlespaceConfig {
    fn default() -> Self {
        Self {
            max_pool_handle_len: 64,
            max_pools: 10_000,
            max_elements_per_pool: 100_000,
            default_items: 3,
            max_items: 128,
            max_increment: 1,
            max_bad_pe_reports: 3,
            bad_report_window: Duration::from_secs(60),
        }
    }
}

/// Where a registration comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A PE, over ASAP: ownership is checked.
    Asap(Registrant),
    /// A peer registrar, over ENRP: it checked ownership at its end.
    Enrp,
}

/// What a registration did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registered {
    /// A new PE.
    Added,
    /// A PE that was already there, updated.
    Updated,
}

/// Why a registration was refused. [`RegistrationError::cause`] gives the
/// RFC 5354 error cause for the REGISTRATION_RESPONSE.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistrationError {
    /// The pool handle is longer than `max_pool_handle_len`.
    #[error("pool handle of {length} bytes is longer than the limit of {max}")]
    PoolHandleTooLong {
        /// Its length.
        length: usize,
        /// The limit.
        max: usize,
    },
    /// The pool handle is empty.
    #[error("empty pool handle")]
    EmptyPoolHandle,
    /// PE identifier 0 means "undefined" and cannot be registered.
    #[error("PE identifier 0 is reserved")]
    ReservedIdentifier,
    /// The PE's policy type is not the pool's.
    #[error("pool uses policy {pool}, the PE offers {}", offered.policy_type())]
    InconsistentPolicy {
        /// The pool's policy type.
        pool: PolicyType,
        /// The PE's policy.
        offered: Policy,
    },
    /// The PE's transport type is not the pool's.
    #[error("pool uses {pool:?}, the PE offers {:?}", offered.param_type())]
    InconsistentTransport {
        /// The pool's transport type.
        pool: ParamType,
        /// The PE's transport.
        offered: Transport,
    },
    /// The PE's transport use (data only / data plus control) is not the pool's.
    #[error("pool uses transport use {pool:?}, the PE offers {offered:?}")]
    InconsistentDataControl {
        /// The pool's transport use.
        pool: TransportUse,
        /// The PE's.
        offered: TransportUse,
    },
    /// The PE id is registered by another connection or identity.
    #[error("PE {pe_id} is registered by another owner")]
    NotOwner {
        /// The PE.
        pe_id: PoolElementId,
    },
    /// The pool has `max_elements_per_pool` PEs already.
    #[error("pool is full ({max} PEs)")]
    PoolFull {
        /// The limit.
        max: usize,
    },
    /// There are `max_pools` pools already.
    #[error("too many pools ({max})")]
    TooManyPools {
        /// The limit.
        max: usize,
    },
}

impl RegistrationError {
    /// The error cause to send back, with the offending parameter as its
    /// information where RFC 5354 asks for one.
    pub fn cause(&self) -> ErrorCause {
        let (code, info) = match self {
            Self::PoolHandleTooLong { .. } | Self::EmptyPoolHandle | Self::ReservedIdentifier => {
                (CauseCode::INVALID_VALUES, Bytes::new())
            }
            Self::InconsistentPolicy { offered, .. } => (
                CauseCode::INCONSISTENT_POOLING_POLICY,
                offered.to_param().unwrap_or_default(),
            ),
            Self::InconsistentTransport { offered, .. } => (
                CauseCode::INCONSISTENT_TRANSPORT_TYPE,
                offered.to_param().unwrap_or_default(),
            ),
            Self::InconsistentDataControl { .. } => (
                CauseCode::INCONSISTENT_DATA_CONTROL_CONFIGURATION,
                Bytes::new(),
            ),
            Self::NotOwner { .. } => (CauseCode::NON_UNIQUE_PE_IDENTIFIER, Bytes::new()),
            Self::PoolFull { .. } | Self::TooManyPools { .. } => {
                (CauseCode::LACK_OF_RESOURCES, Bytes::new())
            }
        };
        ErrorCause { code, info }
    }
}

/// Why a PE could not be found or changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// No pool has this handle.
    #[error("unknown pool handle")]
    UnknownPool,
    /// The pool has no PE with this identifier.
    #[error("unknown PE {0}")]
    UnknownElement(PoolElementId),
    /// The PE is registered by another connection or identity.
    #[error("PE {0} is registered by another owner")]
    NotOwner(PoolElementId),
}

impl LookupError {
    /// The error cause to send back.
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::new(match self {
            Self::UnknownPool => CauseCode::UNKNOWN_POOL_HANDLE,
            Self::UnknownElement(_) => CauseCode::INVALID_VALUES,
            Self::NotOwner(_) => CauseCode::REJECTION_DUE_TO_SECURITY,
        })
    }
}

/// What an unreachability report did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unreachable {
    /// Counted: this many distinct reporters within the window so far.
    Counted(usize),
    /// The threshold was reached and the PE removed.
    Removed(PoolElement),
}

/// The PEs one registrar is home for, and their checksum.
#[derive(Debug, Default)]
struct Owned {
    elements: HashSet<(u32, PoolElementId)>,
    checksum: Checksum,
}

/// Every pool and PE a registrar knows. See the crate documentation.
#[derive(Debug, Default)]
pub struct Handlespace {
    config: HandlespaceConfig,
    pools: Vec<Option<Pool>>,
    free_pools: Vec<u32>,
    by_handle: HashMap<PoolHandle, u32>,
    owners: HashMap<RegistrarId, Owned>,
    expiry: ExpiryIndex,
    /// The registrar holding this handlespace, when it is part of a
    /// cluster: only the PEs it is home for run out here.
    local: Option<RegistrarId>,
    elements: usize,
}

impl Handlespace {
    /// An empty handlespace with these limits.
    pub fn new(config: HandlespaceConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Makes this the handlespace of registrar `id` in a cluster: from now
    /// on only the PEs whose home is `id` run out by their registration
    /// life here. A PE homed at a peer registrar is that peer's to
    /// supervise; it leaves this handlespace when the peer says so (ENRP),
    /// or runs out here once this registrar has taken it over. Without a
    /// local registrar (the default) every PE runs out here.
    pub fn set_local_registrar(&mut self, id: RegistrarId) {
        self.local = Some(id);
        self.expiry = ExpiryIndex::default();
        let slots: Vec<(u32, u32)> = self
            .pools
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i as u32, p)))
            .flat_map(|(i, p)| p.slots().map(move |slot| (i, slot)))
            .collect();
        for (pool_index, slot) in slots {
            *self.pool_at_mut(pool_index).scheduled_mut(slot) = None;
            self.schedule(pool_index, slot);
        }
    }

    /// Whether PEs homed at `home` run out by their registration life here.
    fn expires_here(&self, home: RegistrarId) -> bool {
        self.local.is_none_or(|local| local == home)
    }

    /// The limits in force.
    pub fn config(&self) -> &HandlespaceConfig {
        &self.config
    }

    /// The number of PEs in all pools.
    pub fn len(&self) -> usize {
        self.elements
    }

    /// Whether there is no PE at all.
    pub fn is_empty(&self) -> bool {
        self.elements == 0
    }

    /// The number of pools.
    pub fn pool_count(&self) -> usize {
        self.by_handle.len()
    }

    /// The pool with this handle.
    pub fn pool(&self, handle: &PoolHandle) -> Option<&Pool> {
        self.by_handle.get(handle).map(|&i| self.pool_at(i))
    }

    /// Every pool, in no particular order.
    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.pools.iter().flatten()
    }

    /// The PE `id` of pool `handle`.
    pub fn get(&self, handle: &PoolHandle, id: PoolElementId) -> Option<&PeEntry> {
        self.pool(handle)?.get(id)
    }

    fn pool_at(&self, index: u32) -> &Pool {
        self.pools[index as usize]
            .as_ref()
            .expect("pool index in use")
    }

    fn pool_at_mut(&mut self, index: u32) -> &mut Pool {
        self.pools[index as usize]
            .as_mut()
            .expect("pool index in use")
    }

    /// Registers a PE, or updates it when it is there already.
    pub fn register(
        &mut self,
        handle: &PoolHandle,
        element: PoolElement,
        origin: Origin,
        now: Instant,
    ) -> Result<Registered, RegistrationError> {
        if handle.is_empty() {
            return Err(RegistrationError::EmptyPoolHandle);
        }
        if handle.len() > self.config.max_pool_handle_len {
            return Err(RegistrationError::PoolHandleTooLong {
                length: handle.len(),
                max: self.config.max_pool_handle_len,
            });
        }
        if element.id.0 == 0 {
            return Err(RegistrationError::ReservedIdentifier);
        }
        let registrant = match origin {
            Origin::Asap(r) => Some(r),
            Origin::Enrp => None,
        };
        let Some(&pool_index) = self.by_handle.get(handle) else {
            if self.by_handle.len() >= self.config.max_pools {
                return Err(RegistrationError::TooManyPools {
                    max: self.config.max_pools,
                });
            }
            let pool_index = self.new_pool(handle, &element);
            self.add(pool_index, element, registrant, now);
            return Ok(Registered::Added);
        };
        let pool = self.pool_at(pool_index);
        check_consistent(pool, &element)?;
        match pool.slot_of(element.id) {
            Some(slot) => {
                let entry = pool.entry(slot);
                if let (Some(new), Some(old)) = (&registrant, entry.registrant())
                    && !old.same_owner(new)
                {
                    return Err(RegistrationError::NotOwner { pe_id: element.id });
                }
                self.update(pool_index, slot, element, registrant, now);
                Ok(Registered::Updated)
            }
            None => {
                if pool.len() >= self.config.max_elements_per_pool {
                    return Err(RegistrationError::PoolFull {
                        max: self.config.max_elements_per_pool,
                    });
                }
                self.add(pool_index, element, registrant, now);
                Ok(Registered::Added)
            }
        }
    }

    fn new_pool(&mut self, handle: &PoolHandle, first: &PoolElement) -> u32 {
        let pool = Pool::new(handle.clone(), first);
        let index = match self.free_pools.pop() {
            Some(i) => {
                self.pools[i as usize] = Some(pool);
                i
            }
            None => {
                self.pools.push(Some(pool));
                (self.pools.len() - 1) as u32
            }
        };
        self.by_handle.insert(handle.clone(), index);
        index
    }

    fn add(
        &mut self,
        pool_index: u32,
        element: PoolElement,
        registrant: Option<Registrant>,
        now: Instant,
    ) {
        let entry = PeEntry::new(element, registrant, now);
        let slot = self.pool_at_mut(pool_index).insert(entry);
        self.elements += 1;
        self.link(pool_index, slot);
    }

    /// Replaces the registration at `slot`, moving it in the owner and
    /// expiry indexes only when its home or its expiry changes (a load
    /// update usually changes neither).
    fn update(
        &mut self,
        pool_index: u32,
        slot: u32,
        element: PoolElement,
        registrant: Option<Registrant>,
        now: Instant,
    ) {
        let pool = self.pools[pool_index as usize]
            .as_mut()
            .expect("pool in use");
        let handle_sum = pool.handle_sum;
        let id = element.id;
        let old_home = pool.entry(slot).element().home_registrar;
        // Ownership moves with the home: a PE re-homed by a peer registrar
        // no longer belongs to the connection that registered it here.
        let registrant = match registrant {
            None if element.home_registrar != old_home => Some(None),
            None => None,
            Some(r) => Some(Some(r)),
        };
        pool.modify(slot, |entry| entry.update(element, registrant, now));
        let new_home = pool.entry(slot).element().home_registrar;
        if new_home != old_home {
            let part = element_sum(handle_sum, id);
            self.disown(old_home, pool_index, id, part);
            self.own(new_home, pool_index, id, part);
        }
        self.schedule(pool_index, slot);
    }

    /// Counts PE `id` of pool `pool_index` as `home`'s, with its checksum part.
    fn own(&mut self, home: RegistrarId, pool_index: u32, id: PoolElementId, part: u64) {
        let owned = self.owners.entry(home).or_default();
        owned.elements.insert((pool_index, id));
        owned.checksum.add(part);
    }

    /// Stops counting PE `id` as `home`'s; an owner left with none is dropped.
    fn disown(&mut self, home: RegistrarId, pool_index: u32, id: PoolElementId, part: u64) {
        if let Some(owned) = self.owners.get_mut(&home) {
            owned.elements.remove(&(pool_index, id));
            owned.checksum.remove(part);
            if owned.elements.is_empty() {
                self.owners.remove(&home);
            }
        }
    }

    /// Keeps the expiry index in step with the PE at `slot`: filed when
    /// it runs out here, not filed otherwise. A filed PE whose expiry moved
    /// later (a renewal) is left where it is: `expire_until` refiles it
    /// when its old time comes, so a PE that renews often moves in the
    /// index once per registration life rather than at every renewal.
    fn schedule(&mut self, pool_index: u32, slot: u32) {
        let entry = self.pool_at(pool_index).entry(slot);
        let (expires, filed) = (entry.expires_at(), entry.scheduled);
        let runs_out_here = self.expires_here(entry.element().home_registrar);
        let file = match (filed, runs_out_here) {
            (Some(at), true) if at <= expires => return,
            (None, false) => return,
            (_, true) => Some(expires),
            (_, false) => None,
        };
        if let Some(at) = filed {
            self.expiry.remove(expiry_entry(at, pool_index, slot));
        }
        if let Some(at) = file {
            self.expiry.insert(expiry_entry(at, pool_index, slot));
        }
        *self.pool_at_mut(pool_index).scheduled_mut(slot) = file;
    }

    /// Takes the PE at `slot` out of the expiry index.
    fn unschedule(&mut self, pool_index: u32, slot: u32) {
        if let Some(at) = self.pool_at_mut(pool_index).scheduled_mut(slot).take() {
            self.expiry.remove(expiry_entry(at, pool_index, slot));
        }
    }

    /// The owner index's view of the PE at `slot`: id, home, checksum part.
    fn owner_keys(&self, pool_index: u32, slot: u32) -> (PoolElementId, RegistrarId, u64) {
        let pool = self.pool_at(pool_index);
        let entry = pool.entry(slot);
        let id = entry.element().id;
        let part = element_sum(pool.handle_sum, id);
        (id, entry.element().home_registrar, part)
    }

    /// Enters the PE at `slot` in the owner and expiry indexes.
    fn link(&mut self, pool_index: u32, slot: u32) {
        let (id, home, part) = self.owner_keys(pool_index, slot);
        self.own(home, pool_index, id, part);
        self.schedule(pool_index, slot);
    }

    /// Takes the PE at `slot` out of the owner and expiry indexes.
    fn unlink(&mut self, pool_index: u32, slot: u32) {
        let (id, home, part) = self.owner_keys(pool_index, slot);
        self.disown(home, pool_index, id, part);
        self.unschedule(pool_index, slot);
    }

    /// Removes the PE at `slot`, and its pool when it was the last.
    fn remove_at(&mut self, pool_index: u32, slot: u32) -> PoolElement {
        self.unlink(pool_index, slot);
        let pool = self.pool_at_mut(pool_index);
        let entry = pool.remove(slot);
        if pool.is_empty() {
            let pool = self.pools[pool_index as usize].take().expect("pool in use");
            self.by_handle.remove(pool.handle());
            self.free_pools.push(pool_index);
        }
        self.elements -= 1;
        entry.element().clone()
    }

    fn locate(&self, handle: &PoolHandle, id: PoolElementId) -> Result<(u32, u32), LookupError> {
        let &pool_index = self.by_handle.get(handle).ok_or(LookupError::UnknownPool)?;
        let slot = self
            .pool_at(pool_index)
            .slot_of(id)
            .ok_or(LookupError::UnknownElement(id))?;
        Ok((pool_index, slot))
    }

    /// Deregisters a PE. Over ASAP only its owner may; a peer registrar
    /// (ENRP) may always.
    pub fn deregister(
        &mut self,
        handle: &PoolHandle,
        id: PoolElementId,
        origin: &Origin,
    ) -> Result<PoolElement, LookupError> {
        let (pool_index, slot) = self.locate(handle, id)?;
        if let (Origin::Asap(who), Some(owner)) =
            (origin, self.pool_at(pool_index).entry(slot).registrant())
            && !owner.same_owner(who)
        {
            return Err(LookupError::NotOwner(id));
        }
        Ok(self.remove_at(pool_index, slot))
    }

    /// Removes a PE whatever its owner (a failed keep-alive, a dropped
    /// connection, an operator's command).
    pub fn remove(&mut self, handle: &PoolHandle, id: PoolElementId) -> Option<PoolElement> {
        let (pool_index, slot) = self.locate(handle, id).ok()?;
        Some(self.remove_at(pool_index, slot))
    }

    /// Chooses PEs of a pool by its policy: `items` of them (`None` or 0:
    /// the configured default; at most `max_items`; `u32::MAX`: as many as
    /// allowed). The first `max_increment` chosen count as selected.
    pub fn resolve<R: Rng + ?Sized>(
        &mut self,
        handle: &PoolHandle,
        items: Option<u32>,
        rng: &mut R,
    ) -> Result<Vec<&PoolElement>, LookupError> {
        let &pool_index = self.by_handle.get(handle).ok_or(LookupError::UnknownPool)?;
        let n = match items {
            None | Some(0) => self.config.default_items,
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        }
        .min(self.config.max_items);
        let increment = self.config.max_increment;
        let chosen = self.pool_at_mut(pool_index).select(n, increment, rng);
        let pool = self.pool_at(pool_index);
        Ok(chosen
            .iter()
            .map(|&slot| pool.entry(slot).element())
            .collect())
    }

    /// Renews a registration's life from `now` (a keep-alive answered).
    pub fn confirm(
        &mut self,
        handle: &PoolHandle,
        id: PoolElementId,
        now: Instant,
    ) -> Result<(), LookupError> {
        let (pool_index, slot) = self.locate(handle, id)?;
        self.pool_at_mut(pool_index)
            .modify(slot, |entry| entry.confirm(now));
        self.schedule(pool_index, slot);
        Ok(())
    }

    /// Counts a report from `reporter` (a pool user) that the PE is
    /// unreachable. Reports from the same reporter count once; reports
    /// older than `bad_report_window` do not count. At
    /// `max_bad_pe_reports` distinct reporters the PE is removed.
    pub fn report_unreachable(
        &mut self,
        handle: &PoolHandle,
        id: PoolElementId,
        reporter: u64,
        now: Instant,
    ) -> Result<Unreachable, LookupError> {
        let (pool_index, slot) = self.locate(handle, id)?;
        let window = self.config.bad_report_window;
        let threshold = self.config.max_bad_pe_reports;
        let count = self.pool_at_mut(pool_index).modify(slot, |entry| {
            entry
                .bad_reports
                .retain(|&(who, at)| who != reporter && now.saturating_duration_since(at) < window);
            entry.bad_reports.push((reporter, now));
            entry.bad_reports.len()
        });
        if count >= threshold {
            Ok(Unreachable::Removed(self.remove_at(pool_index, slot)))
        } else {
            Ok(Unreachable::Counted(count))
        }
    }

    /// When `expire_until` should next be called: no later than the next
    /// registration runs out, and earlier when a registration renewed
    /// since it was filed (the call then refiles it and removes nothing).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiry.first().map(|entry| entry.at)
    }

    /// Removes every PE whose registration ran out at or before `now`.
    pub fn expire_until(&mut self, now: Instant) -> Vec<(PoolHandle, PoolElement)> {
        let mut expired = Vec::new();
        while let Some(entry) = self.expiry.first() {
            if entry.at > now {
                break;
            }
            let pool = self.pool_at(entry.pool);
            if pool.entry(entry.slot).expires_at() > now {
                // Renewed since it was filed: file it at its expiry now.
                self.unschedule(entry.pool, entry.slot);
                self.schedule(entry.pool, entry.slot);
                continue;
            }
            let handle = pool.handle().clone();
            expired.push((handle, self.remove_at(entry.pool, entry.slot)));
        }
        expired
    }

    /// The PEs `registrar` is home for.
    pub fn owned_by(
        &self,
        registrar: RegistrarId,
    ) -> impl Iterator<Item = (&PoolHandle, &PeEntry)> {
        self.owners
            .get(&registrar)
            .into_iter()
            .flat_map(|owned| owned.elements.iter())
            .map(|&(pool_index, id)| {
                let pool = self.pool_at(pool_index);
                (pool.handle(), pool.get(id).expect("owner index in step"))
            })
    }

    /// The registrars that are home for at least one PE, in id order.
    pub fn owners(&self) -> Vec<RegistrarId> {
        let mut owners: Vec<RegistrarId> = self.owners.keys().copied().collect();
        owners.sort();
        owners
    }

    /// How many PEs `registrar` is home for.
    pub fn owned_count(&self, registrar: RegistrarId) -> usize {
        self.owners.get(&registrar).map_or(0, |o| o.elements.len())
    }

    /// The ENRP PE checksum of the PEs `registrar` is home for.
    pub fn checksum(&self, registrar: RegistrarId) -> u16 {
        self.owners
            .get(&registrar)
            .map_or(Checksum::default(), |o| o.checksum)
            .value()
    }

    /// Makes `to` the home of every PE `from` is home for (an ENRP
    /// takeover) at `now`; returns the PEs taken over. Their registration
    /// life starts again: the new home has not heard from them yet, and a
    /// PE that re-registered only with its old home (whose keep-alives kept
    /// it alive there) would otherwise run out at once.
    pub fn take_over(
        &mut self,
        from: RegistrarId,
        to: RegistrarId,
        now: Instant,
    ) -> Vec<(PoolHandle, PoolElementId)> {
        let Some(owned) = self.owners.remove(&from) else {
            return Vec::new();
        };
        let mut taken = Vec::with_capacity(owned.elements.len());
        for &(pool_index, id) in &owned.elements {
            let pool = self.pool_at_mut(pool_index);
            let slot = pool.slot_of(id).expect("owner index in step");
            pool.modify(slot, |entry| entry.rehome(to, now));
            taken.push((pool.handle().clone(), id));
            self.schedule(pool_index, slot);
        }
        let target = self.owners.entry(to).or_default();
        target.checksum.add(owned.checksum.raw());
        target.elements.extend(owned.elements);
        taken
    }
}

fn expiry_entry(at: Instant, pool: u32, slot: u32) -> ExpiryEntry {
    ExpiryEntry { at, pool, slot }
}

/// Checks the rules of RFC 5352/5356 that a pool imposes on a new PE.
fn check_consistent(pool: &Pool, element: &PoolElement) -> Result<(), RegistrationError> {
    if element.policy.policy_type() != pool.policy_type() {
        return Err(RegistrationError::InconsistentPolicy {
            pool: pool.policy_type(),
            offered: element.policy.clone(),
        });
    }
    let (transport, transport_use) = pool.transport();
    if element.user_transport.param_type() != transport {
        return Err(RegistrationError::InconsistentTransport {
            pool: transport,
            offered: element.user_transport.clone(),
        });
    }
    if element.user_transport.transport_use() != transport_use {
        return Err(RegistrationError::InconsistentDataControl {
            pool: transport_use,
            offered: element.user_transport.transport_use(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// In a cluster, only the PEs this registrar is home for run out here;
    /// a takeover or a re-homing update moves a PE in or out of expiry.
    #[test]
    fn only_local_pes_expire_in_a_cluster() {
        let start = Instant::now();
        let (me, peer) = (RegistrarId(1), RegistrarId(2));
        let mut hs = Handlespace::default();
        let handle = PoolHandle::from("p");
        let pe = |id: u32, home: RegistrarId| PoolElement {
            id: PoolElementId(id),
            home_registrar: home,
            registration_life: 1_000,
            user_transport: Transport::tcp((Ipv4Addr::LOCALHOST, 80).into()),
            policy: Policy::RoundRobin,
            asap_transport: None,
        };
        hs.register(&handle, pe(1, me), Origin::Enrp, start)
            .unwrap();
        hs.register(&handle, pe(2, peer), Origin::Enrp, start)
            .unwrap();
        hs.register(&handle, pe(3, peer), Origin::Enrp, start)
            .unwrap();
        hs.set_local_registrar(me);
        assert_eq!(hs.expiry.len(), 1);
        // PE 3 re-homes here by an update.
        hs.register(&handle, pe(3, me), Origin::Enrp, start)
            .unwrap();
        assert_eq!(hs.expiry.len(), 2);
        let later = start + Duration::from_secs(2);
        let expired: Vec<u32> = hs.expire_until(later).iter().map(|(_, e)| e.id.0).collect();
        assert_eq!(expired, vec![1, 3]);
        assert!(hs.get(&handle, PoolElementId(2)).is_some());
        // Taken over, PE 2 runs out here too.
        hs.take_over(peer, me, start);
        assert_eq!(hs.expire_until(later).len(), 1);
        assert!(hs.is_empty());
    }

    /// Renewals keep exactly one expiry entry per PE, and the right PE
    /// expires.
    #[test]
    fn expiry_index_follows_renewals() {
        let start = Instant::now();
        let mut hs = Handlespace::default();
        let handle = PoolHandle::from("p");
        for id in 1..=100u32 {
            let pe = PoolElement {
                id: PoolElementId(id),
                home_registrar: RegistrarId(1),
                registration_life: 1_000,
                user_transport: Transport::tcp((Ipv4Addr::LOCALHOST, 80).into()),
                policy: Policy::RoundRobin,
                asap_transport: None,
            };
            hs.register(&handle, pe, Origin::Enrp, start).unwrap();
        }
        let mut now = start;
        for round in 0..100u32 {
            now += Duration::from_millis(10);
            for id in 1..=100u32 {
                // PE 100 stops renewing after the first round.
                if id < 100 || round == 0 {
                    hs.confirm(&handle, PoolElementId(id), now).unwrap();
                }
                assert_eq!(hs.expiry.len(), hs.len());
            }
        }
        let expired = hs.expire_until(start + Duration::from_millis(1_010));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].1.id, PoolElementId(100));
        assert_eq!(hs.next_expiry(), Some(now + Duration::from_millis(1_000)));
    }
}
