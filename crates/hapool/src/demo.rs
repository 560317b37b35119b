//! `hapool demo`: a whole installation in one process, on loopback.
//!
//! Three registrars in one ENRP cluster; an HTTP pool `web` (Least Used)
//! of three servers and a TCP echo pool `echo` (Weighted Round Robin) of
//! two, each server kept registered by the pool element library; a gateway
//! in front of both pools; a steady client load through the gateway (each
//! HTTP client asks in turn for a server's name, a few bytes, and its
//! page, 4 KiB). A third of the way in, server `web-2` dies; half way,
//! registrar 2 stops without a word to its peers. A progress line each
//! second shows requests served and failed and which registrar is home
//! for how many PEs; the summary says when each death was detected and
//! whether any client request failed.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use hapool_client::{PeConfig, PeHandle};
use hapool_gateway::{
    Affinity, Gateway, GatewayConfig, ListenerConfig, MemberSource, PoolSettings, ProbeKind,
    Protocol,
};
use hapool_proto::{EnrpConfig, RegistrarConfig};
use hapool_registrar::{EnrpListener, Listeners, RegistrarClient, RegistrarHandle};
use hapool_wire::{Policy, PoolElement, PoolElementId, PoolHandle, RegistrarId, Transport};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

/// Options of `hapool demo`.
#[derive(clap::Args)]
pub(crate) struct DemoArgs {
    /// How long to run; Ctrl-C ends it sooner.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
}

/// Client-side counts.
#[derive(Default)]
struct Counts {
    http_ok: AtomicU64,
    http_failed: AtomicU64,
    echo_ok: AtomicU64,
    echo_failed: AtomicU64,
}

/// A demo server: its accept task (aborting it closes every connection)
/// and the PE that keeps it registered.
struct Server {
    name: String,
    task: JoinHandle<()>,
    pe: PeHandle,
}

const HEARTBEAT: Duration = Duration::from_millis(200);

async fn registrar(id: u32, peers: Vec<SocketAddr>) -> anyhow::Result<RegistrarHandle> {
    let mut config = RegistrarConfig::new(RegistrarId(id));
    config.keep_alive_interval = Duration::from_millis(500);
    config.keep_alive_timeout = Duration::from_millis(500);
    config.enrp = EnrpConfig {
        peers,
        ..EnrpConfig::fast(HEARTBEAT)
    };
    let loopback = (Ipv4Addr::LOCALHOST, 0);
    Ok(hapool_registrar::start_serving(
        config,
        Listeners {
            asap: TcpListener::bind(loopback).await?,
            tls: None,
            announce_to: None,
            enrp: Some(EnrpListener {
                listener: TcpListener::bind(loopback).await?,
                tls: None,
                multicast: None,
            }),
        },
    )?)
}

/// The size of the page a demo web server serves at [`PAGE_PATH`].
const PAGE_BYTES: usize = 4096;

/// The path of a demo web server's page; every other path is answered
/// with the server's name alone.
const PAGE_PATH: &str = "/page";

/// The page `name` serves: its name, then filler lines, [`PAGE_BYTES`] in
/// all.
fn page(name: &str) -> Bytes {
    let mut page = format!("{name}\n").into_bytes();
    let filler = b"hapool demo page: filler for a response of a few KiB\n";
    let room = PAGE_BYTES.saturating_sub(page.len());
    page.extend(filler.iter().cycle().take(room));
    Bytes::from(page)
}

/// An HTTP server answering [`PAGE_PATH`] with its page and every other
/// request with its name: a few KiB and a few bytes, as a site's pages
/// and its API.
async fn web_server(name: String) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let short = Bytes::from(format!("{name}\n"));
    let long = page(&name);
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (short, long) = (short.clone(), long.clone());
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                    let body = if request.uri().path() == PAGE_PATH {
                        long.clone()
                    } else {
                        short.clone()
                    };
                    async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
            while connections.try_join_next().is_some() {}
        }
    });
    Ok((addr, task))
}

/// A TCP server answering each line with `<name> <line>`.
async fn echo_server(name: String) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let name = name.clone();
            connections.spawn(async move {
                let (read, mut write) = stream.into_split();
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
            });
            while connections.try_join_next().is_some() {}
        }
    });
    Ok((addr, task))
}

async fn serve_and_register(
    name: String,
    pool: &str,
    id: u32,
    policy: Policy,
    registrars: Vec<SocketAddr>,
    http: bool,
) -> anyhow::Result<Server> {
    let (addr, task) = if http {
        web_server(name.clone()).await?
    } else {
        echo_server(name.clone()).await?
    };
    let element = PoolElement {
        id: PoolElementId(id),
        home_registrar: RegistrarId(0),
        registration_life: 2_000,
        user_transport: Transport::tcp(addr),
        policy,
        asap_transport: None,
    };
    let mut config = PeConfig::new(registrars, PoolHandle::from(pool), element);
    config.retry_interval = Duration::from_millis(100);
    let mut pe = PeHandle::start(config);
    pe.wait_registered(Duration::from_secs(5))
        .await
        .with_context(|| format!("{name} could not register"))?;
    Ok(Server { name, task, pe })
}

/// How many PEs each registrar is home for, seen by `client`.
async fn homes(client: &RegistrarClient) -> Vec<(u32, usize)> {
    let mut counts: Vec<(u32, usize)> = Vec::new();
    for pool in client.snapshot().await {
        for e in pool.elements {
            match counts.iter_mut().find(|(id, _)| *id == e.home_registrar.0) {
                Some((_, n)) => *n += 1,
                None => counts.push((e.home_registrar.0, 1)),
            }
        }
    }
    counts.sort_unstable();
    counts
}

fn http_load(gateway: SocketAddr, counts: Arc<Counts>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Empty<Bytes>>();
        let name_uri: hyper::Uri = format!("http://{gateway}/").parse().expect("a URI");
        let page_uri: hyper::Uri = format!("http://{gateway}{PAGE_PATH}")
            .parse()
            .expect("a URI");
        // Each client asks for a server's name and its page in turn.
        for uri in [name_uri, page_uri].iter().cycle() {
            // An answer counts once its whole body has come.
            let served = match client.get(uri.clone()).await {
                Ok(response) if response.status().is_success() => {
                    response.into_body().collect().await.is_ok()
                }
                _ => false,
            };
            if served {
                counts.http_ok.fetch_add(1, Ordering::Relaxed);
            } else {
                counts.http_failed.fetch_add(1, Ordering::Relaxed);
            }
            sleep(Duration::from_millis(5)).await;
        }
    })
}

fn echo_load(gateway: SocketAddr, counts: Arc<Counts>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let ok = async {
                let stream = TcpStream::connect(gateway).await.ok()?;
                let (read, mut write) = stream.into_split();
                write.write_all(b"hello\n").await.ok()?;
                let line = BufReader::new(read).lines().next_line().await.ok()??;
                line.ends_with(" hello").then_some(())
            }
            .await;
            let counter = if ok.is_some() {
                &counts.echo_ok
            } else {
                &counts.echo_failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            sleep(Duration::from_millis(20)).await;
        }
    })
}

pub(crate) async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    if args.duration < Duration::from_secs(6) {
        bail!("--duration must be at least 6s, for the scripted failures to play out");
    }
    println!("hapool demo: three registrars, two pools, a gateway, on 127.0.0.1");
    let mut registrars: Vec<Option<RegistrarHandle>> = Vec::new();
    let mut enrp = Vec::new();
    for id in 1..=3 {
        let r = registrar(id, enrp.clone()).await?;
        enrp.push(r.enrp_addr().expect("ENRP is on"));
        println!(
            "  registrar {id:08x}: ASAP {}, ENRP {}",
            r.local_addr(),
            enrp[enrp.len() - 1]
        );
        registrars.push(Some(r));
    }
    let asap: Vec<SocketAddr> = registrars
        .iter()
        .flatten()
        .map(RegistrarHandle::local_addr)
        .collect();
    let clients: Vec<RegistrarClient> = registrars
        .iter()
        .flatten()
        .map(RegistrarHandle::client)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    for client in &clients {
        while client.peers().await.len() < 2 {
            if Instant::now() > deadline {
                bail!("the registrars did not find each other within 5 s");
            }
            sleep(Duration::from_millis(20)).await;
        }
    }
    // Each server prefers a different home registrar.
    let rotated = |i: usize| {
        let mut list = asap.clone();
        let n = list.len();
        list.rotate_left(i % n);
        list
    };
    let mut servers = Vec::new();
    for i in 1..=3_u32 {
        let load = i * (u32::MAX / 10);
        servers.push(
            serve_and_register(
                format!("web-{i}"),
                "web",
                0x100 + i,
                Policy::LeastUsed { load },
                rotated(i as usize - 1),
                true,
            )
            .await?,
        );
    }
    for i in 1..=2_u32 {
        servers.push(
            serve_and_register(
                format!("echo-{i}"),
                "echo",
                0x200 + i,
                Policy::WeightedRoundRobin { weight: i },
                rotated(i as usize),
                false,
            )
            .await?,
        );
    }
    println!(
        "  pool web: web-1..3 (HTTP, Least Used); pool echo: echo-1 (weight 1), echo-2 (weight 2)"
    );

    let (admin_listener, metrics) = crate::admin::bind((Ipv4Addr::LOCALHOST, 0).into()).await?;
    // With a session limit, the gateway's own count of open requests
    // weighs in the availability index beside the registered load.
    let registrar_pool = |handle: &str, probe, max_sessions| PoolSettings {
        max_sessions,
        probe,
        ..PoolSettings::new(PoolHandle::from(handle), MemberSource::Registrars)
    };
    let listener = |protocol, pool: &str, affinity| ListenerConfig {
        address: (Ipv4Addr::LOCALHOST, 0).into(),
        protocol,
        pool: PoolHandle::from(pool),
        tls: None,
        affinity,
        max_connections: 10_000,
        accept_proxy_protocol: false,
        abort_on_close: false,
    };
    let mut config = GatewayConfig::new(
        vec![
            listener(Protocol::Http, "web", Affinity::Cookie),
            // Without affinity, so that echo's weights show (every demo
            // client has the same address).
            listener(Protocol::Tcp, "echo", Affinity::None),
        ],
        vec![
            registrar_pool("web", ProbeKind::Http { path: "/".into() }, Some(4)),
            registrar_pool("echo", ProbeKind::Tcp, None),
        ],
    );
    config.registrars = asap.clone();
    config.refresh = Duration::from_millis(200);
    config.probe_interval = Duration::from_millis(200);
    config.workers = 1;
    let gateway = Gateway::start(config).await?;
    let [http_addr, tcp_addr] = gateway.local_addrs()[..] else {
        bail!("the gateway has two listeners");
    };
    let view = gateway.view();
    let admin_addr = admin_listener.local_addr()?;
    let status_view = view.clone();
    let status: crate::admin::StatusFn = Arc::new(move || {
        let doc = serde_json::to_value(status_view.status()).unwrap_or_default();
        Box::pin(async move { doc })
    });
    tokio::spawn(crate::admin::serve(
        admin_listener,
        crate::admin::Access::default(),
        status,
        metrics,
    ));
    println!("  gateway: HTTP {http_addr} -> web, TCP {tcp_addr} -> echo");
    println!(
        "  dashboard: http://{admin_addr}/   status: http://{admin_addr}/status   metrics: http://{admin_addr}/metrics"
    );
    println!("  try: curl http://{http_addr}/   |   hapool gateway ctl --admin {admin_addr} list");

    let counts = Arc::new(Counts::default());
    let mut load = Vec::new();
    for _ in 0..args.clients.max(1) {
        load.push(http_load(http_addr, counts.clone()));
    }
    load.push(echo_load(tcp_addr, counts.clone()));

    let started = Instant::now();
    let kill_server_at = args.duration / 3;
    let kill_registrar_at = args.duration / 2;
    let mut server_killed: Option<Instant> = None;
    let mut server_gone: Option<Duration> = None;
    let mut registrar_killed: Option<Instant> = None;
    let mut rehomed: Option<(Duration, Vec<(u32, usize)>)> = None;
    let mut declared_dead: Option<Duration> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut next_line = Duration::from_secs(1);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    println!();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut ctrl_c => {
                println!("  interrupted");
                break;
            }
        }
        let elapsed = started.elapsed();
        if elapsed >= args.duration {
            break;
        }
        if server_killed.is_none() && elapsed >= kill_server_at {
            let victim = servers.remove(1);
            victim.task.abort();
            victim.pe.abort();
            println!(
                "  [{:>3}s] {} dies (its process and its registration connection are gone)",
                elapsed.as_secs(),
                victim.name
            );
            server_killed = Some(Instant::now());
        }
        if registrar_killed.is_none() && elapsed >= kill_registrar_at {
            if let Some(r) = registrars[1].take() {
                r.shutdown().await;
            }
            println!(
                "  [{:>3}s] registrar 00000002 stops without a word to its peers",
                elapsed.as_secs()
            );
            registrar_killed = Some(Instant::now());
        }
        let survivor = &clients[0];
        if let Some(at) = server_killed
            && server_gone.is_none()
        {
            let in_registrar = survivor
                .snapshot()
                .await
                .iter()
                .any(|p| p.elements.iter().any(|e| e.id == PoolElementId(0x102)));
            let in_gateway = view
                .pool(&PoolHandle::from("web"))
                .and_then(|p| p.member(PoolElementId(0x102)))
                .is_some_and(|m| m.is_reachable());
            if !in_registrar && !in_gateway {
                server_gone = Some(at.elapsed());
                println!(
                    "  [{:>3}s] web-2 is out of the handlespace and out of the gateway's choice ({} ms after its death)",
                    elapsed.as_secs(),
                    at.elapsed().as_millis()
                );
            }
        }
        if let Some(at) = registrar_killed
            && rehomed.is_none()
        {
            let now_homes = homes(survivor).await;
            if !now_homes.is_empty() && now_homes.iter().all(|(id, _)| *id != 2) {
                rehomed = Some((at.elapsed(), now_homes.clone()));
                println!(
                    "  [{:>3}s] every PE of registrar 00000002 has a new home ({} ms after it stopped)",
                    elapsed.as_secs(),
                    at.elapsed().as_millis()
                );
            }
        }
        if let Some(at) = registrar_killed
            && declared_dead.is_none()
        {
            let peers = survivor.peers().await;
            if !peers.is_empty() && peers.iter().all(|p| p.id.0 != 2) {
                declared_dead = Some(at.elapsed());
                println!(
                    "  [{:>3}s] the other registrars declare 00000002 dead ({} ms after it stopped)",
                    elapsed.as_secs(),
                    at.elapsed().as_millis()
                );
            }
        }
        if elapsed >= next_line {
            next_line += Duration::from_secs(1);
            let homes_text: Vec<String> = homes(survivor)
                .await
                .iter()
                .map(|(id, n)| format!("r{id}:{n}"))
                .collect();
            let alive = registrars.iter().flatten().count();
            println!(
                "  [{:>3}s] http {} served, {} failed | echo {} served, {} failed | registrars up {alive} | homes {}",
                elapsed.as_secs(),
                counts.http_ok.load(Ordering::Relaxed),
                counts.http_failed.load(Ordering::Relaxed),
                counts.echo_ok.load(Ordering::Relaxed),
                counts.echo_failed.load(Ordering::Relaxed),
                homes_text.join(" "),
            );
        }
    }
    for task in load {
        task.abort();
    }
    let failed =
        counts.http_failed.load(Ordering::Relaxed) + counts.echo_failed.load(Ordering::Relaxed);
    let served = counts.http_ok.load(Ordering::Relaxed) + counts.echo_ok.load(Ordering::Relaxed);
    println!();
    println!("summary after {} s:", started.elapsed().as_secs());
    println!(
        "  requests served: {served} (http {}, echo {}); failed: {failed}",
        counts.http_ok.load(Ordering::Relaxed),
        counts.echo_ok.load(Ordering::Relaxed)
    );
    for pool in view.status().pools {
        let spread: Vec<String> = pool
            .members
            .iter()
            .map(|m| format!("{:08x}:{}", m.id, m.chosen))
            .collect();
        println!(
            "  gateway pool {}: sessions sent per member {}",
            pool.pool,
            spread.join(" ")
        );
    }
    match (server_killed, server_gone) {
        (Some(_), Some(after)) => println!(
            "  killed server detected: web-2 removed {} ms after its death",
            after.as_millis()
        ),
        (Some(_), None) => println!("  killed server NOT detected: web-2 is still chosen"),
        (None, _) => println!("  the server was not killed (the run ended first)"),
    }
    match (registrar_killed, &rehomed, declared_dead) {
        (Some(_), Some((after, homes)), Some(dead)) => {
            let text: Vec<String> = homes.iter().map(|(id, n)| format!("r{id}:{n}")).collect();
            println!(
                "  killed registrar detected: declared dead by its peers {} ms after it stopped; its PEs re-homed after {} ms (homes now {})",
                dead.as_millis(),
                after.as_millis(),
                text.join(" ")
            );
        }
        (Some(_), _, _) => {
            println!("  killed registrar NOT detected: still a peer, or PEs still homed there");
        }
        (None, _, _) => println!("  the registrar was not killed (the run ended first)"),
    }
    let complete = server_killed.is_some() && registrar_killed.is_some();
    let detected = server_gone.is_some() && rehomed.is_some() && declared_dead.is_some();
    for server in servers {
        server.pe.stop().await;
        server.task.abort();
    }
    gateway.shutdown().await;
    for r in registrars.into_iter().flatten() {
        r.shutdown().await;
    }
    if failed > 0 || (complete && !detected) || served == 0 {
        println!("result: FAILED");
        bail!(
            "the demo saw {failed} failed requests{}",
            if complete && !detected {
                " and an undetected failure"
            } else {
                ""
            }
        );
    }
    println!(
        "result: OK: no client request failed{}",
        if complete {
            " through a server's and a registrar's death"
        } else {
            ""
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_its_servers_name_then_filler_to_its_size() {
        let page = page("web-1");
        assert_eq!(page.len(), PAGE_BYTES);
        assert!(page.starts_with(b"web-1\n"));
        assert!(page[6..].starts_with(b"hapool demo page: "));
        assert!(page.iter().all(u8::is_ascii));
    }
}
