//! ENRP messages (RFC 5353): how registrars share the handlespace.

use bytes::{BufMut, Bytes, BytesMut};

use crate::asap::take_elements;
use crate::error::{DecodeError, EncodeError};
use crate::message::{Decoded, Message, begin_message, bit, end_message, flag, split_header};
use crate::param::{
    OperationError, ParamType, PoolElement, PoolHandle, RegistrarId, ServerInformation,
    decode_pe_checksum, encode_pe_checksum,
};
use crate::tlv::{Fields, ParamReader};

/// The R flag of ENRP_PRESENCE: the receiver must answer.
const FLAG_REPLY_REQUIRED: u8 = 0x01;
/// The W flag of ENRP_HANDLE_TABLE_REQUEST: only PEs the receiver owns.
const FLAG_OWN_CHILDREN_ONLY: u8 = 0x01;
/// The R flag of ENRP_HANDLE_TABLE_RESPONSE and ENRP_LIST_RESPONSE.
const FLAG_REJECT: u8 = 0x01;
/// The M flag of ENRP_HANDLE_TABLE_RESPONSE: more to send.
const FLAG_MORE_TO_SEND: u8 = 0x02;
/// The T flag of ENRP_HANDLE_UPDATE: takeover suggested (a draft extension).
const FLAG_TAKEOVER_SUGGESTED: u8 = 0x01;

/// An ENRP message type code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EnrpType {
    /// ENRP_PRESENCE (0x01).
    Presence = 0x01,
    /// ENRP_HANDLE_TABLE_REQUEST (0x02).
    HandleTableRequest = 0x02,
    /// ENRP_HANDLE_TABLE_RESPONSE (0x03).
    HandleTableResponse = 0x03,
    /// ENRP_HANDLE_UPDATE (0x04).
    HandleUpdate = 0x04,
    /// ENRP_LIST_REQUEST (0x05).
    ListRequest = 0x05,
    /// ENRP_LIST_RESPONSE (0x06).
    ListResponse = 0x06,
    /// ENRP_INIT_TAKEOVER (0x07).
    InitTakeover = 0x07,
    /// ENRP_INIT_TAKEOVER_ACK (0x08).
    InitTakeoverAck = 0x08,
    /// ENRP_TAKEOVER_SERVER (0x09).
    TakeoverServer = 0x09,
    /// ENRP_ERROR (0x0A).
    Error = 0x0A,
}

/// The update action of ENRP_HANDLE_UPDATE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpdateAction {
    /// The PE was added or changed (0x0000).
    AddPe,
    /// The PE was removed (0x0001).
    DelPe,
}

/// One pool's part of a handle table: the handle and its PEs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolEntries {
    /// The pool.
    pub pool_handle: PoolHandle,
    /// Its PEs (never empty on the wire), each with its ASAP transport.
    pub elements: Vec<PoolElement>,
}

/// An ENRP message: the sender and receiver registrar ids and a body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrpMessage {
    /// The sending registrar.
    pub sender: RegistrarId,
    /// The receiving registrar (zero when unknown, e.g. multicast).
    pub receiver: RegistrarId,
    /// The message proper.
    pub body: EnrpBody,
}

/// The body of an ENRP message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnrpBody {
    /// A registrar says it is alive, with the checksum of the PEs it owns.
    Presence {
        /// The R flag: the receiver must answer with its own presence.
        reply_required: bool,
        /// The checksum of the PEs the sender is home for.
        checksum: u16,
        /// The sender's identifier and ENRP endpoint.
        server_info: Option<ServerInformation>,
    },
    /// A registrar asks a peer for its handle table (or the next page).
    HandleTableRequest {
        /// The W flag: only the PEs the receiver is home for.
        own_children_only: bool,
    },
    /// A page of the handle table.
    HandleTableResponse {
        /// The R flag: the request was refused.
        reject: bool,
        /// The M flag: another request fetches the next page.
        more_to_send: bool,
        /// The pools of this page.
        pools: Vec<PoolEntries>,
    },
    /// A registration changed at the sender.
    HandleUpdate {
        /// The T flag: the receiver is asked to take the PE over.
        takeover_suggested: bool,
        /// Whether the PE was added or removed.
        action: UpdateAction,
        /// The pool.
        pool_handle: PoolHandle,
        /// The PE, with its ASAP transport.
        pool_element: PoolElement,
    },
    /// A registrar asks a peer for its list of registrars.
    ListRequest,
    /// The list of registrars the sender knows.
    ListResponse {
        /// The R flag: the request was refused.
        reject: bool,
        /// The known registrars.
        servers: Vec<ServerInformation>,
    },
    /// The sender starts taking over `target`'s PEs.
    InitTakeover {
        /// The registrar being taken over.
        target: RegistrarId,
    },
    /// The sender agrees to the takeover of `target`.
    InitTakeoverAck {
        /// The registrar being taken over.
        target: RegistrarId,
    },
    /// The sender has taken over `target`'s PEs.
    TakeoverServer {
        /// The registrar taken over.
        target: RegistrarId,
    },
    /// Reports an error.
    Error {
        /// The error causes.
        error: OperationError,
    },
}

impl EnrpBody {
    /// The message type.
    pub fn message_type(&self) -> EnrpType {
        match self {
            Self::Presence { .. } => EnrpType::Presence,
            Self::HandleTableRequest { .. } => EnrpType::HandleTableRequest,
            Self::HandleTableResponse { .. } => EnrpType::HandleTableResponse,
            Self::HandleUpdate { .. } => EnrpType::HandleUpdate,
            Self::ListRequest => EnrpType::ListRequest,
            Self::ListResponse { .. } => EnrpType::ListResponse,
            Self::InitTakeover { .. } => EnrpType::InitTakeover,
            Self::InitTakeoverAck { .. } => EnrpType::InitTakeoverAck,
            Self::TakeoverServer { .. } => EnrpType::TakeoverServer,
            Self::Error { .. } => EnrpType::Error,
        }
    }

    fn flags(&self) -> u8 {
        match self {
            Self::Presence { reply_required, .. } => bit(*reply_required, FLAG_REPLY_REQUIRED),
            Self::HandleTableRequest { own_children_only } => {
                bit(*own_children_only, FLAG_OWN_CHILDREN_ONLY)
            }
            Self::HandleTableResponse {
                reject,
                more_to_send,
                ..
            } => bit(*reject, FLAG_REJECT) | bit(*more_to_send, FLAG_MORE_TO_SEND),
            Self::HandleUpdate {
                takeover_suggested, ..
            } => bit(*takeover_suggested, FLAG_TAKEOVER_SUGGESTED),
            Self::ListResponse { reject, .. } => bit(*reject, FLAG_REJECT),
            _ => 0,
        }
    }
}

impl Message for EnrpMessage {
    const PROTOCOL: &'static str = "ENRP";
    const HEADER_LEN: usize = 12;

    fn decode(frame: &[u8]) -> Result<Decoded<Self>, DecodeError> {
        let header = split_header(frame, Self::HEADER_LEN)?;
        let flags = header.flags;
        let mut fields = Fields::new(header.rest, "ENRP header", 8)?;
        let sender = RegistrarId(fields.u32());
        let receiver = RegistrarId(fields.u32());
        let rest = fields.rest();
        let mut reports = Vec::new();
        let body = match header.message_type {
            0x01 => {
                let mut r = ParamReader::new(rest, "ENRP_PRESENCE", &mut reports);
                let checksum = decode_pe_checksum(r.take(ParamType::PeChecksum)?)?;
                let server_info = match r.take_if(ParamType::ServerInformation)? {
                    Some(raw) => Some(ServerInformation::decode(raw, &mut r)?),
                    None => None,
                };
                r.finish()?;
                EnrpBody::Presence {
                    reply_required: flag(flags, FLAG_REPLY_REQUIRED),
                    checksum,
                    server_info,
                }
            }
            0x02 => {
                ParamReader::new(rest, "ENRP_HANDLE_TABLE_REQUEST", &mut reports).finish()?;
                EnrpBody::HandleTableRequest {
                    own_children_only: flag(flags, FLAG_OWN_CHILDREN_ONLY),
                }
            }
            0x03 => {
                let mut r = ParamReader::new(rest, "ENRP_HANDLE_TABLE_RESPONSE", &mut reports);
                let mut pools = Vec::new();
                while let Some(raw) = r.take_if(ParamType::PoolHandle)? {
                    let pool_handle = PoolHandle::decode(raw)?;
                    let elements = take_elements(&mut r)?;
                    if elements.is_empty() {
                        return Err(DecodeError::MissingParameter {
                            context: "ENRP_HANDLE_TABLE_RESPONSE",
                            expected: ParamType::PoolElement,
                        });
                    }
                    pools.push(PoolEntries {
                        pool_handle,
                        elements,
                    });
                }
                r.finish()?;
                EnrpBody::HandleTableResponse {
                    reject: flag(flags, FLAG_REJECT),
                    more_to_send: flag(flags, FLAG_MORE_TO_SEND),
                    pools,
                }
            }
            0x04 => {
                let mut fields = Fields::new(rest, "ENRP_HANDLE_UPDATE", 4)?;
                let action = match fields.u16() {
                    0 => UpdateAction::AddPe,
                    1 => UpdateAction::DelPe,
                    value => {
                        return Err(DecodeError::InvalidField {
                            what: "ENRP_HANDLE_UPDATE update action",
                            value: u32::from(value),
                        });
                    }
                };
                let _reserved = fields.u16();
                let mut r = ParamReader::new(fields.rest(), "ENRP_HANDLE_UPDATE", &mut reports);
                let pool_handle = PoolHandle::decode(r.take(ParamType::PoolHandle)?)?;
                let raw = r.take(ParamType::PoolElement)?;
                let pool_element = PoolElement::decode(raw, &mut r)?;
                r.finish()?;
                EnrpBody::HandleUpdate {
                    takeover_suggested: flag(flags, FLAG_TAKEOVER_SUGGESTED),
                    action,
                    pool_handle,
                    pool_element,
                }
            }
            0x05 => {
                ParamReader::new(rest, "ENRP_LIST_REQUEST", &mut reports).finish()?;
                EnrpBody::ListRequest
            }
            0x06 => {
                let mut r = ParamReader::new(rest, "ENRP_LIST_RESPONSE", &mut reports);
                let mut servers = Vec::new();
                while let Some(raw) = r.take_if(ParamType::ServerInformation)? {
                    servers.push(ServerInformation::decode(raw, &mut r)?);
                }
                r.finish()?;
                EnrpBody::ListResponse {
                    reject: flag(flags, FLAG_REJECT),
                    servers,
                }
            }
            t @ (0x07..=0x09) => {
                let mut fields = Fields::new(rest, "ENRP takeover target", 4)?;
                let target = RegistrarId(fields.u32());
                ParamReader::new(fields.rest(), "ENRP takeover message", &mut reports).finish()?;
                match t {
                    0x07 => EnrpBody::InitTakeover { target },
                    0x08 => EnrpBody::InitTakeoverAck { target },
                    _ => EnrpBody::TakeoverServer { target },
                }
            }
            0x0A => {
                let mut r = ParamReader::new(rest, "ENRP_ERROR", &mut reports);
                let error = OperationError::decode(r.take(ParamType::OperationError)?)?;
                r.finish()?;
                EnrpBody::Error { error }
            }
            message_type => {
                return Err(DecodeError::UnrecognizedMessage {
                    protocol: Self::PROTOCOL,
                    message_type,
                    message: Bytes::copy_from_slice(frame),
                });
            }
        };
        Ok(Decoded {
            message: Self {
                sender,
                receiver,
                body,
            },
            reports,
        })
    }

    fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let start = begin_message(dst, self.body.message_type() as u8, self.body.flags());
        dst.put_u32(self.sender.0);
        dst.put_u32(self.receiver.0);
        match &self.body {
            EnrpBody::Presence {
                checksum,
                server_info,
                ..
            } => {
                encode_pe_checksum(*checksum, dst);
                if let Some(info) = server_info {
                    info.encode(dst)?;
                }
            }
            EnrpBody::HandleTableRequest { .. } | EnrpBody::ListRequest => {}
            EnrpBody::HandleTableResponse { pools, .. } => {
                for pool in pools {
                    if pool.elements.is_empty() {
                        return Err(EncodeError::Invalid {
                            what: "ENRP_HANDLE_TABLE_RESPONSE",
                            reason: "pool without pool elements",
                        });
                    }
                    pool.pool_handle.encode(dst)?;
                    for pe in &pool.elements {
                        pe.encode(dst)?;
                    }
                }
            }
            EnrpBody::HandleUpdate {
                action,
                pool_handle,
                pool_element,
                ..
            } => {
                dst.put_u16(match action {
                    UpdateAction::AddPe => 0,
                    UpdateAction::DelPe => 1,
                });
                dst.put_u16(0);
                pool_handle.encode(dst)?;
                pool_element.encode(dst)?;
            }
            EnrpBody::ListResponse { servers, .. } => {
                for server in servers {
                    server.encode(dst)?;
                }
            }
            EnrpBody::InitTakeover { target }
            | EnrpBody::InitTakeoverAck { target }
            | EnrpBody::TakeoverServer { target } => dst.put_u32(target.0),
            EnrpBody::Error { error } => error.encode(dst)?,
        }
        end_message(dst, start)
    }
}
