//! Server choice, as a pure function: the Internet Cluster Manager's rules.
//!
//! Every PE gets an availability index, 100 minus its load in percent. A PE
//! below the pool's availability threshold is BUSY; a PE holding the pool's
//! maximum of sessions is MAXUSERS; an operator can mark it RESTRICTED, or
//! take it out of service (OUT_OF_SERVICE, PENDING_DELETE: no new sessions).
//! A new session goes to an available PE, chosen by the pool's strategy;
//! when none is available, to a BUSY or MAXUSERS one; when none of those
//! either, to a RESTRICTED one; never to one that is unreachable or out of
//! service.

use hapool_wire::PolicyType;
use serde::{Deserialize, Serialize};

/// What an operator has set for a PE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    /// Takes new sessions.
    #[default]
    Active,
    /// Takes new sessions only when no other PE can.
    Restricted,
    /// Draining: keeps its sessions, takes no new ones.
    OutOfService,
    /// Draining, then removed from the pool once it has no sessions left.
    PendingDelete,
}

impl AdminState {
    /// The state's name as the admin interface spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Restricted => "restricted",
            Self::OutOfService => "out_of_service",
            Self::PendingDelete => "pending_delete",
        }
    }

    /// The state named `s` (`active`, `restricted`, `out_of_service`,
    /// `pending_delete`).
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Active,
            Self::Restricted,
            Self::OutOfService,
            Self::PendingDelete,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }

    /// Whether the PE keeps serving the sessions it has but takes no new
    /// ones.
    pub fn is_draining(self) -> bool {
        matches!(self, Self::OutOfService | Self::PendingDelete)
    }
}

/// How a PE stands for a new session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    /// At or above the availability threshold and below the session limit.
    Available,
    /// Below the availability threshold.
    Busy,
    /// At the session limit.
    MaxUsers,
    /// Marked RESTRICTED by an operator.
    Restricted,
    /// Out of service or pending delete.
    Draining,
    /// Its last connection attempt or probe failed.
    Unreachable,
}

impl Availability {
    /// The state's name as `/status` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Busy => "busy",
            Self::MaxUsers => "max_users",
            Self::Restricted => "restricted",
            Self::Draining => "draining",
            Self::Unreachable => "unreachable",
        }
    }

    /// Whether a session already bound to a PE in this state stays with
    /// it: it does unless the PE is unreachable or too loaded (then the
    /// session moves, with its state cookie). Draining and restricted PEs
    /// keep the sessions they have.
    pub fn keeps_session(self) -> bool {
        !matches!(self, Self::Unreachable | Self::Busy | Self::MaxUsers)
    }

    /// The fallback tier: 0 is chosen first; `None` is never chosen for a
    /// new session.
    fn tier(self) -> Option<u8> {
        match self {
            Self::Available => Some(0),
            Self::Busy | Self::MaxUsers => Some(1),
            Self::Restricted => Some(2),
            Self::Draining | Self::Unreachable => None,
        }
    }
}

/// A pool's limits for new sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// Below this availability index (0–100) a PE is BUSY.
    pub availability_threshold: u8,
    /// At this many open sessions a PE is MAXUSERS; `None` for no limit.
    pub max_sessions: Option<u32>,
}

/// How many times the fastest response time of a tier a PE's may be
/// before it counts as slow ([`select`]).
pub const SLOW_BEYOND: u32 = 4;

/// Response times within this many microseconds of the fastest never
/// count as slow: below a millisecond, differences are noise ([`select`]).
pub const SLOW_MARGIN_US: u32 = 1_000;

/// How a pool picks among the PEs of one tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The highest availability index (lightest load); ties go to the PE
    /// with the shortest expected wait (its open sessions plus this one,
    /// times its response time as [`select`] counts it), then to the one
    /// with the fewest open sessions, then to the one with the fewest turns.
    LeastLoaded,
    /// In turn, in proportion to the weights (the PE with the fewest
    /// turns per unit of weight next).
    RoundRobin,
    /// At random, in proportion to the weights.
    Random,
    /// The highest priority; in turn among equals.
    Priority,
}

impl Strategy {
    /// The strategy that carries out an RFC 5356 (or rsplib) policy.
    pub fn for_policy(policy: PolicyType) -> Self {
        match policy {
            PolicyType::ROUND_ROBIN | PolicyType::WEIGHTED_ROUND_ROBIN => Self::RoundRobin,
            PolicyType::RANDOM | PolicyType::WEIGHTED_RANDOM | PolicyType::WEIGHTED_RANDOM_DPF => {
                Self::Random
            }
            PolicyType::PRIORITY => Self::Priority,
            _ => Self::LeastLoaded,
        }
    }
}

/// One PE as the selection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// 100 minus the load in percent (see [`availability_index`]).
    pub availability_index: u8,
    /// Sessions open through this gateway now.
    pub sessions: u32,
    /// Its turns: the new sessions it has been given, counted so that a
    /// PE that rejoins the choice starts level with the others
    /// ([`turns_after`]). Ties go to fewer turns (per unit of weight).
    pub turns: u64,
    /// How long it has recently taken to answer, in microseconds; 0 when
    /// it has not answered lately (see [`select`]).
    pub response_us: u32,
    /// Its weight (round robin, random); zero counts as one.
    pub weight: u32,
    /// Its priority (higher first).
    pub priority: u32,
    /// The operator's mark.
    pub admin: AdminState,
    /// Whether its last connection attempt or probe succeeded.
    pub reachable: bool,
}

impl Candidate {
    /// A place for a candidate not yet filled in: unreachable, never
    /// chosen.
    pub const UNSET: Self = Self {
        availability_index: 0,
        sessions: 0,
        turns: 0,
        response_us: 0,
        weight: 0,
        priority: 0,
        admin: AdminState::Active,
        reachable: false,
    };

    /// How this PE stands for a new session under `thresholds`.
    pub fn availability(&self, thresholds: &Thresholds) -> Availability {
        if !self.reachable {
            Availability::Unreachable
        } else if self.admin.is_draining() {
            Availability::Draining
        } else if self.admin == AdminState::Restricted {
            Availability::Restricted
        } else if thresholds
            .max_sessions
            .is_some_and(|max| self.sessions >= max)
        {
            Availability::MaxUsers
        } else if self.availability_index < thresholds.availability_threshold {
            Availability::Busy
        } else {
            Availability::Available
        }
    }

    fn weight(&self) -> u64 {
        u64::from(self.weight.max(1))
    }

    /// How long a new session would wait behind the ones it has, with
    /// its response time counted against `fastest`, the shortest of its
    /// tier (see [`select`]).
    fn expected_wait(&self, fastest: u32) -> u64 {
        // Where slow begins, and how much of a slow time is counted
        // beyond the fastest's.
        let band = fastest
            .saturating_mul(SLOW_BEYOND)
            .max(fastest.saturating_add(SLOW_MARGIN_US));
        let counted = if self.response_us == 0 {
            fastest
        } else {
            self.response_us.saturating_sub(band - fastest).max(fastest)
        };
        (u64::from(self.sessions) + 1) * u64::from(counted)
    }
}

/// The availability index of a PE: 100 minus the larger of the load it
/// registered (`registered_load`, the RFC 5356 load where 0xFFFFFFFF is
/// fully loaded) and the gateway's own count of its open `sessions`
/// relative to `capacity`.
pub fn availability_index(
    registered_load: Option<u32>,
    sessions: u32,
    capacity: Option<u32>,
) -> u8 {
    let max = u64::from(u32::MAX);
    // In percent, rounded to the nearest.
    let registered = registered_load.map_or(0, |load| (u64::from(load) * 100 + max / 2) / max);
    let own = capacity.map_or(0, |cap| u64::from(sessions) * 100 / u64::from(cap.max(1)));
    let load = registered.max(own).min(100);
    100 - u8::try_from(load).expect("at most 100")
}

/// The PE chosen for a new session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    /// Its index in the candidates.
    pub index: usize,
    /// How it stood: anything but `Available` means a fallback.
    pub availability: Availability,
}

/// Chooses the PE for a new session among `candidates`, skipping those for
/// which `skip` says so (PEs already tried for this request). `random` is
/// used by [`Strategy::Random`] only. `None` when no PE can take it.
///
/// For [`Strategy::LeastLoaded`], response times up to [`SLOW_BEYOND`]
/// times the fastest of the tier (or up to [`SLOW_MARGIN_US`] more than
/// it, whichever is more) count as the fastest's, so that open
/// sessions alone share the load among PEs that answer about as fast
/// (light load does not pile onto whichever answered a little faster of
/// late); beyond that, a PE's response time less the band's width above
/// the fastest counts, so that a PE that has stalled (its answers
/// taking ten times as long, say) is sent nothing more while the others'
/// queues are shorter than its own. A PE that has not answered lately (a
/// new one, or one that was sent nothing) counts as the fastest. When no
/// PE of the tier has answered lately, the expected waits are all zero and
/// open sessions decide.
pub fn select(
    candidates: &[Candidate],
    thresholds: &Thresholds,
    strategy: Strategy,
    skip: impl Fn(usize) -> bool,
    random: u64,
) -> Option<Choice> {
    // A candidate's tier (`None`: skipped, or never chosen), worked out
    // again where it is needed: a few comparisons, as cheap as keeping
    // them.
    let tier_of = |index: usize| {
        if skip(index) {
            None
        } else {
            candidates[index].availability(thresholds).tier()
        }
    };
    let tier = (0..candidates.len()).filter_map(tier_of).min()?;
    let in_tier = |index: usize| tier_of(index) == Some(tier);
    let index = match strategy {
        Strategy::Random => {
            let total: u64 = (0..candidates.len())
                .filter(|&i| in_tier(i))
                .map(|i| candidates[i].weight())
                .sum();
            let mut point = random % total;
            (0..candidates.len()).filter(|&i| in_tier(i)).find(|&i| {
                let weight = candidates[i].weight();
                if point < weight {
                    true
                } else {
                    point -= weight;
                    false
                }
            })?
        }
        _ => {
            let fastest = (0..candidates.len())
                .filter(|&i| in_tier(i))
                .map(|i| candidates[i].response_us)
                .filter(|&us| us > 0)
                .min()
                .unwrap_or(0);
            (0..candidates.len())
                .filter(|&i| in_tier(i))
                .reduce(|best, i| {
                    if better(strategy, &candidates[i], &candidates[best], fastest) {
                        i
                    } else {
                        best
                    }
                })?
        }
    };
    Some(Choice {
        index,
        availability: candidates[index].availability(thresholds),
    })
}

/// The turns of `candidates[chosen]` once it has been given a new session:
/// one more, but at least as many (per unit of weight) as the fewest
/// among the others it was chosen with (its availability tier). A PE that
/// was out of the choice (unreachable, drained, busy, new to the pool)
/// thus takes its turn with the others from its first session on, rather
/// than every new session until its count caught up with theirs.
pub fn turns_after(candidates: &[Candidate], thresholds: &Thresholds, chosen: usize) -> u64 {
    let this = &candidates[chosen];
    let tier = this.availability(thresholds).tier();
    let floor = candidates
        .iter()
        .enumerate()
        .filter(|&(i, c)| i != chosen && c.availability(thresholds).tier() == tier)
        .map(|(_, c)| rescaled(c.turns, c.weight(), this.weight()))
        .min()
        .unwrap_or(0);
    this.turns.saturating_add(1).max(floor)
}

/// `turns` at weight `from`, counted at weight `to`: in 64 bits when the
/// weights are the same or the product fits (without a 128-bit division),
/// else in 128.
fn rescaled(turns: u64, from: u64, to: u64) -> u64 {
    if from == to {
        return turns;
    }
    match turns.checked_mul(to) {
        Some(product) => product / from,
        None => {
            u64::try_from(u128::from(turns) * u128::from(to) / u128::from(from)).unwrap_or(u64::MAX)
        }
    }
}

/// Whether `a` should be chosen over `b` (strictly; ties keep the earlier);
/// `fastest` is the shortest response time in their tier.
fn better(strategy: Strategy, a: &Candidate, b: &Candidate, fastest: u32) -> bool {
    // `a.turns / a.weight < b.turns / b.weight`, without division.
    let fewer_choices = || {
        u128::from(a.turns) * u128::from(b.weight()) < u128::from(b.turns) * u128::from(a.weight())
    };
    match strategy {
        Strategy::LeastLoaded => (
            b.availability_index,
            a.expected_wait(fastest),
            a.sessions,
            a.turns,
        )
            .lt(&(
                a.availability_index,
                b.expected_wait(fastest),
                b.sessions,
                b.turns,
            )),
        Strategy::RoundRobin | Strategy::Random => fewer_choices(),
        Strategy::Priority => {
            a.priority > b.priority || (a.priority == b.priority && fewer_choices())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        availability_threshold: 20,
        max_sessions: Some(10),
    };

    fn pe(availability_index: u8) -> Candidate {
        Candidate {
            availability_index,
            sessions: 0,
            turns: 0,
            response_us: 0,
            weight: 1,
            priority: 0,
            admin: AdminState::Active,
            reachable: true,
        }
    }

    /// Available PEs with these open sessions and response times.
    fn measured<const N: usize>(pes: [(u32, u32); N]) -> [Candidate; N] {
        pes.map(|(sessions, response_us)| Candidate {
            sessions,
            response_us,
            ..pe(100)
        })
    }

    fn choose(candidates: &[Candidate], strategy: Strategy) -> Option<(usize, Availability)> {
        select(candidates, &T, strategy, |_| false, 0).map(|c| (c.index, c.availability))
    }

    #[test]
    fn the_index_is_one_hundred_minus_the_larger_load() {
        assert_eq!(availability_index(None, 0, None), 100);
        assert_eq!(availability_index(Some(0), 0, None), 100);
        assert_eq!(availability_index(Some(u32::MAX), 0, None), 0);
        assert_eq!(availability_index(Some(u32::MAX / 4), 0, None), 75);
        assert_eq!(availability_index(None, 5, Some(10)), 50);
        assert_eq!(availability_index(Some(u32::MAX / 10), 5, Some(10)), 50);
        assert_eq!(availability_index(Some(u32::MAX / 2 + 1), 1, Some(10)), 50);
        assert_eq!(
            availability_index(None, 30, Some(10)),
            0,
            "capped at fully loaded"
        );
    }

    #[test]
    fn classification_follows_the_order_of_the_rules() {
        let mut c = pe(10);
        c.sessions = 10;
        c.admin = AdminState::Restricted;
        c.reachable = false;
        assert_eq!(c.availability(&T), Availability::Unreachable);
        c.reachable = true;
        assert_eq!(c.availability(&T), Availability::Restricted);
        c.admin = AdminState::OutOfService;
        assert_eq!(c.availability(&T), Availability::Draining);
        c.admin = AdminState::PendingDelete;
        assert_eq!(c.availability(&T), Availability::Draining);
        c.admin = AdminState::Active;
        assert_eq!(c.availability(&T), Availability::MaxUsers);
        c.sessions = 9;
        assert_eq!(c.availability(&T), Availability::Busy);
        c.availability_index = 20;
        assert_eq!(
            c.availability(&T),
            Availability::Available,
            "the threshold itself is not busy"
        );
        let unlimited = Thresholds {
            max_sessions: None,
            ..T
        };
        c.sessions = u32::MAX;
        assert_eq!(c.availability(&unlimited), Availability::Available);
    }

    #[test]
    fn lightest_load_wins_among_available() {
        let pes = [pe(40), pe(90), pe(60)];
        assert_eq!(
            choose(&pes, Strategy::LeastLoaded),
            Some((1, Availability::Available))
        );
    }

    #[test]
    fn ties_go_to_fewer_sessions_then_fewer_choices_then_the_first() {
        let mut pes = [pe(80), pe(80), pe(80)];
        assert_eq!(choose(&pes, Strategy::LeastLoaded).unwrap().0, 0);
        pes[0].turns = 3;
        pes[1].turns = 1;
        pes[2].turns = 1;
        assert_eq!(choose(&pes, Strategy::LeastLoaded).unwrap().0, 1);
        pes[1].sessions = 2;
        assert_eq!(choose(&pes, Strategy::LeastLoaded).unwrap().0, 2);
    }

    #[test]
    fn response_times_within_the_band_leave_the_choice_to_sessions() {
        let mut pes = measured([(3, 1_000), (2, 3_900), (2, 0)]);
        // 3.9 ms is within four times 1 ms, and the unmeasured member
        // counts as the fastest: fewest sessions, then fewest turns.
        pes[1].turns = 5;
        assert_eq!(choose(&pes, Strategy::LeastLoaded).unwrap().0, 2);
        pes[2].sessions = 3;
        assert_eq!(choose(&pes, Strategy::LeastLoaded).unwrap().0, 1);
    }

    #[test]
    fn a_member_that_answers_far_slower_is_avoided_while_others_queue_less() {
        let mut pes = measured([(85, 5_000), (85, 6_000), (60, 85_000)]);
        // The stalled member counts 85 - 3 x 5 = 70 ms: 61 x 70 ms against
        // 86 x 5 ms.
        assert_eq!(choose(&pes, Strategy::LeastLoaded).unwrap().0, 0);
        // It is sent work again once its queue is short enough: 5 x 70 ms
        // against 86 x 5 ms.
        pes[2].sessions = 4;
        assert_eq!(choose(&pes, Strategy::LeastLoaded).unwrap().0, 2);
        // The availability index still comes first.
        pes[2].sessions = 60;
        pes[0].availability_index = 99;
        pes[1].availability_index = 99;
        assert_eq!(choose(&pes, Strategy::LeastLoaded).unwrap().0, 2);
    }

    #[test]
    fn below_a_millisecond_differences_do_not_count() {
        let mut pes = measured([(2, 200), (1, 1_150)]);
        // 1.15 ms is more than four times 0.2 ms but within a millisecond
        // of it: sessions decide.
        assert_eq!(choose(&pes, Strategy::LeastLoaded).unwrap().0, 1);
        // 1.3 ms counts 0.1 ms beyond the band's top: 2 x 0.3 ms against
        // 3 x 0.2 ms, a tie that fewer sessions win.
        pes[1].response_us = 1_300;
        assert_eq!(choose(&pes, Strategy::LeastLoaded).unwrap().0, 1);
        pes[1].response_us = 1_400;
        assert_eq!(choose(&pes, Strategy::LeastLoaded).unwrap().0, 0);
    }

    #[test]
    fn without_recent_answers_sessions_decide() {
        let mut pes = measured([(2, 0), (1, 0)]);
        assert_eq!(choose(&pes, Strategy::LeastLoaded).unwrap().0, 1);
        // A member's own figure without a second one to compare is the
        // fastest.
        pes[1].response_us = 50_000;
        assert_eq!(choose(&pes, Strategy::LeastLoaded).unwrap().0, 1);
    }

    #[test]
    fn busy_and_maxusers_are_excluded_while_anything_is_available() {
        let mut full = pe(100);
        full.sessions = 10;
        let pes = [pe(5), full, pe(30)];
        assert_eq!(
            choose(&pes, Strategy::LeastLoaded),
            Some((2, Availability::Available))
        );
    }

    #[test]
    fn restricted_is_excluded_while_busy_ones_remain() {
        let mut restricted = pe(100);
        restricted.admin = AdminState::Restricted;
        let pes = [restricted, pe(5), pe(10)];
        assert_eq!(
            choose(&pes, Strategy::LeastLoaded),
            Some((2, Availability::Busy))
        );
    }

    #[test]
    fn fallback_to_busy_then_maxusers_then_restricted() {
        let mut full = pe(100);
        full.sessions = 10;
        let mut restricted = pe(100);
        restricted.admin = AdminState::Restricted;
        // Busy and MaxUsers share a tier; lightest load wins inside it.
        assert_eq!(
            choose(&[pe(5), full, restricted], Strategy::LeastLoaded),
            Some((1, Availability::MaxUsers))
        );
        assert_eq!(
            choose(&[pe(5), restricted], Strategy::LeastLoaded),
            Some((0, Availability::Busy))
        );
        assert_eq!(
            choose(&[restricted], Strategy::LeastLoaded),
            Some((0, Availability::Restricted))
        );
    }

    #[test]
    fn unreachable_and_draining_are_never_chosen() {
        let mut down = pe(100);
        down.reachable = false;
        let mut out = pe(100);
        out.admin = AdminState::OutOfService;
        let mut deleting = pe(100);
        deleting.admin = AdminState::PendingDelete;
        assert_eq!(choose(&[down, out, deleting], Strategy::LeastLoaded), None);
        assert_eq!(choose(&[], Strategy::RoundRobin), None);
        assert_eq!(
            choose(&[down, pe(0)], Strategy::LeastLoaded),
            Some((1, Availability::Busy))
        );
    }

    #[test]
    fn skipped_candidates_are_not_chosen() {
        let pes = [pe(90), pe(50)];
        let choice = select(&pes, &T, Strategy::LeastLoaded, |i| i == 0, 0).unwrap();
        assert_eq!(choice.index, 1);
        assert_eq!(select(&pes, &T, Strategy::LeastLoaded, |_| true, 0), None);
    }

    #[test]
    fn round_robin_turns_in_proportion_to_weight() {
        let mut pes = [pe(100), pe(100), pe(100)];
        pes[0].weight = 3;
        pes[2].weight = 0; // counts as one
        let mut counts = [0_u64; 3];
        for _ in 0..500 {
            let (i, _) = choose(&pes, Strategy::RoundRobin).unwrap();
            pes[i].turns += 1;
            counts[i] += 1;
        }
        assert_eq!(counts, [300, 100, 100]);
    }

    #[test]
    fn random_honours_weights() {
        let mut pes = [pe(100), pe(100)];
        pes[0].weight = 1;
        pes[1].weight = 3;
        let mut counts = [0_u32; 2];
        for random in 0..100_000_u64 {
            let c = select(
                &pes,
                &T,
                Strategy::Random,
                |_| false,
                random.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            )
            .unwrap();
            counts[c.index] += 1;
        }
        let share = f64::from(counts[1]) / 100_000.0;
        assert!((share - 0.75).abs() < 0.01, "share {share}");
    }

    #[test]
    fn priority_prefers_the_highest_then_turns() {
        let mut pes = [pe(100), pe(100), pe(100)];
        pes[1].priority = 5;
        pes[2].priority = 5;
        let mut counts = [0_u64; 3];
        for _ in 0..10 {
            let (i, _) = choose(&pes, Strategy::Priority).unwrap();
            pes[i].turns += 1;
            counts[i] += 1;
        }
        assert_eq!(counts, [0, 5, 5]);
    }

    #[test]
    fn policies_map_to_strategies() {
        assert_eq!(
            Strategy::for_policy(PolicyType::LEAST_USED),
            Strategy::LeastLoaded
        );
        assert_eq!(
            Strategy::for_policy(PolicyType::PRIORITY_LEAST_USED),
            Strategy::LeastLoaded
        );
        assert_eq!(
            Strategy::for_policy(PolicyType::WEIGHTED_ROUND_ROBIN),
            Strategy::RoundRobin
        );
        assert_eq!(Strategy::for_policy(PolicyType::RANDOM), Strategy::Random);
        assert_eq!(
            Strategy::for_policy(PolicyType::PRIORITY),
            Strategy::Priority
        );
    }

    #[test]
    fn sessions_move_only_off_unreachable_or_overloaded_members() {
        assert!(Availability::Available.keeps_session());
        assert!(Availability::Draining.keeps_session());
        assert!(Availability::Restricted.keeps_session());
        assert!(!Availability::Busy.keeps_session());
        assert!(!Availability::MaxUsers.keeps_session());
        assert!(!Availability::Unreachable.keeps_session());
    }

    #[test]
    fn admin_states_round_trip_their_names() {
        for s in ["active", "restricted", "out_of_service", "pending_delete"] {
            assert_eq!(AdminState::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(AdminState::parse("drain"), None);
    }

    #[test]
    fn a_pe_back_in_the_choice_takes_turns_with_the_others_at_once() {
        for strategy in [Strategy::RoundRobin, Strategy::LeastLoaded] {
            let mut pes = [pe(100), pe(100), pe(100)];
            let give = |pes: &mut [Candidate; 3], n: usize| {
                let mut counts = [0_u32; 3];
                for _ in 0..n {
                    let (i, _) = choose(&pes[..], strategy).unwrap();
                    pes[i].turns = turns_after(&pes[..], &T, i);
                    counts[i] += 1;
                }
                counts
            };
            assert_eq!(give(&mut pes, 30), [10, 10, 10], "{strategy:?}");
            // PE 2 is out for a while, then back: it gets its share, not
            // every session until its count catches up.
            pes[2].reachable = false;
            assert_eq!(give(&mut pes, 600), [300, 300, 0], "{strategy:?}");
            pes[2].reachable = true;
            assert_eq!(give(&mut pes, 30), [10, 10, 10], "{strategy:?}");
        }
    }

    #[test]
    fn turns_are_rescaled_exactly_whatever_their_size() {
        assert_eq!(rescaled(10, 3, 3), 10);
        assert_eq!(rescaled(10, 2, 1), 5);
        assert_eq!(rescaled(10, 1, 2), 20);
        // The product overflows 64 bits, the result does not.
        let big = u64::MAX / 2;
        assert_eq!(u128::from(rescaled(big, 4, 3)), u128::from(big) * 3 / 4);
        // Nor does it fit: the most there is.
        assert_eq!(rescaled(big, 1, 4), u64::MAX);
    }

    #[test]
    fn turns_are_levelled_per_weight_within_the_tier() {
        let mut pes = [pe(100), pe(100), pe(100), pe(5)];
        pes[0].weight = 2;
        pes[0].turns = 2_000;
        pes[1].turns = 1_000;
        pes[2].turns = 0;
        // Busy (below the threshold): another tier, not counted.
        pes[3].turns = 10;
        assert_eq!(turns_after(&pes, &T, 2), 1_000);
        // Ahead already: one more.
        assert_eq!(turns_after(&pes, &T, 1), 1_001);
        // Weight 2: level with 2 × the fewest per unit of weight.
        pes[0].turns = 0;
        assert_eq!(turns_after(&pes, &T, 0), 1, "PE 2 has none");
        pes[2].turns = 700;
        assert_eq!(turns_after(&pes, &T, 0), 1_400);
        // Alone in its tier: one more.
        assert_eq!(turns_after(&pes, &T, 3), 11);
    }
}
