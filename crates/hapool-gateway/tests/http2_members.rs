//! Pools whose members speak HTTP/2 (gRPC servers): requests from HTTP/1.1
//! and HTTP/2 clients alike go to them in HTTP/2, many at once on one
//! connection, with the trailers the member ends its answers with.

use std::convert::Infallible;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hapool_gateway::{Availability, Gateway, GatewayConfig, PoolSettings, ProbeKind};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio::time::{Instant, sleep};

mod common;

/// What an HTTP/2 member saw of each request: method, version, URI,
/// `x-forwarded-proto`, `te`.
type Seen = Arc<Mutex<Vec<String>>>;

/// A member that speaks only HTTP/2 (prior knowledge, or over TLS with
/// ALPN `h2` when `tls`). It answers `<name> <path>` and ends every
/// answer with the trailer `grpc-status: 0`; `/slow` answers after 200 ms.
struct H2Member {
    address: SocketAddr,
    accepted: Arc<AtomicUsize>,
    seen: Seen,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    /// What its gRPC health check answers: SERVING, or NOT_SERVING.
    serving: Arc<AtomicBool>,
}

impl H2Member {
    async fn start(name: &'static str, tls: bool) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = Seen::default();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let acceptor = tls.then(|| {
            let config = hapool_net::tls::server_config(
                &net_pki("server.pem"),
                &net_pki("server.key"),
                None,
            )
            .unwrap();
            let mut config = (*config).clone();
            config.alpn_protocols = vec![b"h2".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let serving = Arc::new(AtomicBool::new(true));
        let (count, log, handles) = (accepted.clone(), seen.clone(), connections.clone());
        let health = serving.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let (log, acceptor, health) = (log.clone(), acceptor.clone(), health.clone());
                let task = tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (log, health) = (log.clone(), health.clone());
                        async move {
                            let serving = health.load(Ordering::SeqCst);
                            Ok::<_, Infallible>(answer(name, request, &log, serving).await)
                        }
                    });
                    let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
                handles.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            address,
            accepted,
            seen,
            connections,
            serving,
        }
    }

    /// Closes every connection it has.
    fn drop_connections(&self) {
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

type Answer = http_body_util::combinators::WithTrailers<
    Full<Bytes>,
    std::future::Ready<Option<Result<HeaderMap, Infallible>>>,
>;

async fn answer(
    name: &str,
    request: Request<Incoming>,
    seen: &Seen,
    serving: bool,
) -> Response<Answer> {
    let header = |n: &str| {
        request
            .headers()
            .get(n)
            .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned())
    };
    seen.lock().unwrap().push(format!(
        "{} {:?} {} {} {}",
        request.method(),
        request.version(),
        request.uri(),
        header("x-forwarded-proto"),
        header("te"),
    ));
    let path = request.uri().path().to_owned();
    if path == "/slow" {
        sleep(Duration::from_millis(200)).await;
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let body = if path == "/grpc.health.v1.Health/Check" {
        // A HealthCheckResponse, framed: SERVING (1) or NOT_SERVING (2).
        let status = if serving { 1 } else { 2 };
        Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status])
    } else {
        Bytes::from(format!("{name} {path}"))
    };
    let body = Full::new(body).with_trailers(std::future::ready(Some(Ok(trailers))));
    Response::new(body)
}

fn net_pki(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../hapool-net/tests/pki")
        .join(name)
}

/// A gateway with one HTTP listener in front of `member`, spoken to in
/// HTTP/2, probed with `GET /` (over TLS with `tls`).
async fn gateway(member: SocketAddr, tls: bool) -> Gateway {
    let mut config = common::one_member_gateway(member, 2, 1000);
    config.pools[0] = PoolSettings {
        http2: true,
        tls,
        probe: ProbeKind::Http { path: "/".into() },
        ..config.pools[0].clone()
    };
    if tls {
        config.member_tls = Some(hapool_net::tls::client_config(&net_pki("ca.pem"), None).unwrap());
    }
    config.probe_interval = Duration::from_millis(100);
    let gateway = Gateway::start(config).await.unwrap();
    assert_eq!(
        gateway.pools()[0].status()[0].availability,
        Availability::Available,
        "the HTTP/2 probe was answered"
    );
    gateway
}

/// An HTTP/2 client connection (prior knowledge) to `address`.
async fn h2_client(address: SocketAddr) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(address).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// A request in HTTP/2 with `te: trailers`, as gRPC clients send: the
/// status, body and trailers of the answer.
async fn h2_request(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    path: &str,
) -> (StatusCode, String, Option<HeaderMap>) {
    let request = Request::post(format!("http://service.test{path}"))
        .header(header::TE, "trailers")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    let body = String::from_utf8(collected.to_bytes().to_vec()).unwrap();
    (status, body, trailers)
}

#[tokio::test]
async fn http2_members_answer_every_client_with_trailers_on_one_connection() {
    let member = H2Member::start("grpc", false).await;
    let gateway = gateway(member.address, false).await;
    let address = gateway.local_addrs()[0];

    // An HTTP/2 client: the trailer comes through.
    let mut client = h2_client(address).await;
    let (status, body, trailers) = h2_request(&mut client, "/hello.Greeter/SayHello").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "grpc /hello.Greeter/SayHello");
    let trailers = trailers.expect("the member's trailers");
    assert_eq!(trailers["grpc-status"], "0");
    {
        let seen = member.seen.lock().unwrap();
        let last = seen.last().unwrap();
        assert_eq!(
            last, "POST HTTP/2.0 http://service.test/hello.Greeter/SayHello http trailers",
            "{seen:?}"
        );
    }

    // Many requests at once from many clients share each worker's one
    // connection to the member (the probes have one of their own).
    let before = member.accepted.load(Ordering::SeqCst);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut client = h2_client(address).await;
        tasks.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            for _ in 0..5 {
                answered.push(h2_request(&mut client, "/slow").await);
            }
            answered
        }));
    }
    let started = Instant::now();
    for task in tasks {
        for (status, body, trailers) in task.await.unwrap() {
            assert_eq!((status, body.as_str()), (StatusCode::OK, "grpc /slow"));
            assert!(trailers.is_some());
        }
    }
    // Forty requests of 200 ms, eight at a time: five rounds, not forty.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let opened = member.accepted.load(Ordering::SeqCst);
    assert!(
        opened <= 3,
        "{opened} connections to the member ({before} before the load): at most one per worker and one for the probes"
    );

    // An HTTP/1.1 client is answered in HTTP/1.1 from the HTTP/2 member.
    let text = common::raw_exchange(
        address,
        b"GET /plain HTTP/1.1\r\nhost: site.test\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("grpc /plain"), "{text}");
    assert!(
        member
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s == "GET HTTP/2.0 http://site.test/plain http -"),
        "{:?}",
        member.seen.lock().unwrap()
    );

    // A WebSocket upgrade cannot be carried over HTTP/2 to the member.
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            b"GET /chat HTTP/1.1\r\nhost: site.test\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
              sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = vec![0; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 501");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_closed_http2_member_connection_is_replaced() {
    let member = H2Member::start("grpc", false).await;
    let gateway = gateway(member.address, false).await;
    let address = gateway.local_addrs()[0];
    let mut client = h2_client(address).await;
    for round in 0..3 {
        let (status, body, _) = h2_request(&mut client, "/again").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "grpc /again"),
            "round {round}"
        );
        // The member closes every connection it has, the gateway's
        // included (as a member restarting would).
        member.drop_connections();
        sleep(Duration::from_millis(100)).await;
    }
    assert!(member.accepted.load(Ordering::SeqCst) >= 3);
    gateway.shutdown().await;
}

#[tokio::test]
async fn http2_members_are_reached_over_tls_by_alpn() {
    let member = H2Member::start("secure", true).await;
    let gateway = gateway(member.address, true).await;
    let mut client = h2_client(gateway.local_addrs()[0]).await;
    let (status, body, trailers) = h2_request(&mut client, "/over/tls").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "secure /over/tls")
    );
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    let seen = member.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|s| s == "POST HTTP/2.0 https://service.test/over/tls http trailers"),
        "{seen:?}"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn the_grpc_health_check_takes_a_member_out_while_it_is_not_serving() {
    let [a, b] = [
        H2Member::start("a", false).await,
        H2Member::start("b", false).await,
    ];
    let mut config = common::one_member_gateway(a.address, 1, 100);
    config.pools[0] = PoolSettings {
        http2: true,
        probe: ProbeKind::Grpc {
            service: "hapool.Echo".into(),
        },
        probe_rise: 1,
        probe_fall: 1,
        source: common::static_members(&[(a.address, 0), (b.address, 0)]),
        ..config.pools[0].clone()
    };
    config.probe_interval = Duration::from_millis(50);
    // The health check is a gRPC call: HTTP/2 only.
    let mut over_http1 = config.clone();
    over_http1.pools[0].http2 = false;
    let refused = Gateway::start(over_http1).await.err().unwrap().to_string();
    assert!(
        refused.contains("gRPC health check, which needs http2"),
        "{refused}"
    );
    let gateway = Gateway::start(config).await.unwrap();
    let availability = |i: usize| gateway.pools()[0].status()[i].availability;
    assert_eq!(
        [availability(0), availability(1)],
        [Availability::Available; 2]
    );
    assert!(
        a.seen.lock().unwrap().iter().any(|s| s
            == &format!(
                "POST HTTP/2.0 http://{}/grpc.health.v1.Health/Check - trailers",
                a.address
            )),
        "{:?}",
        a.seen.lock().unwrap()
    );
    a.serving.store(false, Ordering::SeqCst);
    eventually("a, not serving, is taken out", || {
        availability(0) == Availability::Unreachable
    })
    .await;
    let mut client = h2_client(gateway.local_addrs()[0]).await;
    for _ in 0..4 {
        assert_eq!(h2_request(&mut client, "/call").await.1, "b /call");
    }
    a.serving.store(true, Ordering::SeqCst);
    eventually("a, serving again, comes back", || {
        availability(0) == Availability::Available
    })
    .await;
    gateway.shutdown().await;
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(5), "never: {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_grpc_call_no_member_can_take_is_answered_with_a_grpc_status() {
    // A pool whose one member's port refuses connections.
    let gone = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut config = common::one_member_gateway(gone, 1, 10);
    config.pools[0].http2 = true;
    let empty = Gateway::start(config).await.unwrap();
    let mut client = h2_client(empty.local_addrs()[0]).await;
    let call = |content_type: &'static str| {
        Request::post("http://service.test/hapool.Echo/Say")
            .header(header::CONTENT_TYPE, content_type)
            .header(header::TE, "trailers")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let response = client.send_request(call("application/grpc")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(headers["grpc-status"], "14", "UNAVAILABLE: {headers:?}");
    assert_eq!(
        headers["grpc-message"],
        "no pool element can serve the request"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(body.is_empty());
    // Not a gRPC call: the plain answer.
    let response = client.send_request(call("application/json")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!response.headers().contains_key("grpc-status"));
    empty.shutdown().await;
    // A member's own answers go as they are, its errors included.
    let member = H2Member::start("grpc", false).await;
    let gateway = gateway(member.address, false).await;
    let mut client = h2_client(gateway.local_addrs()[0]).await;
    let response = client.send_request(call("application/grpc")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!response.headers().contains_key("grpc-status"));
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    gateway.shutdown().await;
}

/// An `http2` pool of `first`, chosen first, and `then` behind it.
fn preferring(first: SocketAddr, then: SocketAddr) -> GatewayConfig {
    let mut config = common::one_member_gateway(first, 1, 10);
    config.pools[0] = PoolSettings {
        http2: true,
        strategy: Some(hapool_gateway::Strategy::Priority),
        source: common::static_members(&[(first, 5), (then, 0)]),
        ..config.pools[0].clone()
    };
    config
}

#[tokio::test]
async fn a_request_a_member_refuses_goes_to_another_when_its_body_was_kept() {
    // A member that refuses every stream (as one at its limit of streams,
    // or shutting down, does), preferred by the choice.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let refusing = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((_, mut respond))) = connection.accept().await {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    let good = H2Member::start("good", false).await;
    let gateway = Gateway::start(preferring(refusing, good.address))
        .await
        .unwrap();
    // A POST with its length, kept for another attempt: the refusal says
    // the member did not process it, so it goes to the other.
    let answer = common::raw_exchange(
        gateway.local_addrs()[0],
        b"POST /order HTTP/1.1\r\nhost: shop.test\r\ncontent-length: 5\r\n\
          connection: close\r\n\r\nhello",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("good /order"), "{answer}");
    // The refusing member is not taken for unreachable: it answered.
    let status = gateway.pools()[0].status();
    assert_eq!(status[0].availability, Availability::Available);
    assert_eq!(status[0].failed, 1);
    gateway.shutdown().await;
}

/// A member that answers the first request of each connection with a
/// GOAWAY whose last stream identifier is 0: by RFC 9113 6.8 it
/// processed none of the connection's streams. Its frames are written by
/// hand, so that the GOAWAY comes before anything else.
async fn going_away_member() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut preface = [0u8; 24];
                if stream.read_exact(&mut preface).await.is_err() {
                    return;
                }
                // An empty SETTINGS frame.
                let _ = stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
                loop {
                    let mut head = [0u8; 9];
                    if stream.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                    let mut payload = vec![0u8; length];
                    if stream.read_exact(&mut payload).await.is_err() {
                        return;
                    }
                    match (head[3], head[4] & 1) {
                        // SETTINGS, not an acknowledgement: acknowledged.
                        (4, 0) => {
                            let _ = stream.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await;
                        }
                        // HEADERS: GOAWAY, last stream 0, NO_ERROR; then
                        // the connection closes.
                        (1, _) => {
                            let mut goaway = vec![0, 0, 8, 7, 0, 0, 0, 0, 0];
                            goaway.extend_from_slice(&[0; 8]);
                            let _ = stream.write_all(&goaway).await;
                            sleep(Duration::from_millis(50)).await;
                            return;
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    address
}

#[tokio::test]
async fn a_stream_above_the_last_one_of_a_members_goaway_goes_to_another() {
    let going = going_away_member().await;
    let good = H2Member::start("good", false).await;
    let gateway = Gateway::start(preferring(going, good.address))
        .await
        .unwrap();
    for body in [&b""[..], b"hello"] {
        // A GET, and a POST whose body was kept for another attempt: the
        // member said it processed neither, so each goes to the other.
        let request = if body.is_empty() {
            b"GET /page HTTP/1.1\r\nhost: shop.test\r\nconnection: close\r\n\r\n".to_vec()
        } else {
            let mut post = b"POST /order HTTP/1.1\r\nhost: shop.test\r\ncontent-length: 5\r\n\
                connection: close\r\n\r\n"
                .to_vec();
            post.extend_from_slice(body);
            post
        };
        let answer = common::raw_exchange(gateway.local_addrs()[0], &request).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("good /"), "{answer}");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_reload_turns_http2_to_members_on_and_off() {
    // A member that takes both (hyper's automatic server).
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|request: Request<Incoming>| async move {
                    let version = format!("{:?}", request.version());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(version))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let config = |http2| {
        let mut config: GatewayConfig = common::one_member_gateway(address, 1, 100);
        config.pools[0].http2 = http2;
        config
    };
    let gateway = Gateway::start(config(false)).await.unwrap();
    let view = gateway.view();
    let get = || async {
        let mut client = h2_client(gateway.local_addrs()[0]).await;
        let response = client
            .send_request(Request::get("http://x.test/").body(Empty::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.version(), Version::HTTP_2);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    };
    assert_eq!(get().await, "HTTP/1.1");
    let done = view.reload(config(true)).await.unwrap();
    assert_eq!(done.applied, ["pool web: http2"]);
    assert_eq!(get().await, "HTTP/2.0");
    view.reload(config(false)).await.unwrap();
    assert_eq!(get().await, "HTTP/1.1");
    gateway.shutdown().await;
}

/// `tests/grpc/echo.py` with `args`.
fn echo_py(python: &str, args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(python);
    command
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/echo.py"))
        .args(args);
    command
}

/// Kills the gRPC members when the test ends, however it ends.
struct Members(Vec<std::process::Child>);

impl Drop for Members {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Members {
    /// Starts `tests/grpc/echo.py` serving as `name`: its address, once
    /// it says it serves (within [`PROCESS_LIMIT`]).
    fn start(&mut self, python: &str, name: &str) -> SocketAddr {
        let mut child = echo_py(python, &["serve", name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Kept from here, so that the member is killed whatever happens.
        self.0.push(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(PROCESS_LIMIT)
            .unwrap_or_else(|_| panic!("gRPC member {name}: not serving after {PROCESS_LIMIT:?}"));
        let port = line
            .trim()
            .strip_prefix("serving ")
            .and_then(|port| port.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("gRPC member {name} said {line:?}, not \"serving PORT\""));
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }
}

/// How long a gRPC member may take to start, and a gRPC client beyond
/// its calls' own deadlines (5 s each) to end.
const PROCESS_LIMIT: Duration = Duration::from_secs(30);

/// Runs `command` to its end, for `limit` at most: its output. A process
/// still running then is killed, and the test fails with what it printed,
/// instead of waiting for it for ever.
fn output_within(mut command: std::process::Command, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut read = Vec::new();
            let _ = pipe.read_to_end(&mut read);
            read
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    let Some(status) = status else {
        panic!(
            "{command:?} still running after {limit:?}, killed; it printed:\n{}{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    };
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Runs `tests/grpc/echo.py` with `args` to its end: its output lines.
async fn run_echo_py(python: &'static str, args: Vec<String>, limit: Duration) -> Vec<String> {
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        output_within(echo_py(python, &args), limit)
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Runs the gRPC client through `gateway` for `rounds` (four calls each):
/// its output lines.
async fn grpc_calls(python: &'static str, gateway: SocketAddr, rounds: u32) -> Vec<String> {
    let args = vec!["call".into(), gateway.to_string(), rounds.to_string()];
    let calls = Duration::from_secs(5) * 4 * rounds;
    run_echo_py(python, args, calls + PROCESS_LIMIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_go_through_and_survive_a_member_killed() {
    let Some(python) = common::tools::python_with("grpc", "python3-grpcio") else {
        return;
    };
    let mut members = Members(Vec::new());
    let addresses = [members.start(python, "a"), members.start(python, "b")];
    let mut config = common::one_member_gateway(addresses[0], 2, 1000);
    config.probe_interval = Duration::from_millis(100);
    config.pools[0] = PoolSettings {
        http2: true,
        probe: ProbeKind::Grpc {
            service: "hapool.Echo".into(),
        },
        probe_fall: 1,
        source: common::static_members(&[(addresses[0], 0), (addresses[1], 0)]),
        ..config.pools[0].clone()
    };
    let gateway = Gateway::start(config).await.unwrap();
    let address = gateway.local_addrs()[0];
    // Unary calls, a server stream, a call streaming both ways, and a call
    // that ends with an error status, all carried in trailers; both
    // members take calls.
    let lines = grpc_calls(python, address, 4).await;
    let count = |line: &str| lines.iter().filter(|l| *l == line).count();
    assert_eq!(count("count 1 2 3"), 4, "{lines:?}");
    assert_eq!(count("fail NOT_FOUND no such thing: x"), 4, "{lines:?}");
    // A call streaming both ways, each message sent once the answer to
    // the one before has come back through the gateway.
    assert_eq!(count("chat 1 2 3"), 4, "{lines:?}");
    assert_eq!(count("say a hello") + count("say b hello"), 4, "{lines:?}");
    assert_eq!(lines.last().map(String::as_str), Some("done"));
    let served: Vec<u64> = gateway.pools()[0]
        .status()
        .iter()
        .map(|m| m.served)
        .collect();
    assert!(served.iter().all(|&n| n > 0), "{served:?}");
    // A member whose health check says NOT_SERVING is taken out; back
    // when it serves again.
    let availability = |i: usize| gateway.pools()[0].status()[i].availability;
    let set_serving = |address: SocketAddr, value: &str| {
        run_echo_py(
            python,
            vec!["serving".into(), address.to_string(), value.into()],
            PROCESS_LIMIT,
        )
    };
    set_serving(addresses[0], "0").await;
    eventually("a, not serving, is taken out", || {
        availability(0) == Availability::Unreachable
    })
    .await;
    let lines = grpc_calls(python, address, 2).await;
    assert_eq!(
        lines.iter().filter(|l| *l == "say b hello").count(),
        2,
        "{lines:?}"
    );
    set_serving(addresses[0], "1").await;
    eventually("a, serving again, comes back", || {
        availability(0) == Availability::Available
    })
    .await;
    // One member killed: no call fails; the gateway finds it gone as it
    // connects, and sends the call, body and all, to the other.
    let mut b = members.0.pop().unwrap();
    b.kill().unwrap();
    b.wait().unwrap();
    let lines = grpc_calls(python, address, 5).await;
    let count = |line: &str| lines.iter().filter(|l| *l == line).count();
    assert_eq!(count("say a hello"), 5, "{lines:?}");
    assert_eq!(count("count 1 2 3"), 5, "{lines:?}");
    assert_eq!(lines.last().map(String::as_str), Some("done"));
    // The last one killed too: calls fail, with a gRPC status that says
    // why.
    let mut a = members.0.pop().unwrap();
    a.kill().unwrap();
    a.wait().unwrap();
    let lines = grpc_calls(python, address, 1).await;
    assert_eq!(
        lines[0], "say UNAVAILABLE no pool element can serve the request",
        "{lines:?}"
    );
    gateway.shutdown().await;
}
