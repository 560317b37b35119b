//! The pool element state machine: exact outputs for each input.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hapool_proto::{PeEvent, PeOutput, PeSession, PeSessionConfig, PeStatus};
use hapool_wire::{
    AsapMessage, CauseCode, ErrorCause, OperationError, Policy, PoolElement, PoolElementId,
    PoolHandle, RegistrarId, Transport,
};

fn registrar(i: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 3863 + i).into()
}

fn session() -> (PeSession, Instant) {
    let config = PeSessionConfig {
        registrars: vec![registrar(0), registrar(1)],
        pool_handle: PoolHandle::from("p"),
        element: PoolElement {
            id: PoolElementId(7),
            home_registrar: RegistrarId(0),
            registration_life: 30_000,
            user_transport: Transport::tcp((Ipv4Addr::LOCALHOST, 80).into()),
            policy: Policy::RoundRobin,
            asap_transport: None,
        },
        reregistration_interval: Duration::from_secs(10),
        request_timeout: Duration::from_secs(1),
        retry_interval: Duration::from_secs(3),
        auth_token: None,
    };
    (PeSession::new(config), Instant::now())
}

fn outputs(s: &mut PeSession) -> Vec<PeOutput> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

fn events(s: &mut PeSession) -> Vec<PeEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn accepted() -> AsapMessage {
    AsapMessage::RegistrationResponse {
        reject: false,
        pool_handle: PoolHandle::from("p"),
        pe_id: PoolElementId(7),
        error: None,
    }
}

/// Registers with the first registrar at `t0`.
fn registered() -> (PeSession, Instant) {
    let (mut s, t0) = session();
    s.handle_start(t0);
    assert_eq!(outputs(&mut s), [PeOutput::Connect(registrar(0))]);
    s.handle_connected(t0);
    assert!(matches!(
        &outputs(&mut s)[..],
        [PeOutput::Send(AsapMessage::Registration { .. })]
    ));
    s.handle_message(accepted(), t0);
    assert_eq!(events(&mut s), [PeEvent::Registered(registrar(0))]);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(10)));
    (s, t0)
}

#[test]
fn answers_keep_alives_and_reregisters_on_time() {
    let (mut s, t0) = registered();
    s.handle_message(
        AsapMessage::EndpointKeepAlive {
            home: false,
            registrar_id: RegistrarId(1),
            pool_handle: PoolHandle::from("p"),
            pe_id: Some(PoolElementId(7)),
        },
        t0,
    );
    assert_eq!(
        outputs(&mut s),
        [PeOutput::Send(AsapMessage::EndpointKeepAliveAck {
            pool_handle: PoolHandle::from("p"),
            pe_id: PoolElementId(7)
        })]
    );
    let t = t0 + Duration::from_secs(10);
    s.handle_timeout(t);
    assert!(matches!(
        &outputs(&mut s)[..],
        [PeOutput::Send(AsapMessage::Registration { .. })]
    ));
    // The answer is due within the request timeout.
    assert_eq!(s.poll_timeout(), Some(t + Duration::from_secs(1)));
    s.handle_message(accepted(), t);
    assert_eq!(s.poll_timeout(), Some(t + Duration::from_secs(10)));
}

#[test]
fn a_lost_connection_moves_to_the_next_registrar_at_once() {
    let (mut s, t0) = registered();
    s.handle_disconnected(t0);
    assert_eq!(events(&mut s), [PeEvent::Lost(registrar(0))]);
    assert_eq!(
        outputs(&mut s),
        [PeOutput::Close, PeOutput::Connect(registrar(1))]
    );
    assert_eq!(s.status(), &PeStatus::Connecting(registrar(1)));
}

#[test]
fn a_silent_registrar_counts_as_failed() {
    let (mut s, t0) = registered();
    s.handle_timeout(t0 + Duration::from_secs(10));
    outputs(&mut s);
    // No answer to the re-registration within the request timeout.
    s.handle_timeout(t0 + Duration::from_secs(11));
    assert_eq!(events(&mut s), [PeEvent::Lost(registrar(0))]);
    assert_eq!(
        outputs(&mut s),
        [PeOutput::Close, PeOutput::Connect(registrar(1))]
    );
}

#[test]
fn a_refusal_tries_the_next_and_a_full_round_waits() {
    let (mut s, t0) = session();
    s.handle_start(t0);
    outputs(&mut s);
    s.handle_connected(t0);
    outputs(&mut s);
    s.handle_message(
        AsapMessage::RegistrationResponse {
            reject: true,
            pool_handle: PoolHandle::from("p"),
            pe_id: PoolElementId(7),
            error: Some(OperationError::single(ErrorCause::new(
                CauseCode::REJECTION_DUE_TO_SECURITY,
            ))),
        },
        t0,
    );
    assert_eq!(
        events(&mut s),
        [
            PeEvent::Refused(registrar(0), CauseCode::REJECTION_DUE_TO_SECURITY),
            PeEvent::Lost(registrar(0))
        ]
    );
    assert_eq!(
        outputs(&mut s),
        [PeOutput::Close, PeOutput::Connect(registrar(1))]
    );
    // The second cannot be reached either: wait the retry interval.
    s.handle_connect_failed(t0);
    assert_eq!(outputs(&mut s), [PeOutput::Close]);
    assert_eq!(s.status(), &PeStatus::Idle);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(3)));
    s.handle_timeout(t0 + Duration::from_secs(3));
    assert_eq!(outputs(&mut s), [PeOutput::Connect(registrar(0))]);
}

#[test]
fn stop_deregisters() {
    let (mut s, _) = registered();
    s.stop();
    assert_eq!(
        outputs(&mut s),
        [
            PeOutput::Send(AsapMessage::Deregistration {
                pool_handle: PoolHandle::from("p"),
                pe_id: PoolElementId(7)
            }),
            PeOutput::Close
        ]
    );
    assert_eq!(s.status(), &PeStatus::Stopped);
    assert_eq!(s.poll_timeout(), None);
}
