//! RFC 5354 parameters: identifiers, pool handles, transports, pool
//! elements, server information, operation errors, cookies and checksums.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::policy::Policy;
use crate::tlv::{Fields, ParamReader, RawParam, begin_param, end_param};

/// The parameter types of RFC 5354 (and the handle-resolution option of
/// draft-dreibholz-rserpool-asap-hropt), by their 14-bit identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ParamType {
    /// IPv4 address (0x0001).
    Ipv4Address,
    /// IPv6 address (0x0002).
    Ipv6Address,
    /// DCCP transport (0x0003).
    DccpTransport,
    /// SCTP transport (0x0004).
    SctpTransport,
    /// TCP transport (0x0005).
    TcpTransport,
    /// UDP transport (0x0006).
    UdpTransport,
    /// UDP-Lite transport (0x0007).
    UdpLiteTransport,
    /// Pool member selection policy (0x0008).
    Policy,
    /// Pool handle (0x0009).
    PoolHandle,
    /// Pool element (0x000A).
    PoolElement,
    /// Server information (0x000B).
    ServerInformation,
    /// Operation error (0x000C).
    OperationError,
    /// Cookie (0x000D).
    Cookie,
    /// Pool element identifier (0x000E).
    PeIdentifier,
    /// Pool element checksum (0x000F).
    PeChecksum,
    /// Handle resolution option (0x803F, a draft extension).
    HandleResolutionOption,
    /// Authentication token (0xBD00, a hapool extension): a shared secret
    /// in ASAP_REGISTRATION that registration rules may name. Its action
    /// bits (10) tell every other implementation to skip it silently.
    AuthToken,
}

impl ParamType {
    /// The parameter with this type field, ignoring the two action bits.
    pub const fn from_raw(raw: u16) -> Option<Self> {
        Some(match raw & 0x3FFF {
            0x01 => Self::Ipv4Address,
            0x02 => Self::Ipv6Address,
            0x03 => Self::DccpTransport,
            0x04 => Self::SctpTransport,
            0x05 => Self::TcpTransport,
            0x06 => Self::UdpTransport,
            0x07 => Self::UdpLiteTransport,
            0x08 => Self::Policy,
            0x09 => Self::PoolHandle,
            0x0A => Self::PoolElement,
            0x0B => Self::ServerInformation,
            0x0C => Self::OperationError,
            0x0D => Self::Cookie,
            0x0E => Self::PeIdentifier,
            0x0F => Self::PeChecksum,
            0x3F => Self::HandleResolutionOption,
            0x3D00 => Self::AuthToken,
            _ => return None,
        })
    }

    /// The type field written on the wire, with its canonical action bits.
    pub const fn wire_type(self) -> u16 {
        match self {
            Self::Ipv4Address => 0x0001,
            Self::Ipv6Address => 0x0002,
            Self::DccpTransport => 0x0003,
            Self::SctpTransport => 0x0004,
            Self::TcpTransport => 0x0005,
            Self::UdpTransport => 0x0006,
            Self::UdpLiteTransport => 0x0007,
            Self::Policy => 0x0008,
            Self::PoolHandle => 0x0009,
            Self::PoolElement => 0x000A,
            Self::ServerInformation => 0x000B,
            Self::OperationError => 0x000C,
            Self::Cookie => 0x000D,
            Self::PeIdentifier => 0x000E,
            Self::PeChecksum => 0x000F,
            Self::HandleResolutionOption => 0x803F,
            Self::AuthToken => 0xBD00,
        }
    }

    /// Whether this is one of the five transport parameters.
    pub const fn is_transport(self) -> bool {
        matches!(
            self,
            Self::DccpTransport
                | Self::SctpTransport
                | Self::TcpTransport
                | Self::UdpTransport
                | Self::UdpLiteTransport
        )
    }

    /// A distinct bit per type, for sets of types.
    pub(crate) const fn bit(self) -> u32 {
        1 << (self.wire_type() & 0x1F)
    }
}

/// Checks that a fixed-size parameter has exactly the length `expected`.
fn expect_length(param: ParamType, raw: RawParam<'_>, expected: usize) -> Result<(), DecodeError> {
    if raw.whole.len() == expected {
        Ok(())
    } else {
        Err(DecodeError::ParameterLength {
            param,
            length: raw.whole.len(),
            tlv: raw.to_bytes(),
        })
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub u32);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:#010x})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:08x}", self.0)
            }
        }
    };
}

id_type!(
    /// A pool element identifier (PE id), chosen by the PE, unique within
    /// its pool. Zero means "not yet chosen".
    PoolElementId
);
id_type!(
    /// An ENRP server (registrar) identifier, chosen at random by each
    /// registrar at start-up. Zero means "none" or "unknown".
    RegistrarId
);

/// A pool handle: the opaque name of a pool. Never empty on the wire.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolHandle(Bytes);

impl PoolHandle {
    /// A pool handle with these bytes.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Self(bytes.into())
    }

    /// The handle's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The number of bytes in the handle.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the handle is empty (which the wire does not allow).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn decode(raw: RawParam<'_>) -> Result<Self, DecodeError> {
        if raw.value.is_empty() {
            return Err(DecodeError::InvalidValue {
                param: ParamType::PoolHandle,
                reason: "empty pool handle",
                tlv: raw.to_bytes(),
            });
        }
        Ok(Self(Bytes::copy_from_slice(raw.value)))
    }

    pub(crate) fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        if self.0.is_empty() {
            return Err(EncodeError::Invalid {
                what: "pool handle",
                reason: "empty",
            });
        }
        let start = begin_param(dst, ParamType::PoolHandle);
        dst.put_slice(&self.0);
        end_param(dst, start)
    }
}

impl From<&str> for PoolHandle {
    fn from(s: &str) -> Self {
        Self(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl fmt::Display for PoolHandle {
    /// Printable ASCII as is; other bytes as `\xNN`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0.iter() {
            if b.is_ascii_graphic() || b == b' ' {
                write!(f, "{}", char::from(b))?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for PoolHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PoolHandle(\"{self}\")")
    }
}

fn decode_address(param: ParamType, raw: RawParam<'_>) -> Result<IpAddr, DecodeError> {
    match param {
        ParamType::Ipv4Address => {
            expect_length(param, raw, 8)?;
            let octets: [u8; 4] = raw.value.try_into().expect("length checked");
            Ok(IpAddr::V4(Ipv4Addr::from(octets)))
        }
        ParamType::Ipv6Address => {
            expect_length(param, raw, 20)?;
            let octets: [u8; 16] = raw.value.try_into().expect("length checked");
            Ok(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        _ => unreachable!("caller passes address types only"),
    }
}

/// Takes the next address parameter of a transport; any other known
/// parameter is out of place there.
fn take_address(reader: &mut ParamReader<'_, '_>) -> Result<Option<IpAddr>, DecodeError> {
    match reader.take_any()? {
        Some((found @ (ParamType::Ipv4Address | ParamType::Ipv6Address), raw)) => {
            decode_address(found, raw).map(Some)
        }
        Some((found, raw)) => Err(DecodeError::UnexpectedParameter {
            context: "transport parameter",
            found,
            tlv: raw.to_bytes(),
        }),
        None => Ok(None),
    }
}

fn encode_address(address: &IpAddr, dst: &mut BytesMut) {
    match address {
        IpAddr::V4(a) => {
            dst.put_u16(ParamType::Ipv4Address.wire_type());
            dst.put_u16(8);
            dst.put_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            dst.put_u16(ParamType::Ipv6Address.wire_type());
            dst.put_u16(20);
            dst.put_slice(&a.octets());
        }
    }
}

/// The Transport Use field of SCTP and TCP transports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum TransportUse {
    /// The transport carries user data only (0x0000).
    #[default]
    DataOnly,
    /// ASAP control messages share the transport with user data (0x0001).
    DataPlusControl,
}

impl TransportUse {
    fn decode(value: u16, raw: RawParam<'_>, param: ParamType) -> Result<Self, DecodeError> {
        match value {
            0 => Ok(Self::DataOnly),
            1 => Ok(Self::DataPlusControl),
            _ => Err(DecodeError::InvalidValue {
                param,
                reason: "transport use is neither 0 (data only) nor 1 (data plus control)",
                tlv: raw.to_bytes(),
            }),
        }
    }

    fn wire(self) -> u16 {
        match self {
            Self::DataOnly => 0,
            Self::DataPlusControl => 1,
        }
    }
}

/// A transport address parameter: where a PE or a registrar is reached.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// SCTP: a port and one or more addresses (multi-homing).
    Sctp {
        /// The SCTP port.
        port: u16,
        /// Whether ASAP control traffic shares the association.
        transport_use: TransportUse,
        /// The endpoint's addresses; never empty on the wire.
        addresses: Vec<IpAddr>,
    },
    /// TCP: one address.
    Tcp {
        /// The TCP port.
        port: u16,
        /// Whether ASAP control traffic shares the connection.
        transport_use: TransportUse,
        /// The address.
        address: IpAddr,
    },
    /// UDP: one address.
    Udp {
        /// The UDP port.
        port: u16,
        /// The address.
        address: IpAddr,
    },
    /// UDP-Lite: one address.
    UdpLite {
        /// The UDP-Lite port.
        port: u16,
        /// The address.
        address: IpAddr,
    },
    /// DCCP: one address and a service code.
    Dccp {
        /// The DCCP port.
        port: u16,
        /// The DCCP service code.
        service_code: u32,
        /// The address.
        address: IpAddr,
    },
}

impl Transport {
    /// A TCP transport for user data at `addr`.
    pub fn tcp(addr: std::net::SocketAddr) -> Self {
        Self::Tcp {
            port: addr.port(),
            transport_use: TransportUse::DataOnly,
            address: addr.ip(),
        }
    }

    /// The parameter type of this transport.
    pub fn param_type(&self) -> ParamType {
        match self {
            Self::Sctp { .. } => ParamType::SctpTransport,
            Self::Tcp { .. } => ParamType::TcpTransport,
            Self::Udp { .. } => ParamType::UdpTransport,
            Self::UdpLite { .. } => ParamType::UdpLiteTransport,
            Self::Dccp { .. } => ParamType::DccpTransport,
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            Self::Sctp { port, .. }
            | Self::Tcp { port, .. }
            | Self::Udp { port, .. }
            | Self::UdpLite { port, .. }
            | Self::Dccp { port, .. } => *port,
        }
    }

    /// Whether ASAP control traffic shares this transport (SCTP and TCP
    /// only; the others carry data only).
    pub fn transport_use(&self) -> TransportUse {
        match self {
            Self::Sctp { transport_use, .. } | Self::Tcp { transport_use, .. } => *transport_use,
            _ => TransportUse::DataOnly,
        }
    }

    /// The first (for SCTP: primary) address.
    pub fn address(&self) -> Option<IpAddr> {
        match self {
            Self::Sctp { addresses, .. } => addresses.first().copied(),
            Self::Tcp { address, .. }
            | Self::Udp { address, .. }
            | Self::UdpLite { address, .. }
            | Self::Dccp { address, .. } => Some(*address),
        }
    }

    /// The first address with the port, as a socket address.
    pub fn socket_addr(&self) -> Option<std::net::SocketAddr> {
        self.address()
            .map(|ip| std::net::SocketAddr::new(ip, self.port()))
    }

    /// Takes the next parameter of `reader`, which must be a transport.
    pub(crate) fn take(reader: &mut ParamReader<'_, '_>) -> Result<Self, DecodeError> {
        let (param, raw) = reader.take_where(ParamType::is_transport, ParamType::TcpTransport)?;
        Self::decode(param, raw, reader)
    }

    /// Takes the next parameter of `reader` if it is a transport.
    pub(crate) fn take_if(reader: &mut ParamReader<'_, '_>) -> Result<Option<Self>, DecodeError> {
        match reader.take_if_where(ParamType::is_transport)? {
            Some((param, raw)) => Self::decode(param, raw, reader).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) fn decode(
        param: ParamType,
        raw: RawParam<'_>,
        outer: &mut ParamReader<'_, '_>,
    ) -> Result<Self, DecodeError> {
        let fixed = if param == ParamType::DccpTransport {
            8
        } else {
            4
        };
        let mut fields = Fields::new(raw.value, "transport parameter", fixed)?;
        let port = fields.u16();
        let use_or_reserved = fields.u16();
        let service_code = if param == ParamType::DccpTransport {
            fields.u32()
        } else {
            0
        };
        let mut reader = outer.nested(fields.rest(), "transport parameter");
        let invalid = |reason| DecodeError::InvalidValue {
            param,
            reason,
            tlv: raw.to_bytes(),
        };
        if param == ParamType::SctpTransport {
            let mut addresses = Vec::new();
            while let Some(address) = take_address(&mut reader)? {
                addresses.push(address);
            }
            if addresses.is_empty() {
                return Err(invalid("SCTP transport without an address"));
            }
            return Ok(Self::Sctp {
                port,
                transport_use: TransportUse::decode(use_or_reserved, raw, param)?,
                addresses,
            });
        }
        let Some(address) = take_address(&mut reader)? else {
            return Err(invalid("transport without an address"));
        };
        if take_address(&mut reader)?.is_some() {
            return Err(invalid(
                "more than one address for a single-homed transport",
            ));
        }
        Ok(match param {
            ParamType::TcpTransport => Self::Tcp {
                port,
                transport_use: TransportUse::decode(use_or_reserved, raw, param)?,
                address,
            },
            ParamType::UdpTransport => Self::Udp { port, address },
            ParamType::UdpLiteTransport => Self::UdpLite { port, address },
            ParamType::DccpTransport => Self::Dccp {
                port,
                service_code,
                address,
            },
            _ => unreachable!("caller passes transport types only"),
        })
    }

    /// The transport as an encoded parameter, e.g. for the information of
    /// an "Inconsistent Transport Type" error cause.
    pub fn to_param(&self) -> Result<Bytes, EncodeError> {
        let mut dst = BytesMut::with_capacity(32);
        self.encode(&mut dst)?;
        Ok(dst.freeze())
    }

    pub(crate) fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let start = begin_param(dst, self.param_type());
        dst.put_u16(self.port());
        match self {
            Self::Sctp {
                transport_use,
                addresses,
                ..
            } => {
                if addresses.is_empty() {
                    return Err(EncodeError::Invalid {
                        what: "SCTP transport",
                        reason: "no address",
                    });
                }
                dst.put_u16(transport_use.wire());
                for address in addresses {
                    encode_address(address, dst);
                }
            }
            Self::Tcp {
                transport_use,
                address,
                ..
            } => {
                dst.put_u16(transport_use.wire());
                encode_address(address, dst);
            }
            Self::Udp { address, .. } | Self::UdpLite { address, .. } => {
                dst.put_u16(0);
                encode_address(address, dst);
            }
            Self::Dccp {
                service_code,
                address,
                ..
            } => {
                dst.put_u16(0);
                dst.put_u32(*service_code);
                encode_address(address, dst);
            }
        }
        end_param(dst, start)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Sctp { .. } => "sctp",
            Self::Tcp { .. } => "tcp",
            Self::Udp { .. } => "udp",
            Self::UdpLite { .. } => "udplite",
            Self::Dccp { .. } => "dccp",
        };
        write!(f, "{name}://")?;
        match self {
            Self::Sctp { addresses, .. } => {
                for (i, a) in addresses.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write_ip(f, a)?;
                }
            }
            other => write_ip(f, &other.address().expect("single-homed"))?,
        }
        write!(f, ":{}", self.port())
    }
}

fn write_ip(f: &mut fmt::Formatter<'_>, ip: &IpAddr) -> fmt::Result {
    match ip {
        IpAddr::V4(a) => write!(f, "{a}"),
        IpAddr::V6(a) => write!(f, "[{a}]"),
    }
}

/// A pool element: one server of a pool, as registered and as handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolElement {
    /// The PE's identifier within its pool.
    pub id: PoolElementId,
    /// The registrar that is home for this PE (zero when registering).
    pub home_registrar: RegistrarId,
    /// How long the registration lasts without being renewed, in
    /// milliseconds.
    pub registration_life: u32,
    /// Where pool users reach the PE.
    pub user_transport: Transport,
    /// The PE's selection policy and its values (load, weight, ...).
    pub policy: Policy,
    /// Where the home registrar reaches the PE's ASAP endpoint; present in
    /// ENRP messages, absent in ASAP ones.
    pub asap_transport: Option<Transport>,
}

impl PoolElement {
    /// The smallest encoded pool element: header, fixed fields, a
    /// single-homed IPv4 transport and a policy without values.
    pub(crate) const MIN_WIRE_LEN: usize = 4 + 12 + 16 + 8;

    pub(crate) fn decode(
        raw: RawParam<'_>,
        outer: &mut ParamReader<'_, '_>,
    ) -> Result<Self, DecodeError> {
        let mut fields = Fields::new(raw.value, "pool element", 12)?;
        let id = PoolElementId(fields.u32());
        let home_registrar = RegistrarId(fields.u32());
        let registration_life = fields.u32();
        let mut reader = outer.nested(fields.rest(), "pool element");
        let user_transport = Transport::take(&mut reader)?;
        let policy = Policy::decode(reader.take(ParamType::Policy)?)?;
        let asap_transport = Transport::take_if(&mut reader)?;
        reader.finish()?;
        Ok(Self {
            id,
            home_registrar,
            registration_life,
            user_transport,
            policy,
            asap_transport,
        })
    }

    pub(crate) fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let start = begin_param(dst, ParamType::PoolElement);
        dst.put_u32(self.id.0);
        dst.put_u32(self.home_registrar.0);
        dst.put_u32(self.registration_life);
        self.user_transport.encode(dst)?;
        self.policy.encode(dst)?;
        if let Some(t) = &self.asap_transport {
            t.encode(dst)?;
        }
        end_param(dst, start)
    }
}

/// Server information: a registrar's identifier and where it is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInformation {
    /// The registrar.
    pub registrar_id: RegistrarId,
    /// Its ENRP endpoint.
    pub transport: Transport,
}

impl ServerInformation {
    pub(crate) fn decode(
        raw: RawParam<'_>,
        outer: &mut ParamReader<'_, '_>,
    ) -> Result<Self, DecodeError> {
        let mut fields = Fields::new(raw.value, "server information", 4)?;
        let registrar_id = RegistrarId(fields.u32());
        let mut reader = outer.nested(fields.rest(), "server information");
        let transport = Transport::take(&mut reader)?;
        reader.finish()?;
        Ok(Self {
            registrar_id,
            transport,
        })
    }

    pub(crate) fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let start = begin_param(dst, ParamType::ServerInformation);
        dst.put_u32(self.registrar_id.0);
        self.transport.encode(dst)?;
        end_param(dst, start)
    }
}

/// An error cause code of RFC 5354 section 3.10.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CauseCode(pub u16);

impl CauseCode {
    /// A parameter of unknown type (info: the parameter).
    pub const UNRECOGNIZED_PARAMETER: Self = Self(0x0001);
    /// A message of unknown type (info: the message).
    pub const UNRECOGNIZED_MESSAGE: Self = Self(0x0002);
    /// A parameter with an invalid value (info: the parameter).
    pub const INVALID_VALUES: Self = Self(0x0003);
    /// The PE identifier is already in use by another PE.
    pub const NON_UNIQUE_PE_IDENTIFIER: Self = Self(0x0004);
    /// The PE's policy differs from the pool's (info: the policy).
    pub const INCONSISTENT_POOLING_POLICY: Self = Self(0x0005);
    /// The receiver has no room for the request.
    pub const LACK_OF_RESOURCES: Self = Self(0x0006);
    /// The PE's transport differs from the pool's (info: the transport).
    pub const INCONSISTENT_TRANSPORT_TYPE: Self = Self(0x0007);
    /// The PE's data/control use differs from the pool's.
    pub const INCONSISTENT_DATA_CONTROL_CONFIGURATION: Self = Self(0x0008);
    /// No pool has this handle.
    pub const UNKNOWN_POOL_HANDLE: Self = Self(0x0009);
    /// Refused for security reasons.
    pub const REJECTION_DUE_TO_SECURITY: Self = Self(0x000A);

    /// The RFC name of a known code.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x0001 => "Unrecognized Parameter",
            0x0002 => "Unrecognized Message",
            0x0003 => "Invalid Values",
            0x0004 => "Non-unique PE Identifier",
            0x0005 => "Inconsistent Pooling Policy",
            0x0006 => "Lack of Resources",
            0x0007 => "Inconsistent Transport Type",
            0x0008 => "Inconsistent Data/Control Configuration",
            0x0009 => "Unknown Pool Handle",
            0x000A => "Rejection due to Security Considerations",
            _ => return None,
        })
    }
}

impl fmt::Debug for CauseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({:#06x})", self.0),
            None => write!(f, "CauseCode({:#06x})", self.0),
        }
    }
}

/// One error cause: a code and cause-specific information (usually the
/// offending parameter or message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorCause {
    /// The cause code.
    pub code: CauseCode,
    /// The cause-specific information, as bytes.
    pub info: Bytes,
}

impl ErrorCause {
    /// A cause with no information.
    pub fn new(code: CauseCode) -> Self {
        Self {
            code,
            info: Bytes::new(),
        }
    }
}

/// The Operation Error parameter: one or more error causes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationError {
    /// The causes; never empty on the wire.
    pub causes: Vec<ErrorCause>,
}

impl OperationError {
    /// An operation error with a single cause.
    pub fn single(cause: ErrorCause) -> Self {
        Self {
            causes: vec![cause],
        }
    }

    pub(crate) fn decode(raw: RawParam<'_>) -> Result<Self, DecodeError> {
        let invalid = |reason| DecodeError::InvalidValue {
            param: ParamType::OperationError,
            reason,
            tlv: raw.to_bytes(),
        };
        let mut rest = raw.value;
        let mut causes = Vec::new();
        while !rest.is_empty() {
            let Some((header, _)) = rest.split_first_chunk::<4>() else {
                return Err(invalid("error cause header truncated"));
            };
            let code = CauseCode(u16::from_be_bytes([header[0], header[1]]));
            let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
            if length < 4 {
                return Err(invalid("error cause length below 4"));
            }
            if length > rest.len() {
                return Err(invalid("error cause overruns the operation error"));
            }
            causes.push(ErrorCause {
                code,
                info: Bytes::copy_from_slice(&rest[4..length]),
            });
            rest = &rest[crate::tlv::padded(length).min(rest.len())..];
        }
        if causes.is_empty() {
            return Err(invalid("operation error without a cause"));
        }
        Ok(Self { causes })
    }

    pub(crate) fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        if self.causes.is_empty() {
            return Err(EncodeError::Invalid {
                what: "operation error",
                reason: "no error cause",
            });
        }
        let start = begin_param(dst, ParamType::OperationError);
        for cause in &self.causes {
            let cause_start = dst.len();
            dst.put_u16(cause.code.0);
            dst.put_u16(0);
            dst.put_slice(&cause.info);
            crate::tlv::patch_length(dst, cause_start + 2, dst.len() - cause_start, "error cause")?;
            crate::tlv::pad(dst);
        }
        end_param(dst, start)
    }
}

/// Encodes an opaque cookie parameter.
pub(crate) fn encode_cookie(cookie: &Bytes, dst: &mut BytesMut) -> Result<(), EncodeError> {
    encode_opaque(ParamType::Cookie, cookie, dst)
}

/// Encodes a parameter whose value is opaque bytes (a cookie, a token).
pub(crate) fn encode_opaque(
    param: ParamType,
    value: &Bytes,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    let start = begin_param(dst, param);
    dst.put_slice(value);
    end_param(dst, start)
}

/// Decodes a PE identifier parameter.
pub(crate) fn decode_pe_id(raw: RawParam<'_>) -> Result<PoolElementId, DecodeError> {
    expect_length(ParamType::PeIdentifier, raw, 8)?;
    Ok(PoolElementId(u32::from_be_bytes(
        raw.value.try_into().expect("length checked"),
    )))
}

/// Encodes a PE identifier parameter.
pub(crate) fn encode_pe_id(id: PoolElementId, dst: &mut BytesMut) {
    dst.put_u16(ParamType::PeIdentifier.wire_type());
    dst.put_u16(8);
    dst.put_u32(id.0);
}

/// Decodes a PE checksum parameter. The length is 6 (as rsplib and
/// Wireshark have it); 8, with the padding counted, is accepted too.
pub(crate) fn decode_pe_checksum(raw: RawParam<'_>) -> Result<u16, DecodeError> {
    if raw.whole.len() != 6 && raw.whole.len() != 8 {
        expect_length(ParamType::PeChecksum, raw, 6)?;
    }
    Ok(u16::from_be_bytes([raw.value[0], raw.value[1]]))
}

/// Encodes a PE checksum parameter (length 6, padded to 8).
pub(crate) fn encode_pe_checksum(checksum: u16, dst: &mut BytesMut) {
    dst.put_u16(ParamType::PeChecksum.wire_type());
    dst.put_u16(6);
    dst.put_u16(checksum);
    dst.put_u16(0);
}

/// Decodes a handle-resolution option: the number of PEs wanted.
pub(crate) fn decode_items(raw: RawParam<'_>) -> Result<u32, DecodeError> {
    expect_length(ParamType::HandleResolutionOption, raw, 8)?;
    Ok(u32::from_be_bytes(
        raw.value.try_into().expect("length checked"),
    ))
}

/// Encodes a handle-resolution option.
pub(crate) fn encode_items(items: u32, dst: &mut BytesMut) {
    dst.put_u16(ParamType::HandleResolutionOption.wire_type());
    dst.put_u16(8);
    dst.put_u32(items);
}
