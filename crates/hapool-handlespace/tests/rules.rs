//! The rules of a handlespace: every refusal with its exact error cause,
//! ownership, limits, expiry, unreachability reports, takeover and the
//! owner checksums.

mod common;

use std::time::Duration;

use common::*;
use hapool_handlespace::{
    Handlespace, HandlespaceConfig, LookupError, Origin, Registered, RegistrationError,
    Unreachable, checksum_of,
};
use hapool_wire::{
    CauseCode, ParamType, Policy, PoolElementId, PoolHandle, RegistrarId, Transport, TransportUse,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn lu() -> Policy {
    Policy::LeastUsed { load: 0 }
}

#[test]
fn first_pe_fixes_the_policy() {
    let (mut hs, now) = pool_of(&[lu()], HandlespaceConfig::default());
    let err = hs
        .register(&handle(), pe(2, Policy::RoundRobin), conn(2), now)
        .unwrap_err();
    assert!(
        matches!(err, RegistrationError::InconsistentPolicy { .. }),
        "{err:?}"
    );
    let cause = err.cause();
    assert_eq!(cause.code, CauseCode::INCONSISTENT_POOLING_POLICY);
    // The cause carries the offending policy parameter.
    assert_eq!(&cause.info[..], &[0, 8, 0, 8, 0, 0, 0, 1]);
    // Same type, other values: fine.
    hs.register(
        &handle(),
        pe(2, Policy::LeastUsed { load: 7 }),
        conn(2),
        now,
    )
    .unwrap();
}

#[test]
fn first_pe_fixes_the_transport() {
    let (mut hs, now) = pool_of(&[lu()], HandlespaceConfig::default());
    let mut udp = pe(2, lu());
    udp.user_transport = Transport::Udp {
        port: 80,
        address: "10.0.0.2".parse().unwrap(),
    };
    let err = hs.register(&handle(), udp, conn(2), now).unwrap_err();
    assert!(matches!(
        err,
        RegistrationError::InconsistentTransport {
            pool: ParamType::TcpTransport,
            ..
        }
    ));
    let cause = err.cause();
    assert_eq!(cause.code, CauseCode::INCONSISTENT_TRANSPORT_TYPE);
    assert_eq!(&cause.info[..2], &[0, 6]);

    let mut control = pe(3, lu());
    control.user_transport = Transport::Tcp {
        port: 80,
        transport_use: TransportUse::DataPlusControl,
        address: "10.0.0.3".parse().unwrap(),
    };
    let err = hs.register(&handle(), control, conn(3), now).unwrap_err();
    assert_eq!(
        err,
        RegistrationError::InconsistentDataControl {
            pool: TransportUse::DataOnly,
            offered: TransportUse::DataPlusControl
        }
    );
    assert_eq!(
        err.cause().code,
        CauseCode::INCONSISTENT_DATA_CONTROL_CONFIGURATION
    );
}

#[test]
fn only_the_owner_updates_or_deregisters() {
    let now = std::time::Instant::now();
    let mut hs = Handlespace::default();
    hs.register(&handle(), pe(1, lu()), conn(10), now).unwrap();
    // Another connection may not take PE 1 over.
    let err = hs
        .register(
            &handle(),
            pe(1, Policy::LeastUsed { load: 99 }),
            conn(11),
            now,
        )
        .unwrap_err();
    assert_eq!(
        err,
        RegistrationError::NotOwner {
            pe_id: PoolElementId(1)
        }
    );
    assert_eq!(err.cause().code, CauseCode::NON_UNIQUE_PE_IDENTIFIER);
    assert_eq!(
        hs.get(&handle(), PoolElementId(1))
            .unwrap()
            .element()
            .policy,
        lu()
    );
    assert_eq!(
        hs.deregister(&handle(), PoolElementId(1), &conn(11)),
        Err(LookupError::NotOwner(PoolElementId(1)))
    );
    // The same connection may.
    assert_eq!(
        hs.register(
            &handle(),
            pe(1, Policy::LeastUsed { load: 5 }),
            conn(10),
            now
        ),
        Ok(Registered::Updated)
    );

    // An authenticated identity owns its PEs across connections.
    hs.register(&handle(), pe(2, lu()), identity(20, "pe-a"), now)
        .unwrap();
    assert_eq!(
        hs.register(&handle(), pe(2, lu()), identity(21, "pe-a"), now),
        Ok(Registered::Updated)
    );
    assert!(matches!(
        hs.register(&handle(), pe(2, lu()), identity(22, "pe-b"), now),
        Err(RegistrationError::NotOwner { .. })
    ));
    hs.deregister(&handle(), PoolElementId(2), &identity(23, "pe-a"))
        .unwrap();

    // A peer registrar's update (ENRP) is not checked here: the peer did.
    assert_eq!(
        hs.register(&handle(), pe(1, lu()), Origin::Enrp, now),
        Ok(Registered::Updated)
    );
    // A PE learned from a peer may re-register here (failover to this registrar).
    hs.register(&handle(), pe(3, lu()), Origin::Enrp, now)
        .unwrap();
    assert_eq!(
        hs.register(&handle(), pe(3, lu()), conn(30), now),
        Ok(Registered::Updated)
    );
}

#[test]
fn limits() {
    let config = HandlespaceConfig {
        max_pool_handle_len: 8,
        max_pools: 2,
        max_elements_per_pool: 2,
        ..HandlespaceConfig::default()
    };
    let now = std::time::Instant::now();
    let mut hs = Handlespace::new(config);
    let long = PoolHandle::from("nine-byte");
    let err = hs.register(&long, pe(1, lu()), conn(1), now).unwrap_err();
    assert_eq!(
        err,
        RegistrationError::PoolHandleTooLong { length: 9, max: 8 }
    );
    assert_eq!(err.cause().code, CauseCode::INVALID_VALUES);
    assert_eq!(
        hs.register(
            &PoolHandle::new(bytes::Bytes::new()),
            pe(1, lu()),
            conn(1),
            now
        ),
        Err(RegistrationError::EmptyPoolHandle)
    );
    assert_eq!(
        hs.register(&handle(), pe(0, lu()), conn(1), now),
        Err(RegistrationError::ReservedIdentifier)
    );
    hs.register(&handle(), pe(1, lu()), conn(1), now).unwrap();
    hs.register(&handle(), pe(2, lu()), conn(2), now).unwrap();
    let err = hs
        .register(&handle(), pe(3, lu()), conn(3), now)
        .unwrap_err();
    assert_eq!(err, RegistrationError::PoolFull { max: 2 });
    assert_eq!(err.cause().code, CauseCode::LACK_OF_RESOURCES);
    // Updating a PE of a full pool is still allowed.
    hs.register(&handle(), pe(2, lu()), conn(2), now).unwrap();
    hs.register(&PoolHandle::from("b"), pe(1, lu()), conn(1), now)
        .unwrap();
    let err = hs
        .register(&PoolHandle::from("c"), pe(1, lu()), conn(1), now)
        .unwrap_err();
    assert_eq!(err, RegistrationError::TooManyPools { max: 2 });
    // Nothing accepted before was lost.
    assert_eq!(hs.len(), 3);
    assert_eq!(hs.pool_count(), 2);
}

#[test]
fn unknown_pool_and_element() {
    let (mut hs, _) = pool_of(&[lu()], HandlespaceConfig::default());
    let mut rng = StdRng::seed_from_u64(1);
    let err = hs
        .resolve(&PoolHandle::from("none"), None, &mut rng)
        .unwrap_err();
    assert_eq!(err, LookupError::UnknownPool);
    assert_eq!(err.cause().code, CauseCode::UNKNOWN_POOL_HANDLE);
    assert_eq!(
        hs.deregister(&handle(), PoolElementId(9), &conn(1)),
        Err(LookupError::UnknownElement(PoolElementId(9)))
    );
}

#[test]
fn an_empty_pool_disappears_and_its_policy_with_it() {
    let (mut hs, now) = pool_of(&[lu()], HandlespaceConfig::default());
    hs.deregister(&handle(), PoolElementId(1), &conn(1))
        .unwrap();
    assert_eq!(hs.pool_count(), 0);
    assert!(hs.is_empty());
    hs.register(&handle(), pe(1, Policy::RoundRobin), conn(1), now)
        .unwrap();
    assert_eq!(
        hs.pool(&handle()).unwrap().policy_type(),
        hapool_wire::PolicyType::ROUND_ROBIN
    );
}

#[test]
fn registrations_expire_unless_confirmed() {
    let now = std::time::Instant::now();
    let mut hs = Handlespace::default();
    let mut short = pe(1, lu());
    short.registration_life = 1_000;
    let mut long = pe(2, lu());
    long.registration_life = 5_000;
    hs.register(&handle(), short, conn(1), now).unwrap();
    hs.register(&handle(), long, conn(2), now).unwrap();
    assert_eq!(hs.next_expiry(), Some(now + Duration::from_millis(1_000)));
    assert!(hs.expire_until(now + Duration::from_millis(999)).is_empty());
    // A confirmation renews the life from then.
    hs.confirm(
        &handle(),
        PoolElementId(1),
        now + Duration::from_millis(900),
    )
    .unwrap();
    // The renewal leaves the PE filed at its old time: the handlespace
    // asks to be woken then, removes nothing, and files it at its expiry.
    assert_eq!(hs.next_expiry(), Some(now + Duration::from_millis(1_000)));
    assert!(
        hs.expire_until(now + Duration::from_millis(1_000))
            .is_empty()
    );
    assert_eq!(hs.next_expiry(), Some(now + Duration::from_millis(1_900)));
    assert!(
        hs.expire_until(now + Duration::from_millis(1_899))
            .is_empty()
    );
    let expired = hs.expire_until(now + Duration::from_millis(1_900));
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].1.id, PoolElementId(1));
    assert_eq!(hs.next_expiry(), Some(now + Duration::from_millis(5_000)));
    let expired = hs.expire_until(now + Duration::from_secs(60));
    assert_eq!(expired.len(), 1);
    assert!(hs.is_empty());
    assert_eq!(hs.next_expiry(), None);
}

#[test]
fn unreachable_needs_distinct_reporters_within_the_window() {
    let (mut hs, now) = pool_of(&[lu(), lu()], HandlespaceConfig::default());
    let id = PoolElementId(1);
    // One reporter, many times: counts once.
    for _ in 0..10 {
        assert_eq!(
            hs.report_unreachable(&handle(), id, 7, now),
            Ok(Unreachable::Counted(1))
        );
    }
    assert_eq!(
        hs.report_unreachable(&handle(), id, 8, now),
        Ok(Unreachable::Counted(2))
    );
    // Reports older than the window no longer count.
    let later = now + Duration::from_secs(61);
    assert_eq!(
        hs.report_unreachable(&handle(), id, 9, later),
        Ok(Unreachable::Counted(1))
    );
    assert_eq!(
        hs.report_unreachable(&handle(), id, 7, later),
        Ok(Unreachable::Counted(2))
    );
    let removed = hs.report_unreachable(&handle(), id, 8, later).unwrap();
    assert!(matches!(removed, Unreachable::Removed(pe) if pe.id == id));
    assert!(hs.get(&handle(), id).is_none());
    assert_eq!(hs.len(), 1);
    // A re-registration clears the reports.
    let (mut hs, now) = pool_of(&[lu()], HandlespaceConfig::default());
    hs.report_unreachable(&handle(), id, 1, now).unwrap();
    hs.report_unreachable(&handle(), id, 2, now).unwrap();
    hs.register(&handle(), pe(1, lu()), conn(1), now).unwrap();
    assert_eq!(
        hs.report_unreachable(&handle(), id, 3, now),
        Ok(Unreachable::Counted(1))
    );
}

#[test]
fn owner_index_checksums_and_takeover() {
    let now = std::time::Instant::now();
    let mut hs = Handlespace::default();
    let a = RegistrarId(0xA);
    let b = RegistrarId(0xB);
    let pools = [PoolHandle::from("EchoPool"), PoolHandle::from("Odd")];
    for (i, pool) in pools.iter().enumerate() {
        for id in 1..=5u32 {
            let mut e = pe(id, lu());
            e.home_registrar = if id % 2 == 0 { a } else { b };
            hs.register(pool, e, Origin::Enrp, now + Duration::from_millis(i as u64))
                .unwrap();
        }
    }
    let expected = |home: RegistrarId, hs: &Handlespace| {
        let mut set = Vec::new();
        for pool in hs.pools() {
            for e in pool.iter().filter(|e| e.element().home_registrar == home) {
                set.push((pool.handle().as_bytes().to_vec(), e.element().id));
            }
        }
        checksum_of(set.iter().map(|(h, id)| (&h[..], *id)))
    };
    assert_eq!(hs.owned_count(a), 4);
    assert_eq!(hs.owned_count(b), 6);
    assert_eq!(hs.checksum(a), expected(a, &hs));
    assert_eq!(hs.checksum(b), expected(b, &hs));
    assert_eq!(hs.owned_by(a).count(), 4);
    assert!(hs.owned_by(a).all(|(_, e)| e.element().home_registrar == a));

    // B dies; A takes its PEs over.
    let taken = hs.take_over(b, a, now);
    assert_eq!(taken.len(), 6);
    assert_eq!(hs.owned_count(a), 10);
    assert_eq!(hs.owned_count(b), 0);
    assert_eq!(hs.checksum(b), 0xFFFF);
    assert_eq!(hs.checksum(a), expected(a, &hs));
    assert!(
        hs.pools()
            .flat_map(|p| p.iter())
            .all(|e| e.element().home_registrar == a)
    );
    // A re-registration that changes the home moves the PE between owners.
    let mut moved = pe(1, lu());
    moved.home_registrar = b;
    hs.register(&pools[0], moved, Origin::Enrp, now).unwrap();
    assert_eq!(hs.owned_count(b), 1);
    assert_eq!(hs.checksum(b), expected(b, &hs));
    assert_eq!(hs.checksum(a), expected(a, &hs));
}
