//! proptest strategies for every message and parameter, for property tests
//! here and in the crates built on this one. Sizes are kept small enough
//! that every generated message fits its 16-bit length field.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use crate::{
    AsapMessage, CauseCode, EnrpBody, EnrpMessage, ErrorCause, OperationError, Policy, PolicyType,
    PoolElement, PoolElementId, PoolEntries, PoolHandle, RegistrarId, ResolutionOutcome,
    ServerInformation, Transport, TransportUse, UpdateAction,
};

/// Any IPv4 or IPv6 address.
pub fn ip_addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
    ]
}

/// Any transport use.
pub fn transport_use() -> impl Strategy<Value = TransportUse> {
    prop_oneof![
        Just(TransportUse::DataOnly),
        Just(TransportUse::DataPlusControl)
    ]
}

/// Any transport parameter (SCTP with one to four addresses).
pub fn transport() -> impl Strategy<Value = Transport> {
    prop_oneof![
        (any::<u16>(), transport_use(), vec(ip_addr(), 1..4)).prop_map(
            |(port, transport_use, addresses)| Transport::Sctp {
                port,
                transport_use,
                addresses
            }
        ),
        (any::<u16>(), transport_use(), ip_addr()).prop_map(|(port, transport_use, address)| {
            Transport::Tcp {
                port,
                transport_use,
                address,
            }
        }),
        (any::<u16>(), ip_addr()).prop_map(|(port, address)| Transport::Udp { port, address }),
        (any::<u16>(), ip_addr()).prop_map(|(port, address)| Transport::UdpLite { port, address }),
        (any::<u16>(), any::<u32>(), ip_addr()).prop_map(|(port, service_code, address)| {
            Transport::Dccp {
                port,
                service_code,
                address,
            }
        }),
    ]
}

/// Any policy, every known type and unknown ones.
pub fn policy() -> impl Strategy<Value = Policy> {
    let a = any::<u32>;
    prop_oneof![
        Just(Policy::RoundRobin),
        a().prop_map(|weight| Policy::WeightedRoundRobin { weight }),
        Just(Policy::Random),
        a().prop_map(|weight| Policy::WeightedRandom { weight }),
        a().prop_map(|priority| Policy::Priority { priority }),
        a().prop_map(|load| Policy::LeastUsed { load }),
        (a(), a())
            .prop_map(|(load, degradation)| Policy::LeastUsedDegradation { load, degradation }),
        (a(), a()).prop_map(|(load, degradation)| Policy::PriorityLeastUsed { load, degradation }),
        a().prop_map(|load| Policy::RandomizedLeastUsed { load }),
        (a(), a()).prop_map(|(load, degradation)| Policy::RandomizedPriorityLeastUsed {
            load,
            degradation
        }),
        (a(), a()).prop_map(
            |(load, degradation)| Policy::RandomizedLeastUsedDegradation { load, degradation }
        ),
        (a(), a()).prop_map(|(load, degradation)| Policy::PriorityLeastUsedDegradation {
            load,
            degradation
        }),
        (a(), a()).prop_map(|(load, degradation)| {
            Policy::RandomizedPriorityLeastUsedDegradation { load, degradation }
        }),
        (a(), a(), a()).prop_map(|(weight, weight_dpf, distance)| Policy::WeightedRandomDpf {
            weight,
            weight_dpf,
            distance
        }),
        (a(), a(), a()).prop_map(|(load, load_dpf, distance)| Policy::LeastUsedDpf {
            load,
            load_dpf,
            distance
        }),
        (a(), a(), a(), a()).prop_map(|(load, degradation, load_dpf, distance)| {
            Policy::LeastUsedDegradationDpf {
                load,
                degradation,
                load_dpf,
                distance,
            }
        }),
        (a(), a(), a(), a()).prop_map(|(load, degradation, load_dpf, distance)| {
            Policy::PriorityLeastUsedDpf {
                load,
                degradation,
                load_dpf,
                distance,
            }
        }),
        (a(), a(), a(), a()).prop_map(|(load, degradation, load_dpf, distance)| {
            Policy::PriorityLeastUsedDegradationDpf {
                load,
                degradation,
                load_dpf,
                distance,
            }
        }),
        (0x6000_0000u32..0x7000_0000, vec(any::<u32>(), 0..4)).prop_map(|(code, words)| {
            Policy::Other {
                policy_type: PolicyType(code),
                values: words.iter().flat_map(|w| w.to_be_bytes()).collect(),
            }
        }),
    ]
}

/// A pool handle of 1 to 40 arbitrary bytes.
pub fn pool_handle() -> impl Strategy<Value = PoolHandle> {
    vec(any::<u8>(), 1..40).prop_map(PoolHandle::new)
}

/// Any pool element, with or without an ASAP transport.
pub fn pool_element() -> impl Strategy<Value = PoolElement> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        transport(),
        policy(),
        option::of(transport()),
    )
        .prop_map(
            |(id, home, registration_life, user_transport, policy, asap_transport)| PoolElement {
                id: PoolElementId(id),
                home_registrar: RegistrarId(home),
                registration_life,
                user_transport,
                policy,
                asap_transport,
            },
        )
}

/// Any server information.
pub fn server_information() -> impl Strategy<Value = ServerInformation> {
    (any::<u32>(), transport()).prop_map(|(id, transport)| ServerInformation {
        registrar_id: RegistrarId(id),
        transport,
    })
}

/// Any operation error with one to three causes.
pub fn operation_error() -> impl Strategy<Value = OperationError> {
    vec(
        (1u16..=0x000A, vec(any::<u8>(), 0..24)).prop_map(|(code, info)| ErrorCause {
            code: CauseCode(code),
            info: Bytes::from(info),
        }),
        1..4,
    )
    .prop_map(|causes| OperationError { causes })
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn pe_id() -> impl Strategy<Value = PoolElementId> {
    any::<u32>().prop_map(PoolElementId)
}

/// Any ASAP message.
pub fn asap_message() -> impl Strategy<Value = AsapMessage> {
    prop_oneof![
        (pool_handle(), pool_element(), option::of(bytes(32))).prop_map(
            |(pool_handle, pool_element, auth_token)| {
                AsapMessage::Registration {
                    pool_handle,
                    pool_element,
                    auth_token,
                }
            }
        ),
        (pool_handle(), pe_id())
            .prop_map(|(pool_handle, pe_id)| AsapMessage::Deregistration { pool_handle, pe_id }),
        (
            any::<bool>(),
            pool_handle(),
            pe_id(),
            option::of(operation_error())
        )
            .prop_map(|(reject, pool_handle, pe_id, error)| {
                AsapMessage::RegistrationResponse {
                    reject,
                    pool_handle,
                    pe_id,
                    error,
                }
            }),
        (pool_handle(), pe_id(), option::of(operation_error())).prop_map(
            |(pool_handle, pe_id, error)| AsapMessage::DeregistrationResponse {
                pool_handle,
                pe_id,
                error
            }
        ),
        (any::<bool>(), pool_handle(), option::of(any::<u32>())).prop_map(
            |(subscribe, pool_handle, items)| AsapMessage::HandleResolution {
                subscribe,
                pool_handle,
                items
            }
        ),
        (
            any::<bool>(),
            pool_handle(),
            prop_oneof![
                operation_error().prop_map(ResolutionOutcome::Error),
                (option::of(policy()), vec(pool_element(), 0..8))
                    .prop_map(|(policy, elements)| ResolutionOutcome::Members { policy, elements }),
            ]
        )
            .prop_map(|(accepted, pool_handle, outcome)| {
                AsapMessage::HandleResolutionResponse {
                    accepted,
                    pool_handle,
                    outcome,
                }
            }),
        (
            any::<bool>(),
            any::<u32>(),
            pool_handle(),
            option::of(pe_id())
        )
            .prop_map(
                |(home, id, pool_handle, pe_id)| AsapMessage::EndpointKeepAlive {
                    home,
                    registrar_id: RegistrarId(id),
                    pool_handle,
                    pe_id
                }
            ),
        (pool_handle(), pe_id()).prop_map(|(pool_handle, pe_id)| {
            AsapMessage::EndpointKeepAliveAck { pool_handle, pe_id }
        }),
        (pool_handle(), pe_id()).prop_map(|(pool_handle, pe_id)| {
            AsapMessage::EndpointUnreachable { pool_handle, pe_id }
        }),
        (any::<u32>(), vec(transport(), 0..4)).prop_map(|(id, transports)| {
            AsapMessage::ServerAnnounce {
                registrar_id: RegistrarId(id),
                transports,
            }
        }),
        bytes(64).prop_map(|cookie| AsapMessage::Cookie { cookie }),
        bytes(64).prop_map(|cookie| AsapMessage::CookieEcho { cookie }),
        (
            pool_handle(),
            option::of(policy()),
            vec(pool_element(), 1..5)
        )
            .prop_map(
                |(pool_handle, policy, elements)| AsapMessage::BusinessCard {
                    pool_handle,
                    policy,
                    elements
                }
            ),
        operation_error().prop_map(|error| AsapMessage::Error { error }),
    ]
}

/// Any ENRP message body.
pub fn enrp_body() -> impl Strategy<Value = EnrpBody> {
    let id = || any::<u32>().prop_map(RegistrarId);
    prop_oneof![
        (
            any::<bool>(),
            any::<u16>(),
            option::of(server_information())
        )
            .prop_map(
                |(reply_required, checksum, server_info)| EnrpBody::Presence {
                    reply_required,
                    checksum,
                    server_info
                }
            ),
        any::<bool>()
            .prop_map(|own_children_only| EnrpBody::HandleTableRequest { own_children_only }),
        (
            any::<bool>(),
            any::<bool>(),
            vec(
                (pool_handle(), vec(pool_element(), 1..4)).prop_map(|(pool_handle, elements)| {
                    PoolEntries {
                        pool_handle,
                        elements,
                    }
                }),
                0..4
            )
        )
            .prop_map(
                |(reject, more_to_send, pools)| EnrpBody::HandleTableResponse {
                    reject,
                    more_to_send,
                    pools
                }
            ),
        (
            any::<bool>(),
            prop_oneof![Just(UpdateAction::AddPe), Just(UpdateAction::DelPe)],
            pool_handle(),
            pool_element()
        )
            .prop_map(|(takeover_suggested, action, pool_handle, pool_element)| {
                EnrpBody::HandleUpdate {
                    takeover_suggested,
                    action,
                    pool_handle,
                    pool_element,
                }
            }),
        Just(EnrpBody::ListRequest),
        (any::<bool>(), vec(server_information(), 0..5))
            .prop_map(|(reject, servers)| EnrpBody::ListResponse { reject, servers }),
        id().prop_map(|target| EnrpBody::InitTakeover { target }),
        id().prop_map(|target| EnrpBody::InitTakeoverAck { target }),
        id().prop_map(|target| EnrpBody::TakeoverServer { target }),
        operation_error().prop_map(|error| EnrpBody::Error { error }),
    ]
}

/// Any ENRP message.
pub fn enrp_message() -> impl Strategy<Value = EnrpMessage> {
    (any::<u32>(), any::<u32>(), enrp_body()).prop_map(|(sender, receiver, body)| EnrpMessage {
        sender: RegistrarId(sender),
        receiver: RegistrarId(receiver),
        body,
    })
}
