//! `hapool bench`: load on a running registrar, over real TCP connections.
//!
//! Three phases, each for `--duration`, each with `--concurrency`
//! connections that send one request and wait for its answer before the
//! next: registrations of new PEs, re-registrations of those PEs with a new
//! load, and handle resolutions. Connection *i* works on its own pool
//! (`POOL-i`), so that no pool reaches the registrar's per-pool limit.
//! Prints requests per second and latency percentiles for each phase.
//!
//! For a registrar cluster:
//! - `--convergence --observe C`: registers `--count` PEs at `--registrar`
//!   one after another and, after each, resolves at registrar `C` until the
//!   PE is there: how long a registration takes to reach another
//!   registrar. With `--admin` (the first registrar's admin port) it also
//!   reports the ENRP bytes that registrar sent per registration.
//! - `--takeover PID --observe C`: registers `--count` PEs at
//!   `--registrar`, waits until `C` has them, kills the first registrar
//!   (SIGKILL to PID, a process the caller started) and reports when `C`
//!   shows every one of them with a new home.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use hapool_net::{MessageReader, write_message};
use hapool_wire::{
    AsapMessage, DEFAULT_MAX_MESSAGE, Policy, PoolElement, PoolElementId, PoolHandle, RegistrarId,
    ResolutionOutcome, Transport,
};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

/// Options of `hapool bench`.
#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// The registrar to load (start it with `--registration-rate 0
    /// --resolution-rate 0` so its per-connection limits do not cap the run).
    #[arg(long, default_value = "127.0.0.1:3863")]
    registrar: SocketAddr,
    /// Connections working at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u32,
    /// How long each phase runs.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Prefix of the pools to use.
    #[arg(long, default_value = "hapool-bench")]
    pool: String,
    /// PEs asked for per resolution.
    #[arg(long, default_value_t = 3)]
    items: u32,
    /// Instead of the load phases, measure failure detection: how long a
    /// PE that stops answering keep-alives, and one whose connection
    /// closes, stay in resolution.
    #[arg(long)]
    failure_detection: bool,
    /// Measure how fast registrations reach the registrar at `--observe`.
    #[arg(long, requires = "observe")]
    convergence: bool,
    /// Kill this process (the registrar at `--registrar`) and measure how
    /// fast the registrar at `--observe` re-homes its PEs.
    #[arg(long, requires = "observe")]
    takeover: Option<u32>,
    /// Another registrar of the cluster, where changes are watched for.
    #[arg(long)]
    observe: Option<SocketAddr>,
    /// PEs to register for `--convergence` and `--takeover`.
    #[arg(long, default_value_t = 10_000)]
    count: u32,
    /// The admin port of the registrar at `--registrar`, to read its ENRP
    /// byte counter.
    #[arg(long)]
    admin: Option<SocketAddr>,
}

struct Conn {
    reader: MessageReader<OwnedReadHalf, AsapMessage>,
    writer: OwnedWriteHalf,
}

impl Conn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to the registrar at {addr}"))?;
        stream.set_nodelay(true)?;
        let (read, writer) = stream.into_split();
        Ok(Self {
            reader: MessageReader::new(read, DEFAULT_MAX_MESSAGE),
            writer,
        })
    }

    /// Sends `request` and returns the answer, skipping keep-alives (which
    /// it acknowledges).
    async fn call(&mut self, request: &AsapMessage) -> anyhow::Result<AsapMessage> {
        write_message(&mut self.writer, request).await?;
        loop {
            let Some(decoded) = self.reader.next().await? else {
                bail!("the registrar closed the connection");
            };
            match keep_alive_ack(&decoded.message) {
                Some(ack) => write_message(&mut self.writer, &ack).await?,
                None => return Ok(decoded.message),
            }
        }
    }
}

/// The answer to a keep-alive, when `message` is one.
fn keep_alive_ack(message: &AsapMessage) -> Option<AsapMessage> {
    match message {
        AsapMessage::EndpointKeepAlive {
            pool_handle,
            pe_id: Some(pe_id),
            ..
        } => Some(AsapMessage::EndpointKeepAliveAck {
            pool_handle: pool_handle.clone(),
            pe_id: *pe_id,
        }),
        _ => None,
    }
}

fn element(id: u32, load: u32) -> PoolElement {
    PoolElement {
        id: PoolElementId(id),
        home_registrar: RegistrarId(0),
        registration_life: 60_000,
        user_transport: Transport::tcp(SocketAddr::from((
            [10, (id >> 16) as u8, (id >> 8) as u8, id as u8],
            80,
        ))),
        policy: Policy::LeastUsed { load },
        asap_transport: None,
    }
}

#[derive(Clone, Copy)]
enum Phase {
    Register,
    Reregister,
    Resolve,
}

/// Runs one phase on `conns`; returns (requests, latencies in µs).
async fn phase(
    conns: Vec<Conn>,
    phase: Phase,
    args: &BenchArgs,
    registered: &[Vec<u32>],
) -> anyhow::Result<(Vec<Conn>, Vec<Vec<u32>>, Vec<u64>, Duration)> {
    let start = Instant::now();
    let end = start + args.duration;
    let mut tasks = Vec::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let pool = PoolHandle::from(format!("{}-{i}", args.pool).as_str());
        let mine = registered.get(i).cloned().unwrap_or_default();
        let items = args.items;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut ids = mine.clone();
            let mut n = 0u32;
            while Instant::now() < end {
                let request = match phase {
                    Phase::Register => {
                        let id = (i as u32 + 1) << 20 | (n + 1);
                        ids.push(id);
                        AsapMessage::Registration {
                            pool_handle: pool.clone(),
                            pool_element: element(id, n),
                            auth_token: None,
                        }
                    }
                    Phase::Reregister => {
                        let id = mine[n as usize % mine.len()];
                        AsapMessage::Registration {
                            pool_handle: pool.clone(),
                            pool_element: element(id, n.wrapping_mul(7919)),
                            auth_token: None,
                        }
                    }
                    Phase::Resolve => AsapMessage::HandleResolution {
                        subscribe: false,
                        pool_handle: pool.clone(),
                        items: Some(items),
                    },
                };
                let sent = Instant::now();
                let answer = conn.call(&request).await?;
                latencies.push(sent.elapsed().as_micros() as u64);
                match answer {
                    AsapMessage::RegistrationResponse { reject: false, .. } => {}
                    AsapMessage::HandleResolutionResponse {
                        outcome: ResolutionOutcome::Members { .. },
                        ..
                    } => {}
                    other => bail!("the registrar refused: {other:?}"),
                }
                n += 1;
            }
            Ok::<_, anyhow::Error>((conn, ids, latencies))
        }));
    }
    let mut conns = Vec::new();
    let mut ids = Vec::new();
    let mut latencies = Vec::new();
    for task in tasks {
        let (conn, mine, l) = task.await??;
        conns.push(conn);
        ids.push(mine);
        latencies.extend(l);
    }
    Ok((conns, ids, latencies, start.elapsed()))
}

fn report(name: &str, mut latencies: Vec<u64>, elapsed: Duration) {
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "{name:<16} {:>9} requests  {:>10.0} /s   p50 {:>5} µs   p99 {:>6} µs",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
    );
}

/// Resolves `pool` every 2 ms until the registrar no longer knows it;
/// returns when that happened.
async fn wait_until_gone(conn: &mut Conn, pool: &PoolHandle) -> anyhow::Result<Instant> {
    let resolve = AsapMessage::HandleResolution {
        subscribe: false,
        pool_handle: pool.clone(),
        items: None,
    };
    let start = Instant::now();
    loop {
        match conn.call(&resolve).await? {
            AsapMessage::HandleResolutionResponse {
                outcome: ResolutionOutcome::Error(_),
                ..
            } => return Ok(Instant::now()),
            _ if start.elapsed() > Duration::from_secs(120) => bail!("the PE outlived 120 s"),
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

async fn failure_detection(args: &BenchArgs) -> anyhow::Result<()> {
    let mut user = Conn::open(args.registrar).await?;
    // A hung PE: registered, then it never reads again, so keep-alives go
    // unanswered.
    let pool = PoolHandle::from(format!("{}-hung", args.pool).as_str());
    let mut hung = Conn::open(args.registrar).await?;
    let registration = AsapMessage::Registration {
        pool_handle: pool.clone(),
        pool_element: element(1, 0),
        auth_token: None,
    };
    hung.call(&registration).await?;
    let registered = Instant::now();
    let gone = wait_until_gone(&mut user, &pool).await?;
    println!(
        "hung PE (keep-alives unanswered): out of resolution {} ms after registering",
        (gone - registered).as_millis()
    );
    // A killed PE: its connection closes.
    let pool = PoolHandle::from(format!("{}-killed", args.pool).as_str());
    let mut killed = Conn::open(args.registrar).await?;
    let registration = AsapMessage::Registration {
        pool_handle: pool.clone(),
        pool_element: element(2, 0),
        auth_token: None,
    };
    killed.call(&registration).await?;
    let died = Instant::now();
    drop(killed);
    let gone = wait_until_gone(&mut user, &pool).await?;
    println!(
        "killed PE (connection closed): out of resolution {} ms after it died",
        (gone - died).as_millis()
    );
    drop(hung);
    Ok(())
}

/// A connection that answers keep-alives by itself, so that the PEs
/// registered on it stay registered while the bench looks elsewhere.
struct PeConn {
    writer: std::sync::Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    answers: tokio::sync::mpsc::Receiver<AsapMessage>,
}

impl PeConn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let Conn { mut reader, writer } = Conn::open(addr).await?;
        let writer = std::sync::Arc::new(tokio::sync::Mutex::new(writer));
        let (tx, answers) = tokio::sync::mpsc::channel(16);
        let acks = writer.clone();
        tokio::spawn(async move {
            while let Ok(Some(decoded)) = reader.next().await {
                let sent = match keep_alive_ack(&decoded.message) {
                    Some(ack) => write_message(&mut *acks.lock().await, &ack).await.is_ok(),
                    None => tx.send(decoded.message).await.is_ok(),
                };
                if !sent {
                    return;
                }
            }
        });
        Ok(Self { writer, answers })
    }

    async fn register(&mut self, pool: &PoolHandle, element: PoolElement) -> anyhow::Result<()> {
        let request = AsapMessage::Registration {
            pool_handle: pool.clone(),
            pool_element: element,
            auth_token: None,
        };
        write_message(&mut *self.writer.lock().await, &request).await?;
        match self.answers.recv().await {
            Some(AsapMessage::RegistrationResponse { reject: false, .. }) => Ok(()),
            Some(other) => bail!("the registrar refused: {other:?}"),
            None => bail!("the registrar closed the connection"),
        }
    }
}

/// The PEs of `pool` at the registrar on `conn` (as many as it returns).
async fn members(conn: &mut Conn, pool: &PoolHandle) -> anyhow::Result<Vec<PoolElement>> {
    let resolve = AsapMessage::HandleResolution {
        subscribe: false,
        pool_handle: pool.clone(),
        items: Some(u32::MAX),
    };
    Ok(match conn.call(&resolve).await? {
        AsapMessage::HandleResolutionResponse {
            outcome: ResolutionOutcome::Members { elements, .. },
            ..
        } => elements,
        _ => Vec::new(),
    })
}

/// PEs per pool in `--convergence` and `--takeover` (within the
/// registrar's default of 128 PEs per resolution).
const PER_POOL: u32 = 100;

fn cluster_pool(args: &BenchArgs, i: u32) -> PoolHandle {
    PoolHandle::from(format!("{}-cluster-{}", args.pool, i / PER_POOL).as_str())
}

/// The value of a counter in Prometheus text, summed over its labels
/// matching `label`.
async fn counter(admin: SocketAddr, name: &str, label: &str) -> anyhow::Result<f64> {
    let (_, body) = crate::admin::http_get(&format!("http://{admin}/metrics")).await?;
    let text = String::from_utf8_lossy(&body);
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

async fn convergence(args: &BenchArgs) -> anyhow::Result<()> {
    let observe = args.observe.context("--observe is required")?;
    let mut pe = PeConn::open(args.registrar).await?;
    let mut watcher = Conn::open(observe).await?;
    let bytes_before = match args.admin {
        Some(admin) => Some(counter(admin, "hapool_registrar_enrp_bytes_total", "out").await?),
        None => None,
    };
    let mut latencies = Vec::with_capacity(args.count as usize);
    let start = Instant::now();
    for i in 0..args.count {
        let pool = cluster_pool(args, i);
        let id = 0x0100_0000 + i;
        let sent = Instant::now();
        pe.register(&pool, element(id, i)).await?;
        loop {
            if members(&mut watcher, &pool)
                .await?
                .iter()
                .any(|e| e.id.0 == id)
            {
                break;
            }
            if sent.elapsed() > Duration::from_secs(10) {
                bail!("PE {id:08x} not at {observe} 10 s after its registration");
            }
        }
        latencies.push(sent.elapsed().as_micros() as u64);
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "convergence {} registrations: resolvable at another registrar p50 {} µs p99 {} µs ({:.1} s)",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        elapsed.as_secs_f64()
    );
    if let (Some(admin), Some(before)) = (args.admin, bytes_before) {
        let after = counter(admin, "hapool_registrar_enrp_bytes_total", "out").await?;
        println!(
            "ENRP bytes sent by the registering registrar: {:.0} per registration (all peers, presences included)",
            (after - before) / f64::from(args.count)
        );
    }
    Ok(())
}

async fn takeover(args: &BenchArgs, pid: u32) -> anyhow::Result<()> {
    let observe = args.observe.context("--observe is required")?;
    let mut pe = PeConn::open(args.registrar).await?;
    let mut watcher = Conn::open(observe).await?;
    let pools: Vec<PoolHandle> = (0..args.count.div_ceil(PER_POOL))
        .map(|p| cluster_pool(args, p * PER_POOL))
        .collect();
    for i in 0..args.count {
        pe.register(&cluster_pool(args, i), element(0x0200_0000 + i, i))
            .await?;
    }
    // Wait until the observer has them all, and learn their home.
    let waited = Instant::now();
    let home = loop {
        let mut all = Vec::new();
        for pool in &pools {
            all.extend(members(&mut watcher, pool).await?);
        }
        if all.len() == args.count as usize {
            break all[0].home_registrar;
        }
        if waited.elapsed() > Duration::from_secs(30) {
            bail!(
                "{observe} has {} of {} PEs after 30 s",
                all.len(),
                args.count
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "cannot kill process {pid}");
    let killed = Instant::now();
    drop(pe);
    loop {
        let mut rehomed = 0;
        for pool in &pools {
            rehomed += members(&mut watcher, pool)
                .await?
                .iter()
                .filter(|e| e.home_registrar != home)
                .count();
        }
        if rehomed == args.count as usize {
            break;
        }
        if killed.elapsed() > Duration::from_secs(300) {
            bail!(
                "{rehomed} of {} PEs re-homed 300 s after the kill",
                args.count
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    println!(
        "takeover: {} PEs of the killed registrar {home} re-homed at {observe} {} ms after kill -9",
        args.count,
        killed.elapsed().as_millis()
    );
    Ok(())
}

pub(crate) async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if args.failure_detection {
        return failure_detection(&args).await;
    }
    if args.convergence {
        return convergence(&args).await;
    }
    if let Some(pid) = args.takeover {
        return takeover(&args, pid).await;
    }
    if args.concurrency == 0 {
        bail!(crate::BadConfig("--concurrency must be at least 1".into()));
    }
    let mut conns = Vec::new();
    for _ in 0..args.concurrency {
        conns.push(Conn::open(args.registrar).await?);
    }
    println!(
        "{} connections, {:?} per phase, pools {:?}-N",
        args.concurrency, args.duration, args.pool
    );
    let (conns, ids, latencies, elapsed) = phase(conns, Phase::Register, &args, &[]).await?;
    report("register", latencies, elapsed);
    let total: usize = ids.iter().map(Vec::len).sum();
    let (conns, _, latencies, elapsed) = phase(conns, Phase::Reregister, &args, &ids).await?;
    report("re-register", latencies, elapsed);
    let (conns, _, latencies, elapsed) = phase(conns, Phase::Resolve, &args, &ids).await?;
    report("resolve", latencies, elapsed);
    println!(
        "re-register and resolve worked on {} pools of {} PEs on average",
        args.concurrency,
        total / args.concurrency as usize
    );
    drop(conns);
    Ok(())
}
