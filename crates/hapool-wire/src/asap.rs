//! ASAP messages (RFC 5352): between pool elements, pool users and their
//! registrars, and between pool users and pool elements.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::message::{Decoded, Message, begin_message, bit, end_message, flag, split_header};
use crate::param::{
    OperationError, ParamType, PoolElement, PoolElementId, PoolHandle, RegistrarId, Transport,
    decode_items, decode_pe_id, encode_cookie, encode_items, encode_pe_id,
};
use crate::policy::Policy;
use crate::tlv::{Fields, ParamReader};

/// The R flag of ASAP_REGISTRATION_RESPONSE: the registration was refused.
const FLAG_REJECT: u8 = 0x01;
/// The S flag of ASAP_HANDLE_RESOLUTION: subscribe to updates.
const FLAG_SUBSCRIBE: u8 = 0x01;
/// The A flag of ASAP_HANDLE_RESOLUTION_RESPONSE: subscription accepted.
const FLAG_ACCEPTED: u8 = 0x01;
/// The H flag of ASAP_ENDPOINT_KEEP_ALIVE: the sender becomes the PE's home.
const FLAG_HOME: u8 = 0x01;

/// An ASAP message type code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AsapType {
    /// ASAP_REGISTRATION (0x01).
    Registration = 0x01,
    /// ASAP_DEREGISTRATION (0x02).
    Deregistration = 0x02,
    /// ASAP_REGISTRATION_RESPONSE (0x03).
    RegistrationResponse = 0x03,
    /// ASAP_DEREGISTRATION_RESPONSE (0x04).
    DeregistrationResponse = 0x04,
    /// ASAP_HANDLE_RESOLUTION (0x05).
    HandleResolution = 0x05,
    /// ASAP_HANDLE_RESOLUTION_RESPONSE (0x06).
    HandleResolutionResponse = 0x06,
    /// ASAP_ENDPOINT_KEEP_ALIVE (0x07).
    EndpointKeepAlive = 0x07,
    /// ASAP_ENDPOINT_KEEP_ALIVE_ACK (0x08).
    EndpointKeepAliveAck = 0x08,
    /// ASAP_ENDPOINT_UNREACHABLE (0x09).
    EndpointUnreachable = 0x09,
    /// ASAP_SERVER_ANNOUNCE (0x0A).
    ServerAnnounce = 0x0A,
    /// ASAP_COOKIE (0x0B).
    Cookie = 0x0B,
    /// ASAP_COOKIE_ECHO (0x0C).
    CookieEcho = 0x0C,
    /// ASAP_BUSINESS_CARD (0x0D).
    BusinessCard = 0x0D,
    /// ASAP_ERROR (0x0E).
    Error = 0x0E,
}

/// The answer a handle resolution carries: the chosen PEs, or an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolutionOutcome {
    /// The pool's policy and the PEs the registrar chose.
    Members {
        /// The pool's overall selection policy (rsplib sends it; optional).
        policy: Option<Policy>,
        /// The chosen PEs, in the registrar's order of preference.
        elements: Vec<PoolElement>,
    },
    /// Why the pool could not be resolved (e.g. Unknown Pool Handle).
    Error(OperationError),
}

/// An ASAP message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AsapMessage {
    /// A PE asks to join (or update itself in) a pool.
    Registration {
        /// The pool.
        pool_handle: PoolHandle,
        /// The PE, without its ASAP transport.
        pool_element: PoolElement,
        /// A shared secret that registration rules may name (a hapool
        /// extension parameter; other implementations skip it).
        auth_token: Option<Bytes>,
    },
    /// A PE asks to leave a pool.
    Deregistration {
        /// The pool.
        pool_handle: PoolHandle,
        /// The PE.
        pe_id: PoolElementId,
    },
    /// The registrar's answer to a registration.
    RegistrationResponse {
        /// The R flag: the registration was refused.
        reject: bool,
        /// The pool.
        pool_handle: PoolHandle,
        /// The PE.
        pe_id: PoolElementId,
        /// Why it was refused.
        error: Option<OperationError>,
    },
    /// The registrar's answer to a deregistration.
    DeregistrationResponse {
        /// The pool.
        pool_handle: PoolHandle,
        /// The PE.
        pe_id: PoolElementId,
        /// Why it failed.
        error: Option<OperationError>,
    },
    /// A PU asks for members of a pool.
    HandleResolution {
        /// The S flag: subscribe to updates of the pool.
        subscribe: bool,
        /// The pool.
        pool_handle: PoolHandle,
        /// How many PEs the PU wants (handle-resolution option); `None`
        /// lets the registrar choose, `u32::MAX` means "as many as possible".
        items: Option<u32>,
    },
    /// The registrar's answer to a handle resolution.
    HandleResolutionResponse {
        /// The A flag: the subscription was accepted.
        accepted: bool,
        /// The pool.
        pool_handle: PoolHandle,
        /// The PEs or the error.
        outcome: ResolutionOutcome,
    },
    /// The home registrar checks that a PE is alive.
    EndpointKeepAlive {
        /// The H flag: the sender wants to become the PE's home registrar.
        home: bool,
        /// The sending registrar.
        registrar_id: RegistrarId,
        /// The PE's pool.
        pool_handle: PoolHandle,
        /// The PE (an rsplib addition, present when known).
        pe_id: Option<PoolElementId>,
    },
    /// A PE answers a keep-alive.
    EndpointKeepAliveAck {
        /// The PE's pool.
        pool_handle: PoolHandle,
        /// The PE.
        pe_id: PoolElementId,
    },
    /// A PU reports that it could not reach a PE.
    EndpointUnreachable {
        /// The PE's pool.
        pool_handle: PoolHandle,
        /// The PE.
        pe_id: PoolElementId,
    },
    /// A registrar announces itself (over UDP multicast).
    ServerAnnounce {
        /// The registrar.
        registrar_id: RegistrarId,
        /// Where its ASAP endpoint is reached.
        transports: Vec<Transport>,
    },
    /// A PE hands its PU a state cookie.
    Cookie {
        /// The opaque cookie.
        cookie: Bytes,
    },
    /// A PU hands the last cookie to the PE it failed over to.
    CookieEcho {
        /// The opaque cookie, unchanged.
        cookie: Bytes,
    },
    /// Tells the peer which pool (and which PEs) to fail over to.
    BusinessCard {
        /// The pool of the sender.
        pool_handle: PoolHandle,
        /// The pool's policy (rsplib sends it; optional).
        policy: Option<Policy>,
        /// The PEs to fail over to, in order of preference; never empty.
        elements: Vec<PoolElement>,
    },
    /// Reports an error (such as an unrecognized parameter or message).
    Error {
        /// The error causes.
        error: OperationError,
    },
}

impl AsapMessage {
    /// The message type.
    pub fn message_type(&self) -> AsapType {
        match self {
            Self::Registration { .. } => AsapType::Registration,
            Self::Deregistration { .. } => AsapType::Deregistration,
            Self::RegistrationResponse { .. } => AsapType::RegistrationResponse,
            Self::DeregistrationResponse { .. } => AsapType::DeregistrationResponse,
            Self::HandleResolution { .. } => AsapType::HandleResolution,
            Self::HandleResolutionResponse { .. } => AsapType::HandleResolutionResponse,
            Self::EndpointKeepAlive { .. } => AsapType::EndpointKeepAlive,
            Self::EndpointKeepAliveAck { .. } => AsapType::EndpointKeepAliveAck,
            Self::EndpointUnreachable { .. } => AsapType::EndpointUnreachable,
            Self::ServerAnnounce { .. } => AsapType::ServerAnnounce,
            Self::Cookie { .. } => AsapType::Cookie,
            Self::CookieEcho { .. } => AsapType::CookieEcho,
            Self::BusinessCard { .. } => AsapType::BusinessCard,
            Self::Error { .. } => AsapType::Error,
        }
    }

    fn flags(&self) -> u8 {
        match self {
            Self::RegistrationResponse { reject, .. } => bit(*reject, FLAG_REJECT),
            Self::HandleResolution { subscribe, .. } => bit(*subscribe, FLAG_SUBSCRIBE),
            Self::HandleResolutionResponse { accepted, .. } => bit(*accepted, FLAG_ACCEPTED),
            Self::EndpointKeepAlive { home, .. } => bit(*home, FLAG_HOME),
            _ => 0,
        }
    }
}

/// Takes a pool handle parameter.
fn take_handle(r: &mut ParamReader<'_, '_>) -> Result<PoolHandle, DecodeError> {
    PoolHandle::decode(r.take(ParamType::PoolHandle)?)
}

/// Takes a PE identifier parameter.
fn take_pe_id(r: &mut ParamReader<'_, '_>) -> Result<PoolElementId, DecodeError> {
    decode_pe_id(r.take(ParamType::PeIdentifier)?)
}

/// Takes an operation error parameter if one comes next.
fn take_error_if(r: &mut ParamReader<'_, '_>) -> Result<Option<OperationError>, DecodeError> {
    r.take_if(ParamType::OperationError)?
        .map(OperationError::decode)
        .transpose()
}

/// Takes an optional policy and then every pool element.
pub(crate) fn take_policy_and_elements(
    r: &mut ParamReader<'_, '_>,
) -> Result<(Option<Policy>, Vec<PoolElement>), DecodeError> {
    let policy = r
        .take_if(ParamType::Policy)?
        .map(Policy::decode)
        .transpose()?;
    let elements = take_elements(r)?;
    Ok((policy, elements))
}

/// Takes every pool element that comes next.
pub(crate) fn take_elements(r: &mut ParamReader<'_, '_>) -> Result<Vec<PoolElement>, DecodeError> {
    // Room for as many elements as the rest could hold at the smallest
    // possible size, so the vector does not regrow; bounded by the input.
    let mut elements = Vec::with_capacity(r.remaining() / PoolElement::MIN_WIRE_LEN);
    while let Some(raw) = r.take_if(ParamType::PoolElement)? {
        elements.push(PoolElement::decode(raw, r)?);
    }
    Ok(elements)
}

/// Takes the opaque bytes of a cookie parameter.
fn take_cookie(r: &mut ParamReader<'_, '_>) -> Result<Bytes, DecodeError> {
    Ok(Bytes::copy_from_slice(r.take(ParamType::Cookie)?.value))
}

impl Message for AsapMessage {
    const PROTOCOL: &'static str = "ASAP";
    const HEADER_LEN: usize = 4;

    fn decode(frame: &[u8]) -> Result<Decoded<Self>, DecodeError> {
        let header = split_header(frame, Self::HEADER_LEN)?;
        let flags = header.flags;
        let mut reports = Vec::new();
        let message = match header.message_type {
            0x01 => {
                let mut r = ParamReader::new(header.rest, "ASAP_REGISTRATION", &mut reports);
                let pool_handle = take_handle(&mut r)?;
                let raw = r.take(ParamType::PoolElement)?;
                let pool_element = PoolElement::decode(raw, &mut r)?;
                let auth_token = r
                    .take_if(ParamType::AuthToken)?
                    .map(|raw| Bytes::copy_from_slice(raw.value));
                r.finish()?;
                Self::Registration {
                    pool_handle,
                    pool_element,
                    auth_token,
                }
            }
            0x02 => {
                let mut r = ParamReader::new(header.rest, "ASAP_DEREGISTRATION", &mut reports);
                let pool_handle = take_handle(&mut r)?;
                let pe_id = take_pe_id(&mut r)?;
                r.finish()?;
                Self::Deregistration { pool_handle, pe_id }
            }
            0x03 => {
                let mut r =
                    ParamReader::new(header.rest, "ASAP_REGISTRATION_RESPONSE", &mut reports);
                let pool_handle = take_handle(&mut r)?;
                let pe_id = take_pe_id(&mut r)?;
                let error = take_error_if(&mut r)?;
                r.finish()?;
                Self::RegistrationResponse {
                    reject: flag(flags, FLAG_REJECT),
                    pool_handle,
                    pe_id,
                    error,
                }
            }
            0x04 => {
                let mut r =
                    ParamReader::new(header.rest, "ASAP_DEREGISTRATION_RESPONSE", &mut reports);
                let pool_handle = take_handle(&mut r)?;
                let pe_id = take_pe_id(&mut r)?;
                let error = take_error_if(&mut r)?;
                r.finish()?;
                Self::DeregistrationResponse {
                    pool_handle,
                    pe_id,
                    error,
                }
            }
            0x05 => {
                let mut r = ParamReader::new(header.rest, "ASAP_HANDLE_RESOLUTION", &mut reports);
                let pool_handle = take_handle(&mut r)?;
                let items = r
                    .take_if(ParamType::HandleResolutionOption)?
                    .map(decode_items)
                    .transpose()?;
                r.finish()?;
                Self::HandleResolution {
                    subscribe: flag(flags, FLAG_SUBSCRIBE),
                    pool_handle,
                    items,
                }
            }
            0x06 => {
                let mut r =
                    ParamReader::new(header.rest, "ASAP_HANDLE_RESOLUTION_RESPONSE", &mut reports);
                let pool_handle = take_handle(&mut r)?;
                let outcome = match take_error_if(&mut r)? {
                    Some(error) => ResolutionOutcome::Error(error),
                    None => {
                        let (policy, elements) = take_policy_and_elements(&mut r)?;
                        ResolutionOutcome::Members { policy, elements }
                    }
                };
                r.finish()?;
                Self::HandleResolutionResponse {
                    accepted: flag(flags, FLAG_ACCEPTED),
                    pool_handle,
                    outcome,
                }
            }
            0x07 => {
                let mut fields = Fields::new(header.rest, "ASAP_ENDPOINT_KEEP_ALIVE", 4)?;
                let registrar_id = RegistrarId(fields.u32());
                let mut r =
                    ParamReader::new(fields.rest(), "ASAP_ENDPOINT_KEEP_ALIVE", &mut reports);
                let pool_handle = take_handle(&mut r)?;
                let pe_id = r
                    .take_if(ParamType::PeIdentifier)?
                    .map(decode_pe_id)
                    .transpose()?;
                r.finish()?;
                Self::EndpointKeepAlive {
                    home: flag(flags, FLAG_HOME),
                    registrar_id,
                    pool_handle,
                    pe_id,
                }
            }
            0x08 => {
                let mut r =
                    ParamReader::new(header.rest, "ASAP_ENDPOINT_KEEP_ALIVE_ACK", &mut reports);
                let pool_handle = take_handle(&mut r)?;
                let pe_id = take_pe_id(&mut r)?;
                r.finish()?;
                Self::EndpointKeepAliveAck { pool_handle, pe_id }
            }
            0x09 => {
                let mut r =
                    ParamReader::new(header.rest, "ASAP_ENDPOINT_UNREACHABLE", &mut reports);
                let pool_handle = take_handle(&mut r)?;
                let pe_id = take_pe_id(&mut r)?;
                r.finish()?;
                Self::EndpointUnreachable { pool_handle, pe_id }
            }
            0x0A => {
                let mut fields = Fields::new(header.rest, "ASAP_SERVER_ANNOUNCE", 4)?;
                let registrar_id = RegistrarId(fields.u32());
                let mut r = ParamReader::new(fields.rest(), "ASAP_SERVER_ANNOUNCE", &mut reports);
                let mut transports = Vec::new();
                while let Some(t) = Transport::take_if(&mut r)? {
                    transports.push(t);
                }
                r.finish()?;
                Self::ServerAnnounce {
                    registrar_id,
                    transports,
                }
            }
            0x0B => {
                let mut r = ParamReader::new(header.rest, "ASAP_COOKIE", &mut reports);
                let cookie = take_cookie(&mut r)?;
                r.finish()?;
                Self::Cookie { cookie }
            }
            0x0C => {
                let mut r = ParamReader::new(header.rest, "ASAP_COOKIE_ECHO", &mut reports);
                let cookie = take_cookie(&mut r)?;
                r.finish()?;
                Self::CookieEcho { cookie }
            }
            0x0D => {
                let mut r = ParamReader::new(header.rest, "ASAP_BUSINESS_CARD", &mut reports);
                let pool_handle = take_handle(&mut r)?;
                let (policy, elements) = take_policy_and_elements(&mut r)?;
                if elements.is_empty() {
                    return Err(DecodeError::MissingParameter {
                        context: "ASAP_BUSINESS_CARD",
                        expected: ParamType::PoolElement,
                    });
                }
                r.finish()?;
                Self::BusinessCard {
                    pool_handle,
                    policy,
                    elements,
                }
            }
            0x0E => {
                let mut r = ParamReader::new(header.rest, "ASAP_ERROR", &mut reports);
                let error = OperationError::decode(r.take(ParamType::OperationError)?)?;
                r.finish()?;
                Self::Error { error }
            }
            message_type => {
                return Err(DecodeError::UnrecognizedMessage {
                    protocol: Self::PROTOCOL,
                    message_type,
                    message: Bytes::copy_from_slice(frame),
                });
            }
        };
        Ok(Decoded { message, reports })
    }

    fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let start = begin_message(dst, self.message_type() as u8, self.flags());
        match self {
            Self::Registration {
                pool_handle,
                pool_element,
                auth_token,
            } => {
                pool_handle.encode(dst)?;
                pool_element.encode(dst)?;
                if let Some(token) = auth_token {
                    crate::param::encode_opaque(ParamType::AuthToken, token, dst)?;
                }
            }
            Self::Deregistration { pool_handle, pe_id }
            | Self::EndpointKeepAliveAck { pool_handle, pe_id }
            | Self::EndpointUnreachable { pool_handle, pe_id } => {
                pool_handle.encode(dst)?;
                encode_pe_id(*pe_id, dst);
            }
            Self::RegistrationResponse {
                pool_handle,
                pe_id,
                error,
                ..
            }
            | Self::DeregistrationResponse {
                pool_handle,
                pe_id,
                error,
            } => {
                pool_handle.encode(dst)?;
                encode_pe_id(*pe_id, dst);
                if let Some(error) = error {
                    error.encode(dst)?;
                }
            }
            Self::HandleResolution {
                pool_handle, items, ..
            } => {
                pool_handle.encode(dst)?;
                if let Some(items) = items {
                    encode_items(*items, dst);
                }
            }
            Self::HandleResolutionResponse {
                pool_handle,
                outcome,
                ..
            } => {
                pool_handle.encode(dst)?;
                match outcome {
                    ResolutionOutcome::Error(error) => error.encode(dst)?,
                    ResolutionOutcome::Members { policy, elements } => {
                        encode_policy_and_elements(policy.as_ref(), elements, dst)?;
                    }
                }
            }
            Self::EndpointKeepAlive {
                registrar_id,
                pool_handle,
                pe_id,
                ..
            } => {
                dst.put_u32(registrar_id.0);
                pool_handle.encode(dst)?;
                if let Some(pe_id) = pe_id {
                    encode_pe_id(*pe_id, dst);
                }
            }
            Self::ServerAnnounce {
                registrar_id,
                transports,
            } => {
                dst.put_u32(registrar_id.0);
                for t in transports {
                    t.encode(dst)?;
                }
            }
            Self::Cookie { cookie } | Self::CookieEcho { cookie } => encode_cookie(cookie, dst)?,
            Self::BusinessCard {
                pool_handle,
                policy,
                elements,
            } => {
                if elements.is_empty() {
                    return Err(EncodeError::Invalid {
                        what: "ASAP_BUSINESS_CARD",
                        reason: "no pool element",
                    });
                }
                pool_handle.encode(dst)?;
                encode_policy_and_elements(policy.as_ref(), elements, dst)?;
            }
            Self::Error { error } => error.encode(dst)?,
        }
        end_message(dst, start)
    }
}

/// Encodes an optional policy followed by pool elements.
fn encode_policy_and_elements(
    policy: Option<&Policy>,
    elements: &[PoolElement],
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    if let Some(policy) = policy {
        policy.encode(dst)?;
    }
    for pe in elements {
        pe.encode(dst)?;
    }
    Ok(())
}
