//! What the gateway's test files share (each uses a part of it).

#![allow(dead_code)]

pub(crate) mod tools;

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use hapool_gateway::{
    Affinity, GatewayConfig, ListenerConfig, MemberSource, PoolSettings, Protocol, StaticMember,
};
use hapool_wire::PoolHandle;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One HTTP listener on a free loopback port, taking `max_connections`
/// at once, in front of the pool "web" of the one static `member`
/// (least loaded, TCP probes), served by `workers` workers.
pub(crate) fn one_member_gateway(
    member: SocketAddr,
    workers: usize,
    max_connections: usize,
) -> GatewayConfig {
    let handle = PoolHandle::from("web");
    let listener = ListenerConfig {
        address: (Ipv4Addr::LOCALHOST, 0).into(),
        protocol: Protocol::Http,
        pool: handle.clone(),
        tls: None,
        affinity: Affinity::None,
        max_connections,
        accept_proxy_protocol: false,
        abort_on_close: false,
    };
    let pool = PoolSettings::new(handle, static_members(&[(member, 0)]));
    let mut config = GatewayConfig::new(vec![listener], vec![pool]);
    config.workers = workers;
    config
}

/// Static members at these addresses, with these priorities, weight 1.
pub(crate) fn static_members(members: &[(SocketAddr, u32)]) -> MemberSource {
    MemberSource::Static(
        members
            .iter()
            .map(|&(address, priority)| StaticMember {
                address,
                weight: 1,
                priority,
            })
            .collect(),
    )
}

/// The length of `/big`'s answer: larger than any buffer on the way.
pub(crate) const BIG: usize = 300_000;

/// A member answering `GET /big` with `BIG` bytes and any other request
/// with the length of its body.
pub(crate) async fn member() -> SocketAddr {
    // Room for every connection a test opens at once: tokio's `bind`
    // listens with a backlog of 128, and a burst beyond it has a
    // connection's handshake retried a second later, past the gateway's
    // connect timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    let listener = socket.listen(4096).unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(serve_http(
        listener,
        |request: Request<Incoming>| async move {
            let body = if request.uri().path() == "/big" {
                Bytes::from(vec![b'x'; BIG])
            } else {
                // A body that broke off on the way is answered for, to
                // no one.
                match request.into_body().collect().await {
                    Ok(received) => Bytes::from(received.to_bytes().len().to_string()),
                    Err(_) => Bytes::from_static(b"broken off"),
                }
            };
            Response::new(Full::new(body))
        },
    ));
    address
}

/// Writes `request` as it is on a new connection to `address`, and reads
/// what comes back until the connection closes.
pub(crate) async fn raw_exchange(address: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

/// Serves HTTP/1.1 on `listener` (upgrades included), answering every
/// request with `answer`.
pub(crate) async fn serve_http<A, F>(listener: TcpListener, answer: A)
where
    A: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    serve_http_counting_closes(listener, answer, Arc::default()).await;
}

/// [`serve_http`], counting in `closed` the connections that ended.
pub(crate) async fn serve_http_counting_closes<A, F>(
    listener: TcpListener,
    answer: A,
    closed: Arc<AtomicUsize>,
) where
    A: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let answer = answer.clone();
        let closed = closed.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let answered = answer(request);
                async move { Ok::<_, Infallible>(answered.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
            closed.fetch_add(1, Ordering::SeqCst);
        });
    }
}
