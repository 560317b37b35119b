//! `hapool bench`: load on a running registrar, over real TCP connections.
//!
//! Three phases, each for `--duration`, each with `--concurrency`
//! connections that send one request and wait for its answer before the
//! next: registrations of new PEs, re-registrations of those PEs with a new
//! load, and handle resolutions. Connection *i* works on its own pool
//! (`POOL-i`), so that no pool reaches the registrar's per-pool limit.
//! Prints requests per second and latency percentiles for each phase.

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
            match decoded.message {
                AsapMessage::EndpointKeepAlive {
                    pool_handle,
                    pe_id: Some(pe_id),
                    ..
                } => {
                    let ack = AsapMessage::EndpointKeepAliveAck { pool_handle, pe_id };
                    write_message(&mut self.writer, &ack).await?;
                }
                other => return Ok(other),
            }
        }
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
                        }
                    }
                    Phase::Reregister => {
                        let id = mine[n as usize % mine.len()];
                        AsapMessage::Registration {
                            pool_handle: pool.clone(),
                            pool_element: element(id, n.wrapping_mul(7919)),
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

pub(crate) async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if args.failure_detection {
        return failure_detection(&args).await;
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
