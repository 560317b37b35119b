//! End to end on loopback: a registrar (the real driver and state machine
//! over TCP), PEs and PUs from `hapool-client`, and raw ASAP clients where a
//! test needs a misbehaving peer.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;

use hapool_client::{PeConfig, PeHandle, PeState, PoolUser, PuConfig};
use hapool_net::{MessageReader, write_message};
use hapool_proto::RegistrarConfig;
use hapool_registrar::{RegistrarHandle, start};
use hapool_wire::{
    AsapMessage, CauseCode, DEFAULT_MAX_MESSAGE, Policy, PoolElement, PoolElementId, PoolHandle,
    RegistrarId, Transport,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep};

const INTERVAL: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_millis(100);

async fn registrar(id: u32) -> RegistrarHandle {
    let mut config = RegistrarConfig::new(RegistrarId(id));
    config.keep_alive_interval = INTERVAL;
    config.keep_alive_timeout = TIMEOUT;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    start(config, listener).unwrap()
}

fn element(id: u32, load: u32) -> PoolElement {
    PoolElement {
        id: PoolElementId(id),
        home_registrar: RegistrarId(0),
        registration_life: 10_000,
        user_transport: Transport::tcp((Ipv4Addr::LOCALHOST, 10_000 + id as u16).into()),
        policy: Policy::LeastUsed { load },
        asap_transport: None,
    }
}

fn pool() -> PoolHandle {
    PoolHandle::from("echo")
}

async fn start_pe(registrars: Vec<SocketAddr>, id: u32, load: u32) -> PeHandle {
    let mut config = PeConfig::new(registrars, pool(), element(id, load));
    config.retry_interval = Duration::from_millis(50);
    let mut pe = PeHandle::start(config);
    pe.wait_registered(Duration::from_secs(5)).await.unwrap();
    pe
}

fn pu(registrars: Vec<SocketAddr>) -> PoolUser {
    let mut config = PuConfig::new(registrars);
    config.cache_ttl = Duration::ZERO;
    config.items = Some(u32::MAX);
    PoolUser::new(config)
}

async fn ids(registrar: &RegistrarHandle) -> Vec<u32> {
    registrar
        .snapshot()
        .await
        .iter()
        .flat_map(|p| p.elements.iter().map(|e| e.id.0))
        .collect()
}

/// Waits until `check` holds, for at most `limit`; returns how long it took.
async fn within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "not within {limit:?}");
        sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_pes_five_pus_and_a_killed_pe() {
    let r = registrar(1).await;
    let addr = vec![r.local_addr()];
    let mut pes = Vec::new();
    for id in 1..=10 {
        pes.push(start_pe(addr.clone(), id, id * 1000).await);
    }
    assert_eq!(ids(&r).await, (1..=10).collect::<Vec<_>>());
    let pus: Vec<PoolUser> = (0..5).map(|_| pu(addr.clone())).collect();
    for user in &pus {
        let got = user.resolve(&pool()).await.unwrap();
        assert_eq!(got.len(), 10);
        // Least Used: the lightest first.
        assert_eq!(got[0].id, PoolElementId(1));
        assert_eq!(got[0].home_registrar, r.id());
    }
    // Kill PE 1 (its process dies: the socket closes): gone at once.
    pes.remove(0).abort();
    let took = within(INTERVAL + TIMEOUT, async || !ids(&r).await.contains(&1)).await;
    eprintln!("killed PE gone after {took:?}");
    for user in &pus {
        let got = user.resolve(&pool()).await.unwrap();
        assert_eq!(got.len(), 9);
        assert_eq!(got[0].id, PoolElementId(2));
    }
    // A load update reorders resolution.
    pes[8].set_policy(Policy::LeastUsed { load: 0 }).await;
    within(Duration::from_secs(2), async || {
        pus[0].resolve(&pool()).await.unwrap()[0].id == PoolElementId(10)
    })
    .await;
    // A clean stop deregisters.
    pes.remove(0).stop().await;
    assert!(!ids(&r).await.contains(&2));
    r.shutdown().await;
}

/// A PE that stays connected but stops answering keep-alives (hung).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_pe_is_gone_within_interval_plus_timeout() {
    let r = registrar(2).await;
    let stream = TcpStream::connect(r.local_addr()).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut reader = MessageReader::<_, AsapMessage>::new(read, DEFAULT_MAX_MESSAGE);
    let registration = AsapMessage::Registration {
        pool_handle: pool(),
        pool_element: element(7, 0),
        auth_token: None,
    };
    // Timed from before the registration is sent: the registrar cannot
    // start supervising earlier, so the lower bound below is sound (timed
    // from the answer, it is off by the answer's trip).
    let registered = Instant::now();
    write_message(&mut write, &registration).await.unwrap();
    let answer = reader.next().await.unwrap().unwrap().message;
    assert!(matches!(
        answer,
        AsapMessage::RegistrationResponse { reject: false, .. }
    ));
    // The keep-alive comes after one interval; it is not answered.
    let keep_alive = reader.next().await.unwrap().unwrap().message;
    assert!(matches!(
        keep_alive,
        AsapMessage::EndpointKeepAlive { home: false, .. }
    ));
    within(Duration::from_secs(2), async || ids(&r).await.is_empty()).await;
    let took = registered.elapsed();
    eprintln!("hung PE gone {took:?} after registering");
    assert!(took >= INTERVAL + TIMEOUT, "{took:?}");
    assert!(
        took < INTERVAL + TIMEOUT + Duration::from_millis(150),
        "{took:?}"
    );
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pe_fails_over_to_the_next_registrar_within_one_interval() {
    let first = registrar(3).await;
    let second = registrar(4).await;
    let list = vec![first.local_addr(), second.local_addr()];
    let mut pe = start_pe(list.clone(), 5, 0).await;
    assert_eq!(
        pe.state(),
        PeState::Registered {
            registrar: first.local_addr()
        }
    );
    first.shutdown().await;
    let registrar = pe.wait_registered(Duration::from_secs(2)).await;
    let took = within(INTERVAL, async || ids(&second).await == [5]).await;
    eprintln!("re-registered with the second registrar after {took:?} (state {registrar:?})");
    // A pool user with the same list fails over too.
    let user = pu(list);
    let got = user.resolve(&pool()).await.unwrap();
    assert_eq!(got[0].id, PoolElementId(5));
    assert_eq!(got[0].home_registrar, RegistrarId(4));
    pe.stop().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_error_and_disturbs_nothing() {
    let r = registrar(5).await;
    let addr = vec![r.local_addr()];
    let _pe = start_pe(addr.clone(), 1, 0).await;
    // Garbage: an unknown message type gets ASAP_ERROR (Unrecognized Message).
    let stream = TcpStream::connect(r.local_addr()).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut reader = MessageReader::<_, AsapMessage>::new(read, DEFAULT_MAX_MESSAGE);
    tokio::io::AsyncWriteExt::write_all(&mut write, &[0x7F, 0, 0, 8, 1, 2, 3, 4])
        .await
        .unwrap();
    match reader.next().await.unwrap().unwrap().message {
        AsapMessage::Error { error } => {
            assert_eq!(error.causes[0].code, CauseCode::UNRECOGNIZED_MESSAGE);
        }
        other => panic!("{other:?}"),
    }
    // A length field below the header size breaks the framing: Invalid
    // Values, then the connection closes.
    tokio::io::AsyncWriteExt::write_all(&mut write, &[0x01, 0, 0x00, 0x02])
        .await
        .unwrap();
    let answer = reader.next().await;
    assert!(
        matches!(&answer, Ok(Some(d)) if matches!(&d.message, AsapMessage::Error { error } if error.causes[0].code == CauseCode::INVALID_VALUES)),
        "{answer:?}"
    );
    assert!(matches!(reader.next().await, Ok(None) | Err(_)));
    // A hijacking re-registration from another connection is refused.
    let stream = TcpStream::connect(r.local_addr()).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut reader = MessageReader::<_, AsapMessage>::new(read, DEFAULT_MAX_MESSAGE);
    let hijack = AsapMessage::Registration {
        pool_handle: pool(),
        pool_element: element(1, 99),
        auth_token: None,
    };
    write_message(&mut write, &hijack).await.unwrap();
    match reader.next().await.unwrap().unwrap().message {
        AsapMessage::RegistrationResponse { reject, error, .. } => {
            assert!(reject);
            assert_eq!(
                error.unwrap().causes[0].code,
                CauseCode::NON_UNIQUE_PE_IDENTIFIER
            );
        }
        other => panic!("{other:?}"),
    }
    // The PE is untouched and still resolvable.
    let got = pu(addr).resolve(&pool()).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].policy, Policy::LeastUsed { load: 0 });
    r.shutdown().await;
}

/// Mutated messages (bits flipped, bytes set, length fields changed,
/// pieces cut off or repeated), one to three on each of 600 connections:
/// whatever of them decodes reaches the state machine, the rest gets its
/// error or a close, and the PE registered meanwhile stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_messages_from_many_connections_disturb_no_registration() {
    use hapool_wire::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let r = registrar(9).await;
    let addr = vec![r.local_addr()];
    let kept = 0x5a5a_0001;
    let _pe = start_pe(addr.clone(), kept, 0).await;
    let other = PoolHandle::from("fuzz");
    let seeds: Vec<Vec<u8>> = [
        AsapMessage::Registration {
            pool_handle: other.clone(),
            pool_element: element(7, 10),
            auth_token: None,
        },
        AsapMessage::Deregistration {
            pool_handle: other.clone(),
            pe_id: PoolElementId(7),
        },
        AsapMessage::HandleResolution {
            subscribe: false,
            pool_handle: other.clone(),
            items: Some(3),
        },
        AsapMessage::EndpointKeepAliveAck {
            pool_handle: other.clone(),
            pe_id: PoolElementId(7),
        },
        AsapMessage::EndpointUnreachable {
            pool_handle: other,
            pe_id: PoolElementId(7),
        },
    ]
    .iter()
    .map(|m| m.to_bytes().unwrap().to_vec())
    .collect();
    // xorshift64: the same mutations in every run.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut below = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut answered = 0;
    for _ in 0..600 {
        let mut bytes = Vec::new();
        for _ in 0..1 + below(3) {
            let mut m = seeds[below(seeds.len())].clone();
            for _ in 0..1 + below(4) {
                let at = below(m.len());
                match below(6) {
                    0 => m[at] ^= 1 << below(8),
                    1 => m[at] = below(256) as u8,
                    2 => m.truncate(at.max(4)),
                    3 => m.extend((0..1 + below(32)).map(|_| below(256) as u8)),
                    4 => {
                        // A parameter's length field (or the header's).
                        let field = (at & !3) + 2;
                        if field + 2 <= m.len() {
                            let length = [0, 3, 4, 5, 0xffff, below(0x10000)][below(6)] as u16;
                            m[field..field + 2].copy_from_slice(&length.to_be_bytes());
                        }
                    }
                    _ => {
                        let end = at + below(m.len() - at + 1);
                        let piece = m[at..end].to_vec();
                        m.splice(end..end, piece);
                    }
                }
            }
            if below(5) != 0 && m.len() >= 4 {
                // Mostly a header length that frames the message.
                let length = m.len().min(0xffff) as u16;
                m[2..4].copy_from_slice(&length.to_be_bytes());
            }
            bytes.extend(m);
        }
        let mut stream = TcpStream::connect(r.local_addr()).await.unwrap();
        let _ = stream.write_all(&bytes).await;
        let mut answer = [0; 4096];
        if let Ok(Ok(1..)) =
            tokio::time::timeout(Duration::from_millis(20), stream.read(&mut answer)).await
        {
            answered += 1;
        }
    }
    // Resolutions, registration responses and errors came back.
    assert!(answered > 100, "{answered} of 600 connections answered");
    assert!(ids(&r).await.contains(&kept));
    let got = pu(addr).resolve(&pool()).await.unwrap();
    let found = got
        .iter()
        .find(|e| e.id.0 == kept)
        .expect("the PE resolves");
    assert_eq!(found.policy, Policy::LeastUsed { load: 0 });
    assert_eq!(found.user_transport, element(kept, 0).user_transport);
    r.shutdown().await;
}

/// A PE whose registration is alive but whose server is down: the pool
/// user skips it, reports it unreachable, and connects to the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_user_fails_over_past_a_dead_server() {
    let r = registrar(6).await;
    let addr = vec![r.local_addr()];
    // Server 1 (preferred: load 0) is down; server 2 listens.
    let dead = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let live = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let live_addr = live.local_addr().unwrap();
    let mut pes = Vec::new();
    for (id, load, server) in [(1, 0, dead_addr), (2, 1000, live_addr)] {
        let element = PoolElement {
            user_transport: Transport::tcp(server),
            ..element(id, load)
        };
        let mut pe = PeHandle::start(PeConfig::new(addr.clone(), pool(), element));
        pe.wait_registered(Duration::from_secs(5)).await.unwrap();
        pes.push(pe);
    }
    let mut config = PuConfig::new(addr);
    config.items = Some(u32::MAX);
    let user = PoolUser::new(config);
    let (chosen, _stream) = user.connect(&pool()).await.unwrap();
    assert_eq!(chosen.id, PoolElementId(2));
    // The registrar counted the report (one reporter: not yet removed).
    assert_eq!(ids(&r).await, [1, 2]);
    // With every server down, connect says so.
    drop(live);
    drop(_stream);
    let err = user.connect(&pool()).await.unwrap_err();
    assert!(
        matches!(err, hapool_client::ClientError::NoElement(_)),
        "{err}"
    );
    r.shutdown().await;
}

fn pki(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../hapool-net/tests/pki")
        .join(name)
}

fn client_tls(identity: Option<&str>) -> hapool_client::ClientTls {
    let (cert, key) = match identity {
        Some(name) => (pki(&format!("{name}.pem")), pki(&format!("{name}.key"))),
        None => (Default::default(), Default::default()),
    };
    let id = identity.map(|_| (cert.as_path(), key.as_path()));
    hapool_client::ClientTls {
        config: hapool_net::tls::client_config(&pki("ca.pem"), id).unwrap(),
        server_name: hapool_net::tls::ServerName::try_from("127.0.0.1".to_owned()).unwrap(),
    }
}

/// Registration rules with TLS client certificates: only `pe-a` may
/// register into `secure`; anyone may resolve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_identities_and_registration_rules() {
    let mut config = RegistrarConfig::new(RegistrarId(7));
    config.rules = vec![hapool_proto::RegistrationRule {
        pools: vec!["secure".into()],
        identities: vec!["pe-a".into()],
        tokens: Vec::new(),
    }];
    let plain = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let tls = hapool_registrar::TlsListener {
        listener: TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap(),
        config: hapool_net::tls::server_config(
            &pki("server.pem"),
            &pki("server.key"),
            Some(&pki("ca.pem")),
        )
        .unwrap(),
    };
    let r = hapool_registrar::start_serving(
        config,
        hapool_registrar::Listeners {
            asap: plain,
            tls: Some(tls),
            announce_to: None,
            enrp: None,
        },
    )
    .unwrap();
    let tls_addr = r.tls_addr().unwrap();
    let secure = PoolHandle::from("secure");
    let start = |registrars: Vec<SocketAddr>, id: u32, tls: Option<hapool_client::ClientTls>| {
        let mut config = PeConfig::new(registrars, secure.clone(), element(id, 0));
        config.tls = tls;
        config.retry_interval = Duration::from_secs(60);
        PeHandle::start(config)
    };
    // pe-a over TLS: registered, with its identity.
    let mut a = start(vec![tls_addr], 1, Some(client_tls(Some("pe-a"))));
    a.wait_registered(Duration::from_secs(5)).await.unwrap();
    // pe-b over TLS and anyone over plain TCP: refused.
    let b = start(vec![tls_addr], 2, Some(client_tls(Some("pe-b"))));
    let anonymous = start(vec![r.local_addr()], 3, None);
    for pe in [&b, &anonymous] {
        within(Duration::from_secs(5), async || {
            pe.state() == PeState::Refused(CauseCode::REJECTION_DUE_TO_SECURITY)
        })
        .await;
    }
    assert_eq!(ids(&r).await, [1]);
    // An anonymous pool user over TLS resolves the pool.
    let mut config = PuConfig::new(vec![tls_addr]);
    config.tls = Some(client_tls(None));
    let got = PoolUser::new(config).resolve(&secure).await.unwrap();
    assert_eq!(got[0].id, PoolElementId(1));
    // A client that does not trust the registrar's certificate gets nowhere.
    let mut config = PuConfig::new(vec![tls_addr]);
    let mut untrusted = client_tls(None);
    untrusted.server_name =
        hapool_net::tls::ServerName::try_from("example.org".to_owned()).unwrap();
    config.tls = Some(untrusted);
    assert!(PoolUser::new(config).resolve(&secure).await.is_err());
    r.shutdown().await;
}

/// A registrar announces itself; `discover` finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrars_announce_themselves_and_are_discovered() {
    let channel = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = RegistrarConfig::new(RegistrarId(0x5A));
    config.announce = Some(hapool_proto::Announcement {
        interval: Duration::from_millis(50),
        transports: Vec::new(),
    });
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let discovery = tokio::spawn(hapool_client::discover(channel, Duration::from_millis(500)));
    sleep(Duration::from_millis(50)).await;
    let r = hapool_registrar::start_serving(
        config,
        hapool_registrar::Listeners {
            asap: listener,
            tls: None,
            announce_to: Some(channel),
            enrp: None,
        },
    )
    .unwrap();
    let found = discovery.await.unwrap().unwrap();
    assert_eq!(found, [(RegistrarId(0x5A), r.local_addr())]);
    // The discovered address serves ASAP.
    let got = pu(vec![found[0].1]).resolve(&pool()).await;
    assert!(matches!(
        got,
        Err(hapool_client::ClientError::Refused(
            CauseCode::UNKNOWN_POOL_HANDLE
        ))
    ));
    r.shutdown().await;
}

/// A registrar in a cluster whose ENRP runs over mutual TLS, with the
/// certificate `name` of the test cluster PKI (or of another authority).
async fn tls_cluster_member(id: u32, name: &str, peers: Vec<SocketAddr>) -> RegistrarHandle {
    let cluster = |file: &str| pki(&format!("cluster/{file}"));
    let (cert, key, ca) = (
        cluster(&format!("{name}.pem")),
        cluster(&format!("{name}.key")),
        cluster("ca.pem"),
    );
    let tls = hapool_registrar::EnrpTls {
        server: hapool_net::tls::mutual_server_config(&cert, &key, &ca).unwrap(),
        client: hapool_net::tls::client_config(&ca, Some((&cert, &key))).unwrap(),
    };
    cluster_member(id, peers, Some(tls)).await
}

/// A registrar serving ENRP (over `tls` when given) with a 100 ms
/// heartbeat, knowing `peers`.
async fn cluster_member(
    id: u32,
    peers: Vec<SocketAddr>,
    tls: Option<hapool_registrar::EnrpTls>,
) -> RegistrarHandle {
    let mut config = RegistrarConfig::new(RegistrarId(id));
    config.enrp = hapool_proto::EnrpConfig {
        peers,
        ..hapool_proto::EnrpConfig::fast(Duration::from_millis(100))
    };
    hapool_registrar::start_serving(
        config,
        hapool_registrar::Listeners {
            asap: TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap(),
            tls: None,
            announce_to: None,
            enrp: Some(hapool_registrar::EnrpListener {
                listener: TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap(),
                tls,
                multicast: None,
            }),
        },
    )
    .unwrap()
}

#[tokio::test]
async fn enrp_over_mutual_tls_admits_only_the_clusters_certificates() {
    let a = tls_cluster_member(1, "registrar-1", Vec::new()).await;
    let a_enrp = a.enrp_addr().unwrap();
    let b = tls_cluster_member(2, "registrar-2", vec![a_enrp]).await;
    let stranger = tls_cluster_member(3, "stranger", vec![a_enrp]).await;
    let pe = start_pe(vec![a.local_addr()], 7, 0).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while ids(&b).await != [7] {
        assert!(
            Instant::now() < deadline,
            "the PE never reached registrar 2"
        );
        sleep(Duration::from_millis(20)).await;
    }
    let peers_of_a: Vec<u32> = a.client().peers().await.iter().map(|p| p.id.0).collect();
    assert_eq!(peers_of_a, [2]);
    // The stranger's certificate is from another authority: no handshake
    // succeeds either way, so it learns nothing and is known to nobody.
    sleep(Duration::from_millis(500)).await;
    assert!(ids(&stranger).await.is_empty());
    assert!(stranger.client().peers().await.is_empty());
    assert_eq!(b.client().peers().await.len(), 1);
    pe.stop().await;
    for r in [a, b, stranger] {
        r.shutdown().await;
    }
}

/// A peer's message with a parameter to report, and a malformed one, are
/// answered with ENRP_ERROR on the same connection; the good part of the
/// message still counts (the sender becomes a peer).
#[tokio::test]
async fn malformed_enrp_input_is_answered_with_enrp_error() {
    let r = cluster_member(0x51, Vec::new(), None).await;
    let me_addr = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let presence = hapool_wire::EnrpMessage {
        sender: RegistrarId(0x99),
        receiver: RegistrarId(0),
        body: hapool_wire::EnrpBody::Presence {
            reply_required: false,
            checksum: 0xffff,
            server_info: Some(hapool_wire::ServerInformation {
                registrar_id: RegistrarId(0x99),
                transport: Transport::tcp(me_addr.local_addr().unwrap()),
            }),
        },
    };
    let mut bytes = hapool_wire::Message::to_bytes(&presence).unwrap().to_vec();
    // An unknown parameter whose action bits say "skip and report".
    bytes.extend_from_slice(&[0xC1, 0x23, 0x00, 0x08, 1, 2, 3, 4]);
    let length = u16::try_from(bytes.len()).unwrap();
    bytes[2..4].copy_from_slice(&length.to_be_bytes());
    let mut s = TcpStream::connect(r.enrp_addr().unwrap()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, &bytes)
        .await
        .unwrap();
    let (read, mut write) = s.into_split();
    let mut reader = MessageReader::<_, hapool_wire::EnrpMessage>::new(read, 65_536);
    let answer = tokio::time::timeout(Duration::from_secs(2), reader.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .message;
    let hapool_wire::EnrpBody::Error { error } = answer.body else {
        panic!("{answer:?}");
    };
    assert_eq!(answer.sender, RegistrarId(0x51));
    assert_eq!(answer.receiver, RegistrarId(0x99));
    assert_eq!(error.causes[0].code, CauseCode::UNRECOGNIZED_PARAMETER);
    // The presence itself counted.
    let deadline = Instant::now() + Duration::from_secs(2);
    while r.client().peers().await.is_empty() {
        assert!(Instant::now() < deadline, "the sender never became a peer");
        sleep(Duration::from_millis(10)).await;
    }
    // A presence whose PE checksum parameter is cut short.
    let broken = [
        0x01, 0x00, 0x00, 0x14, 0, 0, 0, 0x99, 0, 0, 0, 0, 0x00, 0x0d, 0x00, 0x08, 0, 0, 0, 0,
    ];
    tokio::io::AsyncWriteExt::write_all(&mut write, &broken)
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(2), reader.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .message;
    assert!(
        matches!(answer.body, hapool_wire::EnrpBody::Error { .. }),
        "{answer:?}"
    );
    r.shutdown().await;
}

/// A counter server for the session tests: each "add N" adds N to the
/// session's sum, sends the sum as the state cookie and answers with it.
/// A cookie echo restores the sum. What each connection received first is
/// reported on `first`.
async fn counter_server(
    listener: TcpListener,
    last_will: Vec<PoolElement>,
    first: tokio::sync::mpsc::UnboundedSender<hapool_client::Incoming>,
    config: hapool_client::SessionConfig,
) {
    let mut sessions = tokio::task::JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        let (last_will, first, config) = (last_will.clone(), first.clone(), config.clone());
        sessions.spawn(async move {
            let mut s = hapool_client::ElementSession::new(stream, config);
            if !last_will.is_empty() {
                s.send_business_card(pool(), last_will).await.unwrap();
            }
            let mut sum: u64 = 0;
            let mut seen_first = false;
            while let Ok(Some(incoming)) = s.recv().await {
                if !seen_first {
                    seen_first = true;
                    let _ = first.send(incoming.clone());
                }
                match incoming {
                    hapool_client::Incoming::CookieEcho(cookie) => {
                        sum = std::str::from_utf8(&cookie).unwrap().parse().unwrap();
                    }
                    hapool_client::Incoming::Data(data) => {
                        let text = std::str::from_utf8(&data).unwrap();
                        sum += text.strip_prefix("add ").unwrap().parse::<u64>().unwrap();
                        let state = Bytes::from(sum.to_string());
                        s.send_cookie(state.clone()).await.unwrap();
                        s.send(state).await.unwrap();
                    }
                    // Fresh state: the sum stays as it is (0 at the start).
                    hapool_client::Incoming::CookieRefused(_)
                    | hapool_client::Incoming::BusinessCard { .. } => {}
                }
            }
        });
    }
}

/// Counter servers registered as PEs 1, 2, ... of the pool with these
/// loads; with three or more, PE 1's last will names PE 2.
struct CounterPool {
    pes: Vec<Option<PeHandle>>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    firsts: Vec<tokio::sync::mpsc::UnboundedReceiver<hapool_client::Incoming>>,
    addrs: Vec<SocketAddr>,
}

async fn counter_pool(
    r: &RegistrarHandle,
    loads: &[u32],
    config: hapool_client::SessionConfig,
) -> CounterPool {
    let mut listeners = Vec::new();
    for _ in loads {
        listeners.push(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap());
    }
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let elements: Vec<PoolElement> = (0..loads.len())
        .map(|i| PoolElement {
            user_transport: Transport::tcp(addrs[i]),
            ..element(i as u32 + 1, loads[i])
        })
        .collect();
    let mut pool_ = CounterPool {
        pes: Vec::new(),
        servers: Vec::new(),
        firsts: Vec::new(),
        addrs,
    };
    for (i, listener) in listeners.into_iter().enumerate() {
        let mut pe_config = PeConfig::new(vec![r.local_addr()], pool(), elements[i].clone());
        pe_config.retry_interval = Duration::from_millis(50);
        let mut pe = PeHandle::start(pe_config);
        pe.wait_registered(Duration::from_secs(5)).await.unwrap();
        pool_.pes.push(Some(pe));
        let will = if i == 0 && loads.len() > 2 {
            vec![elements[1].clone()]
        } else {
            Vec::new()
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        pool_.firsts.push(rx);
        let server = counter_server(listener, will, tx, config.clone());
        pool_.servers.push(tokio::spawn(server));
    }
    pool_
}

async fn open_session(r: &RegistrarHandle) -> hapool_client::PoolSession {
    let pu = std::sync::Arc::new(pu(vec![r.local_addr()]));
    hapool_client::PoolSession::open(pu, pool(), Default::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_session_fails_over_to_the_last_will_with_its_cookie() {
    let r = registrar(0x77).await;
    // PE 1 is the least loaded; PE 3 comes next by the policy, but PE 1's
    // last will names PE 2.
    let CounterPool {
        mut pes,
        mut servers,
        mut firsts,
        ..
    } = counter_pool(&r, &[0, 0x4000_0000, 0x1000_0000], Default::default()).await;
    let mut session = open_session(&r).await;
    assert_eq!(session.element().id, PoolElementId(1));
    for (n, sum) in [(5, "5"), (7, "12")] {
        session.send(format!("add {n}").into()).await.unwrap();
        assert_eq!(session.recv().await.unwrap(), sum);
    }
    assert_eq!(session.cookie().map(|c| &c[..]), Some(&b"12"[..]));
    // PE 1 dies: its server (and every session it holds) and its
    // registration go at once.
    servers.remove(0).abort();
    pes[0].take().unwrap().abort();
    sleep(Duration::from_millis(50)).await;
    session.send("add 1".into()).await.unwrap();
    assert_eq!(session.recv().await.unwrap(), "13");
    assert_eq!(session.element().id, PoolElementId(2));
    assert_eq!(
        session.events(),
        [
            hapool_client::SessionEvent::FailoverStarted {
                from: PoolElementId(1)
            },
            hapool_client::SessionEvent::FailoverFinished {
                to: PoolElementId(2),
                cookie_echoed: true
            }
        ]
    );
    // PE 2 got the cookie before any data.
    assert_eq!(
        firsts[1].recv().await.unwrap(),
        hapool_client::Incoming::CookieEcho("12".into())
    );
    // PE 3 never saw the session.
    assert!(firsts[2].try_recv().is_err());
    for pe in pes.into_iter().flatten() {
        pe.stop().await;
    }
    r.shutdown().await;
}

/// A PE whose process hangs: the kernel still accepts connections to its
/// port and takes the data sent, but nothing answers, neither the session
/// nor its registrar's keep-alives. A session waiting on it fails over
/// once its registrar has removed it; a session waiting on a PE that is
/// slow but registered waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_waiting_on_a_hung_pe_fails_over_once_the_pe_is_removed() {
    let r = registrar(0x79).await;
    // PE 1 (more loaded): a counter server.
    let CounterPool { pes, firsts, .. } =
        counter_pool(&r, &[0x4000_0000], Default::default()).await;
    // PE 9 (the least loaded): a listener nobody accepts on, registered
    // over a connection nobody reads again.
    let hung = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let stream = TcpStream::connect(r.local_addr()).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut reader = MessageReader::<_, AsapMessage>::new(read, DEFAULT_MAX_MESSAGE);
    let registration = AsapMessage::Registration {
        pool_handle: pool(),
        pool_element: PoolElement {
            user_transport: Transport::tcp(hung.local_addr().unwrap()),
            ..element(9, 0)
        },
        auth_token: None,
    };
    write_message(&mut write, &registration).await.unwrap();
    assert!(matches!(
        reader.next().await.unwrap().unwrap().message,
        AsapMessage::RegistrationResponse { reject: false, .. }
    ));
    let config = hapool_client::SessionConfig {
        liveness_check: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let pu = std::sync::Arc::new(pu(vec![r.local_addr()]));
    let mut session = hapool_client::PoolSession::open(pu.clone(), pool(), config.clone())
        .await
        .unwrap();
    assert_eq!(session.element().id, PoolElementId(9));
    session.send("add 5".into()).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), session.recv())
        .await
        .expect("the session waited on the hung PE")
        .unwrap();
    assert_eq!(answer, "5");
    assert_eq!(session.element().id, PoolElementId(1));
    assert_eq!(
        session.events(),
        [
            hapool_client::SessionEvent::FailoverStarted {
                from: PoolElementId(9)
            },
            hapool_client::SessionEvent::FailoverFinished {
                to: PoolElementId(1),
                cookie_echoed: false
            }
        ]
    );
    drop(firsts);
    drop((reader, write, hung));

    // PE 2: registered, answering keep-alives, but each answer takes 600
    // ms, six liveness checks.
    let slow = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let mut slow_config = PeConfig::new(
        vec![r.local_addr()],
        pool(),
        PoolElement {
            user_transport: Transport::tcp(slow.local_addr().unwrap()),
            ..element(2, 0)
        },
    );
    slow_config.retry_interval = Duration::from_millis(50);
    let mut slow_pe = PeHandle::start(slow_config);
    slow_pe
        .wait_registered(Duration::from_secs(5))
        .await
        .unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = slow.accept().await.unwrap();
        let mut s = hapool_client::ElementSession::new(stream, Default::default());
        while let Ok(Some(incoming)) = s.recv().await {
            if let hapool_client::Incoming::Data(data) = incoming {
                sleep(Duration::from_millis(600)).await;
                s.send(data).await.unwrap();
            }
        }
    });
    let mut session = hapool_client::PoolSession::open(pu, pool(), config)
        .await
        .unwrap();
    assert_eq!(session.element().id, PoolElementId(2));
    session.send("slow".into()).await.unwrap();
    assert_eq!(session.recv().await.unwrap(), "slow");
    assert_eq!(session.element().id, PoolElementId(2));
    assert!(session.events().is_empty());
    drop(session);
    server.await.unwrap();
    slow_pe.stop().await;
    for pe in pes.into_iter().flatten() {
        pe.stop().await;
    }
    r.shutdown().await;
}

/// Cookies are bounded: a PE cannot send one above the limit, and a PE
/// that is echoed one above its limit drops it and goes on with fresh
/// state (the next data still arrives).
#[tokio::test]
async fn oversized_cookies_are_refused() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = hapool_client::SessionConfig {
        max_cookie: 16,
        ..Default::default()
    };
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut s = hapool_client::ElementSession::new(stream, config);
        let refused = s.send_cookie(Bytes::from(vec![b'x'; 17])).await;
        assert!(
            matches!(
                refused,
                Err(hapool_client::ClientError::CookieTooLarge {
                    length: 17,
                    max: 16
                })
            ),
            "{refused:?}"
        );
        s.recv().await.unwrap()
    });
    let mut client = TcpStream::connect(addr).await.unwrap();
    let echo = hapool_wire::SessionFrame::Control(AsapMessage::CookieEcho {
        cookie: Bytes::from(vec![b'y'; 100]),
    });
    let data = hapool_wire::SessionFrame::Data(Bytes::from_static(b"hello"));
    for frame in [echo, data] {
        tokio::io::AsyncWriteExt::write_all(&mut client, &frame.to_bytes().unwrap())
            .await
            .unwrap();
    }
    assert_eq!(
        server.await.unwrap(),
        Some(hapool_client::Incoming::CookieRefused(
            hapool_client::CookieRefusal::TooLarge {
                length: 100,
                max: 16
            }
        ))
    );
}

/// With a pool cookie key, cookies are signed: a failover hands the state
/// over, and a forged echo is refused, the session going on with fresh
/// state (never the forged one).
#[tokio::test]
async fn signed_cookies_hand_state_over_and_refuse_forgeries() {
    let r = registrar(0x78).await;
    let key = hapool_client::CookieKey::new(b"the pool's 32-byte cookie secret").unwrap();
    let config = hapool_client::SessionConfig {
        cookie_key: Some(key),
        ..Default::default()
    };
    // No last will here: only the cookie carries the session over.
    let CounterPool {
        mut pes,
        mut servers,
        mut firsts,
        addrs,
    } = counter_pool(&r, &[0, 0x1000_0000], config).await;
    let mut session = open_session(&r).await;
    session.send("add 40".into()).await.unwrap();
    assert_eq!(session.recv().await.unwrap(), "40");
    // The PU holds the signed cookie: the state and a 32-byte tag.
    assert_eq!(session.cookie().unwrap().len(), 2 + 32);
    servers.remove(0).abort();
    pes[0].take().unwrap().abort();
    session.send("add 2".into()).await.unwrap();
    assert_eq!(session.recv().await.unwrap(), "42");
    assert_eq!(
        firsts[1].recv().await.unwrap(),
        hapool_client::Incoming::CookieEcho("40".into())
    );
    // A forgery: a state the PE never sent, with a made-up tag.
    let mut raw = TcpStream::connect(addrs[1]).await.unwrap();
    let mut forged = b"1000000".to_vec();
    forged.extend_from_slice(&[0u8; 32]);
    for frame in [
        hapool_wire::SessionFrame::Control(AsapMessage::CookieEcho {
            cookie: Bytes::from(forged),
        }),
        hapool_wire::SessionFrame::Data(Bytes::from_static(b"add 1")),
    ] {
        tokio::io::AsyncWriteExt::write_all(&mut raw, &frame.to_bytes().unwrap())
            .await
            .unwrap();
    }
    assert_eq!(
        firsts[1].recv().await.unwrap(),
        hapool_client::Incoming::CookieRefused(hapool_client::CookieRefusal::BadSignature)
    );
    // The answer shows fresh state: 0 + 1, not 1000000 + 1.
    let mut reader = tokio::io::BufReader::new(raw);
    let mut buf = bytes::BytesMut::new();
    let answer = loop {
        tokio::io::AsyncReadExt::read_buf(&mut reader, &mut buf)
            .await
            .unwrap();
        if let Some(hapool_wire::SessionFrame::Data(d)) =
            std::iter::from_fn(|| hapool_wire::SessionFrame::decode(&mut buf, 1 << 20).unwrap())
                .find(|f| matches!(f, hapool_wire::SessionFrame::Data(_)))
        {
            break d;
        }
    };
    assert_eq!(answer, "1");
    assert!(hapool_client::CookieKey::new(b"short").is_err());
    for pe in pes.into_iter().flatten() {
        pe.stop().await;
    }
    r.shutdown().await;
}

/// A rule that names a shared token admits PEs that carry it, over plain
/// TCP, and no others.
#[tokio::test]
async fn shared_tokens_in_registration_rules() {
    let mut config = RegistrarConfig::new(RegistrarId(0x70));
    config.rules = vec![hapool_proto::RegistrationRule {
        pools: vec![pool().to_string()],
        identities: Vec::new(),
        tokens: vec!["pool-token-0123456789".into()],
    }];
    let r = start(
        config,
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap(),
    )
    .unwrap();
    let with = |id: u32, token: Option<&'static str>| {
        let mut config = PeConfig::new(vec![r.local_addr()], pool(), element(id, 0));
        config.retry_interval = Duration::from_millis(50);
        config.auth_token = token.map(|t| Bytes::from_static(t.as_bytes()));
        PeHandle::start(config)
    };
    let mut good = with(1, Some("pool-token-0123456789"));
    good.wait_registered(Duration::from_secs(5)).await.unwrap();
    let bad = with(2, Some("pool-token-wrong-guess"));
    let none = with(3, None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while [&bad, &none]
        .iter()
        .any(|pe| pe.state() != PeState::Refused(CauseCode::REJECTION_DUE_TO_SECURITY))
    {
        assert!(
            Instant::now() < deadline,
            "{:?} {:?}",
            bad.state(),
            none.state()
        );
        sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ids(&r).await, [1]);
    for pe in [good, bad, none] {
        pe.stop().await;
    }
    r.shutdown().await;
}

/// A PU that is itself a PE of a pool sends its business card; after its
/// element restarts on another port, the PE reaches it back through the
/// pool named on the card.
#[tokio::test]
async fn a_business_card_lets_a_pe_reach_the_pu_back() {
    let r = registrar(0x79).await;
    let callback = PoolHandle::from("callback");
    // The server PE: keeps the business card, and on a signal reaches the
    // card's pool.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let server_element = PoolElement {
        user_transport: Transport::tcp(listener.local_addr().unwrap()),
        ..element(1, 0)
    };
    let mut server_pe =
        PeHandle::start(PeConfig::new(vec![r.local_addr()], pool(), server_element));
    server_pe
        .wait_registered(Duration::from_secs(5))
        .await
        .unwrap();
    let (reach_back, mut signal) = tokio::sync::mpsc::channel::<()>(1);
    let registrars = vec![r.local_addr()];
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut s = hapool_client::ElementSession::new(stream, Default::default());
        let Some(hapool_client::Incoming::BusinessCard { pool, elements }) =
            s.recv().await.unwrap()
        else {
            panic!("no business card");
        };
        assert_eq!(elements[0].id, PoolElementId(50));
        signal.recv().await.unwrap();
        // The card's element is gone; the pool still reaches the PU.
        let (element, mut stream) = pu(registrars).connect(&pool).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stream, b"hello back")
            .await
            .unwrap();
        element.id
    });
    // The PU's own element in "callback".
    let own = |id: u32, listener: &TcpListener| {
        let element = PoolElement {
            user_transport: Transport::tcp(listener.local_addr().unwrap()),
            ..element(id, 0)
        };
        PeHandle::start(PeConfig::new(
            vec![r.local_addr()],
            callback.clone(),
            element,
        ))
    };
    let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let mut own_pe = own(50, &first);
    own_pe
        .wait_registered(Duration::from_secs(5))
        .await
        .unwrap();
    let card = vec![PoolElement {
        user_transport: Transport::tcp(first.local_addr().unwrap()),
        ..element(50, 0)
    }];
    let mut session = hapool_client::PoolSession::open(
        std::sync::Arc::new(pu(vec![r.local_addr()])),
        pool(),
        Default::default(),
    )
    .await
    .unwrap();
    session
        .send_business_card(callback.clone(), card)
        .await
        .unwrap();
    // The PU's element restarts on another port, with another id.
    own_pe.stop().await;
    drop(first);
    let second = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let mut own_pe = own(51, &second);
    own_pe
        .wait_registered(Duration::from_secs(5))
        .await
        .unwrap();
    reach_back.send(()).await.unwrap();
    let (mut stream, _) = tokio::time::timeout(Duration::from_secs(5), second.accept())
        .await
        .unwrap()
        .unwrap();
    let mut got = [0u8; 10];
    tokio::io::AsyncReadExt::read_exact(&mut stream, &mut got)
        .await
        .unwrap();
    assert_eq!(&got, b"hello back");
    assert_eq!(server.await.unwrap(), PoolElementId(51));
    own_pe.stop().await;
    server_pe.stop().await;
    r.shutdown().await;
}

/// A last will's PE that has left the handlespace is passed over, even
/// though its server still accepts connections.
#[tokio::test]
async fn a_last_will_counts_only_while_its_pe_is_registered() {
    let r = registrar(0x7A).await;
    let CounterPool {
        mut pes,
        servers,
        mut firsts,
        ..
    } = counter_pool(&r, &[0, 0x4000_0000, 0x1000_0000], Default::default()).await;
    let mut session = open_session(&r).await;
    session.send("add 3".into()).await.unwrap();
    assert_eq!(session.recv().await.unwrap(), "3");
    // PE 2 deregisters (its server stays up); then PE 1 dies.
    pes[1].take().unwrap().stop().await;
    servers[0].abort();
    pes[0].take().unwrap().abort();
    session.send("add 4".into()).await.unwrap();
    assert_eq!(session.recv().await.unwrap(), "7");
    assert_eq!(session.element().id, PoolElementId(3));
    assert!(firsts[1].try_recv().is_err(), "PE 2 was tried");
    for pe in pes.into_iter().flatten() {
        pe.stop().await;
    }
    r.shutdown().await;
}
