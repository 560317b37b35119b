//! A chat-like pool whose sessions survive the death of their server.
//!
//! A chat server (a PE of pool `chat`) keeps each session's history; after
//! every line it sends the history as a signed state cookie, and when a
//! session opens it sends a business card naming its partner server (its
//! last will). A client (`PoolSession`) talks to one server; when that
//! server is killed, the client fails over to the partner, which gets the
//! cookie before any data and goes on with the history.
//!
//! ```text
//! cargo run --release -p hapool --example chat -- failovers --count 100
//! ```
//!
//! runs a registrar (keep-alive 10 ms / 10 ms, the shortest allowed), two
//! chat servers as child processes with last wills pointing at each other,
//! and a client; it kills the serving process with SIGKILL `--count` times
//! (restarting it each time) and prints the time from each kill to the
//! client's first successful exchange with the other server, whether each
//! new server got the cookie before any data, and whether any line whose
//! send returned success was lost. `chat server ...` is the child mode.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hapool_client::{
    CookieKey, ElementSession, Incoming, PeConfig, PeHandle, PoolSession, PoolUser, PuConfig,
    SessionConfig, SessionEvent,
};
use hapool_proto::RegistrarConfig;
use hapool_wire::{Policy, PoolElement, PoolElementId, PoolHandle, RegistrarId, Transport};
use tokio::net::TcpListener;

/// The pool's cookie key (every chat server has it; clients never do).
const KEY: &[u8] = b"chat pool cookie key, 32 bytes.!";

fn pool() -> PoolHandle {
    PoolHandle::from("chat")
}

fn element(id: u32, port: u16) -> PoolElement {
    PoolElement {
        id: PoolElementId(id),
        home_registrar: RegistrarId(0),
        registration_life: 30_000,
        user_transport: Transport::tcp((Ipv4Addr::LOCALHOST, port).into()),
        policy: Policy::RoundRobin,
        asap_transport: None,
    }
}

fn session_config() -> SessionConfig {
    SessionConfig {
        cookie_key: Some(CookieKey::new(KEY).expect("a long key")),
        connect_timeout: Duration::from_millis(500),
        ..SessionConfig::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .with_context(|| format!("{name} is required"))
    };
    match args.first().map(String::as_str) {
        Some("server") => {
            server(
                flag("--registrar")?.parse()?,
                flag("--id")?.parse()?,
                flag("--port")?.parse()?,
                flag("--partner-id")?.parse()?,
                flag("--partner-port")?.parse()?,
            )
            .await
        }
        Some("failovers") => {
            let count = flag("--count").map_or(Ok(100), |c| c.parse())?;
            failovers(count).await
        }
        _ => bail!(
            "usage: chat failovers [--count N] | chat server --registrar A --id N --port P --partner-id M --partner-port Q"
        ),
    }
}

/// A chat server: each line is added to the session's history, the history
/// goes back as the cookie, and the answer names this server and the
/// number of lines. It prints `first cookie N` or `first data` for every
/// session, so that the parent can check what came first.
async fn server(
    registrar: SocketAddr,
    id: u32,
    port: u16,
    partner_id: u32,
    partner_port: u16,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
    let mut config = PeConfig::new(vec![registrar], pool(), element(id, port));
    config.retry_interval = Duration::from_millis(50);
    let mut pe = PeHandle::start(config);
    pe.wait_registered(Duration::from_secs(5)).await?;
    println!("registered");
    let will = vec![element(partner_id, partner_port)];
    loop {
        let (stream, _) = listener.accept().await?;
        let will = will.clone();
        tokio::spawn(async move {
            let mut s = ElementSession::new(stream, session_config());
            s.send_business_card(pool(), will).await.ok()?;
            let mut history: Vec<String> = Vec::new();
            let mut first = true;
            while let Some(incoming) = s.recv().await.ok()? {
                match incoming {
                    Incoming::CookieEcho(state) => {
                        history = String::from_utf8_lossy(&state)
                            .lines()
                            .map(str::to_owned)
                            .collect();
                        if first {
                            println!("first cookie {}", history.len());
                        }
                    }
                    Incoming::Data(line) => {
                        if first {
                            println!("first data");
                        }
                        history.push(String::from_utf8_lossy(&line).into_owned());
                        s.send_cookie(Bytes::from(history.join("\n"))).await.ok()?;
                        let answer = format!("{id} {} {}", history.len(), history.last()?);
                        s.send(Bytes::from(answer)).await.ok()?;
                    }
                    Incoming::CookieRefused(why) => println!("cookie refused {why:?}"),
                    Incoming::BusinessCard { .. } => {}
                }
                first = false;
            }
            Some(())
        });
    }
}

/// A chat server process, with its stdout read line by line.
struct Server {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Server {
    fn start(
        registrar: SocketAddr,
        id: u32,
        port: u16,
        partner: (u32, u16),
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["server", "--registrar", &registrar.to_string()])
            .args(["--id", &id.to_string(), "--port", &port.to_string()])
            .args(["--partner-id", &partner.0.to_string()])
            .args(["--partner-port", &partner.1.to_string()])
            .stdout(Stdio::piped())
            .spawn()?;
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().context("stdout")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let server = Self { child, lines };
        let line = server.lines.recv_timeout(Duration::from_secs(10))?;
        anyhow::ensure!(line == "registered", "server {id} said {line:?}");
        Ok(server)
    }

    /// SIGKILL, and wait for the process to be gone.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends line `n` and checks the answer: "<server> <lines> <last line>",
/// where every line sent so far is in the history (none was lost).
async fn exchange(session: &mut PoolSession, n: usize) -> anyhow::Result<()> {
    let line = format!("line {n}");
    session.send(Bytes::from(line.clone())).await?;
    let answer = session.recv().await?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let mut parts = answer.splitn(3, ' ');
    let (_, lines, last) = (parts.next(), parts.next(), parts.next());
    anyhow::ensure!(
        lines == Some(n.to_string().as_str()) && last == Some(line.as_str()),
        "answer {answer:?} to {line:?}: a line was lost"
    );
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

async fn failovers(count: usize) -> anyhow::Result<()> {
    let mut config = RegistrarConfig::new(RegistrarId(0xC4A7));
    config.keep_alive_interval = Duration::from_millis(10);
    config.keep_alive_timeout = Duration::from_millis(10);
    let registrar = hapool_registrar::start(config, TcpListener::bind("127.0.0.1:0").await?)?;
    let r = registrar.local_addr();
    let ports = [free_port()?, free_port()?];
    let ids = [1u32, 2];
    let mut servers = [
        Some(Server::start(r, ids[0], ports[0], (ids[1], ports[1]))?),
        Some(Server::start(r, ids[1], ports[1], (ids[0], ports[0]))?),
    ];
    let mut pu = PuConfig::new(vec![r]);
    pu.cache_ttl = Duration::ZERO;
    let pu = Arc::new(PoolUser::new(pu));
    let mut session = PoolSession::open(pu, pool(), SessionConfig::default()).await?;
    let mut sent = 0usize;
    sent += 1;
    exchange(&mut session, sent).await?;
    let mut times = Vec::with_capacity(count);
    let mut cookie_first = 0;
    for _ in 0..count {
        let serving = session.element().id;
        let k = ids
            .iter()
            .position(|&i| i == serving.0)
            .context("serving an unknown PE")?;
        let other = 1 - k;
        let killed = Instant::now();
        servers[k].take().context("running")?.kill();
        sent += 1;
        exchange(&mut session, sent).await?;
        times.push(killed.elapsed());
        let events = session.events();
        anyhow::ensure!(
            matches!(
                events.last(),
                Some(SessionEvent::FailoverFinished { to, cookie_echoed: true }) if to.0 == ids[other]
            ),
            "failover events {events:?}"
        );
        let first = servers[other]
            .as_ref()
            .context("running")?
            .lines
            .recv_timeout(Duration::from_secs(5))?;
        if first.starts_with("first cookie") {
            cookie_first += 1;
        } else {
            bail!("the new server's first input was {first:?}");
        }
        // The killed server comes back (its registration is gone already:
        // its connection to the registrar closed with it).
        servers[k] = Some(Server::start(
            r,
            ids[k],
            ports[k],
            (ids[other], ports[other]),
        )?);
    }
    times.sort_unstable();
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    println!(
        "{count} failovers after kill -9: first successful exchange on the new server median {:?}, p99 {:?}, max {:?}",
        pct(0.5),
        pct(0.99),
        times[times.len() - 1]
    );
    println!(
        "cookie before any data on the new server: {cookie_first} of {count}; lines sent {sent}, lost 0"
    );
    let bound = SessionConfig::default().connect_timeout * 2;
    println!(
        "target: under 2 x connect timeout ({bound:?}) + one round trip: {}",
        if pct(0.99) < bound { "met" } else { "missed" }
    );
    registrar.shutdown().await;
    Ok(())
}
