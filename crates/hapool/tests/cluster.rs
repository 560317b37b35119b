//! A registrar cluster as separate processes: three `hapool registrar`
//! processes, 100 PEs and 10 PUs resolving all the time. One registrar is
//! killed with SIGKILL, another is cut off from its peers and healed. And
//! a registrar stopped (SIGSTOP) long enough for its PEs to move, then let
//! go on (SIGCONT). And a registrar killed and started again at once with
//! its id.
//!
//! Each registrar has its own loopback address (127.0.0.11 to .13). Its
//! peers reach its ENRP port through a small proxy in this test, and its
//! own ENRP connections leave from its address; cutting a registrar off
//! makes every proxy drop its traffic, both ways. ASAP is not cut: PEs and
//! PUs keep talking to every registrar that runs.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hapool_client::{PeConfig, PeHandle, PeState, PoolUser, PuConfig};
use hapool_wire::{Policy, PoolElement, PoolElementId, PoolHandle, RegistrarId, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long after a registrar dies its PEs have a new home: a peer probes
/// it after max-time-last-heard (2.1 heartbeats), declares it dead after
/// max-time-no-response (1 heartbeat), and takes over after the acks (at
/// most 1 heartbeat). PEs whose connection broke register elsewhere at
/// once, well within that.
const TAKEOVER_BOUND: Duration = Duration::from_millis(410);

/// Slack for polling the admin ports and for a loaded machine.
const SLACK: Duration = Duration::from_millis(1_500);

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + n))
}

/// A free port on `ip`.
fn free_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Node {
    asap: SocketAddr,
    enrp: SocketAddr,
    proxy: SocketAddr,
    admin: SocketAddr,
    child: Option<Child>,
}

fn start(node: &mut Node, id: u8, peers: &[SocketAddr]) {
    let mut args: Vec<String> = vec![
        "registrar".into(),
        "--id".into(),
        format!("{id:08x}"),
        "--listen".into(),
        node.asap.to_string(),
        "--enrp-listen".into(),
        node.enrp.to_string(),
        "--enrp-address".into(),
        node.proxy.to_string(),
        "--enrp-heartbeat".into(),
        "100ms".into(),
        "--keep-alive-interval".into(),
        "200ms".into(),
        "--keep-alive-timeout".into(),
        "200ms".into(),
        "--admin".into(),
        node.admin.to_string(),
    ];
    for p in peers {
        args.push("--peer".into());
        args.push(p.to_string());
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_hapool"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hapool registrar");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("serving ASAP"), "{line}");
    node.child = Some(child);
}

/// The proxy in front of a registrar's ENRP port. `cut` holds the number
/// of the registrar cut off (0 for none): its connections through any
/// proxy, and every connection to it, are dropped.
async fn proxy(listener: TcpListener, target: SocketAddr, me: u8, cut: Arc<AtomicU8>) {
    loop {
        let Ok((client, from)) = listener.accept().await else {
            return;
        };
        let cut = cut.clone();
        tokio::spawn(async move {
            let blocked = |cut: &AtomicU8| {
                let c = cut.load(Ordering::SeqCst);
                c != 0 && (c == me || from.ip() == ip(c))
            };
            if blocked(&cut) {
                return;
            }
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let mut a = [0u8; 16 * 1024];
            let mut b = [0u8; 16 * 1024];
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tokio::select! {
                    n = cr.read(&mut a) => match n {
                        Ok(0) | Err(_) => return,
                        Ok(n) => if sw.write_all(&a[..n]).await.is_err() { return },
                    },
                    n = sr.read(&mut b) => match n {
                        Ok(0) | Err(_) => return,
                        Ok(n) => if cw.write_all(&b[..n]).await.is_err() { return },
                    },
                    _ = tick.tick() => if blocked(&cut) { return },
                }
            }
        });
    }
}

/// (pool, PE id, home) of every PE a registrar holds, from its admin port.
async fn view(admin: SocketAddr) -> Option<BTreeSet<(String, String, String)>> {
    let body = tokio::time::timeout(Duration::from_secs(2), async {
        let mut s = TcpStream::connect(admin).await.ok()?;
        s.write_all(b"GET /status HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        Some(out)
    })
    .await
    .ok()??;
    let json = body.split("\r\n\r\n").nth(1)?;
    let status: serde_json::Value = serde_json::from_str(json).ok()?;
    let mut set = BTreeSet::new();
    for pool in status["pools"].as_array()? {
        for e in pool["elements"].as_array()? {
            set.insert((
                pool["pool"].as_str()?.to_owned(),
                e["id"].as_str()?.to_owned(),
                e["home"].as_str()?.to_owned(),
            ));
        }
    }
    Some(set)
}

/// The admin ports of the registrars that run.
fn running(nodes: &[Node]) -> Vec<SocketAddr> {
    nodes
        .iter()
        .filter(|n| n.child.is_some())
        .map(|n| n.admin)
        .collect()
}

/// Waits until `done` holds for the views of the registrars at `admins`;
/// returns how long that took.
async fn until(
    admins: &[SocketAddr],
    limit: Duration,
    what: &str,
    done: impl Fn(&[BTreeSet<(String, String, String)>]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let mut views = Vec::new();
        for admin in admins {
            views.push(view(*admin).await.unwrap_or_default());
        }
        if done(&views) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}; views: {:?}",
            views.iter().map(BTreeSet::len).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn all_equal(views: &[BTreeSet<(String, String, String)>], count: usize) -> bool {
    views.iter().all(|v| v.len() == count && *v == views[0])
}

/// Three registrars (ids 1 to 3), each on its own address and reached by
/// its peers through a proxy that `cut` controls.
async fn cluster(cut: &Arc<AtomicU8>) -> Vec<Node> {
    let mut nodes: Vec<Node> = (1..=3)
        .map(|n| Node {
            asap: SocketAddr::new(ip(n), free_port(ip(n))),
            enrp: SocketAddr::new(ip(n), free_port(ip(n))),
            proxy: SocketAddr::new(ip(n), free_port(ip(n))),
            admin: SocketAddr::new(ip(n), free_port(ip(n))),
            child: None,
        })
        .collect();
    for (n, node) in nodes.iter().enumerate() {
        let listener = TcpListener::bind(node.proxy).await.unwrap();
        tokio::spawn(proxy(listener, node.enrp, n as u8 + 1, cut.clone()));
    }
    let proxies: Vec<SocketAddr> = nodes.iter().map(|n| n.proxy).collect();
    for (n, node) in nodes.iter_mut().enumerate() {
        let peers: Vec<SocketAddr> = (0..3).filter(|&p| p != n).map(|p| proxies[p]).collect();
        start(node, n as u8 + 1, &peers);
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_registrars_survive_a_kill_and_a_partition() {
    let cut = Arc::new(AtomicU8::new(0));
    let mut nodes = cluster(&cut).await;
    let asap: Vec<SocketAddr> = nodes.iter().map(|n| n.asap).collect();
    let pool = PoolHandle::from("web");

    // 100 PEs, spread over the registrars.
    let mut pes = Vec::new();
    for i in 0..100u32 {
        let mut registrars = asap.clone();
        registrars.rotate_left(i as usize % 3);
        let element = PoolElement {
            id: PoolElementId(1000 + i),
            home_registrar: RegistrarId(0),
            registration_life: 30_000,
            user_transport: Transport::tcp(
                (Ipv4Addr::new(10, 9, (i / 250) as u8, i as u8), 80).into(),
            ),
            policy: Policy::LeastUsed { load: i * 1000 },
            asap_transport: None,
        };
        let mut config = PeConfig::new(registrars, pool.clone(), element);
        config.retry_interval = Duration::from_millis(100);
        pes.push(PeHandle::start(config));
    }
    for pe in &mut pes {
        pe.wait_registered(Duration::from_secs(10)).await.unwrap();
    }
    let took = until(
        &running(&nodes),
        Duration::from_secs(10),
        "initial convergence",
        |v| all_equal(v, 100),
    )
    .await;
    println!("100 PEs known to all three registrars {took:?} after the last registered");

    // 10 PUs resolving all the time; any empty or failed answer counts.
    let stop = Arc::new(AtomicU8::new(0));
    let (resolutions, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut pus = Vec::new();
    for i in 0..10 {
        let mut registrars = asap.clone();
        registrars.rotate_left(i % 3);
        let mut config = PuConfig::new(registrars);
        config.cache_ttl = Duration::ZERO;
        config.connect_timeout = Duration::from_millis(200);
        config.request_timeout = Duration::from_millis(500);
        let pu = PoolUser::new(config);
        let (stop, pool) = (stop.clone(), pool.clone());
        let (resolutions, failures) = (resolutions.clone(), failures.clone());
        pus.push(tokio::spawn(async move {
            while stop.load(Ordering::SeqCst) == 0 {
                match pu.resolve(&pool).await {
                    Ok(elements) if !elements.is_empty() => {}
                    other => {
                        eprintln!("PU {i}: {other:?}");
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                resolutions.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // kill -9 registrar 1 (id 1): its PEs move to the others, and no PE
    // is left homed at it.
    let mut child = nodes[0].child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let took = until(
        &running(&nodes),
        TAKEOVER_BOUND + SLACK,
        "re-homing after kill -9",
        |v| all_equal(v, 100) && v[0].iter().all(|(_, _, home)| home != "00000001"),
    )
    .await;
    println!(
        "kill -9: all 100 PEs re-homed at the two survivors within {took:?} of the kill (bound {TAKEOVER_BOUND:?})"
    );

    // Cut registrar 3 off from registrar 2 (ENRP only), then heal.
    cut.store(3, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    cut.store(0, Ordering::SeqCst);
    let took = until(
        &running(&nodes),
        Duration::from_secs(5),
        "convergence after the heal",
        |v| {
            all_equal(v, 100)
                && v[0]
                    .iter()
                    .all(|(_, _, home)| home == "00000002" || home == "00000003")
        },
    )
    .await;
    println!("partition healed: identical handlespaces {took:?} after the heal");

    stop.store(1, Ordering::SeqCst);
    for pu in pus {
        pu.await.unwrap();
    }
    let (resolutions, failures) = (
        resolutions.load(Ordering::SeqCst),
        failures.load(Ordering::SeqCst),
    );
    println!("{resolutions} resolutions, {failures} empty or failed");
    assert!(resolutions > 500, "only {resolutions} resolutions");
    assert_eq!(failures, 0, "resolutions failed while live PEs existed");
    stop_all(pes, &mut nodes).await;
}

/// 30 PEs of pool `web` (ids from `first_id`), all with registrar 1
/// first, each set by `set`; returned once all are registered and all
/// three registrars list them at registrar 1.
async fn thirty_pes_at_registrar_1(
    nodes: &[Node],
    first_id: u32,
    set: impl Fn(&mut PeConfig),
) -> Vec<PeHandle> {
    let asap: Vec<SocketAddr> = nodes.iter().map(|n| n.asap).collect();
    let mut pes = Vec::new();
    for i in 0..30u32 {
        let element = PoolElement {
            id: PoolElementId(first_id + i),
            home_registrar: RegistrarId(0),
            registration_life: 30_000,
            user_transport: Transport::tcp(
                (Ipv4Addr::new(10, 9, (first_id / 1000) as u8, i as u8), 80).into(),
            ),
            policy: Policy::RoundRobin,
            asap_transport: None,
        };
        let mut config = PeConfig::new(asap.clone(), PoolHandle::from("web"), element);
        config.retry_interval = Duration::from_millis(100);
        set(&mut config);
        pes.push(PeHandle::start(config));
    }
    for pe in &mut pes {
        pe.wait_registered(Duration::from_secs(10)).await.unwrap();
    }
    until(
        &running(nodes),
        Duration::from_secs(10),
        "initial convergence",
        |v| all_equal(v, 30) && v[0].iter().all(|(_, _, home)| home == "00000001"),
    )
    .await;
    pes
}

/// Watches registrars 2 and 3 until stopped: the fewest PEs either listed
/// at any look.
struct Fewest {
    stop: Arc<AtomicU8>,
    fewest: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Fewest {
    fn watch(nodes: &[Node]) -> Self {
        let stop = Arc::new(AtomicU8::new(0));
        let fewest = Arc::new(AtomicU64::new(u64::MAX));
        let task = {
            let (stop, fewest) = (stop.clone(), fewest.clone());
            let admins = [nodes[1].admin, nodes[2].admin];
            tokio::spawn(async move {
                while stop.load(Ordering::SeqCst) == 0 {
                    for admin in admins {
                        if let Some(v) = view(admin).await {
                            fewest.fetch_min(v.len() as u64, Ordering::SeqCst);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        Self { stop, fewest, task }
    }

    async fn stop(self) -> u64 {
        self.stop.store(1, Ordering::SeqCst);
        self.task.await.unwrap();
        self.fewest.load(Ordering::SeqCst)
    }
}

/// Stops the PEs, then kills the registrars.
async fn stop_all(pes: Vec<PeHandle>, nodes: &mut [Node]) {
    for pe in pes {
        pe.stop().await;
    }
    for node in nodes {
        if let Some(mut child) = node.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registrar_stopped_and_let_go_on_takes_no_pe_from_its_new_home() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let cut = Arc::new(AtomicU8::new(0));
    let mut nodes = cluster(&cut).await;
    let asap: Vec<SocketAddr> = nodes.iter().map(|n| n.asap).collect();
    // A short life, so that the PEs re-register often, and short
    // timeouts, so that they move soon.
    let pes = thirty_pes_at_registrar_1(&nodes, 2000, |config| {
        config.element.registration_life = 3_000;
        config.connect_timeout = Duration::from_millis(200);
        config.request_timeout = Duration::from_millis(500);
    })
    .await;
    // Registrars 2 and 3 are watched throughout.
    let fewest = Fewest::watch(&nodes);

    // Registrar 1 stops: its peers take its PEs over, and the PEs, whose
    // re-registrations go unanswered, register with registrar 2.
    let pid = Pid::from_raw(nodes[0].child.as_ref().unwrap().id() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    while !pes
        .iter()
        .all(|pe| matches!(pe.state(), PeState::Registered { registrar } if registrar == asap[1]))
    {
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "the PEs did not move"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "registrar 1 stopped: all 30 PEs registered at registrar 2 {:?} later",
        stopped.elapsed()
    );
    let others = [nodes[1].admin, nodes[2].admin];
    until(
        &others,
        Duration::from_secs(2),
        "the PEs at their new home",
        |v| all_equal(v, 30) && v[0].iter().all(|(_, _, home)| home == "00000002"),
    )
    .await;
    // Long enough for every registration waiting at registrar 1 to be
    // one its PE gave up on.
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    // Let go on, registrar 1 reads what waited in its sockets: the PEs'
    // unanswered re-registrations, and the ends of their connections.
    kill(pid, Signal::SIGCONT).unwrap();
    let took = until(
        &running(&nodes),
        Duration::from_secs(5),
        "convergence after SIGCONT",
        |v| all_equal(v, 30) && v[0].iter().all(|(_, _, home)| home == "00000002"),
    )
    .await;
    println!("registrar 1 let go on: the same 30 PEs at all three {took:?} later");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    until(
        &running(&nodes),
        Duration::from_secs(1),
        "still the same",
        |v| all_equal(v, 30) && v[0].iter().all(|(_, _, home)| home == "00000002"),
    )
    .await;
    let fewest = fewest.stop().await;
    assert_eq!(
        fewest, 30,
        "registrar 2 or 3 listed only {fewest} of the 30 PEs at some point"
    );
    stop_all(pes, &mut nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registrar_restarted_with_its_id_loses_no_pe_anywhere() {
    let cut = Arc::new(AtomicU8::new(0));
    let mut nodes = cluster(&cut).await;
    let proxies: Vec<SocketAddr> = nodes.iter().map(|n| n.proxy).collect();
    let pes = thirty_pes_at_registrar_1(&nodes, 3000, |_| {}).await;
    let fewest = Fewest::watch(&nodes);
    // Registrar 1 is killed and started again at once, with the same id,
    // before its peers find it dead.
    let mut child = nodes[0].child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let peers = [proxies[1], proxies[2]];
    start(&mut nodes[0], 1, &peers);
    let took = until(
        &running(&nodes),
        Duration::from_secs(10),
        "convergence after the restart",
        |v| all_equal(v, 30),
    )
    .await;
    println!("registrar 1 restarted with its id: the same 30 PEs at all three {took:?} later");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    until(
        &running(&nodes),
        Duration::from_secs(1),
        "still the same",
        |v| all_equal(v, 30),
    )
    .await;
    let fewest = fewest.stop().await;
    assert_eq!(
        fewest, 30,
        "registrar 2 or 3 listed only {fewest} of the 30 PEs at some point"
    );
    stop_all(pes, &mut nodes).await;
}
