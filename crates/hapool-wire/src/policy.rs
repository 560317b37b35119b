//! Pool member selection policies: the RFC 5356 policies and the extension
//! policies of rsplib (degradation, randomised and delay-penalty variants),
//! with their wire codes and value fields.
//!
//! Loads, degradations and delay penalty factors are 32-bit fractions:
//! `value / 0xFFFF_FFFF` of 100 %. Priorities prefer the higher value.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::param::ParamType;
use crate::tlv::{RawParam, begin_param, end_param};

/// A policy type code (the first word of the policy parameter).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyType(pub u32);

impl PolicyType {
    /// Round Robin (RFC 5356).
    pub const ROUND_ROBIN: Self = Self(0x0000_0001);
    /// Weighted Round Robin (RFC 5356).
    pub const WEIGHTED_ROUND_ROBIN: Self = Self(0x0000_0002);
    /// Random (RFC 5356).
    pub const RANDOM: Self = Self(0x0000_0003);
    /// Weighted Random (RFC 5356).
    pub const WEIGHTED_RANDOM: Self = Self(0x0000_0004);
    /// Priority.
    pub const PRIORITY: Self = Self(0x0000_0005);
    /// Least Used (RFC 5356).
    pub const LEAST_USED: Self = Self(0x4000_0001);
    /// Least Used with Degradation (RFC 5356).
    pub const LEAST_USED_DEGRADATION: Self = Self(0x4000_0002);
    /// Priority Least Used (RFC 5356).
    pub const PRIORITY_LEAST_USED: Self = Self(0x4000_0003);
    /// Randomized Least Used (RFC 5356).
    pub const RANDOMIZED_LEAST_USED: Self = Self(0x4000_0004);
    /// Randomized Priority Least Used (rsplib).
    pub const RANDOMIZED_PRIORITY_LEAST_USED: Self = Self(0xB000_1001);
    /// Randomized Least Used with Degradation (rsplib).
    pub const RANDOMIZED_LEAST_USED_DEGRADATION: Self = Self(0xB000_1002);
    /// Priority Least Used with Degradation (rsplib).
    pub const PRIORITY_LEAST_USED_DEGRADATION: Self = Self(0xB000_1003);
    /// Randomized Priority Least Used with Degradation (rsplib).
    pub const RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION: Self = Self(0xB000_1004);
    /// Weighted Random with Delay Penalty Factor (draft-dreibholz-rserpool-delay).
    pub const WEIGHTED_RANDOM_DPF: Self = Self(0xB000_2001);
    /// Least Used with Delay Penalty Factor (draft-dreibholz-rserpool-delay).
    pub const LEAST_USED_DPF: Self = Self(0xB000_2002);
    /// Least Used with Degradation and Delay Penalty Factor (rsplib).
    pub const LEAST_USED_DEGRADATION_DPF: Self = Self(0xB000_2003);
    /// Priority Least Used with Delay Penalty Factor (rsplib).
    pub const PRIORITY_LEAST_USED_DPF: Self = Self(0xB000_2004);
    /// Priority Least Used with Degradation and Delay Penalty Factor (rsplib).
    pub const PRIORITY_LEAST_USED_DEGRADATION_DPF: Self = Self(0xB000_2005);

    /// The short name of a known policy type ("LU", "WRR", ...).
    pub fn abbreviation(self) -> Option<&'static str> {
        Some(match self {
            Self::ROUND_ROBIN => "RR",
            Self::WEIGHTED_ROUND_ROBIN => "WRR",
            Self::RANDOM => "RAND",
            Self::WEIGHTED_RANDOM => "WRAND",
            Self::PRIORITY => "PRI",
            Self::LEAST_USED => "LU",
            Self::LEAST_USED_DEGRADATION => "LUD",
            Self::PRIORITY_LEAST_USED => "PLU",
            Self::RANDOMIZED_LEAST_USED => "RLU",
            Self::RANDOMIZED_PRIORITY_LEAST_USED => "RPLU",
            Self::RANDOMIZED_LEAST_USED_DEGRADATION => "RLUD",
            Self::PRIORITY_LEAST_USED_DEGRADATION => "PLUD",
            Self::RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION => "RPLUD",
            Self::WEIGHTED_RANDOM_DPF => "WRAND-DPF",
            Self::LEAST_USED_DPF => "LU-DPF",
            Self::LEAST_USED_DEGRADATION_DPF => "LUD-DPF",
            Self::PRIORITY_LEAST_USED_DPF => "PLU-DPF",
            Self::PRIORITY_LEAST_USED_DEGRADATION_DPF => "PLUD-DPF",
            _ => return None,
        })
    }
}

impl fmt::Debug for PolicyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.abbreviation() {
            Some(name) => write!(f, "{name}"),
            None => write!(f, "PolicyType({:#010x})", self.0),
        }
    }
}

impl fmt::Display for PolicyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A pool member selection policy with the values a PE registers with it.
///
/// The policy type decides the value fields; they appear on the wire in the
/// order of the variant's fields. `PriorityLeastUsedDpf` and
/// `PriorityLeastUsedDegradationDpf` have a type code in rsplib but no wire
/// layout there; hapool gives them the layout of `LeastUsedDegradationDpf`
/// (load, degradation, load DPF, distance), a superset of the values their
/// names call for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Policy {
    /// Round Robin.
    RoundRobin,
    /// Weighted Round Robin.
    WeightedRoundRobin {
        /// The PE's weight.
        weight: u32,
    },
    /// Random.
    Random,
    /// Weighted Random.
    WeightedRandom {
        /// The PE's weight.
        weight: u32,
    },
    /// Priority: the highest priority wins.
    Priority {
        /// The PE's priority; higher is preferred.
        priority: u32,
    },
    /// Least Used.
    LeastUsed {
        /// The PE's load.
        load: u32,
    },
    /// Least Used with Degradation.
    LeastUsedDegradation {
        /// The PE's load.
        load: u32,
        /// Load added each time the PE is selected, until it re-registers.
        degradation: u32,
    },
    /// Priority Least Used.
    PriorityLeastUsed {
        /// The PE's load.
        load: u32,
        /// Load added to the PE's load when comparing.
        degradation: u32,
    },
    /// Randomized Least Used.
    RandomizedLeastUsed {
        /// The PE's load.
        load: u32,
    },
    /// Randomized Priority Least Used (rsplib).
    RandomizedPriorityLeastUsed {
        /// The PE's load.
        load: u32,
        /// Load added when comparing.
        degradation: u32,
    },
    /// Randomized Least Used with Degradation (rsplib).
    RandomizedLeastUsedDegradation {
        /// The PE's load.
        load: u32,
        /// Load added each time the PE is selected.
        degradation: u32,
    },
    /// Priority Least Used with Degradation (rsplib).
    PriorityLeastUsedDegradation {
        /// The PE's load.
        load: u32,
        /// Load added when comparing and each time the PE is selected.
        degradation: u32,
    },
    /// Randomized Priority Least Used with Degradation (rsplib).
    RandomizedPriorityLeastUsedDegradation {
        /// The PE's load.
        load: u32,
        /// Load added when comparing and each time the PE is selected.
        degradation: u32,
    },
    /// Weighted Random with Delay Penalty Factor.
    WeightedRandomDpf {
        /// The PE's weight.
        weight: u32,
        /// Weight reduction per unit of distance (a fraction).
        weight_dpf: u32,
        /// Distance between the PE and the pool user, filled in by the registrar.
        distance: u32,
    },
    /// Least Used with Delay Penalty Factor.
    LeastUsedDpf {
        /// The PE's load.
        load: u32,
        /// Load penalty per unit of distance (a fraction).
        load_dpf: u32,
        /// Distance between the PE and the pool user.
        distance: u32,
    },
    /// Least Used with Degradation and Delay Penalty Factor (rsplib).
    LeastUsedDegradationDpf {
        /// The PE's load.
        load: u32,
        /// Load added each time the PE is selected.
        degradation: u32,
        /// Load penalty per unit of distance.
        load_dpf: u32,
        /// Distance between the PE and the pool user.
        distance: u32,
    },
    /// Priority Least Used with Delay Penalty Factor (rsplib code).
    PriorityLeastUsedDpf {
        /// The PE's load.
        load: u32,
        /// Load added when comparing.
        degradation: u32,
        /// Load penalty per unit of distance.
        load_dpf: u32,
        /// Distance between the PE and the pool user.
        distance: u32,
    },
    /// Priority Least Used with Degradation and Delay Penalty Factor (rsplib code).
    PriorityLeastUsedDegradationDpf {
        /// The PE's load.
        load: u32,
        /// Load added when comparing and each time the PE is selected.
        degradation: u32,
        /// Load penalty per unit of distance.
        load_dpf: u32,
        /// Distance between the PE and the pool user.
        distance: u32,
    },
    /// A policy type this implementation does not know, kept as received.
    Other {
        /// The policy type code.
        policy_type: PolicyType,
        /// The value words after the type, as bytes (a multiple of four).
        values: Bytes,
    },
}

impl Policy {
    /// The policy's type code.
    pub fn policy_type(&self) -> PolicyType {
        match self {
            Self::RoundRobin => PolicyType::ROUND_ROBIN,
            Self::WeightedRoundRobin { .. } => PolicyType::WEIGHTED_ROUND_ROBIN,
            Self::Random => PolicyType::RANDOM,
            Self::WeightedRandom { .. } => PolicyType::WEIGHTED_RANDOM,
            Self::Priority { .. } => PolicyType::PRIORITY,
            Self::LeastUsed { .. } => PolicyType::LEAST_USED,
            Self::LeastUsedDegradation { .. } => PolicyType::LEAST_USED_DEGRADATION,
            Self::PriorityLeastUsed { .. } => PolicyType::PRIORITY_LEAST_USED,
            Self::RandomizedLeastUsed { .. } => PolicyType::RANDOMIZED_LEAST_USED,
            Self::RandomizedPriorityLeastUsed { .. } => PolicyType::RANDOMIZED_PRIORITY_LEAST_USED,
            Self::RandomizedLeastUsedDegradation { .. } => {
                PolicyType::RANDOMIZED_LEAST_USED_DEGRADATION
            }
            Self::PriorityLeastUsedDegradation { .. } => {
                PolicyType::PRIORITY_LEAST_USED_DEGRADATION
            }
            Self::RandomizedPriorityLeastUsedDegradation { .. } => {
                PolicyType::RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION
            }
            Self::WeightedRandomDpf { .. } => PolicyType::WEIGHTED_RANDOM_DPF,
            Self::LeastUsedDpf { .. } => PolicyType::LEAST_USED_DPF,
            Self::LeastUsedDegradationDpf { .. } => PolicyType::LEAST_USED_DEGRADATION_DPF,
            Self::PriorityLeastUsedDpf { .. } => PolicyType::PRIORITY_LEAST_USED_DPF,
            Self::PriorityLeastUsedDegradationDpf { .. } => {
                PolicyType::PRIORITY_LEAST_USED_DEGRADATION_DPF
            }
            Self::Other { policy_type, .. } => *policy_type,
        }
    }

    /// The PE's load, for the load-based policies.
    pub fn load(&self) -> Option<u32> {
        match self {
            Self::LeastUsed { load }
            | Self::RandomizedLeastUsed { load }
            | Self::LeastUsedDegradation { load, .. }
            | Self::PriorityLeastUsed { load, .. }
            | Self::RandomizedPriorityLeastUsed { load, .. }
            | Self::RandomizedLeastUsedDegradation { load, .. }
            | Self::PriorityLeastUsedDegradation { load, .. }
            | Self::RandomizedPriorityLeastUsedDegradation { load, .. }
            | Self::LeastUsedDpf { load, .. }
            | Self::LeastUsedDegradationDpf { load, .. }
            | Self::PriorityLeastUsedDpf { load, .. }
            | Self::PriorityLeastUsedDegradationDpf { load, .. } => Some(*load),
            _ => None,
        }
    }

    /// The PE's weight, for the weighted policies.
    pub fn weight(&self) -> Option<u32> {
        match self {
            Self::WeightedRoundRobin { weight }
            | Self::WeightedRandom { weight }
            | Self::WeightedRandomDpf { weight, .. } => Some(*weight),
            _ => None,
        }
    }

    /// The value words, in wire order.
    fn words(&self) -> ([u32; 4], usize) {
        match *self {
            Self::RoundRobin | Self::Random | Self::Other { .. } => ([0; 4], 0),
            Self::WeightedRoundRobin { weight } | Self::WeightedRandom { weight } => {
                ([weight, 0, 0, 0], 1)
            }
            Self::Priority { priority } => ([priority, 0, 0, 0], 1),
            Self::LeastUsed { load } | Self::RandomizedLeastUsed { load } => ([load, 0, 0, 0], 1),
            Self::LeastUsedDegradation { load, degradation }
            | Self::PriorityLeastUsed { load, degradation }
            | Self::RandomizedPriorityLeastUsed { load, degradation }
            | Self::RandomizedLeastUsedDegradation { load, degradation }
            | Self::PriorityLeastUsedDegradation { load, degradation }
            | Self::RandomizedPriorityLeastUsedDegradation { load, degradation } => {
                ([load, degradation, 0, 0], 2)
            }
            Self::WeightedRandomDpf {
                weight,
                weight_dpf,
                distance,
            } => ([weight, weight_dpf, distance, 0], 3),
            Self::LeastUsedDpf {
                load,
                load_dpf,
                distance,
            } => ([load, load_dpf, distance, 0], 3),
            Self::LeastUsedDegradationDpf {
                load,
                degradation,
                load_dpf,
                distance,
            }
            | Self::PriorityLeastUsedDpf {
                load,
                degradation,
                load_dpf,
                distance,
            }
            | Self::PriorityLeastUsedDegradationDpf {
                load,
                degradation,
                load_dpf,
                distance,
            } => ([load, degradation, load_dpf, distance], 4),
        }
    }

    /// The number of value words a known policy type carries.
    fn word_count(policy_type: PolicyType) -> Option<usize> {
        Some(match policy_type {
            PolicyType::ROUND_ROBIN | PolicyType::RANDOM => 0,
            PolicyType::WEIGHTED_ROUND_ROBIN
            | PolicyType::WEIGHTED_RANDOM
            | PolicyType::PRIORITY
            | PolicyType::LEAST_USED
            | PolicyType::RANDOMIZED_LEAST_USED => 1,
            PolicyType::LEAST_USED_DEGRADATION
            | PolicyType::PRIORITY_LEAST_USED
            | PolicyType::RANDOMIZED_PRIORITY_LEAST_USED
            | PolicyType::RANDOMIZED_LEAST_USED_DEGRADATION
            | PolicyType::PRIORITY_LEAST_USED_DEGRADATION
            | PolicyType::RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION => 2,
            PolicyType::WEIGHTED_RANDOM_DPF | PolicyType::LEAST_USED_DPF => 3,
            PolicyType::LEAST_USED_DEGRADATION_DPF
            | PolicyType::PRIORITY_LEAST_USED_DPF
            | PolicyType::PRIORITY_LEAST_USED_DEGRADATION_DPF => 4,
            _ => return None,
        })
    }

    /// Decodes a policy parameter. Its length must be 8 + 4n; words beyond
    /// those the policy type needs are ignored, as rsplib does.
    pub(crate) fn decode(raw: RawParam<'_>) -> Result<Self, DecodeError> {
        let too_short = || DecodeError::ParameterLength {
            param: ParamType::Policy,
            length: raw.whole.len(),
            tlv: raw.to_bytes(),
        };
        let Some((type_bytes, rest)) = raw.value.split_first_chunk::<4>() else {
            return Err(too_short());
        };
        if rest.len() % 4 != 0 {
            // Policy values are 32-bit words (length 8 + 4n).
            return Err(too_short());
        }
        let policy_type = PolicyType(u32::from_be_bytes(*type_bytes));
        let Some(count) = Self::word_count(policy_type) else {
            return Ok(Self::Other {
                policy_type,
                values: Bytes::copy_from_slice(rest),
            });
        };
        if rest.len() < 4 * count {
            return Err(too_short());
        }
        let w = |i: usize| u32::from_be_bytes(rest[4 * i..4 * i + 4].try_into().expect("checked"));
        Ok(match policy_type {
            PolicyType::ROUND_ROBIN => Self::RoundRobin,
            PolicyType::RANDOM => Self::Random,
            PolicyType::WEIGHTED_ROUND_ROBIN => Self::WeightedRoundRobin { weight: w(0) },
            PolicyType::WEIGHTED_RANDOM => Self::WeightedRandom { weight: w(0) },
            PolicyType::PRIORITY => Self::Priority { priority: w(0) },
            PolicyType::LEAST_USED => Self::LeastUsed { load: w(0) },
            PolicyType::RANDOMIZED_LEAST_USED => Self::RandomizedLeastUsed { load: w(0) },
            PolicyType::LEAST_USED_DEGRADATION => Self::LeastUsedDegradation {
                load: w(0),
                degradation: w(1),
            },
            PolicyType::PRIORITY_LEAST_USED => Self::PriorityLeastUsed {
                load: w(0),
                degradation: w(1),
            },
            PolicyType::RANDOMIZED_PRIORITY_LEAST_USED => Self::RandomizedPriorityLeastUsed {
                load: w(0),
                degradation: w(1),
            },
            PolicyType::RANDOMIZED_LEAST_USED_DEGRADATION => Self::RandomizedLeastUsedDegradation {
                load: w(0),
                degradation: w(1),
            },
            PolicyType::PRIORITY_LEAST_USED_DEGRADATION => Self::PriorityLeastUsedDegradation {
                load: w(0),
                degradation: w(1),
            },
            PolicyType::RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION => {
                Self::RandomizedPriorityLeastUsedDegradation {
                    load: w(0),
                    degradation: w(1),
                }
            }
            PolicyType::WEIGHTED_RANDOM_DPF => Self::WeightedRandomDpf {
                weight: w(0),
                weight_dpf: w(1),
                distance: w(2),
            },
            PolicyType::LEAST_USED_DPF => Self::LeastUsedDpf {
                load: w(0),
                load_dpf: w(1),
                distance: w(2),
            },
            PolicyType::LEAST_USED_DEGRADATION_DPF => Self::LeastUsedDegradationDpf {
                load: w(0),
                degradation: w(1),
                load_dpf: w(2),
                distance: w(3),
            },
            PolicyType::PRIORITY_LEAST_USED_DPF => Self::PriorityLeastUsedDpf {
                load: w(0),
                degradation: w(1),
                load_dpf: w(2),
                distance: w(3),
            },
            PolicyType::PRIORITY_LEAST_USED_DEGRADATION_DPF => {
                Self::PriorityLeastUsedDegradationDpf {
                    load: w(0),
                    degradation: w(1),
                    load_dpf: w(2),
                    distance: w(3),
                }
            }
            _ => unreachable!("word_count knows exactly these types"),
        })
    }

    /// The policy as an encoded parameter, e.g. for the information of an
    /// "Inconsistent Pooling Policy" error cause.
    pub fn to_param(&self) -> Result<Bytes, EncodeError> {
        let mut dst = BytesMut::with_capacity(24);
        self.encode(&mut dst)?;
        Ok(dst.freeze())
    }

    pub(crate) fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let start = begin_param(dst, ParamType::Policy);
        dst.put_u32(self.policy_type().0);
        if let Self::Other {
            policy_type,
            values,
        } = self
        {
            if Self::word_count(*policy_type).is_some() {
                return Err(EncodeError::Invalid {
                    what: "policy",
                    reason: "Policy::Other with the code of a known policy",
                });
            }
            if values.len() % 4 != 0 {
                return Err(EncodeError::Invalid {
                    what: "policy",
                    reason: "policy values are not whole 32-bit words",
                });
            }
            dst.put_slice(values);
        } else {
            let (words, n) = self.words();
            for word in &words[..n] {
                dst.put_u32(*word);
            }
        }
        end_param(dst, start)
    }
}

/// Formats a 32-bit fraction as a percentage.
fn percent(value: u32) -> f64 {
    f64::from(value) * 100.0 / f64::from(u32::MAX)
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.policy_type())?;
        match self {
            Self::Other { values, .. } => write!(f, " values={values:02x?}"),
            Self::Priority { priority } => write!(f, " priority={priority}"),
            _ => {
                if let Some(weight) = self.weight() {
                    write!(f, " weight={weight}")?;
                }
                if let Some(load) = self.load() {
                    write!(f, " load={:.2}%", percent(load))?;
                }
                let (words, n) = self.words();
                let has_degradation = !matches!(
                    self,
                    Self::LeastUsed { .. }
                        | Self::RandomizedLeastUsed { .. }
                        | Self::LeastUsedDpf { .. }
                        | Self::WeightedRandomDpf { .. }
                ) && n >= 2
                    && self.load().is_some();
                if has_degradation {
                    write!(f, " degradation={:.2}%", percent(words[1]))?;
                }
                if n >= 3 {
                    write!(
                        f,
                        " dpf={:.5} distance={}",
                        f64::from(words[n - 2]) / f64::from(u32::MAX),
                        words[n - 1]
                    )?;
                }
                Ok(())
            }
        }
    }
}
