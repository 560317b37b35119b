//! The least a reverse proxy on hyper and tokio does per request, as a
//! yardstick for the gateway: one thread, nothing but the forwarding (no
//! timeouts, no header rewriting, no sessions, no failover, no metrics).
//! `bench/gateway-vs-haproxy.sh floor` runs it beside the gateway and
//! HAProxy. Its shapes (`--shape`):
//!
//! - `pooled` (the default): HTTP/1.1, each request sent round robin to
//!   the backends over kept connections shared by all clients and given
//!   back, as the gateway does, once the answer has been read; each
//!   message written with one `send`, as the gateway writes them. A
//!   request is polled four times in two tasks: the client's connection
//!   reads it, the backend's connection sends it and reads the answer, the
//!   client's connection writes that.
//! - `inline`: HTTP/1.1, each client connection with a backend connection
//!   of its own (round robin when the client connects), driven within the
//!   client connection's task: a request is handed over and its answer
//!   handed back within one poll of that task, two polls per request.
//! - `splice`: no HTTP; the bytes of each client connection copied to a
//!   backend connection of its own and back, as the gateway's TCP
//!   listeners do.
//!
//! `--work-us N` adds N microseconds of busy work (a spin on the clock) to
//! each request (with `splice`, to each read from a client), to tell how
//! much of a difference is the work's amount rather than its kind.
//!
//! `proxy-floor [--shape pooled|inline|splice] [--work-us N] LISTEN
//! BACKEND...`, addresses as `127.0.0.1:8080`.

#![allow(missing_docs)]

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use hapool_gateway::body::{AtEnd, OnEnd};
use hapool_gateway::{OnRead, Seen};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Pooled,
    Inline,
    Splice,
}

/// The backends, the next in turn, and the idle shared connections to each.
struct Backends {
    addresses: Vec<SocketAddr>,
    next: usize,
    idle: Vec<Vec<SendRequest<Incoming>>>,
}

impl Backends {
    fn next(&mut self) -> usize {
        self.next = (self.next + 1) % self.addresses.len();
        self.next
    }

    fn next_address(&mut self) -> SocketAddr {
        let backend = self.next();
        self.addresses[backend]
    }
}

type Shared = Rc<RefCell<Backends>>;

/// A client connection's own backend connection (`inline`), while no
/// request is on it.
type Own = Rc<RefCell<Option<SendRequest<Incoming>>>>;

/// Where a backend connection goes back to once its answer has been read.
enum Home {
    Shared(Shared, usize),
    Own(Own),
}

/// A backend connection whose answer is being read.
struct GiveBack {
    connection: SendRequest<Incoming>,
    home: Home,
}

impl AtEnd for GiveBack {
    fn at_end(self) {
        match self.home {
            Home::Shared(backends, backend) => {
                backends.borrow_mut().idle[backend].push(self.connection);
            }
            Home::Own(own) => *own.borrow_mut() = Some(self.connection),
        }
    }

    /// A connection whose answer broke off is not given back: dropped, it
    /// closes.
    fn broken(self, _: &(dyn std::error::Error + 'static)) {}
}

/// Spins for `work` (nothing when zero).
fn busy(work: Duration) {
    if !work.is_zero() {
        let start = Instant::now();
        while start.elapsed() < work {
            std::hint::spin_loop();
        }
    }
}

async fn connect(
    address: SocketAddr,
) -> std::io::Result<(
    SendRequest<Incoming>,
    Connection<TokioIo<TcpStream>, Incoming>,
)> {
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    hyper::client::conn::http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)
}

/// The connection a request goes on: the client's own, or an idle shared
/// one to the next backend, or a new shared one.
async fn checkout(backends: &Shared, own: Option<&Own>) -> std::io::Result<GiveBack> {
    if let Some(own) = own {
        let connection = own.borrow_mut().take();
        let connection = connection.ok_or_else(|| std::io::Error::other("no connection"))?;
        let home = Home::Own(own.clone());
        return Ok(GiveBack { connection, home });
    }
    let (backend, idle) = {
        let mut b = backends.borrow_mut();
        let backend = b.next();
        let mut idle = None;
        while let Some(sender) = b.idle[backend].pop() {
            if sender.is_ready() {
                idle = Some(sender);
                break;
            }
        }
        (backend, idle)
    };
    let connection = match idle {
        Some(sender) => sender,
        None => {
            let address = backends.borrow().addresses[backend];
            let (sender, connection) = connect(address).await?;
            tokio::task::spawn_local(connection);
            sender
        }
    };
    let home = Home::Shared(backends.clone(), backend);
    Ok(GiveBack { connection, home })
}

async fn proxy(
    backends: Shared,
    own: Option<Own>,
    work: Duration,
    request: Request<Incoming>,
) -> Result<Response<OnEnd<Incoming, GiveBack>>, std::io::Error> {
    busy(work);
    let mut give_back = checkout(&backends, own.as_ref()).await?;
    // A connection given back at the end of an answer may not yet have
    // finished with it.
    give_back
        .connection
        .ready()
        .await
        .map_err(std::io::Error::other)?;
    let response = give_back
        .connection
        .send_request(request)
        .await
        .map_err(std::io::Error::other)?;
    Ok(response.map(|body| OnEnd::new(body, give_back)))
}

/// Serves one client connection over HTTP/1.1.
async fn serve_http(stream: TcpStream, backends: Shared, shape: Shape, work: Duration) {
    let (own, backend_connection) = if shape == Shape::Inline {
        let address = backends.borrow_mut().next_address();
        match connect(address).await {
            Ok((sender, connection)) => {
                (Some(Rc::new(RefCell::new(Some(sender)))), Some(connection))
            }
            Err(e) => return eprintln!("proxy-floor: {address}: {e}"),
        }
    } else {
        (None, None)
    };
    let service = hyper::service::service_fn(move |request| {
        let (backends, own) = (backends.clone(), own.clone());
        async move {
            Ok::<_, Infallible>(
                proxy(backends, own, work, request)
                    .await
                    .unwrap_or_else(|e| {
                        eprintln!("proxy-floor: {e}");
                        std::process::exit(1)
                    }),
            )
        }
    });
    let client_connection = hyper::server::conn::http1::Builder::new()
        .writev(false)
        .serve_connection(TokioIo::new(stream), service);
    match backend_connection {
        Some(backend_connection) => {
            let _ = Together::new(client_connection, backend_connection).await;
        }
        None => {
            let _ = client_connection.await;
        }
    }
}

/// Whether the task was woken while [`Together`] polled its two futures.
struct Woken {
    polling: AtomicBool,
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst)
            && let Some(task) = self.task.lock().expect("not poisoned").as_ref()
        {
            task.wake_by_ref();
        }
    }
}

/// A client connection and its own backend connection in one task: both
/// polled, and again while either woke the task meanwhile (the one handing
/// work to the other), so that a request goes to the backend, and its
/// answer to the client, in the poll that brought it. Ends with the client
/// connection.
struct Together<A, B> {
    client: Pin<Box<A>>,
    backend: Option<Pin<Box<B>>>,
    woken: Arc<Woken>,
    waker: Waker,
}

impl<A: Future, B: Future> Together<A, B> {
    fn new(client: A, backend: B) -> Self {
        let woken = Arc::new(Woken {
            polling: AtomicBool::new(false),
            woken: AtomicBool::new(false),
            task: Mutex::new(None),
        });
        let waker = Waker::from(woken.clone());
        Self {
            client: Box::pin(client),
            backend: Some(Box::pin(backend)),
            woken,
            waker,
        }
    }
}

impl<A: Future, B: Future> Future for Together<A, B> {
    type Output = A::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<A::Output> {
        {
            let mut task = self.woken.task.lock().expect("not poisoned");
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let this = &mut *self;
        let mut inner = Context::from_waker(&this.waker);
        for _ in 0..16 {
            this.woken.polling.store(true, Ordering::SeqCst);
            this.woken.woken.store(false, Ordering::SeqCst);
            if let Poll::Ready(out) = this.client.as_mut().poll(&mut inner) {
                this.woken.polling.store(false, Ordering::SeqCst);
                return Poll::Ready(out);
            }
            if let Some(backend) = this.backend.as_mut()
                && backend.as_mut().poll(&mut inner).is_ready()
            {
                this.backend = None;
            }
            this.woken.polling.store(false, Ordering::SeqCst);
            if !this.woken.woken.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
        }
        // Still handing work back and forth: the rest in a later poll.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Copies one client connection's bytes to a backend connection of its
/// own and back.
async fn splice(stream: TcpStream, backends: Shared, work: Duration) {
    let address = backends.borrow_mut().next_address();
    let mut backend = match TcpStream::connect(address).await {
        Ok(backend) => backend,
        Err(e) => return eprintln!("proxy-floor: {address}: {e}"),
    };
    let _ = backend.set_nodelay(true);
    let mut client = OnRead::new(stream, move |seen| {
        if let Seen::Bytes(_) = seen {
            busy(work);
        }
    });
    let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
}

/// What the command line asks for.
struct Arguments {
    shape: Shape,
    work: Duration,
    listen: SocketAddr,
    addresses: Vec<SocketAddr>,
}

fn arguments(mut args: impl Iterator<Item = String>) -> Result<Arguments, String> {
    let address = |a: String| a.parse().map_err(|e| format!("address {a:?}: {e}"));
    let (mut shape, mut work) = (Shape::Pooled, Duration::ZERO);
    let mut positional = Vec::new();
    while let Some(arg) = args.next() {
        if !arg.starts_with("--") {
            positional.push(address(arg)?);
            continue;
        }
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--shape" => {
                shape = match value.as_str() {
                    "pooled" => Shape::Pooled,
                    "inline" => Shape::Inline,
                    "splice" => Shape::Splice,
                    _ => return Err(format!("no shape {value:?}")),
                }
            }
            "--work-us" => {
                let micros = value
                    .parse()
                    .map_err(|e| format!("--work-us {value:?}: {e}"))?;
                work = Duration::from_micros(micros);
            }
            _ => return Err(format!("no option {arg}")),
        }
    }
    if positional.len() < 2 {
        return Err("a listening address and at least one backend".into());
    }
    let listen = positional.remove(0);
    Ok(Arguments {
        shape,
        work,
        listen,
        addresses: positional,
    })
}

fn main() {
    let Arguments {
        shape,
        work,
        listen,
        addresses,
    } = arguments(std::env::args().skip(1)).unwrap_or_else(|e| {
        eprintln!("proxy-floor: {e}");
        eprintln!(
            "usage: proxy-floor [--shape pooled|inline|splice] [--work-us N] LISTEN BACKEND..."
        );
        std::process::exit(2)
    });
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
            match shape {
                Shape::Splice => tokio::task::spawn_local(splice(stream, backends, work)),
                _ => tokio::task::spawn_local(serve_http(stream, backends, shape, work)),
            };
        }
    });
}
