//! The least an HTTP/1.1 reverse proxy built on hyper and tokio does per
//! request, as a yardstick for the gateway: one thread, requests sent
//! round robin to the backends over kept connections (given back, as the
//! gateway does, once a response has been read), each message written with
//! one `send` (as the gateway writes them), nothing else (no
//! timeouts, no header rewriting, no sessions, no failover, no metrics).
//! `bench/gateway-vs-haproxy.sh floor` runs it beside the gateway and
//! HAProxy.
//!
//! `proxy-floor LISTEN BACKEND...`, addresses as `127.0.0.1:8080`.

#![allow(missing_docs)]

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;

use hapool_gateway::body::{AtEnd, OnEnd};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The backends and the idle connections to each.
struct Backends {
    addresses: Vec<SocketAddr>,
    next: usize,
    idle: Vec<Vec<SendRequest<Incoming>>>,
}

type Shared = Rc<RefCell<Backends>>;

/// A backend connection whose response is being read; it goes back to
/// the idle ones once the body has been read to the end.
struct GiveBack {
    connection: SendRequest<Incoming>,
    backends: Shared,
    backend: usize,
}

impl AtEnd for GiveBack {
    fn at_end(self) {
        self.backends.borrow_mut().idle[self.backend].push(self.connection);
    }
}

async fn connect(address: SocketAddr) -> std::io::Result<SendRequest<Incoming>> {
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::task::spawn_local(connection);
    Ok(sender)
}

async fn proxy(
    backends: Shared,
    request: Request<Incoming>,
) -> Result<Response<OnEnd<Incoming, GiveBack>>, std::io::Error> {
    let (backend, idle) = {
        let mut b = backends.borrow_mut();
        b.next = (b.next + 1) % b.addresses.len();
        let backend = b.next;
        let mut idle = None;
        while let Some(sender) = b.idle[backend].pop() {
            if sender.is_ready() {
                idle = Some(sender);
                break;
            }
        }
        (backend, idle)
    };
    let mut sender = match idle {
        Some(sender) => sender,
        None => {
            let address = backends.borrow().addresses[backend];
            connect(address).await?
        }
    };
    let response = sender
        .send_request(request)
        .await
        .map_err(std::io::Error::other)?;
    Ok(response.map(|body| {
        OnEnd::new(
            body,
            GiveBack {
                connection: sender,
                backends,
                backend,
            },
        )
    }))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: proxy-floor LISTEN BACKEND...";
    let listen: SocketAddr = args.next().expect(usage).parse().expect(usage);
    let addresses: Vec<SocketAddr> = args.map(|a| a.parse().expect(usage)).collect();
    assert!(!addresses.is_empty(), "{usage}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .event_interval(256)
        .build()
        .expect("a runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let backends = Rc::new(RefCell::new(Backends {
            idle: addresses.iter().map(|_| Vec::new()).collect(),
            addresses,
            next: 0,
        }));
        let listener = TcpListener::bind(listen)
            .await
            .expect("the listening address");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let backends = backends.clone();
            tokio::task::spawn_local(async move {
                let service = hyper::service::service_fn(move |request| {
                    let backends = backends.clone();
                    async move {
                        Ok::<_, Infallible>(proxy(backends, request).await.unwrap_or_else(|e| {
                            eprintln!("proxy-floor: {e}");
                            std::process::exit(1)
                        }))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .writev(false)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
