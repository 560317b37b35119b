//! The gateway end to end on loopback: real backends (HTTP and TCP, in this
//! process or, for kill -9, in child processes), real clients.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hapool_gateway::http::STATE_HEADER;
use hapool_gateway::tickets::TicketKeys;
use hapool_gateway::tls::{Certificate, server_config};
use hapool_gateway::{
    AdminState, Affinity, Availability, Gateway, GatewayConfig, ListenerConfig, MemberSource,
    PoolSettings, ProbeKind, Protocol, ProxyProtocol, Strategy,
};
use hapool_wire::{PoolElementId, PoolHandle};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

mod common;

use common::tools::listening_sockets;

use common::{serve_http, serve_http_counting_closes};

/// An HTTP backend named `name`:
/// - `/login` sets an application cookie and the state `user=<name>`;
/// - `/slow` answers after 300 ms;
/// - anything else answers `<name> <state header or ->`.
async fn http_backend(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(serve_backend(listener, name));
    (addr, task)
}

async fn serve_backend(listener: TcpListener, name: &'static str) {
    serve_http(listener, move |request: Request<Incoming>| async move {
        let state = request
            .headers()
            .get(STATE_HEADER)
            .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned());
        let mut response = Response::new(Full::new(Bytes::from(format!("{name} {state}"))));
        match request.uri().path() {
            "/login" => {
                let headers = response.headers_mut();
                headers.insert(header::SET_COOKIE, "app=1".parse().unwrap());
                headers.insert(STATE_HEADER, format!("user={name}").parse().unwrap());
            }
            "/slow" => sleep(Duration::from_millis(300)).await,
            _ => {}
        }
        response
    })
    .await;
}

/// One [`http_backend`] per name.
async fn http_backends(names: &[&'static str]) -> Vec<SocketAddr> {
    let mut backends = Vec::new();
    for name in names {
        backends.push(http_backend(name).await.0);
    }
    backends
}

fn pool_handle() -> PoolHandle {
    PoolHandle::from("web")
}

fn static_pool(members: &[SocketAddr], probe: ProbeKind) -> PoolSettings {
    let members: Vec<_> = members.iter().map(|&address| (address, 0)).collect();
    PoolSettings {
        probe,
        ..PoolSettings::new(pool_handle(), common::static_members(&members))
    }
}

fn listener(protocol: Protocol) -> ListenerConfig {
    ListenerConfig {
        address: (Ipv4Addr::LOCALHOST, 0).into(),
        protocol,
        pool: pool_handle(),
        tls: None,
        affinity: Affinity::usual(protocol),
        max_connections: 10_000,
        accept_proxy_protocol: false,
        abort_on_close: false,
    }
}

fn http_probe() -> ProbeKind {
    ProbeKind::Http { path: "/".into() }
}

async fn http_gateway(pool: PoolSettings) -> Gateway {
    let mut config = GatewayConfig::new(vec![listener(Protocol::Http)], vec![pool]);
    config.probe_interval = Duration::from_millis(100);
    Gateway::start(config).await.unwrap()
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GETs `path` with the cookie `cookie`; the status, the body, and the
/// affinity cookie set in the response.
async fn get(
    client: &HttpClient,
    gateway: SocketAddr,
    path: &str,
    cookie: Option<&str>,
) -> (StatusCode, String, Option<String>) {
    let mut request = Request::get(format!("http://{gateway}{path}"));
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    let response = client
        .request(request.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let set = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("hapool="))
        .map(|c| c.split(';').next().unwrap().to_owned());
    assert!(
        response.headers().get(STATE_HEADER).is_none(),
        "the state cookie is the gateway's, never the client's"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap(), set)
}

/// A fresh directory for a test's access log, named after `name`, and
/// the log's path in it (no file there yet).
fn access_log_dir(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("hapool-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("access.log");
    let _ = std::fs::remove_file(&path);
    (dir, path)
}

/// Waits up to 5 s for `done`, checking every 20 ms; fails naming `what`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(5), "never: {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

fn served_by(body: &str) -> &str {
    body.split(' ').next().unwrap()
}

/// Six requests without a session reach at least `members` different
/// members, and none starts a session. (Not always every member of a
/// pool: on a loaded machine one answer a millisecond slower than the
/// others counts as slow for a while, and that member gets fewer turns.)
async fn assert_spread(client: &HttpClient, gateway: SocketAddr, members: usize) {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        let (status, body, set) = get(client, gateway, "/", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(set, None, "no session without the application starting one");
        seen.insert(served_by(&body).to_owned());
    }
    assert!(seen.len() >= members, "{seen:?}");
}

#[tokio::test]
async fn a_session_stays_with_its_member_and_new_sessions_spread() {
    let backends = http_backends(&["a", "b", "c"]).await;
    let gateway = http_gateway(static_pool(&backends, http_probe())).await;
    let addr = gateway.local_addrs()[0];
    let client = client();
    // Requests without a session spread over the members.
    assert_spread(&client, addr, 2).await;
    // A login starts a session; every later request goes to its member.
    let (_, body, cookie) = get(&client, addr, "/login", None).await;
    let cookie = cookie.expect("the gateway sets its cookie on a new session");
    let home = served_by(&body).to_owned();
    for _ in 0..20 {
        let (_, body, set) = get(&client, addr, "/", Some(&cookie)).await;
        assert_eq!(served_by(&body), home);
        assert_eq!(set, None);
    }
    let pool = gateway.pool(&pool_handle()).unwrap();
    assert_eq!(pool.sessions.len(), 1);
    gateway.shutdown().await;
}

/// A session started at one gateway continues at another that has never
/// seen it (as when the virtual IP moves): the affinity cookie names the
/// member.
#[tokio::test]
async fn a_session_continues_at_another_gateway_by_the_member_its_cookie_names() {
    let backends = http_backends(&["a", "b", "c"]).await;
    let first = http_gateway(static_pool(&backends, http_probe())).await;
    let second = http_gateway(static_pool(&backends, http_probe())).await;
    let client = client();
    let (_, body, cookie) = get(&client, first.local_addrs()[0], "/login", None).await;
    let cookie = cookie.expect("a session starts");
    let home = served_by(&body).to_owned();
    // At the second gateway, requests without the cookie spread over the
    // members; with it, every one goes home.
    let at = second.local_addrs()[0];
    assert_spread(&client, at, 2).await;
    for _ in 0..6 {
        let (status, body, set) = get(&client, at, "/", Some(&cookie)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(served_by(&body), home);
        assert_eq!(set, None, "the cookie already names the member");
    }
    // The second gateway now keeps the session in its own table.
    assert_eq!(second.pool(&pool_handle()).unwrap().sessions.len(), 1);
    // A cookie naming a member that is not in the pool is placed afresh.
    let stranger = format!("hapool={:032x}-{:08x}", 7, 0xdead_beef_u32);
    let (status, _, _) = get(&client, at, "/", Some(&stranger)).await;
    assert_eq!(status, StatusCode::OK);
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test]
async fn a_busy_member_hands_the_session_on_with_its_state_cookie() {
    let backends = http_backends(&["a", "b"]).await;
    let mut pool = static_pool(&backends, http_probe());
    // One open request makes a member MAXUSERS.
    pool.max_sessions = Some(1);
    let gateway = http_gateway(pool).await;
    let addr = gateway.local_addrs()[0];
    let client = client();
    let (_, body, cookie) = get(&client, addr, "/login", None).await;
    let cookie = cookie.unwrap();
    let home = served_by(&body).to_owned();
    // Hold the session's member busy with a slow request.
    let slow = {
        let client = client.clone();
        let cookie = cookie.clone();
        tokio::spawn(async move { get(&client, addr, "/slow", Some(&cookie)).await })
    };
    sleep(Duration::from_millis(100)).await;
    let (status, body, moved) = get(&client, addr, "/", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    let other = if home == "a" { "b" } else { "a" };
    assert_eq!(
        body,
        format!("{other} user={home}"),
        "forwarded with the state cookie"
    );
    // The cookie is set again, naming the session's new member (same
    // session id).
    let moved = moved.expect("the cookie follows the session");
    assert_ne!(moved, cookie);
    assert_eq!(moved[..39], cookie[..39], "{moved} / {cookie}");
    let (_, slow_body, _) = slow.await.unwrap();
    assert_eq!(served_by(&slow_body), home);
    // The session now lives on the member that took it.
    let (_, body, _) = get(&client, addr, "/", Some(&cookie)).await;
    assert_eq!(served_by(&body), other);
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_draining_member_keeps_its_sessions_and_gets_no_new_ones() {
    let backends = http_backends(&["a", "b", "c"]).await;
    let gateway = http_gateway(static_pool(&backends, http_probe())).await;
    let addr = gateway.local_addrs()[0];
    let client = client();
    let (_, body, cookie) = get(&client, addr, "/login", None).await;
    let cookie = cookie.unwrap();
    let home = served_by(&body).to_owned();
    let pool = gateway.pool(&pool_handle()).unwrap();
    let home_id = PoolElementId(match home.as_str() {
        "a" => 1,
        "b" => 2,
        _ => 3,
    });
    assert_eq!(
        pool.member(home_id).unwrap().address,
        backends[home_id.0 as usize - 1]
    );
    assert!(pool.set_admin(home_id, AdminState::OutOfService));
    for _ in 0..10 {
        let (_, body, _) = get(&client, addr, "/", Some(&cookie)).await;
        assert_eq!(
            served_by(&body),
            home,
            "the open session finishes where it is"
        );
        let (_, body, _) = get(&client, addr, "/", None).await;
        assert_ne!(
            served_by(&body),
            home,
            "no new session for a draining member"
        );
    }
    // Pending delete: once the session is gone, the member leaves the pool.
    assert!(pool.set_admin(home_id, AdminState::PendingDelete));
    assert!(pool.remove_drained().is_empty());
    pool.sessions
        .sweep(Instant::now() + Duration::from_secs(3600));
    assert_eq!(pool.remove_drained(), vec![home_id]);
    gateway.shutdown().await;
}

/// An HTTP backend named `name` that answers anything but its probe path
/// `/` after [`ANSWER`] (so that the members' response times differ by
/// far less than the choice tells apart, however busy the machine), or
/// while `stalled` is set after [`STALL`] more; it answers `<name>`, and
/// counts in `closed` the connections that ended.
async fn stalling_backend(
    name: &'static str,
    stalled: Arc<AtomicBool>,
    closed: Arc<AtomicUsize>,
) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = move |request: Request<Incoming>| {
        let stalled = stalled.clone();
        async move {
            if request.uri().path() != "/" {
                sleep(ANSWER).await;
                if stalled.load(Ordering::SeqCst) {
                    sleep(STALL).await;
                }
            }
            Response::new(Full::new(Bytes::from(name)))
        }
    };
    tokio::spawn(serve_http_counting_closes(listener, answer, closed));
    addr
}

const ANSWER: Duration = Duration::from_millis(20);
const STALL: Duration = Duration::from_millis(1500);

/// GETs of `/page` through the gateway at `addr` to three members:
/// connections to every member, then, once the response times that
/// included connecting have lapsed, one answer from each on record.
/// Returns how many requests it sent.
async fn answers_on_record(client: &HttpClient, addr: SocketAddr) -> u64 {
    for _ in 0..9 {
        assert_eq!(get(client, addr, "/page", None).await.0, StatusCode::OK);
    }
    sleep(Duration::from_millis(1_100)).await;
    for _ in 0..3 {
        assert_eq!(get(client, addr, "/page", None).await.0, StatusCode::OK);
    }
    12
}

/// Three members, the third of which stalls once every member has answered
/// a few requests; then GETs of `/page` one after the other until one has
/// gone to the stalled member. Returns how long each took and who answered
/// it, the gateway, and how many of the stalled member's connections
/// ended (as they end).
async fn requests_past_a_stall(
    hedge_percent: u32,
) -> (Vec<(Duration, String)>, Gateway, Arc<AtomicUsize>) {
    let stalled = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicUsize::new(0));
    let mut backends = Vec::new();
    for name in ["a", "b", "c"] {
        let (stalls, closes) = if name == "c" {
            (stalled.clone(), closed.clone())
        } else {
            (Arc::default(), Arc::default())
        };
        backends.push(stalling_backend(name, stalls, closes).await);
    }
    let gateway = http_gateway(PoolSettings {
        hedge_percent,
        ..static_pool(&backends, http_probe())
    })
    .await;
    let addr = gateway.local_addrs()[0];
    let client = client();
    answers_on_record(&client, addr).await;
    let pool = gateway.pool(&pool_handle()).unwrap().clone();
    let chosen =
        |pool: &hapool_gateway::pool::Pool| pool.member(PoolElementId(3)).unwrap().chosen();
    let before = chosen(&pool);
    stalled.store(true, Ordering::SeqCst);
    let mut answers = Vec::new();
    while chosen(&pool) == before {
        assert!(answers.len() < 10, "the third member is never chosen");
        let started = Instant::now();
        let (status, body, _) = get(&client, addr, "/page", None).await;
        assert_eq!(status, StatusCode::OK);
        answers.push((started.elapsed(), body));
    }
    (answers, gateway, closed)
}

#[tokio::test]
async fn a_get_that_its_member_is_slow_to_answer_is_answered_by_another() {
    let (answers, gateway, closed) = requests_past_a_stall(PoolSettings::HEDGE_PERCENT).await;
    for (took, by) in &answers {
        assert_ne!(by, "c", "the stalled member's answer came first");
        assert!(*took < STALL / 3, "{took:?}: not hedged");
    }
    // The stalled member's session ended with the hedge's answer, and the
    // time it had taken is on record.
    let pool = gateway.pool(&pool_handle()).unwrap().clone();
    assert_eq!(pool.member(PoolElementId(3)).unwrap().active(), 0);
    let status = pool.status();
    assert!(status[2].response_time_us > 0, "{status:?}");
    // Its exchange went on: its answer's time replaces the floor once it
    // comes, and its connection is kept for the next request rather than
    // closed.
    let stalled_answer = (STALL / 2).as_micros() as u32;
    let waiting = Instant::now();
    while pool.status()[2].response_time_us < stalled_answer {
        assert!(
            waiting.elapsed() < STALL * 2,
            "the stalled member's answer is not on record: {:?}",
            pool.status()
        );
        sleep(Duration::from_millis(20)).await;
    }
    sleep(Duration::from_millis(100)).await;
    assert_eq!(
        closed.load(Ordering::SeqCst),
        0,
        "a connection of the stalled member was closed"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn without_hedges_a_stalled_member_holds_its_request() {
    let (answers, gateway, _) = requests_past_a_stall(0).await;
    let (took, by) = answers.last().unwrap();
    assert_eq!(by, "c");
    assert!(*took >= STALL, "{took:?}");
    gateway.shutdown().await;
}

/// An HTTP backend named `name` that answers its probe path `/` at once,
/// `/long` after [`LONG`] and anything else after [`PACE`].
async fn paced_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_http(
        listener,
        move |request: Request<Incoming>| async move {
            match request.uri().path() {
                "/" => {}
                "/long" => sleep(LONG).await,
                _ => sleep(PACE).await,
            }
            Response::new(Full::new(Bytes::from(name)))
        },
    ));
    addr
}

const PACE: Duration = Duration::from_millis(100);
const LONG: Duration = Duration::from_millis(1000);

#[tokio::test]
async fn a_member_that_keeps_answering_gets_no_copies_of_what_waits_for_it() {
    let mut backends = Vec::new();
    for name in ["a", "b", "c"] {
        backends.push(paced_backend(name).await);
    }
    let gateway = http_gateway(static_pool(&backends, http_probe())).await;
    let addr = gateway.local_addrs()[0];
    let client = client();
    let mut requests = answers_on_record(&client, addr).await;
    // Fifteen clients, one request after another each: every member has
    // several open and answers one about every PACE / 5.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..15 {
        let (client, stop, sent) = (client.clone(), stop.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                assert_eq!(get(&client, addr, "/page", None).await.0, StatusCode::OK);
                sent.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    sleep(2 * PACE).await;
    // Ten times the members' response time: long past the delay of a
    // hedge for a request alone on its member (four times), but its
    // member is answering the others all along.
    let started = Instant::now();
    let (status, _, _) = get(&client, addr, "/long", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= LONG);
    requests += 1;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    requests += sent.load(Ordering::SeqCst);
    let pool = gateway.pool(&pool_handle()).unwrap().clone();
    let chosen: u64 = (1..=3)
        .map(|id| pool.member(PoolElementId(id)).unwrap().chosen())
        .sum();
    assert_eq!(chosen, requests, "a request went to a second member");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_member_that_refuses_is_skipped_and_probed_back() {
    let (live, _task) = http_backend("live").await;
    let spare = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let dead = spare.local_addr().unwrap();
    drop(spare);
    let mut config = GatewayConfig::new(
        vec![listener(Protocol::Http)],
        vec![static_pool(&[dead, live], http_probe())],
    );
    config.probe_interval = Duration::from_millis(100);
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.local_addrs()[0];
    let pool = gateway.pool(&pool_handle()).unwrap();
    let dead_member = pool.member(PoolElementId(1)).unwrap();
    assert!(!dead_member.is_reachable(), "probed before use");
    let client = client();
    for _ in 0..5 {
        let (status, body, _) = get(&client, addr, "/", None).await;
        assert_eq!((status, served_by(&body)), (StatusCode::OK, "live"));
    }
    // The member comes up: the prober lets it in.
    let revived = TcpListener::bind(dead).await.unwrap();
    tokio::spawn(serve_backend(revived, "revived"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !dead_member.is_reachable() {
        assert!(Instant::now() < deadline, "never probed back");
        sleep(Duration::from_millis(20)).await;
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(served_by(&get(&client, addr, "/", None).await.1).to_owned());
    }
    assert!(seen.contains("revived"), "{seen:?}");
    gateway.shutdown().await;
}

/// An HTTP backend whose `/health` fails every other time it is asked
/// (answering first); anything else is answered `<name>`.
async fn flapping_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let probes = Arc::new(AtomicU64::new(0));
    tokio::spawn(serve_http(listener, move |request: Request<Incoming>| {
        let probes = probes.clone();
        async move {
            let mut response = Response::new(Full::new(Bytes::from(name)));
            if request.uri().path() == "/health" && probes.fetch_add(1, Ordering::Relaxed) % 2 == 1
            {
                *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            }
            response
        }
    }));
    addr
}

/// Whether the member of a gateway in front of one [`flapping_backend`],
/// probed every 20 ms with `probe_fall`, was ever out of the choice in
/// 600 ms.
async fn flapping_member_ever_out(probe_fall: u32) -> bool {
    let backend = flapping_backend("a").await;
    let mut pool = static_pool(
        &[backend],
        ProbeKind::Http {
            path: "/health".into(),
        },
    );
    pool.probe_fall = probe_fall;
    let mut config = GatewayConfig::new(vec![listener(Protocol::Http)], vec![pool]);
    config.probe_interval = Duration::from_millis(20);
    let gateway = Gateway::start(config).await.unwrap();
    let member = gateway.pools()[0].members()[0].clone();
    assert!(member.is_reachable(), "in at its first answer");
    let started = Instant::now();
    let mut out = false;
    while started.elapsed() < Duration::from_millis(600) {
        out |= !member.is_reachable();
        sleep(Duration::from_millis(2)).await;
    }
    gateway.shutdown().await;
    out
}

#[tokio::test]
async fn a_member_that_fails_one_probe_in_two_stays_in_the_choice() {
    assert!(
        !flapping_member_ever_out(PoolSettings::PROBE_FALL).await,
        "one failed probe between answers took the member out"
    );
    assert!(
        flapping_member_ever_out(1).await,
        "with probe_fall = 1 a single failed probe takes it out"
    );
}

#[tokio::test]
async fn no_member_at_all_is_a_clear_503() {
    let spare = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let dead = spare.local_addr().unwrap();
    drop(spare);
    let gateway = http_gateway(static_pool(&[dead], http_probe())).await;
    let (status, body, _) = get(&client(), gateway.local_addrs()[0], "/", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("no pool element"), "{body}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_client_that_shuts_its_sending_side_still_gets_its_answer() {
    let (member, _task) = http_backend("a").await;
    let gateway = http_gateway(static_pool(&[member], http_probe())).await;
    let mut client = TcpStream::connect(gateway.local_addrs()[0]).await.unwrap();
    // The member answers `/slow` 300 ms later, long after the client's FIN.
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    client.shutdown().await.unwrap();
    let mut answer = String::new();
    timeout(Duration::from_secs(5), client.read_to_string(&mut answer))
        .await
        .expect("the gateway closes the connection after the answer")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("a -"), "{answer}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_listener_that_aborts_on_close_gives_a_request_up_when_its_client_closes() {
    let member = paced_backend("a").await;
    let (dir, path) = access_log_dir("abort-test");
    let mut config = GatewayConfig::new(
        vec![ListenerConfig {
            abort_on_close: true,
            ..listener(Protocol::Http)
        }],
        vec![static_pool(&[member], http_probe())],
    );
    config.access_log = Some(path.clone());
    let gateway = Gateway::start(config).await.unwrap();
    let mut client = TcpStream::connect(gateway.local_addrs()[0]).await.unwrap();
    // The member answers `/long` a second later; the client shuts its
    // sending side a tenth of that after its request.
    client
        .write_all(b"GET /long HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    eventually("the request at its member", || {
        gateway.pools()[0].status()[0].active == 1
    })
    .await;
    let closed = Instant::now();
    client.shutdown().await.unwrap();
    let mut answer = Vec::new();
    // The connection ends without an answer (an end of stream, or a reset
    // when the gateway closed with the client's FIN unread).
    let _ = timeout(Duration::from_secs(5), client.read_to_end(&mut answer))
        .await
        .expect("the gateway closes the connection");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    // Given up at once, not when the member answered.
    eventually("the member's session ended", || {
        gateway.pools()[0].status()[0].active == 0
    })
    .await;
    assert!(closed.elapsed() < LONG / 2, "{:?}", closed.elapsed());
    let member = &gateway.pools()[0].status()[0];
    assert_eq!((member.served, member.failed), (0, 0));
    eventually("the request given up logged", || {
        std::fs::read_to_string(&path).is_ok_and(|t| t.contains("/long"))
    })
    .await;
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("status=- member=-"), "{text}");
    gateway.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A backend written by hand, for answers hyper would not give: each
/// connection is handed to `serve` with its read half buffered.
async fn raw_backend<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(BufReader<tokio::net::tcp::OwnedReadHalf>, tokio::net::tcp::OwnedWriteHalf) -> Fut
        + Send
        + Copy
        + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (read, write) = stream.into_split();
            tokio::spawn(serve(BufReader::new(read), write));
        }
    });
    address
}

/// The next request head on `read` (up to its blank line); `None` once
/// the client has closed.
async fn read_head(read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<String> {
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        if read.read_line(&mut head).await.unwrap_or(0) == 0 {
            return None;
        }
    }
    Some(head)
}

/// A backend that answers one request per connection with `ok`, and
/// closes a connection without a word when a second request comes on it
/// (as a server whose keep-alive timeout runs out as the request arrives).
async fn one_request_per_connection_backend() -> SocketAddr {
    raw_backend(|mut read, mut write| async move {
        for answered in 0..2 {
            let Some(head) = read_head(&mut read).await else {
                return;
            };
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |n| n.parse().unwrap());
            let mut body = vec![0; length];
            read.read_exact(&mut body).await.unwrap();
            if answered == 1 {
                return;
            }
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            write.write_all(answer).await.unwrap();
        }
    })
    .await
}

#[tokio::test]
async fn a_kept_member_connection_closed_under_a_get_costs_no_request() {
    let member = one_request_per_connection_backend().await;
    let gateway = http_gateway(static_pool(&[member], ProbeKind::Tcp)).await;
    let address = gateway.local_addrs()[0];
    let client = client();
    // Each GET after the first goes on the member connection the one
    // before left idle, which the member closes: sent again on a new one.
    for _ in 0..5 {
        let (status, body, _) = get(&client, address, "/", None).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    }
    // A POST may have reached the member before it closed: not sent again.
    // (The same client connection, so the same gateway worker and its
    // kept member connection.)
    let post = Request::post(format!("http://{address}/"))
        .body(Empty::new())
        .unwrap();
    let response = client.request(post).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    gateway.shutdown().await;
}

/// A member that speaks HTTP/1.0: one answer per connection, its body
/// ending where the connection does.
async fn http10_backend() -> SocketAddr {
    raw_backend(|mut read, mut write| async move {
        if read_head(&mut read).await.is_some() {
            let _ = write
                .write_all(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nold")
                .await;
        }
    })
    .await
}

#[tokio::test]
async fn a_member_speaking_http10_is_answered_for_in_the_clients_version() {
    let member = http10_backend().await;
    let gateway = http_gateway(static_pool(&[member], ProbeKind::Tcp)).await;
    let address = gateway.local_addrs()[0];
    // An HTTP/1.1 client keeps its connection for further requests.
    let stream = TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    for round in 0..3 {
        let request = Request::get("/").header("host", "example.test");
        let response = sender
            .send_request(request.body(Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(response.version(), http::Version::HTTP_11, "round {round}");
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"old");
    }
    // An HTTP/1.0 client is answered in HTTP/1.0, the body ending with the
    // connection.
    let answer =
        common::raw_exchange(address, b"GET / HTTP/1.0\r\nhost: example.test\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nold"), "{answer}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_member_answering_server_errors_in_a_row_is_taken_out_until_its_probes_pass() {
    // a's application is broken (503 to everything) while its health
    // page still answers.
    let socket = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let a = socket.local_addr().unwrap();
    tokio::spawn(serve_http(
        socket,
        |request: Request<Incoming>| async move {
            let mut response = Response::new(Full::new(Bytes::from("a broken")));
            if request.uri().path() != "/health" {
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            response
        },
    ));
    let (b, _task) = http_backend("b").await;
    let config = |probe_interval| {
        let pool = PoolSettings {
            strategy: Some(Strategy::RoundRobin),
            error_limit: Some(3),
            probe_rise: 1,
            ..static_pool(
                &[a, b],
                ProbeKind::Http {
                    path: "/health".into(),
                },
            )
        };
        let mut config = GatewayConfig::new(
            vec![ListenerConfig {
                affinity: Affinity::None,
                ..listener(Protocol::Http)
            }],
            vec![pool],
        );
        config.probe_interval = probe_interval;
        config
    };
    let gateway = Gateway::start(config(Duration::from_secs(3600)))
        .await
        .unwrap();
    let addr = gateway.local_addrs()[0];
    let client = client();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(get(&client, addr, "/", None).await.0.as_u16());
    }
    // In turn, until a's third error in a row; then b alone.
    assert_eq!(statuses, [503, 200, 503, 200, 503, 200, 200, 200, 200, 200]);
    let status = gateway.pools()[0].status();
    assert_eq!(status[0].availability, Availability::Unreachable);
    assert_eq!(status[1].availability, Availability::Available);
    // Its health page answers: the next probe brings it back.
    gateway
        .view()
        .reload(config(Duration::from_millis(50)))
        .await
        .unwrap();
    eventually("a is back after its probe", || {
        gateway.pools()[0].status()[0].availability == Availability::Available
    })
    .await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_member_failing_in_a_row_counts_toward_the_error_limit() {
    // a accepts connections (its probe passes) and answers every request
    // with something that is not HTTP.
    let a = raw_backend(|mut read, mut write| async move {
        while read_head(&mut read).await.is_some() {
            if write.write_all(b"NOT HTTP AT ALL\r\n\r\n").await.is_err() {
                return;
            }
        }
    })
    .await;
    let (b, _task) = http_backend("b").await;
    let pool = PoolSettings {
        strategy: Some(Strategy::RoundRobin),
        error_limit: Some(3),
        ..static_pool(&[a, b], ProbeKind::Tcp)
    };
    let mut config = GatewayConfig::new(
        vec![ListenerConfig {
            affinity: Affinity::None,
            ..listener(Protocol::Http)
        }],
        vec![pool],
    );
    config.probe_interval = Duration::from_secs(3600);
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.local_addrs()[0];
    let client = client();
    // Each GET a fails goes on to b: the client sees none of it.
    for _ in 0..8 {
        let (status, body, _) = get(&client, addr, "/", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with('b'), "{body}");
    }
    // a's third failure in a row took it out, as three 5xx would have.
    let status = gateway.pools()[0].status();
    assert_eq!(status[0].availability, Availability::Unreachable);
    assert_eq!(status[0].failed, 3);
    assert_eq!(status[1].availability, Availability::Available);
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_streamed_body_goes_to_the_next_member_when_the_first_cannot_be_reached() {
    // The member chosen first (highest priority) goes away once probed:
    // its port refuses connections.
    let socket = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let gone = socket.local_addr().unwrap();
    let accepting = tokio::spawn(async move {
        loop {
            let _ = socket.accept().await;
        }
    });
    let live = common::member().await;
    let mut pool = static_pool(&[gone, live], ProbeKind::Tcp);
    pool.strategy = Some(Strategy::Priority);
    if let MemberSource::Static(members) = &mut pool.source {
        members[0].priority = 5;
    }
    pool.probe_fall = 100;
    let mut config = GatewayConfig::new(vec![listener(Protocol::Http)], vec![pool]);
    config.probe_interval = Duration::from_secs(3600);
    let gateway = Gateway::start(config).await.unwrap();
    accepting.abort();
    let _ = accepting.await;
    assert_eq!(
        gateway.pools()[0].status()[0].availability,
        Availability::Available
    );
    // A chunked body (its length unknown, so not kept for a retry) is
    // streamed to the member; the connection to the first fails before any
    // of it left, and it goes whole to the other.
    let answer = common::raw_exchange(
        gateway.local_addrs()[0],
        b"POST /upload HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\
          connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n11"), "{answer}");
    let status = gateway.pools()[0].status();
    assert_eq!(status[0].availability, Availability::Unreachable);
    assert_eq!(status[1].served, 1);
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_client_body_that_breaks_off_is_the_clients_fault_not_the_members() {
    let member = common::member().await;
    let gateway = http_gateway(static_pool(&[member], ProbeKind::Tcp)).await;
    let address = gateway.local_addrs()[0];
    // A chunked body (streamed to the member) whose second chunk's size is
    // not a number: a 400, as for a body kept whole, not a member's 502.
    let answer = common::raw_exchange(
        address,
        b"POST /upload HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\
          connection: close\r\n\r\n5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // A client that goes away in the middle of its body.
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n\
              5\r\nhello\r\n",
        )
        .await
        .unwrap();
    eventually("the request is with the member", || {
        gateway.pools()[0].status()[0].active == 1
    })
    .await;
    drop(stream);
    eventually("the exchange is over", || {
        gateway.pools()[0].status()[0].active == 0
    })
    .await;
    // Neither counts against the member, which stays in the choice.
    let status = gateway.pools()[0].status();
    assert_eq!(status[0].failed, 0, "{status:?}");
    assert_eq!(status[0].availability, Availability::Available);
    let (code, body, _) = get(&client(), address, "/", None).await;
    assert_eq!((code, body.as_str()), (StatusCode::OK, "0"));
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_streamed_upload_has_the_request_timeout_from_its_last_part() {
    let limit = Duration::from_millis(400);
    let member = common::member().await;
    let mut config = GatewayConfig::new(
        vec![listener(Protocol::Http)],
        vec![static_pool(&[member], ProbeKind::Tcp)],
    );
    config.limits.request_timeout = limit;
    let gateway = Gateway::start(config).await.unwrap();
    let address = gateway.local_addrs()[0];
    let head = b"POST /upload HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\
                 connection: close\r\n\r\n";
    // An upload that takes four times the limit, a part every half of it,
    // reaches its member whole.
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(head).await.unwrap();
    for _ in 0..8 {
        stream.write_all(b"5\r\nhello\r\n").await.unwrap();
        sleep(limit / 2).await;
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n40"), "{answer}");
    // A client that stops in the middle of its body is answered 408 once
    // the limit has passed since its last part; the member, which waited
    // for the rest, is not at fault.
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(head).await.unwrap();
    stream.write_all(b"5\r\nhello\r\n").await.unwrap();
    let started = Instant::now();
    let mut answer = String::new();
    timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
        .await
        .expect("the client is answered")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() >= limit - Duration::from_millis(50));
    let status = gateway.pools()[0].status();
    assert_eq!(status[0].failed, 0, "{status:?}");
    assert_eq!(status[0].availability, Availability::Available);
    eventually("the exchange is over", || {
        gateway.pools()[0].status()[0].active == 0
    })
    .await;
    gateway.shutdown().await;
}

/// A member whose answers break HTTP's rules, by path: a length beside a
/// transfer coding, a switch of protocols no request asked for, and a body
/// cut off before its length.
async fn rule_breaking_backend() -> SocketAddr {
    raw_backend(|mut read, mut write| async move {
        while let Some(head) = read_head(&mut read).await {
            let answer: &[u8] = match head.split(' ').nth(1) {
                Some("/both") => {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\ntransfer-encoding: chunked\r\n\r\n\
                      2\r\nhi\r\n0\r\n\r\n"
                }
                Some("/switch") => {
                    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: other\r\n\
                      connection: upgrade\r\n\r\n"
                }
                Some("/cut") => b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789",
                _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            };
            if write.write_all(answer).await.is_err() || !answer.ends_with(b"\r\n\r\n") {
                return;
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_member_answer_that_breaks_the_rules_goes_on_only_as_http_allows() {
    let member = rule_breaking_backend().await;
    let gateway = http_gateway(static_pool(&[member], ProbeKind::Tcp)).await;
    let address = gateway.local_addrs()[0];
    let client = client();
    let failed = || gateway.pools()[0].status()[0].failed;
    // The transfer coding wins over the length (RFC 9112, 6.3), which does
    // not go on: the client reads the two bytes and keeps its connection.
    for _ in 0..2 {
        let response = client
            .request(
                Request::get(format!("http://{address}/both"))
                    .body(Empty::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.headers().get(header::CONTENT_LENGTH), None);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hi");
    }
    assert_eq!(failed(), 0);
    // A switch nobody asked for is the member's failure: 502.
    let (status, body, _) = get(&client, address, "/switch", None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "the pool element switched protocols unasked\n");
    assert_eq!(failed(), 1);
    // An answer cut off: the client sees it unfinished, not as a whole
    // answer, and the member is counted as having failed it.
    let response = client
        .request(
            Request::get(format!("http://{address}/cut"))
                .body(Empty::new())
                .unwrap(),
        )
        .await;
    let whole = match response {
        Ok(response) => response.into_body().collect().await.is_ok(),
        Err(_) => false,
    };
    assert!(!whole, "a cut answer arrived whole");
    eventually("the cut answer counts against the member", || failed() == 2).await;
    let (status, body, _) = get(&client, address, "/", None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    gateway.shutdown().await;
}

/// A member that stops in the middle of its answer (a hung process: its
/// connection stays open) has it broken off after `answer_idle_timeout`,
/// and counted against it; one that sends its body slowly but steadily
/// does not.
#[tokio::test]
async fn a_member_that_stops_in_the_middle_of_its_answer_has_it_broken_off() {
    let member = raw_backend(|mut read, mut write| async move {
        while let Some(head) = read_head(&mut read).await {
            match head.split(' ').nth(1) {
                Some("/stall") => {
                    let _ = write
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                        .await;
                    sleep(Duration::from_secs(60)).await;
                    return;
                }
                Some("/slow") => {
                    let _ = write
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n")
                        .await;
                    for byte in b"steadily" {
                        sleep(Duration::from_millis(100)).await;
                        if write.write_all(&[*byte]).await.is_err() {
                            return;
                        }
                    }
                }
                _ => {
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if write.write_all(ok).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    let mut config = GatewayConfig::new(
        vec![listener(Protocol::Http)],
        vec![static_pool(&[member], ProbeKind::Tcp)],
    );
    config.probe_interval = Duration::from_millis(100);
    config.limits.answer_idle_timeout = Duration::from_millis(300);
    let gateway = Gateway::start(config).await.unwrap();
    let address = gateway.local_addrs()[0];
    let client = client();
    let failed = || gateway.pools()[0].status()[0].failed;
    let (status, body, _) = get(&client, address, "/slow", None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "steadily"));
    assert_eq!(failed(), 0);
    let asked = Instant::now();
    let response = client
        .request(
            Request::get(format!("http://{address}/stall"))
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let collected = timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the client was held");
    assert!(collected.is_err(), "a stalled answer arrived whole");
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "broken off after {took:?}"
    );
    eventually("the stalled answer counts against the member", || {
        failed() == 1
    })
    .await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_request_reaches_its_member_with_one_host() {
    // A member answering with the Host it was sent.
    let socket = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let member = socket.local_addr().unwrap();
    tokio::spawn(serve_http(
        socket,
        |request: Request<Incoming>| async move {
            let hosts: Vec<_> = request.headers().get_all(header::HOST).iter().collect();
            Response::new(Full::new(Bytes::from(format!("{hosts:?}"))))
        },
    ));
    let gateway = http_gateway(static_pool(&[member], ProbeKind::Tcp)).await;
    let address = gateway.local_addrs()[0];
    let exchange = |request: &'static str| common::raw_exchange(address, request.as_bytes());
    let answer = exchange("GET / HTTP/1.1\r\nhost: site.test\r\nconnection: close\r\n\r\n").await;
    assert!(answer.ends_with("[\"site.test\"]"), "{answer}");
    // None, or two: refused before any member is chosen.
    let answer = exchange("GET / HTTP/1.1\r\nconnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.ends_with("an HTTP/1.1 request needs a Host header\n"),
        "{answer}"
    );
    let answer =
        exchange("GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(gateway.pools()[0].status()[0].chosen, 1);
    // The authority of a request in absolute form is its host.
    let answer = exchange(
        "GET http://user@other.test:8080/ HTTP/1.1\r\nhost: site.test\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.ends_with("[\"other.test:8080\"]"), "{answer}");
    // HTTP/1.0 had no Host: the member's address stands in.
    let answer = exchange("GET / HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(answer.ends_with(&format!("[\"{member}\"]")), "{answer}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn framing_that_could_smuggle_a_request_is_refused_or_framed_anew() {
    // A member that notes each request it gets, with its body.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let socket = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let member = socket.local_addr().unwrap();
    let noted = seen.clone();
    tokio::spawn(serve_http(socket, move |request: Request<Incoming>| {
        let noted = noted.clone();
        async move {
            let line = format!("{} {}", request.method(), request.uri().path());
            let body = request.into_body().collect().await.unwrap().to_bytes();
            noted.lock().unwrap().push(format!("{line} {body:?}"));
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }
    }));
    let gateway = http_gateway(static_pool(&[member], ProbeKind::Tcp)).await;
    let address = gateway.local_addrs()[0];
    let exchange = |request: &'static str| async move {
        timeout(
            Duration::from_secs(5),
            common::raw_exchange(address, request.as_bytes()),
        )
        .await
        .expect("the gateway closes the connection")
    };
    // A length beside chunked: read as chunked (RFC 9112, 6.3), answered,
    // and the connection closed, so what follows the chunked body is
    // never taken for a request.
    let answer = exchange(
        "POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n\
         0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Two lengths, a coding the gateway does not know, chunked not last:
    // refused.
    for request in [
        "POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 30\r\n\r\n\
         abcGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
        "POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: xchunked\r\n\r\n0\r\n\r\n",
        "POST /d HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "POST /e HTTP/1.1\r\nhost: x\r\ncontent-length: +3\r\n\r\nabc",
    ] {
        let answer = exchange(request).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{request:?}: {answer}");
    }
    // The member got one request, framed by the gateway.
    assert_eq!(*seen.lock().unwrap(), ["POST /a b\"\""]);
    gateway.shutdown().await;
}

/// An HTTP/2 client connection (prior knowledge) to the gateway at
/// `addr`, driven by a task of its own.
async fn h2_connect(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    JoinHandle<hyper::Result<()>>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    (sender, tokio::spawn(connection))
}

#[tokio::test]
async fn http2_clients_are_served() {
    let (backend, _task) = http_backend("a").await;
    let gateway = http_gateway(static_pool(&[backend], http_probe())).await;
    let (mut sender, _connection) = h2_connect(gateway.local_addrs()[0]).await;
    let request = Request::get("http://example.test/x")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"a -");
    gateway.shutdown().await;
}

#[tokio::test]
async fn an_http2_connection_with_no_stream_open_is_closed_after_the_header_timeout() {
    let limit = Duration::from_millis(300);
    let backend = paced_backend("a").await;
    let mut config = GatewayConfig::new(
        vec![listener(Protocol::Http)],
        vec![static_pool(&[backend], http_probe())],
    );
    config.limits.header_read_timeout = limit;
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.local_addrs()[0];
    // A stream open for longer than the limit (the member takes 1 s) keeps
    // the connection; once it has ended, the connection is closed with a
    // GOAWAY after the limit.
    let (mut sender, connection) = h2_connect(addr).await;
    let request = Request::get("http://example.test/long")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"a");
    assert!(!connection.is_finished(), "open while its stream was");
    let answered = Instant::now();
    timeout(Duration::from_secs(3), connection)
        .await
        .expect("the idle connection is closed")
        .unwrap()
        .unwrap();
    let idle = answered.elapsed();
    assert!(idle >= limit - Duration::from_millis(50), "{idle:?}");
    // A client that sends part of the preface, or the preface and
    // nothing more (nor answers the GOAWAY), is cut off too.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    for sent in [&preface[..10], &preface[..]] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(sent).await.unwrap();
        let mut rest = Vec::new();
        timeout(Duration::from_secs(3), stream.read_to_end(&mut rest))
            .await
            .expect("the connection is closed")
            .unwrap();
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_client_that_resets_its_streams_as_it_opens_them_is_sent_away() {
    let backend = paced_backend("a").await;
    let gateway = http_gateway(static_pool(&[backend], http_probe())).await;
    let addr = gateway.local_addrs()[0];
    // HTTP/2 "rapid reset": each request's stream reset as soon as it is
    // sent, so the server does the work while the client's concurrent
    // streams never fill.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = h2::client::handshake(stream).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut sent = 0;
    for _ in 0..1000 {
        let Ok(ready) = sender.clone().ready().await else {
            break;
        };
        sender = ready;
        let request = Request::get("http://example.test/long").body(()).unwrap();
        let Ok((_, mut stream)) = sender.send_request(request, true) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
        tokio::task::yield_now().await;
    }
    let ended = timeout(Duration::from_secs(5), connection)
        .await
        .expect("the gateway ends the connection")
        .unwrap();
    // With a GOAWAY that says why, or, when the client was still sending
    // as the gateway closed, a reset before the client read it.
    let ended = ended.expect_err("ended by the gateway");
    assert!(
        ended.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || ended.is_io(),
        "{ended} after {sent}"
    );
    // A few of the requests reached the member before the gateway called
    // a halt, not all of them; none is left open, and others are served.
    let chosen = gateway.pools()[0].status()[0].chosen;
    assert!(
        chosen < 500,
        "{chosen} of {sent} requests went to the member"
    );
    eventually("the member's sessions ended", || {
        gateway.pools()[0].status()[0].active == 0
    })
    .await;
    let (status, body, _) = get(&client(), addr, "/", None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "a"));
    gateway.shutdown().await;
}

fn pki(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/pki")
        .join(name)
}

fn certificate(name: &str) -> Certificate {
    Certificate {
        names: vec![format!("{name}.example")],
        chain: hapool_net::tls::certificates(&pki(&format!("{name}.pem"))).unwrap(),
        key: hapool_net::tls::private_key(&pki(&format!("{name}.key"))).unwrap(),
    }
}

/// The subject name of the certificate the gateway shows for `sni`, and
/// the answer to a request over that connection.
async fn tls_get(gateway: SocketAddr, sni: &str) -> (String, String) {
    let connector = tls_client();
    let stream = TcpStream::connect(gateway).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let mut tls = connector.connect(name, stream).await.unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let subject = parsed.subject().to_string();
    tls.write_all(format!("GET / HTTP/1.1\r\nhost: {sni}\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    let body = answer.rsplit("\r\n\r\n").next().unwrap().to_owned();
    (subject, body)
}

#[tokio::test]
async fn tls_termination_chooses_the_certificate_by_sni() {
    let (backend, _task) = http_backend("a").await;
    let tls = server_config(
        vec![certificate("alpha"), certificate("beta")],
        &[b"h2", b"http/1.1"],
    )
    .unwrap();
    let mut config = GatewayConfig::new(
        vec![ListenerConfig {
            tls: Some(tls),
            ..listener(Protocol::Http)
        }],
        vec![static_pool(&[backend], http_probe())],
    );
    config.probe_interval = Duration::from_millis(100);
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.local_addrs()[0];
    assert_eq!(
        tls_get(addr, "alpha.example").await,
        ("CN=alpha.example".into(), "a -".into())
    );
    assert_eq!(
        tls_get(addr, "beta.example").await,
        ("CN=beta.example".into(), "a -".into())
    );
    gateway.shutdown().await;
}

/// A TCP backend that answers each line with `<name> <line>`.
async fn echo_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(echo_lines(stream, name));
        }
    });
    addr
}

/// Answers each line read from `stream` with `<name> <line>` until either
/// side closes.
async fn echo_lines<S>(stream: S, name: &'static str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if write
            .write_all(format!("{name} {line}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn tcp_exchange(gateway: SocketAddr, line: &str) -> String {
    let stream = TcpStream::connect(gateway).await.unwrap();
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut lines = BufReader::new(read).lines();
    lines.next_line().await.unwrap().unwrap_or_default()
}

#[tokio::test]
async fn tcp_sessions_stay_with_the_client_address_and_skip_refusing_members() {
    let a = echo_backend("a").await;
    let b = echo_backend("b").await;
    let mut config = GatewayConfig::new(
        vec![listener(Protocol::Tcp)],
        vec![static_pool(&[a, b], ProbeKind::Tcp)],
    );
    config.probe_interval = Duration::from_secs(60);
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.local_addrs()[0];
    let first = tcp_exchange(addr, "hello").await;
    let home = first.split(' ').next().unwrap().to_owned();
    assert_eq!(first, format!("{home} hello"));
    for _ in 0..5 {
        assert!(tcp_exchange(addr, "again").await.starts_with(&home));
    }
    // Without affinity, connections spread.
    let mut config = GatewayConfig::new(
        vec![ListenerConfig {
            affinity: Affinity::None,
            ..listener(Protocol::Tcp)
        }],
        vec![static_pool(&[a, b], ProbeKind::Tcp)],
    );
    config.probe_interval = Duration::from_secs(60);
    let spread = Gateway::start(config).await.unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        let answer = tcp_exchange(spread.local_addrs()[0], "x").await;
        seen.insert(answer.split(' ').next().unwrap().to_owned());
    }
    assert_eq!(seen.len(), 2);
    spread.shutdown().await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_tcp_member_closing_without_answering_counts_toward_the_error_limit() {
    // The preferred member's port accepts (its probe passes), and the
    // server behind it closes every connection at once.
    let socket = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let closer = socket.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = socket.accept().await {
            drop(stream);
        }
    });
    let b = echo_backend("b").await;
    let mut pool = static_pool(&[closer, b], ProbeKind::Tcp);
    pool.strategy = Some(Strategy::Priority);
    pool.error_limit = Some(2);
    if let MemberSource::Static(members) = &mut pool.source {
        members[0].priority = 5;
    }
    let mut config = GatewayConfig::new(vec![listener(Protocol::Tcp)], vec![pool]);
    config.probe_interval = Duration::from_secs(3600);
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.local_addrs()[0];
    let failed = |i: usize| gateway.pools()[0].status()[i].failed;
    // The client's address keeps it with the closing member, which
    // answers nothing, twice...
    for n in 1..=2 {
        assert_eq!(tcp_exchange(addr, "hello").await, "");
        eventually("the unanswered connection counts", || failed(0) == n).await;
    }
    // ... and is out: the session goes on at b.
    let status = gateway.pools()[0].status();
    assert_eq!(status[0].availability, Availability::Unreachable);
    assert_eq!(tcp_exchange(addr, "hello").await, "b hello");
    // Clients that connect and leave without a word are not b's failure.
    for _ in 0..3 {
        drop(TcpStream::connect(addr).await.unwrap());
    }
    sleep(Duration::from_millis(100)).await;
    assert_eq!(failed(1), 0);
    gateway.shutdown().await;
}

#[tokio::test]
async fn limits_are_enforced_with_a_clear_answer() {
    let (backend, _task) = http_backend("a").await;
    let mut config = GatewayConfig::new(
        vec![ListenerConfig {
            max_connections: 1,
            ..listener(Protocol::Http)
        }],
        vec![static_pool(&[backend], http_probe())],
    );
    config.limits.max_header_bytes = 8192;
    config.limits.header_read_timeout = Duration::from_millis(200);
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.local_addrs()[0];
    // A head larger than the limit: 431.
    let mut big = TcpStream::connect(addr).await.unwrap();
    let filler = "x".repeat(10_000);
    big.write_all(format!("GET / HTTP/1.1\r\nhost: a\r\nx-filler: {filler}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    drop(big);
    // A client that sends nothing is dropped after the header timeout, and
    // while it holds the only connection, a second one is refused.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    sleep(Duration::from_millis(50)).await;
    let mut second = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0_u8; 16];
    let n = second.read(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0, "closed at once");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the slow client was dropped"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn configuration_errors_name_what_is_wrong() {
    let config = GatewayConfig::new(
        vec![ListenerConfig {
            pool: PoolHandle::from("nope"),
            ..listener(Protocol::Http)
        }],
        vec![static_pool(&[], http_probe())],
    );
    let error = Gateway::start(config).await.err().unwrap().to_string();
    assert!(
        error.contains("\"nope\"") && error.contains("not configured"),
        "{error}"
    );
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let config = GatewayConfig::new(
        vec![ListenerConfig {
            address: taken.local_addr().unwrap(),
            ..listener(Protocol::Http)
        }],
        vec![static_pool(&[], http_probe())],
    );
    let error = Gateway::start(config).await.err().unwrap().to_string();
    assert!(
        error.starts_with(&format!("cannot listen on {}", taken.local_addr().unwrap())),
        "{error}"
    );
    let mut pool = static_pool(&[], http_probe());
    pool.source = MemberSource::Registrars;
    let error = Gateway::start(GatewayConfig::new(vec![], vec![pool]))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("no registrar is configured"), "{error}");
    for (protocol, affinity, expected) in [
        (Protocol::Tcp, Affinity::TlsSession, "needs a TLS listener"),
        (
            Protocol::Tcp,
            Affinity::Cookie,
            "a TCP listener has no cookie",
        ),
        (
            Protocol::Http,
            Affinity::ClientAddress,
            "not by client address",
        ),
        (Protocol::Http, Affinity::TlsSession, "needs a TLS listener"),
    ] {
        let config = GatewayConfig::new(
            vec![ListenerConfig {
                affinity,
                ..listener(protocol)
            }],
            vec![static_pool(&[], ProbeKind::Tcp)],
        );
        let error = Gateway::start(config).await.err().unwrap().to_string();
        assert!(error.contains(expected), "{error}");
    }
}

/// A TLS client trusting the test authority; it remembers its sessions
/// for resumption, as clients do by default.
fn tls_client() -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(hapool_net::tls::client_config(&pki("ca.pem"), None).unwrap())
}

/// One line over a new TLS connection through the gateway: the member
/// that answered, whether the TLS session was resumed, and the connection
/// (kept open by the caller so that the member counts it).
async fn tls_line(
    gateway: SocketAddr,
    client: &tokio_rustls::TlsConnector,
) -> (String, bool, tokio_rustls::client::TlsStream<TcpStream>) {
    let stream = TcpStream::connect(gateway).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("alpha.example").unwrap();
    let mut tls = client.connect(name, stream).await.unwrap();
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    tls.write_all(b"hi\n").await.unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\n") {
        let mut byte = [0u8; 1];
        assert_eq!(tls.read(&mut byte).await.unwrap(), 1, "connection closed");
        answer.push(byte[0]);
    }
    let answer = String::from_utf8(answer).unwrap();
    let member = answer.split(' ').next().unwrap().to_owned();
    (member, resumed, tls)
}

/// GET `path` over a new TLS connection to the gateway (the connection
/// closes after the answer): the member that answered, whether the TLS
/// session was resumed, and the response head.
async fn tls_request(
    gateway: SocketAddr,
    client: &tokio_rustls::TlsConnector,
    path: &str,
) -> (String, bool, String) {
    let stream = TcpStream::connect(gateway).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("alpha.example").unwrap();
    let mut tls = client.connect(name, stream).await.unwrap();
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: alpha.example\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer).await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    (
        served_by(body).to_owned(),
        resumed,
        head.to_ascii_lowercase(),
    )
}

#[tokio::test]
async fn https_sessions_can_be_kept_by_tls_session_without_cookies() {
    let backends = http_backends(&["a", "b", "c"]).await;
    let tls = server_config(vec![certificate("alpha")], &[b"http/1.1"]).unwrap();
    let mut config = GatewayConfig::new(
        vec![ListenerConfig {
            tls: Some(tls),
            affinity: Affinity::TlsSession,
            ..listener(Protocol::Http)
        }],
        vec![static_pool(&backends, http_probe())],
    );
    config.probe_interval = Duration::from_millis(100);
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.local_addrs()[0];
    // A login starts a session, kept by the TLS session: no cookie.
    let returning = tls_client();
    let (home, resumed, head) = tls_request(addr, &returning, "/login").await;
    assert!(!resumed);
    assert!(!head.contains("hapool="), "{head}");
    let mut fresh_members = std::collections::HashSet::new();
    for round in 0..4 {
        let (member, resumed, _) = tls_request(addr, &tls_client(), "/").await;
        assert!(!resumed);
        fresh_members.insert(member);
        let (member, resumed, _) = tls_request(addr, &returning, "/").await;
        assert!(resumed, "round {round}: the session was not resumed");
        assert_eq!(member, home, "round {round}");
    }
    assert!(
        fresh_members.len() >= 2,
        "fresh requests spread: {fresh_members:?}"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_resumed_tls_session_returns_to_its_member() {
    let members = [
        echo_backend("a").await,
        echo_backend("b").await,
        echo_backend("c").await,
    ];
    let tls = server_config(vec![certificate("alpha")], &[]).unwrap();
    let mut config = GatewayConfig::new(
        vec![ListenerConfig {
            tls: Some(tls),
            affinity: Affinity::TlsSession,
            ..listener(Protocol::Tcp)
        }],
        vec![static_pool(&members, ProbeKind::Tcp)],
    );
    config.probe_interval = Duration::from_secs(60);
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.local_addrs()[0];
    let returning = tls_client();
    let (home, resumed, first) = tls_line(addr, &returning).await;
    assert!(!resumed, "a first connection has nothing to resume");
    let mut open = vec![first];
    let mut fresh_members = std::collections::HashSet::new();
    for round in 0..4 {
        // A client without a session is placed afresh; the returning
        // client resumes (with the ticket of its latest connection) and
        // goes home, though home has the most open connections.
        let (member, resumed, fresh) = tls_line(addr, &tls_client()).await;
        assert!(!resumed);
        fresh_members.insert(member);
        open.push(fresh);
        let (member, resumed, again) = tls_line(addr, &returning).await;
        assert!(resumed, "round {round}: the session was not resumed");
        assert_eq!(member, home, "round {round}");
        open.push(again);
    }
    assert!(
        fresh_members.len() >= 2,
        "fresh sessions spread: {fresh_members:?}"
    );
    let status = gateway.view().status();
    assert_eq!(status.listeners[0].affinity, Affinity::TlsSession);
    drop(open);
    gateway.shutdown().await;
}

// ---------------------------------------------------------------- kill -9

/// Run by `backend_process`'s parent: serves as an HTTP backend named by
/// `HAPOOL_TEST_BACKEND` on an ephemeral port, prints the port, and serves
/// until killed.
#[tokio::test]
#[ignore = "a child process of failover_under_load, not a test of its own"]
async fn backend_process() {
    let Ok(name) = std::env::var("HAPOOL_TEST_BACKEND") else {
        return;
    };
    let name: &'static str = Box::leak(name.into_boxed_str());
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    println!("port {}", listener.local_addr().unwrap().port());
    serve_backend(listener, name).await;
}

struct ChildBackend {
    child: Child,
    addr: SocketAddr,
}

fn spawn_backend(name: &str) -> ChildBackend {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "backend_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HAPOOL_TEST_BACKEND", name)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let port = loop {
        let line = lines.next().expect("the backend printed its port").unwrap();
        // The harness prints "test backend_process ... " first, on the same line.
        if let Some((_, port)) = line.split_once("port ") {
            break port.parse::<u16>().unwrap();
        }
    };
    ChildBackend {
        child,
        addr: (Ipv4Addr::LOCALHOST, port).into(),
    }
}

impl Drop for ChildBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_under_load_loses_no_request() {
    let mut backends: Vec<ChildBackend> =
        ["a", "b", "c"].iter().map(|n| spawn_backend(n)).collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let gateway = http_gateway(static_pool(&addrs, http_probe())).await;
    let addr = gateway.local_addrs()[0];
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let client = client();
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let request = Request::get(format!("http://{addr}/"))
                    .body(Empty::new())
                    .unwrap();
                match client.request(request).await {
                    Ok(response) if response.status() == StatusCode::OK => {
                        let _ = response.into_body().collect().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    sleep(Duration::from_millis(700)).await;
    let before = ok.load(Ordering::Relaxed);
    assert!(before > 100, "load is running: {before}");
    // kill -9 of one backend, mid-load.
    let victim = backends.remove(1);
    drop(victim);
    sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let pool = gateway.pool(&pool_handle()).unwrap();
    let status = pool.status();
    assert!(!pool.member(PoolElementId(2)).unwrap().is_reachable());
    let served_after: u64 = ok.load(Ordering::Relaxed) - before;
    assert!(served_after > 100, "load went on: {served_after}");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "client-visible failures; members: {status:?}"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_the_request_under_way_finish_and_takes_no_new_one() {
    let (backend, _task) = http_backend("a").await;
    let gateway = http_gateway(static_pool(&[backend], http_probe())).await;
    let addr = gateway.local_addrs()[0];
    // An idle keep-alive connection, and one with a slow request under way.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let stopping = tokio::spawn(gateway.shutdown());
    // The request under way is answered in full, and its connection
    // closes after it.
    let mut answer = String::new();
    busy.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.ends_with("a -"), "{answer:?}");
    // The idle connection, which has asked nothing, is closed without an
    // answer once the second a connection has for its first request is
    // over.
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    stopping.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the shutdown waited for the grace period instead of the connections"
    );
    // Nothing listens any more.
    assert!(TcpStream::connect(addr).await.is_err());
}

/// An HTTP backend that accepts every upgrade to `echo`, and to
/// `websocket` when the request carries a `Sec-WebSocket-Key`, and then
/// echoes what it receives.
async fn upgrade_backend() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_http(
        listener,
        |mut request: Request<Incoming>| async move {
            let mut response = Response::new(Full::new(Bytes::new()));
            let headers = request.headers();
            let protocol = headers.get(header::UPGRADE).cloned();
            let accepted = protocol.as_ref().is_some_and(|p| {
                p == "echo" || (p == "websocket" && headers.contains_key(header::SEC_WEBSOCKET_KEY))
            });
            if let Some(protocol) = protocol.filter(|_| accepted) {
                let upgrade = hyper::upgrade::on(&mut request);
                tokio::spawn(async move {
                    if let Ok(upgraded) = upgrade.await {
                        let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
                        let _ = tokio::io::copy(&mut read, &mut write).await;
                    }
                });
                *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                let headers = response.headers_mut();
                headers.insert(header::UPGRADE, protocol);
                headers.insert(header::CONNECTION, "upgrade".parse().unwrap());
                headers.insert(header::SEC_WEBSOCKET_ACCEPT, "x".parse().unwrap());
            }
            response
        },
    ));
    addr
}

#[tokio::test]
async fn an_upgraded_connection_is_tunnelled_to_its_member() {
    let backend = upgrade_backend().await;
    let gateway = http_gateway(static_pool(&[backend], http_probe())).await;
    let addr = gateway.local_addrs()[0];
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /chat HTTP/1.1\r\nhost: a\r\nconnection: Upgrade\r\nupgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut reader = BufReader::new(client);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo"),
        "{head}"
    );
    // The tunnel carries bytes both ways, and the member counts it as an
    // open session while it lasts.
    let mut client = reader.into_inner();
    for word in ["hello", "tunnel"] {
        client.write_all(word.as_bytes()).await.unwrap();
        let mut echoed = vec![0u8; word.len()];
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, word.as_bytes());
    }
    let pool = &gateway.pools()[0];
    assert_eq!(pool.status()[0].active, 1);
    drop(client);
    eventually("the tunnel closes", || pool.status()[0].active == 0).await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_websocket_over_http2_is_tunnelled_to_an_http1_member() {
    let backend = upgrade_backend().await;
    let gateway = http_gateway(static_pool(&[backend], http_probe())).await;
    let addr = gateway.local_addrs()[0];
    let (mut sender, _connection) = h2_connect(addr).await;
    settle_h2(&mut sender, addr).await;
    // A CONNECT without a protocol asks for a forward proxy's tunnel.
    let plain_connect = Request::builder()
        .method(http::Method::CONNECT)
        .version(http::Version::HTTP_2)
        .uri(format!("{addr}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(plain_connect).await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let mut tunnel = h2_websocket(&mut sender, addr).await;
    for word in ["hello", "over h2"] {
        tunnel.write_all(word.as_bytes()).await.unwrap();
        let mut echoed = vec![0u8; word.len()];
        tunnel.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, word.as_bytes());
    }
    assert_eq!(gateway.pools()[0].status()[0].active, 1);
    drop(tunnel);
    eventually("the tunnel closes", || {
        gateway.pools()[0].status()[0].active == 0
    })
    .await;
    gateway.shutdown().await;
}

/// One plain request over the HTTP/2 connection of `sender`, answered,
/// so that the gateway's settings (extended CONNECT allowed) have
/// arrived.
async fn settle_h2(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
) {
    let request = Request::get(format!("http://{addr}/"))
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// Opens a WebSocket over the HTTP/2 connection of `sender` (extended
/// CONNECT to `/chat`), checks the client's answer (200 without the
/// member's upgrade headers), and returns the tunnel.
async fn h2_websocket(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
) -> TokioIo<hyper::upgrade::Upgraded> {
    let mut request = Request::builder()
        .method(http::Method::CONNECT)
        .version(http::Version::HTTP_2)
        .uri(format!("http://{addr}/chat"))
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .body(Empty::<Bytes>::new())
        .unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut response = sender.send_request(request).await.unwrap();
    // The member saw an HTTP/1.1 upgrade with a key (it refuses one
    // without); the client sees the HTTP/2 answer, 200 without upgrade
    // headers.
    assert_eq!(response.status(), StatusCode::OK);
    for name in [
        header::UPGRADE,
        header::CONNECTION,
        header::SEC_WEBSOCKET_ACCEPT,
    ] {
        assert!(!response.headers().contains_key(&name), "{name}");
    }
    TokioIo::new(hyper::upgrade::on(&mut response).await.unwrap())
}

#[tokio::test]
async fn an_idle_websocket_over_http2_keeps_its_connection_past_the_header_timeout() {
    let limit = Duration::from_millis(300);
    let backend = upgrade_backend().await;
    let mut config = GatewayConfig::new(
        vec![listener(Protocol::Http)],
        vec![static_pool(&[backend], http_probe())],
    );
    config.probe_interval = Duration::from_millis(100);
    config.limits.header_read_timeout = limit;
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.local_addrs()[0];
    let (mut sender, connection) = h2_connect(addr).await;
    settle_h2(&mut sender, addr).await;
    let mut tunnel = h2_websocket(&mut sender, addr).await;
    // The tunnel is the connection's only open stream; it carries nothing
    // for more than three times the limit and is still there after.
    sleep(limit * 3 + Duration::from_millis(100)).await;
    assert!(!connection.is_finished(), "open while its tunnel is");
    tunnel.write_all(b"still here").await.unwrap();
    let mut echoed = [0u8; 10];
    timeout(Duration::from_secs(3), tunnel.read_exact(&mut echoed))
        .await
        .expect("the tunnel answers")
        .unwrap();
    assert_eq!(&echoed, b"still here");
    // Once the tunnel has ended, the connection is idle and is closed.
    drop(tunnel);
    timeout(Duration::from_secs(3), connection)
        .await
        .expect("the idle connection is closed")
        .unwrap()
        .unwrap();
    gateway.shutdown().await;
}

/// The TLS test material of `hapool-net`: a server certificate for
/// 127.0.0.1 and its authority.
fn net_pki(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../hapool-net/tests/pki")
        .join(name)
}

/// A backend on a fresh port that accepts TLS (certificate for 127.0.0.1)
/// and hands each connection, once its handshake is done, to `serve`.
async fn tls_backend<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(tokio_rustls::server::TlsStream<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config =
        hapool_net::tls::server_config(&net_pki("server.pem"), &net_pki("server.key"), None)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, serve) = (acceptor.clone(), serve.clone());
            tokio::spawn(async move {
                if let Ok(stream) = acceptor.accept(stream).await {
                    serve(stream).await;
                }
            });
        }
    });
    addr
}

/// An HTTPS backend named `name` answering `<name> <scheme seen by the
/// gateway>`.
async fn https_backend(name: &'static str) -> SocketAddr {
    tls_backend(move |stream| async move {
        let service = service_fn(move |request: Request<Incoming>| async move {
            let proto = request
                .headers()
                .get("x-forwarded-proto")
                .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                "{name} {proto}"
            )))))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    })
    .await
}

/// A TCP backend over TLS that answers each line with `<name> <line>`.
async fn tls_echo_backend(name: &'static str) -> SocketAddr {
    tls_backend(move |stream| echo_lines(stream, name)).await
}

/// An HTTPS server at `address` (certificate for 127.0.0.1–3 from
/// `members-ca.pem`) answering `<name> https`; dropping the handle stops
/// it.
async fn https_port(name: &'static str, listener: TcpListener) -> JoinHandle<()> {
    let config =
        hapool_net::tls::server_config(&pki("members.pem"), &pki("members.key"), None).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            connections.spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(move |_: Request<Incoming>| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                        "{name} https"
                    )))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

#[tokio::test]
async fn clients_over_tls_go_to_the_members_https_port_probed_on_its_own() {
    // Two members, at 127.0.0.1 and 127.0.0.2, each with an HTTP port of
    // its own and HTTPS on one port number at both addresses.
    let (mut first, mut second) = (None, None);
    for _ in 0..20 {
        let one = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = one.local_addr().unwrap().port();
        if let Ok(two) = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 2), port)).await {
            (first, second) = (Some(one), Some(two));
            break;
        }
    }
    let (first, second) = (first.unwrap(), second.unwrap());
    let port = first.local_addr().unwrap().port();
    let a_https = https_port("a", first).await;
    let _b_https = https_port("b", second).await;
    let a = http_backend("a").await.0;
    let b_listener = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 2), 0))
        .await
        .unwrap();
    let b = b_listener.local_addr().unwrap();
    tokio::spawn(serve_backend(b_listener, "b"));
    let pool = PoolSettings {
        https_port: Some(port),
        strategy: Some(Strategy::RoundRobin),
        probe_rise: 1,
        probe_fall: 1,
        ..static_pool(&[a, b], http_probe())
    };
    let plain = ListenerConfig {
        affinity: Affinity::None,
        ..listener(Protocol::Http)
    };
    let over_tls = ListenerConfig {
        tls: Some(server_config(vec![certificate("alpha")], &[b"http/1.1"]).unwrap()),
        ..plain.clone()
    };
    let mut config = GatewayConfig::new(vec![plain, over_tls], vec![pool.clone()]);
    config.probe_interval = Duration::from_millis(50);
    // Without trust for the members' certificates: refused.
    let refused = Gateway::start(config.clone())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(refused.contains("over TLS"), "{refused}");
    config.member_tls = Some(hapool_net::tls::client_config(&pki("members-ca.pem"), None).unwrap());
    let config_with_trust = config.clone();
    let gateway = Gateway::start(config).await.unwrap();
    let [http_at, https_at] = [gateway.local_addrs()[0], gateway.local_addrs()[1]];
    let status = gateway.pools()[0].status();
    for member in &status {
        assert_eq!(member.availability, Availability::Available, "{status:?}");
        assert_eq!(
            member.availability_https,
            Some(Availability::Available),
            "{status:?}"
        );
    }
    let answers = |over_tls: bool| async move {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..6 {
            let body = if over_tls {
                tls_get(https_at, "alpha.example").await.1
            } else {
                get(&client(), http_at, "/", None).await.1
            };
            seen.insert(body.split(' ').take(2).collect::<Vec<_>>().join(" "));
        }
        seen.into_iter().collect::<Vec<_>>()
    };
    // Each client's scheme to the members' port of that scheme.
    assert_eq!(answers(false).await, ["a -", "b -"]);
    assert_eq!(answers(true).await, ["a https", "b https"]);
    // a's HTTPS port goes away: its probes take that port out, and HTTPS
    // clients go to b alone, while HTTP clients still reach both.
    a_https.abort();
    let _ = a_https.await;
    eventually("a's HTTPS port is found gone", || {
        gateway.pools()[0].status()[0].availability_https == Some(Availability::Unreachable)
    })
    .await;
    assert_eq!(
        gateway.pools()[0].status()[0].availability,
        Availability::Available
    );
    assert_eq!(answers(true).await, ["b https"]);
    assert_eq!(answers(false).await, ["a -", "b -"]);
    // Another HTTPS port takes a restart.
    let mut moved = config_with_trust;
    moved.pools[0].https_port = Some(port.wrapping_add(1));
    let done = gateway.view().reload(moved).await.unwrap();
    assert_eq!(
        done.needs_restart[0], "pool web: its members' HTTPS port",
        "{done:?}"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn tcp_members_are_reached_over_tls_when_the_pool_says_so() {
    let backend = tls_echo_backend("secure").await;
    let pool = PoolSettings {
        tls: true,
        ..static_pool(&[backend], ProbeKind::Tcp)
    };
    let mut config = GatewayConfig::new(vec![listener(Protocol::Tcp)], vec![pool.clone()]);
    config.probe_interval = Duration::from_millis(100);
    config.member_tls = Some(hapool_net::tls::client_config(&net_pki("ca.pem"), None).unwrap());
    let gateway = Gateway::start(config).await.unwrap();
    assert_eq!(
        tcp_exchange(gateway.local_addrs()[0], "over tls").await,
        "secure over tls"
    );
    let status = &gateway.pools()[0].status()[0];
    assert_eq!(status.availability, Availability::Available, "{status:?}");
    assert_eq!(status.chosen, 1, "{status:?}");
    gateway.shutdown().await;
    // A member whose certificate the gateway does not trust is not used:
    // the probe's handshake fails, and so does the connection.
    let mut config = GatewayConfig::new(vec![listener(Protocol::Tcp)], vec![pool]);
    config.probe_interval = Duration::from_millis(100);
    config.member_tls = Some(hapool_net::tls::client_config(&pki("ca.pem"), None).unwrap());
    let untrusted = Gateway::start(config).await.unwrap();
    let mut refused = TcpStream::connect(untrusted.local_addrs()[0])
        .await
        .unwrap();
    let _ = refused.write_all(b"x\n").await;
    let mut answer = Vec::new();
    let _ = refused.read_to_end(&mut answer).await;
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    eventually(
        "a member with an untrusted certificate is unreachable",
        || untrusted.pools()[0].status()[0].availability == Availability::Unreachable,
    )
    .await;
    untrusted.shutdown().await;
}

#[tokio::test]
async fn members_are_reached_over_tls_when_the_pool_says_so() {
    let backend = https_backend("secure").await;
    let pool = PoolSettings {
        tls: true,
        ..static_pool(&[backend], http_probe())
    };
    // Without an authority for the members' certificates: refused.
    let config = GatewayConfig::new(vec![listener(Protocol::Http)], vec![pool.clone()]);
    let error = Gateway::start(config).await.err().expect("refused");
    assert!(error.to_string().contains("over TLS"), "{error}");
    let mut config = GatewayConfig::new(vec![listener(Protocol::Http)], vec![pool]);
    config.probe_interval = Duration::from_millis(100);
    config.member_tls = Some(hapool_net::tls::client_config(&net_pki("ca.pem"), None).unwrap());
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.local_addrs()[0];
    // The probe passed over HTTPS, and requests go over it.
    let (status, body, _) = get(&client(), addr, "/", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "secure http");
    assert_eq!(gateway.pools()[0].status()[0].served, 1);
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_reload_takes_new_trust_for_members_over_tls() {
    let web = https_backend("secure").await;
    let echo = tls_echo_backend("echo").await;
    let over_tls = |name: &str, member, probe| PoolSettings {
        handle: PoolHandle::from(name),
        tls: true,
        probe_fall: 1,
        probe_rise: 1,
        ..static_pool(&[member], probe)
    };
    let on = |protocol, name: &str| ListenerConfig {
        pool: PoolHandle::from(name),
        ..listener(protocol)
    };
    let trusting = |ca: std::path::PathBuf| {
        let mut config = GatewayConfig::new(
            vec![on(Protocol::Http, "web"), on(Protocol::Tcp, "echo")],
            vec![
                over_tls("web", web, http_probe()),
                over_tls("echo", echo, ProbeKind::Tcp),
            ],
        );
        config.probe_interval = Duration::from_millis(50);
        config.member_tls = Some(hapool_net::tls::client_config(&ca, None).unwrap());
        config
    };
    // An authority that did not sign the members' certificates: both are
    // unreachable, and nothing is served.
    let gateway = Gateway::start(trusting(pki("ca.pem"))).await.unwrap();
    let view = gateway.view();
    let [http_at, tcp_at] = [gateway.local_addrs()[0], gateway.local_addrs()[1]];
    let reachable = |pool: usize| gateway.pools()[pool].status()[0].availability;
    assert_eq!(reachable(0), Availability::Unreachable);
    assert_eq!(reachable(1), Availability::Unreachable);
    let (status, _, _) = get(&client(), http_at, "/", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The one that did, by a reload: probes pass, and both are served.
    let done = view.reload(trusting(net_pki("ca.pem"))).await.unwrap();
    assert_eq!(
        done.applied,
        ["member trust: loaded (connections to members made from now on)"]
    );
    assert!(done.needs_restart.is_empty(), "{done:?}");
    eventually("both members trusted", || {
        reachable(0) == Availability::Available && reachable(1) == Availability::Available
    })
    .await;
    let (status, body, _) = get(&client(), http_at, "/", None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "secure http"));
    assert_eq!(tcp_exchange(tcp_at, "over tls").await, "echo over tls");
    // And back: new connections fail their handshakes again.
    view.reload(trusting(pki("ca.pem"))).await.unwrap();
    eventually("both members untrusted again", || {
        reachable(0) == Availability::Unreachable && reachable(1) == Availability::Unreachable
    })
    .await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn the_access_log_has_a_line_per_request_and_per_connection() {
    let (web, _task) = http_backend("a").await;
    let echo = echo_backend("e").await;
    let spare = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let dead = spare.local_addr().unwrap();
    drop(spare);
    let pool = |name: &str, members: &[SocketAddr], probe| PoolSettings {
        handle: PoolHandle::from(name),
        ..static_pool(members, probe)
    };
    let on = |protocol, name: &str| ListenerConfig {
        pool: PoolHandle::from(name),
        ..listener(protocol)
    };
    let (dir, path) = access_log_dir("access-test");
    let mut config = GatewayConfig::new(
        vec![
            on(Protocol::Http, "web"),
            on(Protocol::Http, "gone"),
            on(Protocol::Tcp, "echo"),
        ],
        vec![
            pool("web", &[web], http_probe()),
            pool("gone", &[dead], http_probe()),
            pool("echo", &[echo], ProbeKind::Tcp),
        ],
    );
    config.access_log = Some(path.clone());
    let gateway = Gateway::start(config).await.unwrap();
    let addrs = gateway.local_addrs();
    let (status, body, _) = get(&client(), addrs[0], "/page?q=1", None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "a -"));
    let (status, _, _) = get(&client(), addrs[1], "/", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(tcp_exchange(addrs[2], "hello").await, "e hello");
    // The TCP line is written when the connection has closed both ways.
    eventually("the TCP connection logged", || {
        std::fs::read_to_string(&path).is_ok_and(|t| t.contains("kind=tcp"))
    })
    .await;
    gateway.shutdown().await;
    let text = std::fs::read_to_string(&path).unwrap();
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}"))
            .to_owned()
    };
    let served = line("pool=web");
    for field in [
        "kind=http",
        "client=127.0.0.1",
        "request=\"GET /page?q=1 HTTP/1.1\"",
        "status=200",
        "member=00000001",
        &format!("member_address={web}"),
        "attempts=1",
        "length=3",
        "head_ms=",
    ] {
        assert!(served.contains(field), "{field:?} not in {served}");
    }
    let refused = line("pool=gone");
    for field in ["status=503", "member=- member_address=-", "attempts=0"] {
        assert!(refused.contains(field), "{field:?} not in {refused}");
    }
    let carried = line("kind=tcp");
    for field in [
        "pool=echo",
        &format!("member_address={echo}"),
        "sent=6",
        "received=8",
        "duration_ms=",
    ] {
        assert!(carried.contains(field), "{field:?} not in {carried}");
    }
    assert!(text.lines().all(|l| l.starts_with("time=")), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_request_its_client_gives_up_on_has_its_line_in_the_access_log() {
    let backend = paced_backend("a").await;
    let (dir, path) = access_log_dir("abandon-test");
    let mut config = GatewayConfig::new(
        vec![listener(Protocol::Http)],
        vec![static_pool(&[backend], http_probe())],
    );
    config.access_log = Some(path.clone());
    let gateway = Gateway::start(config).await.unwrap();
    let (mut sender, _connection) = h2_connect(gateway.local_addrs()[0]).await;
    // The member takes a second; the client resets its stream (drops the
    // request) after a fifth of that.
    let request = Request::get("http://example.test/long")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let given_up = timeout(Duration::from_millis(200), sender.send_request(request)).await;
    assert!(given_up.is_err(), "answered before the member could");
    eventually("the request given up logged", || {
        std::fs::read_to_string(&path).is_ok_and(|t| t.contains("/long"))
    })
    .await;
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text.lines().find(|l| l.contains("/long")).unwrap();
    for field in [
        "request=\"GET /long HTTP/2.0\"",
        "status=-",
        "member=- member_address=-",
        "length=-",
    ] {
        assert!(line.contains(field), "{field:?} not in {line}");
    }
    let waited: f64 = line.rsplit_once("head_ms=").unwrap().1.parse().unwrap();
    assert!((150.0..1000.0).contains(&waited), "{line}");
    // Its member's session ended with it, counted as neither served nor
    // failed: the member did not answer it.
    eventually("the member's session ended", || {
        gateway.pools()[0].status()[0].active == 0
    })
    .await;
    let member = &gateway.pools()[0].status()[0];
    assert_eq!((member.served, member.failed), (0, 0));
    // A request answered counts.
    let request = Request::get("http://example.test/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let answer = sender.send_request(request).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    answer.into_body().collect().await.unwrap();
    eventually("the answered request counted", || {
        gateway.pools()[0].status()[0].served == 1
    })
    .await;
    gateway.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_access_log_that_cannot_be_opened_stops_the_start() {
    let (web, _task) = http_backend("a").await;
    let mut config = GatewayConfig::new(
        vec![listener(Protocol::Http)],
        vec![static_pool(&[web], http_probe())],
    );
    let path = std::env::temp_dir()
        .join(format!("hapool-no-such-dir-{}", std::process::id()))
        .join("access.log");
    config.access_log = Some(path.clone());
    let error = Gateway::start(config).await.err().expect("the start fails");
    let message = error.to_string();
    assert!(
        message.contains("access log") && message.contains(&path.display().to_string()),
        "{message}"
    );
}

#[tokio::test]
async fn a_reload_starts_moves_and_stops_the_access_log() {
    let (web, _task) = http_backend("a").await;
    let dir = std::env::temp_dir().join(format!("hapool-access-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (first, second) = (dir.join("first.log"), dir.join("second.log"));
    let with_log = |path: Option<&std::path::Path>| {
        let mut config = GatewayConfig::new(
            vec![listener(Protocol::Http)],
            vec![static_pool(&[web], http_probe())],
        );
        config.access_log = path.map(std::path::Path::to_owned);
        config
    };
    let gateway = Gateway::start(with_log(None)).await.unwrap();
    let view = gateway.view();
    let addr = gateway.local_addrs()[0];
    let client = client();
    // Each request names its step; the lines of a file, once written.
    let request = |step: &'static str| {
        let client = client.clone();
        async move {
            let (status, _, _) = get(&client, addr, &format!("/{step}"), None).await;
            assert_eq!(status, StatusCode::OK);
        }
    };
    let lines = |path: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    request("unlogged").await;
    let done = view.reload(with_log(Some(&first))).await.unwrap();
    assert_eq!(
        done.applied,
        [format!(
            "access_log: {} (from the next request)",
            first.display()
        )]
    );
    assert!(done.needs_restart.is_empty(), "{done:?}");
    request("to-first").await;
    eventually("the first file's line", || lines(&first).len() == 1).await;
    // The same file again changes nothing.
    let done = view.reload(with_log(Some(&first))).await.unwrap();
    assert!(done.applied.is_empty(), "{done:?}");
    let done = view.reload(with_log(Some(&second))).await.unwrap();
    assert_eq!(
        done.applied,
        [format!(
            "access_log: {} (from the next request)",
            second.display()
        )]
    );
    request("to-second").await;
    eventually("the second file's line", || lines(&second).len() == 1).await;
    // A file that cannot be opened changes nothing, and is named.
    let nowhere = dir.join("no-such-dir").join("access.log");
    let refused = view.reload(with_log(Some(&nowhere))).await.unwrap_err();
    assert!(
        refused.to_string().contains(&nowhere.display().to_string()),
        "{refused}"
    );
    request("still-second").await;
    eventually("the second file's next line", || lines(&second).len() == 2).await;
    let done = view.reload(with_log(None)).await.unwrap();
    assert_eq!(done.applied, ["access_log: off"]);
    request("unlogged-again").await;
    gateway.shutdown().await;
    let (first, second) = (lines(&first), lines(&second));
    assert!(
        first[0].contains("request=\"GET /to-first HTTP/1.1\""),
        "{first:?}"
    );
    assert!(second[0].contains("GET /to-second "), "{second:?}");
    assert!(second[1].contains("GET /still-second "), "{second:?}");
    assert_eq!((first.len(), second.len()), (1, 2), "nothing more logged");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ----------------------------------------------------------------- reload

/// A gateway's configuration: one HTTP listener in front of a static
/// pool of `members`.
fn http_config(members: &[SocketAddr]) -> GatewayConfig {
    let mut config = GatewayConfig::new(
        vec![listener(Protocol::Http)],
        vec![static_pool(members, http_probe())],
    );
    config.probe_interval = Duration::from_millis(100);
    config
}

/// `http_config` without hedges, for a test of which member is chosen: a
/// new member's first answer, slow on a loaded machine (a new connection),
/// would send the GET to the other member too, and its answer could come
/// first.
fn unhedged_config(members: &[SocketAddr]) -> GatewayConfig {
    let mut config = http_config(members);
    config.pools[0].hedge_percent = 0;
    config
}

#[tokio::test]
async fn a_reload_adds_members_drains_those_left_out_and_takes_new_settings() {
    let backends = http_backends(&["a", "b"]).await;
    let gateway = Gateway::start(unhedged_config(&backends[..1]))
        .await
        .unwrap();
    let view = gateway.view();
    let addr = gateway.local_addrs()[0];
    let client = client();
    assert_spread(&client, addr, 1).await;
    // b joins: probed before the reload returns, and chosen at once.
    let done = view.reload(unhedged_config(&backends)).await.unwrap();
    assert_eq!(
        done.applied,
        ["pool web: members (1 new member(s), 1 answering)"]
    );
    assert!(done.needs_restart.is_empty(), "{done:?}");
    // The least used, b has the next new sessions.
    let (_, body, _) = get(&client, addr, "/", None).await;
    assert_eq!(served_by(&body), "b");
    let pool = gateway.pool(&pool_handle()).unwrap();
    assert_eq!(pool.member(PoolElementId(2)).unwrap().address, backends[1]);
    // A session on a; then a is left out: its session finishes there, new
    // ones go to b, and a is marked to leave once drained.
    let (_, body, cookie) = get(&client, addr, "/login", None).await;
    let cookie = cookie.unwrap();
    let home = served_by(&body).to_owned();
    let (stays, leaves) = if home == "a" { (1, 0) } else { (0, 1) };
    let leaving = PoolElementId(leaves as u32 + 1);
    view.reload(unhedged_config(&backends[stays..=stays]))
        .await
        .unwrap();
    assert_eq!(
        pool.member(leaving).unwrap().admin(),
        AdminState::PendingDelete
    );
    for _ in 0..5 {
        let (_, body, _) = get(&client, addr, "/", Some(&cookie)).await;
        assert_eq!(served_by(&body), home, "the open session finishes");
        let (_, body, _) = get(&client, addr, "/", None).await;
        assert_ne!(served_by(&body), home, "no new session for a left member");
    }
    // Listed again before it drained: it is back, with its identifier.
    view.reload(unhedged_config(&backends)).await.unwrap();
    assert_eq!(pool.member(leaving).unwrap().admin(), AdminState::Active);
    let mut back = false;
    for _ in 0..10 {
        let (_, body, _) = get(&client, addr, "/", None).await;
        back |= served_by(&body) == home;
    }
    assert!(back, "new sessions reach the member listed again");
    // Left out again, and drained: it leaves the pool.
    view.reload(unhedged_config(&backends[stays..=stays]))
        .await
        .unwrap();
    pool.sessions
        .sweep(Instant::now() + Duration::from_secs(3600));
    assert_eq!(pool.remove_drained(), vec![leaving]);
    assert_eq!(pool.members().len(), 1);
    // Thresholds and the rest take effect from the next choice.
    let mut config = unhedged_config(&backends[stays..=stays]);
    config.pools[0].max_sessions = Some(7);
    config.pools[0].availability_threshold = 30;
    let done = view.reload(config).await.unwrap();
    assert_eq!(
        done.applied,
        ["pool web: availability_threshold, max_sessions"]
    );
    assert_eq!(pool.settings().max_sessions, Some(7));
    assert_eq!(
        view.reload(unhedged_config(&backends[stays..=stays]))
            .await
            .unwrap()
            .applied
            .len(),
        1
    );
    let unchanged = view
        .reload(unhedged_config(&backends[stays..=stays]))
        .await
        .unwrap();
    assert!(
        unchanged.applied.is_empty() && unchanged.needs_restart.is_empty(),
        "{unchanged:?}"
    );
    gateway.shutdown().await;
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_reload_opens_replaces_and_closes_listeners_and_pools() {
    let backends = http_backends(&["a", "b"]).await;
    let gateway = Gateway::start(http_config(&backends[..1])).await.unwrap();
    let view = gateway.view();
    let first = gateway.local_addrs()[0];
    let client = client();
    // A request under way on the first listener when it is replaced.
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { get(&client, first, "/slow", None).await })
    };
    sleep(Duration::from_millis(100)).await;
    // The first listener changes (replaced at its address), a second one
    // serves a new pool, a limit changes, and two settings take a restart.
    let second: SocketAddr = (Ipv4Addr::LOCALHOST, free_port()).into();
    let mut config = http_config(&backends[..1]);
    config.listeners[0].max_connections = 5;
    config.listeners.push(ListenerConfig {
        address: second,
        pool: PoolHandle::from("other"),
        ..listener(Protocol::Http)
    });
    let mut other = static_pool(&backends[1..], http_probe());
    other.handle = PoolHandle::from("other");
    config.pools.push(other.clone());
    config.limits.retries = 1;
    let cache = std::env::temp_dir().join("hapool-reload-test-cache");
    config.member_cache = Some(cache.clone());
    config.workers += 1;
    config.pin_workers = !config.pin_workers;
    let done = view.reload(config.clone()).await.unwrap();
    assert_eq!(
        done.applied,
        [
            format!(
                "member_cache: {} (written with the registrars' next answers)",
                cache.display()
            ),
            "limits: retries (connections accepted from now on; member connect and idle timeouts at once)".to_owned(),
            "pool other: added (1 member(s), 1 answering)".to_owned(),
            format!(
                "listener {first}: max_connections changed (new connections; open ones go on as they were)"
            ),
            format!("listener {second}: opened"),
        ]
    );
    assert_eq!(
        done.needs_restart,
        ["threads changed", "pin_workers changed"]
    );
    assert_eq!(gateway.local_addrs(), [first, second]);
    let (status, body, _) = slow.await.unwrap();
    assert_eq!(
        (status, served_by(&body)),
        (StatusCode::OK, "a"),
        "the request under way on the old listener finished"
    );
    for _ in 0..3 {
        assert_eq!(served_by(&get(&client, first, "/", None).await.1), "a");
        assert_eq!(served_by(&get(&client, second, "/", None).await.1), "b");
    }
    let status = view.status();
    assert_eq!(status.listeners.len(), 2);
    assert_eq!(status.pools.len(), 2);
    // Configurations the gateway could not start with, and a listener
    // that cannot be bound, change nothing.
    let mut bad = config.clone();
    bad.listeners[0].pool = PoolHandle::from("nope");
    let error = view.reload(bad).await.unwrap_err().to_string();
    assert!(error.contains("\"nope\""), "{error}");
    let mut bad = config.clone();
    bad.pools[0] = static_pool(&[backends[0], backends[0]], http_probe());
    let error = view.reload(bad).await.unwrap_err().to_string();
    assert_eq!(
        error,
        format!("pool \"web\" lists the member {} twice", backends[0])
    );
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let mut bad = config.clone();
    let mut third = other.clone();
    third.handle = PoolHandle::from("third");
    bad.pools.push(third);
    bad.listeners.push(ListenerConfig {
        address: taken.local_addr().unwrap(),
        pool: PoolHandle::from("third"),
        ..listener(Protocol::Http)
    });
    let error = view.reload(bad).await.unwrap_err().to_string();
    assert!(error.starts_with("cannot listen on"), "{error}");
    assert!(gateway.pool(&PoolHandle::from("third")).is_none());
    assert_eq!(gateway.local_addrs(), [first, second]);
    // The first listener and its pool go: the second serves on.
    let mut config = config.clone();
    config.listeners.remove(0);
    config.pools.remove(0);
    let done = view.reload(config).await.unwrap();
    assert_eq!(
        done.applied,
        [
            format!("listener {first}: closed; its open connections finish"),
            "pool web: removed".to_owned(),
        ]
    );
    assert_eq!(gateway.local_addrs(), [second]);
    assert!(gateway.pool(&pool_handle()).is_none());
    let started = Instant::now();
    while TcpStream::connect(first).await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{first} still accepts"
        );
        sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(served_by(&get(&client, second, "/", None).await.1), "b");
    gateway.shutdown().await;
}

/// Sends a GET of `/` with a `filler` header of `filler` bytes on
/// `stream`, and reads the answer's status line (and the rest of a short
/// answer).
async fn get_with_filler(stream: &mut TcpStream, filler: usize) -> String {
    let filler = "x".repeat(filler);
    stream
        .write_all(format!("GET / HTTP/1.1\r\nhost: a\r\nx-filler: {filler}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0_u8; 4096];
    let n = stream.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    answer.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_reload_serves_connections_accepted_after_it_with_new_limits() {
    let (member, _task) = http_backend("a").await;
    let config = GatewayConfig::new(
        vec![listener(Protocol::Http)],
        vec![static_pool(&[member], http_probe())],
    );
    let gateway = Gateway::start(config.clone()).await.unwrap();
    let view = gateway.view();
    let addr = gateway.local_addrs()[0];
    // Connections opened before the reload, each used once.
    let before = client();
    assert_eq!(get(&before, addr, "/", None).await.0, StatusCode::OK);
    let mut raw_before = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        get_with_filler(&mut raw_before, 10).await,
        "HTTP/1.1 200 OK"
    );
    // Tighter limits: the member's 300 ms for `/slow` is too long, and a
    // 10 KB head too large.
    let mut tight = config.clone();
    tight.limits.request_timeout = Duration::from_millis(100);
    tight.limits.max_header_bytes = 8192;
    let done = view.reload(tight.clone()).await.unwrap();
    assert_eq!(
        done.applied,
        [
            "limits: request_timeout, max_header_bytes (connections accepted from now on; member connect and idle timeouts at once)"
        ]
    );
    assert!(done.needs_restart.is_empty(), "{done:?}");
    // New connections are served with them.
    let after = client();
    assert_eq!(
        get(&after, addr, "/slow", None).await.0,
        StatusCode::GATEWAY_TIMEOUT
    );
    let mut raw_after = TcpStream::connect(addr).await.unwrap();
    assert!(
        get_with_filler(&mut raw_after, 10_000)
            .await
            .starts_with("HTTP/1.1 431"),
        "a head over the new limit"
    );
    // Open ones keep what they were served with.
    let (status, body, _) = get(&before, addr, "/slow", None).await;
    assert_eq!((status, served_by(&body)), (StatusCode::OK, "a"));
    assert_eq!(
        get_with_filler(&mut raw_before, 10_000).await,
        "HTTP/1.1 200 OK"
    );
    // The same file again changes nothing; the old limits come back for
    // the next connections.
    let same = view.reload(tight).await.unwrap();
    assert!(
        same.applied.is_empty() && same.needs_restart.is_empty(),
        "{same:?}"
    );
    view.reload(config).await.unwrap();
    let (status, body, _) = get(&client(), addr, "/slow", None).await;
    assert_eq!((status, served_by(&body)), (StatusCode::OK, "a"));
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_reload_changes_how_often_members_are_probed_and_how_long_sessions_last() {
    // The member answers HTTP and counts the connections made to it (the
    // probes' among them).
    let (member, _task) = http_backend("a").await;
    let counted = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let counted_at = counted.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    tokio::spawn({
        let connections = connections.clone();
        async move {
            while let Ok((stream, _)) = counted.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        }
    });
    let mut other = static_pool(&[counted_at], ProbeKind::Tcp);
    other.handle = PoolHandle::from("counted");
    let mut config = GatewayConfig::new(
        vec![listener(Protocol::Http)],
        vec![static_pool(&[member], http_probe()), other],
    );
    config.probe_interval = Duration::from_secs(3600);
    let gateway = Gateway::start(config.clone()).await.unwrap();
    let view = gateway.view();
    let addr = gateway.local_addrs()[0];
    // A session, kept for the 30 minutes by default.
    let (status, _, cookie) = get(&client(), addr, "/login", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(cookie.is_some());
    let sessions = || view.status().pools[0].sessions;
    assert_eq!(sessions(), 1);
    // Probed once at the start, then not for an hour.
    sleep(Duration::from_millis(300)).await;
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    config.probe_interval = Duration::from_millis(50);
    config.session_idle = Duration::from_millis(100);
    let done = view.reload(config.clone()).await.unwrap();
    assert_eq!(
        done.applied,
        ["upkeep: probe_interval, session_idle (from the next round; session bounds at once)"]
    );
    assert!(done.needs_restart.is_empty(), "{done:?}");
    // The prober waiting out its hour takes the new interval at once, and
    // the session, idle for longer than the new time, is swept.
    eventually("probed every 50 ms", || {
        connections.load(Ordering::SeqCst) >= 5
    })
    .await;
    eventually("the idle session forgotten", || sessions() == 0).await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_reload_gives_a_tls_listener_new_certificates_and_sessions_still_resume() {
    let backends = http_backends(&["a", "b", "c"]).await;
    let tls_config = |certificates| {
        let mut config = http_config(&backends);
        config.listeners[0].tls = Some(server_config(certificates, &[b"http/1.1"]).unwrap());
        config.listeners[0].affinity = Affinity::TlsSession;
        config
    };
    let gateway = Gateway::start(tls_config(vec![certificate("alpha")]))
        .await
        .unwrap();
    let addr = gateway.local_addrs()[0];
    let refused = tls_client()
        .connect(
            rustls::pki_types::ServerName::try_from("beta.example").unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        )
        .await;
    assert!(refused.is_err(), "no certificate for beta.example yet");
    let returning = tls_client();
    let (home, _, _) = tls_request(addr, &returning, "/login").await;
    let done = gateway
        .view()
        .reload(tls_config(vec![certificate("beta"), certificate("alpha")]))
        .await
        .unwrap();
    assert_eq!(
        done.applied,
        [format!("listener {addr}: certificates loaded")]
    );
    assert_eq!(tls_get(addr, "beta.example").await.0, "CN=beta.example");
    assert_eq!(tls_get(addr, "alpha.example").await.0, "CN=alpha.example");
    for round in 0..3 {
        let (member, resumed, _) = tls_request(addr, &returning, "/").await;
        assert!(resumed, "round {round}: the session did not resume");
        assert_eq!(member, home, "round {round}: the session moved");
    }
    gateway.shutdown().await;
}

const KEY_1: &str = "5f0c6b1e2d3a4958677685a4b3c2d1e0f00112233445566778899aabbccddeef";
const KEY_2: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

fn ticket_keys(lines: &[&str]) -> TicketKeys {
    TicketKeys::parse(&lines.join("\n"), Duration::from_secs(3600)).unwrap()
}

/// A gateway in front of `backends` with a TLS listener keeping sessions
/// by TLS session, sealing tickets with `keys` (its own when `None`).
fn tls_session_config(backends: &[SocketAddr], keys: Option<TicketKeys>) -> GatewayConfig {
    let mut config = http_config(backends);
    config.listeners[0].tls =
        Some(server_config(vec![certificate("alpha")], &[b"http/1.1"]).unwrap());
    config.listeners[0].affinity = Affinity::TlsSession;
    config.ticket_keys = keys;
    config
}

async fn tls_gateway(backends: &[SocketAddr], keys: Option<TicketKeys>) -> Gateway {
    Gateway::start(tls_session_config(backends, keys))
        .await
        .unwrap()
}

#[tokio::test]
async fn gateways_sharing_ticket_keys_resume_each_others_tls_sessions() {
    let backends = http_backends(&["a", "b", "c"]).await;
    let first = tls_gateway(&backends, Some(ticket_keys(&[KEY_1]))).await;
    // A successor, or the gateway the virtual address moves to.
    let second = tls_gateway(&backends, Some(ticket_keys(&[KEY_1]))).await;
    let stranger = tls_gateway(&backends, None).await;
    let [first_at, second_at, stranger_at] =
        [&first, &second, &stranger].map(|g| g.local_addrs()[0]);
    for round in 0..3 {
        let client = tls_client();
        let (_, resumed, _) = tls_request(first_at, &client, "/login").await;
        assert!(!resumed, "round {round}: nothing to resume yet");
        let (_, resumed, _) = tls_request(second_at, &client, "/").await;
        assert!(
            resumed,
            "round {round}: the other gateway's ticket did not resume"
        );
        // Back at the first, with the ticket the second gave.
        let (_, resumed, _) = tls_request(first_at, &client, "/").await;
        assert!(
            resumed,
            "round {round}: the second gateway's ticket did not resume"
        );
        // A gateway with keys of its own cannot open it, and serves the
        // client with a full handshake.
        let (_, resumed, _) = tls_request(stranger_at, &client, "/").await;
        assert!(!resumed, "round {round}: a ticket opened without its key");
    }
    // The gateway's own keys do not travel either.
    let client = tls_client();
    tls_request(stranger_at, &client, "/").await;
    let (_, resumed, _) = tls_request(first_at, &client, "/").await;
    assert!(!resumed);
    for gateway in [first, second, stranger] {
        gateway.shutdown().await;
    }
}

#[tokio::test]
async fn a_reload_rotates_ticket_keys_and_tickets_of_a_key_still_listed_resume() {
    let backends = http_backends(&["a", "b", "c"]).await;
    let config = |keys| tls_session_config(&backends, keys);
    let gateway = Gateway::start(config(None)).await.unwrap();
    let view = gateway.view();
    let addr = gateway.local_addrs()[0];
    let own = tls_client();
    tls_request(addr, &own, "/").await;
    let tickets = || view.status().tickets;
    assert!(!tickets().shared);
    // Shared keys replace the gateway's own: its tickets no longer open.
    let done = view
        .reload(config(Some(ticket_keys(&[KEY_1]))))
        .await
        .unwrap();
    assert!(
        done.applied[0].starts_with("ticket_keys: 1 key(s), sealing with "),
        "{done:?}"
    );
    assert!(!tls_request(addr, &own, "/").await.1);
    let status = tickets();
    assert!(status.shared && status.keys == 1, "{status:?}");
    assert_eq!(status.sealing, Some(ticket_keys(&[KEY_1]).sealing_id()));
    assert_eq!(status.lifetime_s, Some(3600));
    let [early, late] = [tls_client(), tls_client()];
    let (home, _, _) = tls_request(addr, &early, "/login").await;
    tls_request(addr, &late, "/").await;
    // A new key first: it seals, the old one still opens.
    let rotated = config(Some(ticket_keys(&[KEY_2, KEY_1])));
    let done = view.reload(rotated.clone()).await.unwrap();
    assert!(
        done.applied[0].starts_with("ticket_keys: 2 key(s), sealing with "),
        "{done:?}"
    );
    let status = tickets();
    assert_eq!(status.keys, 2);
    assert_eq!(status.sealing, Some(ticket_keys(&[KEY_2]).sealing_id()));
    let (member, resumed, _) = tls_request(addr, &early, "/").await;
    assert!(
        resumed,
        "a ticket of the old key, still listed, did not resume"
    );
    assert_eq!(member, home, "the session stayed with its member");
    // The same keys again change nothing (the certificates are read
    // again, as on every reload).
    let done = view.reload(rotated).await.unwrap();
    assert_eq!(
        done.applied,
        [format!("listener {addr}: certificates loaded")]
    );
    // The old key gone: a ticket it sealed no longer resumes; the client
    // is served with a full handshake.
    view.reload(config(Some(ticket_keys(&[KEY_2]))))
        .await
        .unwrap();
    let (_, resumed, _) = tls_request(addr, &late, "/").await;
    assert!(!resumed, "a ticket of a key no longer listed resumed");
    // Back to keys of the gateway's own.
    let done = view.reload(config(None)).await.unwrap();
    assert!(done.applied[0].starts_with("ticket_keys: none"), "{done:?}");
    assert!(!tickets().shared);
    assert!(!tls_request(addr, &late, "/").await.1);
    assert!(tls_request(addr, &late, "/").await.1);
    gateway.shutdown().await;
}

// --------------------------------------------------------- PROXY protocol

/// Whether the Debian package `tool` is installed (`tool -v` runs); when
/// it is not, the calling test is skipped, or fails under
/// `HAPOOL_REQUIRE_TOOLS=1` (as in CI).
fn installed(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("HAPOOL_REQUIRE_TOOLS").is_none(),
            "HAPOOL_REQUIRE_TOOLS is set but {tool} is not installed (apt-get install {tool})"
        );
        eprintln!("SKIPPED: {tool} is not installed (apt-get install {tool})");
    }
    found
}

/// Waits up to 5 s for `address` to accept connections; fails naming
/// `what`, with `why` (a log, say).
fn wait_listening(address: SocketAddr, what: &str, why: impl Fn() -> String) {
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(address).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what} did not start: {}",
            why()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nginx, when installed, serving on `address` with the PROXY protocol
/// and answering each request with what the header told it:
/// `<client> <client port> <gateway address> <gateway port>`. `None` (the
/// test is skipped) without nginx, unless `HAPOOL_REQUIRE_TOOLS=1`.
fn nginx_reading_proxy_headers(dir: &std::path::Path, address: SocketAddr) -> Option<Child> {
    if !installed("nginx") {
        return None;
    }
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/cb;\n  proxy_temp_path {d}/tmp/px;\n  \
         fastcgi_temp_path {d}/tmp/fc;\n  uwsgi_temp_path {d}/tmp/uw;\n  scgi_temp_path {d}/tmp/sc;\n  \
         server {{\n    listen {address} proxy_protocol;\n    location / {{ return 200 \
         \"$proxy_protocol_addr $proxy_protocol_port $proxy_protocol_server_addr $proxy_protocol_server_port\"; }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("nginx")
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(address, "nginx", || {
        std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
    });
    Some(child)
}

/// A GET over the TCP listener `gateway`, from the client address
/// `from`: the client's address as it was, and the answer's body.
async fn get_from(from: std::net::IpAddr, gateway: SocketAddr) -> (SocketAddr, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    let mut stream = socket.connect(gateway).await.unwrap();
    let client = stream.local_addr().unwrap();
    stream
        .write_all(b"GET / HTTP/1.0\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    (client, body.to_owned())
}

#[tokio::test]
async fn tcp_members_learn_the_client_address_from_a_proxy_protocol_header() {
    let dir =
        std::env::temp_dir().join(format!("hapool-test-{}-proxy-protocol", std::process::id()));
    let member: SocketAddr = (Ipv4Addr::LOCALHOST, free_port()).into();
    let Some(mut nginx) = nginx_reading_proxy_headers(&dir, member) else {
        return;
    };
    let config = |version| {
        let mut pool = static_pool(&[member], ProbeKind::Tcp);
        pool.proxy_protocol = Some(version);
        let mut config = GatewayConfig::new(
            vec![ListenerConfig {
                affinity: Affinity::None,
                ..listener(Protocol::Tcp)
            }],
            vec![pool],
        );
        config.probe_interval = Duration::from_millis(100);
        config
    };
    let gateway = Gateway::start(config(ProxyProtocol::V1)).await.unwrap();
    let addr = gateway.local_addrs()[0];
    // The probes' headers (naming no client) are taken too: the member
    // stays in.
    sleep(Duration::from_millis(300)).await;
    assert!(gateway.pools()[0].members()[0].is_reachable());
    let client_ip = std::net::IpAddr::from([127, 0, 0, 2]);
    let (client, body) = get_from(client_ip, addr).await;
    assert_eq!(
        body,
        format!("127.0.0.2 {} 127.0.0.1 {}", client.port(), addr.port()),
        "version 1"
    );
    // Version 2, by a reload.
    let done = gateway
        .view()
        .reload(config(ProxyProtocol::V2))
        .await
        .unwrap();
    assert_eq!(done.applied, ["pool web: proxy_protocol"]);
    let (client, body) = get_from(client_ip, addr).await;
    assert_eq!(
        body,
        format!("127.0.0.2 {} 127.0.0.1 {}", client.port(), addr.port()),
        "version 2"
    );
    sleep(Duration::from_millis(300)).await;
    assert!(gateway.pools()[0].members()[0].is_reachable());
    gateway.shutdown().await;
    let _ = nginx.kill();
    let _ = nginx.wait();
    let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !log.contains("header"),
        "nginx found a PROXY protocol header it could not read: {log}"
    );
}

#[tokio::test]
async fn an_http_listener_cannot_send_proxy_protocol_headers() {
    let mut pool = static_pool(&[], http_probe());
    pool.proxy_protocol = Some(ProxyProtocol::V2);
    let error = Gateway::start(GatewayConfig::new(
        vec![listener(Protocol::Http)],
        vec![pool],
    ))
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(
        error.contains("sends the PROXY protocol header, which only TCP listeners can"),
        "{error}"
    );
}

// ------------------------------------------------ idle and stalled clients

#[tokio::test]
async fn an_idle_tcp_connection_is_closed_and_a_busy_one_is_not() {
    let member = echo_backend("a").await;
    let mut config = GatewayConfig::new(
        vec![ListenerConfig {
            affinity: Affinity::None,
            ..listener(Protocol::Tcp)
        }],
        vec![static_pool(&[member], ProbeKind::Tcp)],
    );
    config.limits.tcp_idle_timeout = Duration::from_millis(400);
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.local_addrs()[0];
    let connect = || async {
        let stream = TcpStream::connect(addr).await.unwrap();
        BufReader::new(stream)
    };
    let (mut busy, mut idle) = (connect().await, connect().await);
    let mut line = String::new();
    for stream in [&mut busy, &mut idle] {
        stream.get_mut().write_all(b"hi\n").await.unwrap();
        line.clear();
        stream.read_line(&mut line).await.unwrap();
        assert_eq!(line, "a hi\n");
    }
    // A line every 100 ms keeps one open past the timeout; the other,
    // silent, is closed.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1_200) {
        sleep(Duration::from_millis(100)).await;
        busy.get_mut().write_all(b"again\n").await.unwrap();
        line.clear();
        busy.read_line(&mut line).await.unwrap();
        assert_eq!(line, "a again\n", "the busy connection was closed");
    }
    let closed = timeout(Duration::from_millis(100), idle.read_line(&mut line))
        .await
        .expect("the idle connection is closed by now");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_client_that_reads_nothing_of_a_large_answer_is_dropped_after_the_send_timeout() {
    let big = Bytes::from(vec![b'x'; 64 << 20]);
    let listener_socket = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let member = listener_socket.local_addr().unwrap();
    tokio::spawn(serve_http(listener_socket, move |_: Request<Incoming>| {
        let big = big.clone();
        async move { Response::new(Full::new(big)) }
    }));
    let mut config = http_config(&[member]);
    config.limits.send_timeout = Duration::from_millis(300);
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.local_addrs()[0];
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"GET /big HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let pool = gateway.pool(&pool_handle()).unwrap();
    let member = pool.members()[0].clone();
    eventually("the request reaches its member", || member.active() == 1).await;
    // The client reads nothing: the answer stalls, and within the send
    // timeout (plus what the buffers took) the gateway lets go of it and
    // of its member.
    eventually("the stalled client is let go", || member.active() == 0).await;
    gateway.shutdown().await;
    drop(stalled);
}

/// An HTTP backend that answers with the `X-Forwarded-For` it was sent.
async fn forwarded_for_backend() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_http(
        listener,
        |request: Request<Incoming>| async move {
            let seen = request
                .headers()
                .get_all("x-forwarded-for")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
                .join(",");
            Response::new(Full::new(Bytes::from(seen)))
        },
    ));
    addr
}

/// A GET over a new connection to `to` from `from`, with `preface` sent
/// first: the answer's body, or `None` when the connection was refused,
/// reset or closed without an answer.
async fn get_with_preface(
    from: std::net::IpAddr,
    to: SocketAddr,
    preface: &[u8],
) -> Option<String> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    let mut stream = socket.connect(to).await.ok()?;
    stream.write_all(preface).await.ok()?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    Some(body.to_owned())
}

#[tokio::test]
async fn behind_another_proxy_the_client_is_the_one_its_header_names() {
    let member = forwarded_for_backend().await;
    let mut config = http_config(&[member]);
    config.listeners[0].accept_proxy_protocol = true;
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.local_addrs()[0];
    let front = std::net::IpAddr::from([127, 0, 0, 3]);
    let client: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let vip: SocketAddr = "198.51.100.1:80".parse().unwrap();
    for version in [ProxyProtocol::V1, ProxyProtocol::V2] {
        let body = get_with_preface(front, addr, &version.header(client, vip)).await;
        assert_eq!(body.as_deref(), Some("192.0.2.7"), "{version:?}");
        // A connection of the front proxy's own: its address is the client.
        let body = get_with_preface(front, addr, &version.local_header()).await;
        assert_eq!(body.as_deref(), Some("127.0.0.3"), "{version:?}");
    }
    // Without a header, or with a broken one, nothing is served.
    assert_eq!(get_with_preface(front, addr, b"").await, None);
    assert_eq!(
        get_with_preface(front, addr, b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n").await,
        None
    );
    gateway.shutdown().await;
}

/// HAProxy, when installed, listening on `fronts` (one per entry) and
/// passing each connection to `gateway` with the PROXY protocol header of
/// the entry's version (`send-proxy`, `send-proxy-v2`). `None` (the test
/// is skipped) without HAProxy, unless `HAPOOL_REQUIRE_TOOLS=1`.
fn haproxy_sending_proxy_headers(
    dir: &std::path::Path,
    fronts: &[(SocketAddr, ProxyProtocol)],
    gateway: SocketAddr,
) -> Option<Child> {
    if !installed("haproxy") {
        return None;
    }
    std::fs::create_dir_all(dir).unwrap();
    let mut conf = String::from(
        "defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n",
    );
    for (i, (front, version)) in fronts.iter().enumerate() {
        let send = match version {
            ProxyProtocol::V1 => "send-proxy",
            ProxyProtocol::V2 => "send-proxy-v2",
        };
        conf.push_str(&format!(
            "listen front{i}\n  bind {front}\n  server gateway {gateway} {send}\n"
        ));
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for (front, _) in fronts {
        wait_listening(*front, "haproxy", String::new);
    }
    Some(child)
}

#[tokio::test]
async fn haproxy_in_front_passes_the_client_address_by_either_version() {
    let member = forwarded_for_backend().await;
    let mut config = http_config(&[member]);
    config.listeners[0].accept_proxy_protocol = true;
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.local_addrs()[0];
    let dir =
        std::env::temp_dir().join(format!("hapool-test-{}-haproxy-front", std::process::id()));
    let fronts = [
        ((Ipv4Addr::LOCALHOST, free_port()).into(), ProxyProtocol::V1),
        ((Ipv4Addr::LOCALHOST, free_port()).into(), ProxyProtocol::V2),
    ];
    let Some(mut haproxy) = haproxy_sending_proxy_headers(&dir, &fronts, addr) else {
        gateway.shutdown().await;
        return;
    };
    let client = std::net::IpAddr::from([127, 0, 0, 2]);
    for (front, version) in fronts {
        let body = get_with_preface(client, front, b"").await;
        assert_eq!(body.as_deref(), Some("127.0.0.2"), "{version:?}");
    }
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    let _ = std::fs::remove_dir_all(&dir);
    gateway.shutdown().await;
}

/// Four clients, each opening a new connection per request to a gateway,
/// until stopped (20 s at most).
struct ConnectionLoad {
    stop: Arc<AtomicBool>,
    /// Each client's answered requests, and its failures.
    clients: Vec<JoinHandle<(u32, Lost)>>,
}

/// When each lost connection failed (from the start of the load), and how.
type Lost = Vec<(Duration, String)>;

/// One GET on a connection of its own: the answer's body, or at which
/// step and how the exchange failed.
async fn get_on_new_connection(to: SocketAddr) -> Result<String, String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind((Ipv4Addr::LOCALHOST, 0).into())
        .map_err(|e| format!("bind: {e}"))?;
    let from = socket.local_addr().map_err(|e| format!("bind: {e}"))?;
    let mut stream = socket
        .connect(to)
        .await
        .map_err(|e| format!("connect from {from}: {e}"))?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    match (read, answer.split_once("\r\n\r\n")) {
        (_, Some((head, body))) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        (Ok(_), _) => Err(format!("answer: {answer:?}")),
        (Err(e), _) => Err(format!("read after {} bytes: {e}", answer.len())),
    }
}

impl ConnectionLoad {
    fn start(gateway: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..4)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let (mut ok, mut failed) = (0_u32, Vec::new());
                    let started = Instant::now();
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < Duration::from_secs(20)
                    {
                        match get_on_new_connection(gateway).await {
                            Ok(_) => ok += 1,
                            Err(why) => failed.push((started.elapsed(), why)),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        Self { stop, clients }
    }

    /// Stops the clients; fails unless more than 100 requests went
    /// through and no connection failed.
    async fn none_lost(self) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut served, mut failed) = (0, Vec::new());
        for client in self.clients {
            let (ok, lost) = client.await.unwrap();
            served += ok;
            failed.extend(lost);
        }
        assert!(served > 100, "only {served} requests went through");
        assert!(
            failed.is_empty(),
            "{} of {} connections failed: {failed:?}",
            failed.len(),
            served as usize + failed.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_reconfigured_under_load_loses_no_connection() {
    let backends = http_backends(&["a", "b"]).await;
    let gateway = Gateway::start(http_config(&backends)).await.unwrap();
    let view = gateway.view();
    let addr = gateway.local_addrs()[0];
    let load = ConnectionLoad::start(addr);
    // Ten replacements of the listener (its max_connections changes each
    // time), 100 ms apart.
    for round in 0..10 {
        sleep(Duration::from_millis(100)).await;
        let mut config = http_config(&backends);
        config.listeners[0].max_connections = 1_000 + round;
        let done = view.reload(config).await.unwrap();
        assert_eq!(done.applied.len(), 1, "{done:?}");
        assert_eq!(gateway.local_addrs(), [addr]);
    }
    sleep(Duration::from_millis(100)).await;
    load.none_lost().await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn connections_accepted_before_a_shutdown_are_answered() {
    let backends = http_backends(&["a"]).await;
    let mut config = http_config(&backends);
    // One worker, on this test's thread: while the test does not yield,
    // it accepts nothing, and the kernel queues the connections.
    config.workers = 1;
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.local_addrs()[0];
    let request = b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n";
    let mut queued: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // The first sends its request at once, the others only once the
    // shutdown has begun.
    std::io::Write::write_all(&mut queued[0], request).unwrap();
    let stopping = tokio::spawn(gateway.shutdown());
    sleep(Duration::from_millis(200)).await;
    for stream in &mut queued[1..] {
        std::io::Write::write_all(stream, request).unwrap();
    }
    stopping.await.unwrap();
    for (i, mut stream) in queued.into_iter().enumerate() {
        let mut answer = String::new();
        // Blocking this thread, which the gateway ran on: all is written.
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let read = std::io::Read::read_to_string(&mut stream, &mut answer);
        assert!(
            read.is_ok() && answer.starts_with("HTTP/1.1 200") && answer.ends_with("a -"),
            "client {i}: {read:?} {answer:?}"
        );
    }
}

/// A successor gateway started with the same `handover` socket takes the
/// running one's listening sockets, then the running one is stopped,
/// three times under a load of new connections, each successor with
/// another number of workers: none is lost, and the address never has
/// more sockets than the most workers one of them had (the sockets are
/// handed on, not bound beside).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_handing_its_port_to_a_successor_loses_no_connection() {
    let backends = http_backends(&["a", "b"]).await;
    let path = handover_path("under-load");
    let with_workers = |workers: usize, addr: Option<SocketAddr>| {
        let mut config = handover_config(&backends, workers, &path);
        if let Some(addr) = addr {
            config.listeners[0].address = addr;
        }
        config
    };
    let first = Gateway::start(with_workers(2, None)).await.unwrap();
    let addr = first.local_addrs()[0];
    assert_eq!(listening_sockets(addr).unwrap_or(2), 2);
    let load = ConnectionLoad::start(addr);
    let mut running = first;
    let mut sockets = 2;
    for workers in [1, 3, 2] {
        sleep(Duration::from_millis(200)).await;
        let successor = Gateway::start(with_workers(workers, Some(addr)))
            .await
            .unwrap();
        // Both serve the same sockets, and more when the successor has
        // more workers than there are sockets.
        sockets = workers.max(sockets);
        assert_eq!(listening_sockets(addr).unwrap_or(sockets), sockets);
        sleep(Duration::from_millis(100)).await;
        running.shutdown().await;
        running = successor;
    }
    sleep(Duration::from_millis(200)).await;
    load.none_lost().await;
    assert_eq!(
        listening_sockets(addr).unwrap_or(3),
        3,
        "the third successor's"
    );
    running.shutdown().await;
    let _ = std::fs::remove_file(&path);
}

/// A successor whose configuration has listeners the gateway before did
/// not, and lacks one it had: it takes the sockets of the listener both
/// have, binds the new one, and leaves the other to the gateway before,
/// whose stop closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_takes_the_sockets_of_the_listeners_it_shares_with_the_gateway_before() {
    let backends = http_backends(&["a"]).await;
    let path = handover_path("listeners");
    let mut before = handover_config(&backends, 2, &path);
    before.listeners.push(listener(Protocol::Http));
    let first = Gateway::start(before.clone()).await.unwrap();
    let [kept, dropped] = first.local_addrs()[..] else {
        panic!("two listeners")
    };
    // The first listener as it is bound; another address for the second
    // (the same configured address, port 0 as before, would be the same
    // listener to the successor).
    let mut after = before;
    after.listeners[0].address = kept;
    after.listeners[1].address = (Ipv4Addr::new(127, 0, 0, 2), 0).into();
    let second = Gateway::start(after).await.unwrap();
    let [shared, new] = second.local_addrs()[..] else {
        panic!("two listeners")
    };
    assert_eq!(shared, kept);
    assert!(new != kept && new != dropped);
    // The shared listener's two sockets, not four; the new one's own.
    assert_eq!(listening_sockets(kept).unwrap_or(2), 2);
    assert_eq!(listening_sockets(new).unwrap_or(2), 2);
    let status = second.view().status();
    let taken: Vec<usize> = status.listeners.iter().map(|l| l.taken_over).collect();
    assert_eq!(taken, [2, 0]);
    first.shutdown().await;
    for addr in [kept, new] {
        assert_eq!(served_by(&get(&client(), addr, "/", None).await.1), "a");
    }
    assert!(
        TcpStream::connect(dropped).await.is_err(),
        "the listener only the gateway before had closed with it"
    );
    second.shutdown().await;
    let _ = std::fs::remove_file(&path);
}

/// A gateway started without a handover socket is given one by a
/// reload: a successor takes its sockets there; a reload to another path
/// moves it, and one without closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_opens_moves_and_closes_the_handover_socket() {
    let backends = http_backends(&["a"]).await;
    let (path, moved) = (handover_path("reload"), handover_path("reload-moved"));
    let mut config = http_config(&backends);
    config.workers = 2;
    let first = Gateway::start(config.clone()).await.unwrap();
    let addr = first.local_addrs()[0];
    let with_handover = |path: &std::path::Path| {
        let mut config = config.clone();
        config.handover = Some(path.to_owned());
        config
    };
    let done = first.view().reload(with_handover(&path)).await.unwrap();
    assert_eq!(
        done.applied,
        [format!(
            "handover: {} (listening sockets handed to a successor that asks there)",
            path.display()
        )]
    );
    assert!(done.needs_restart.is_empty(), "{done:?}");
    // Moved: the first path answers no more, the new one does.
    let done = first.view().reload(with_handover(&moved)).await.unwrap();
    assert_eq!(done.applied.len(), 1, "{done:?}");
    // Closed when the reload returns; a process another test starts
    // meanwhile may hold a copy of its descriptor until it execs.
    let closed = async {
        while tokio::net::UnixStream::connect(&path).await.is_ok() {
            sleep(Duration::from_millis(10)).await;
        }
    };
    assert!(
        timeout(Duration::from_secs(2), closed).await.is_ok(),
        "the first handover socket is closed"
    );
    // A successor asking there serves the very sockets of the first.
    let second = Gateway::start(with_handover(&moved)).await.unwrap();
    assert_eq!(second.local_addrs(), [addr]);
    assert_eq!(second.view().status().listeners[0].taken_over, 2);
    assert_eq!(listening_sockets(addr).unwrap_or(2), 2);
    first.shutdown().await;
    assert_eq!(served_by(&get(&client(), addr, "/", None).await.1), "a");
    // Closed by a reload without one: a third gateway binds its own
    // (port 0, as configured: another port).
    let done = second.view().reload(config.clone()).await.unwrap();
    assert_eq!(done.applied, ["handover: off"]);
    let third = Gateway::start(with_handover(&moved)).await.unwrap();
    assert_eq!(third.view().status().listeners[0].taken_over, 0);
    assert_ne!(third.local_addrs(), [addr]);
    third.shutdown().await;
    second.shutdown().await;
    for path in [path, moved] {
        let _ = std::fs::remove_file(path);
    }
}

/// A handover path with a stale socket file (its gateway died), or with
/// something there that answers nonsense: the gateway starts all the
/// same, binding its own sockets, and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_socket_that_cannot_be_used_leaves_the_gateway_binding_its_own() {
    let backends = http_backends(&["a"]).await;
    let path = handover_path("stale");
    let config = handover_config(&backends, 2, &path);
    // A socket file nobody listens on any more.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let gateway = Gateway::start(config.clone()).await.unwrap();
    let addr = gateway.local_addrs()[0];
    assert_eq!(listening_sockets(addr).unwrap_or(2), 2);
    assert_eq!(served_by(&get(&client(), addr, "/", None).await.1), "a");
    gateway.shutdown().await;
    // Something that answers, but not with sockets.
    let _ = std::fs::remove_file(&path);
    let liar = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = liar.accept().await {
            let _ = stream.write_all(b"no sockets here").await;
        }
    });
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.local_addrs()[0];
    assert_eq!(listening_sockets(addr).unwrap_or(2), 2);
    assert_eq!(served_by(&get(&client(), addr, "/", None).await.1), "a");
    gateway.shutdown().await;
    let _ = std::fs::remove_file(&path);
}

/// `http_config` with `workers` and the handover socket at `path`.
fn handover_config(
    backends: &[SocketAddr],
    workers: usize,
    path: &std::path::Path,
) -> GatewayConfig {
    let mut config = http_config(backends);
    config.workers = workers;
    config.handover = Some(path.to_owned());
    config
}

/// A handover socket path of this test process's own for the test `what`.
fn handover_path(what: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "hapool-handover-{what}-{}.sock",
        std::process::id()
    ))
}

#[tokio::test]
async fn a_reload_can_turn_an_http_listener_into_a_tcp_one_on_its_port() {
    let (web, _task) = http_backend("a").await;
    let echo = echo_backend("e").await;
    let gateway = Gateway::start(http_config(&[web])).await.unwrap();
    let addr = gateway.local_addrs()[0];
    let client = client();
    let (_, body, _) = get(&client, addr, "/", None).await;
    assert_eq!(served_by(&body), "a");
    let mut config = http_config(&[web]);
    let mut lines = static_pool(&[echo], ProbeKind::Tcp);
    lines.handle = PoolHandle::from("lines");
    config.pools.push(lines);
    config.listeners[0] = ListenerConfig {
        pool: PoolHandle::from("lines"),
        affinity: Affinity::None,
        ..listener(Protocol::Tcp)
    };
    let done = gateway.view().reload(config).await.unwrap();
    assert_eq!(
        done.applied,
        [
            "pool lines: added (1 member(s), 1 answering)".to_owned(),
            format!(
                "listener {addr}: protocol changed (new connections; open ones go on as they were)"
            ),
        ]
    );
    assert_eq!(tcp_exchange(addr, "hi").await, "e hi");
    let status = gateway.view().status();
    assert_eq!(
        (
            status.listeners[0].protocol,
            status.listeners[0].pool.as_str()
        ),
        (Protocol::Tcp, "lines")
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_reload_can_put_tls_on_a_listener_and_take_it_off() {
    let (web, _task) = http_backend("a").await;
    let gateway = Gateway::start(http_config(&[web])).await.unwrap();
    let addr = gateway.local_addrs()[0];
    let mut config = http_config(&[web]);
    config.listeners[0].tls =
        Some(server_config(vec![certificate("alpha")], &[b"http/1.1"]).unwrap());
    let done = gateway.view().reload(config).await.unwrap();
    assert_eq!(
        done.applied,
        [format!(
            "listener {addr}: TLS on or off changed (new connections; open ones go on as they were)"
        )]
    );
    assert_eq!(
        tls_get(addr, "alpha.example").await,
        ("CN=alpha.example".into(), "a -".into())
    );
    gateway.view().reload(http_config(&[web])).await.unwrap();
    let (_, body, _) = get(&client(), addr, "/", None).await;
    assert_eq!(served_by(&body), "a");
    gateway.shutdown().await;
}
