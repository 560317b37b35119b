//! The three phases of `hapool bench`, against etcd, printed the same way.
//!
//! - register: a lease (60 s) and a put of the PE's key with that lease:
//!   how a server registers itself in etcd so that its key disappears when
//!   it dies;
//! - re-register: a put of the same key with a new value (the load);
//! - resolve: a get of the pool's prefix, limited to `--items` keys.
//!
//! `etcd-load --endpoint http://127.0.0.1:2379 --concurrency 16 --duration 3s`
//!
//! `--expiry` instead measures failure detection: it grants the shortest
//! lease etcd accepts, puts a key with it, never keeps it alive, and reports
//! how long the key stays visible.
//!
//! For a 3-member cluster (the counterpart of a registrar cluster):
//! - `--convergence --observe URL --count N`: puts N keys on `--endpoint`
//!   one after another and, after each, reads it on the member at `--observe`
//!   with serializable (local) reads until it is there: how long a change
//!   takes to become visible on another member;
//! - `--leader-loss --members URL=PID,URL=PID,URL=PID`: finds the leader,
//!   kills it (SIGKILL), and puts through the other members until a put
//!   succeeds: how long the cluster cannot take a write.

use std::time::Duration;

use anyhow::{Context, bail};
use etcd_client::{Client, GetOptions, PutOptions};
use tokio::time::{Instant, sleep};

struct Args {
    endpoint: String,
    concurrency: usize,
    duration: Duration,
    items: i64,
    expiry: bool,
    convergence: bool,
    observe: String,
    count: usize,
    leader_loss: Option<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        endpoint: "http://127.0.0.1:2379".into(),
        concurrency: 16,
        duration: Duration::from_secs(3),
        items: 3,
        expiry: false,
        convergence: false,
        observe: String::new(),
        count: 10_000,
        leader_loss: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--endpoint" => a.endpoint = value()?,
            "--concurrency" => a.concurrency = value()?.parse()?,
            "--duration" => a.duration = humantime::parse_duration(&value()?)?,
            "--items" => a.items = value()?.parse()?,
            "--expiry" => a.expiry = true,
            "--convergence" => a.convergence = true,
            "--observe" => a.observe = value()?,
            "--count" => a.count = value()?.parse()?,
            "--leader-loss" => a.leader_loss = Some(String::new()),
            "--members" => a.leader_loss = Some(value()?),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

#[derive(Clone, Copy)]
enum Phase {
    Register,
    Reregister,
    Resolve,
}

async fn phase(clients: Vec<Client>, phase: Phase, a: &Args, keys: &[Vec<(String, i64)>]) -> anyhow::Result<(Vec<Client>, Vec<Vec<(String, i64)>>, Vec<u64>, Duration)> {
    let start = Instant::now();
    let end = start + a.duration;
    let mut tasks = Vec::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let mine = keys.get(i).cloned().unwrap_or_default();
        let items = a.items;
        tasks.push(tokio::spawn(async move {
            let prefix = format!("/hapool-bench-{i}/");
            let mut latencies = Vec::new();
            let mut registered = mine.clone();
            let mut n = 0usize;
            while Instant::now() < end {
                let sent = Instant::now();
                match phase {
                    Phase::Register => {
                        let lease = client.lease_grant(60, None).await?.id();
                        let key = format!("{prefix}{n:08}");
                        let value = format!("tcp://10.0.0.1:80 load={n}");
                        client.put(key.as_str(), value, Some(PutOptions::new().with_lease(lease))).await?;
                        registered.push((key, lease));
                    }
                    Phase::Reregister => {
                        let (key, lease) = &mine[n % mine.len()];
                        let value = format!("tcp://10.0.0.1:80 load={}", n.wrapping_mul(7919));
                        client.put(key.as_str(), value, Some(PutOptions::new().with_lease(*lease))).await?;
                    }
                    Phase::Resolve => {
                        let got = client.get(prefix.as_str(), Some(GetOptions::new().with_prefix().with_limit(items))).await?;
                        if got.kvs().is_empty() {
                            bail!("empty pool {prefix}");
                        }
                    }
                }
                latencies.push(sent.elapsed().as_micros() as u64);
                n += 1;
            }
            Ok::<_, anyhow::Error>((client, registered, latencies))
        }));
    }
    let (mut clients, mut keys, mut latencies) = (Vec::new(), Vec::new(), Vec::new());
    for t in tasks {
        let (c, k, l) = t.await??;
        clients.push(c);
        keys.push(k);
        latencies.extend(l);
    }
    Ok((clients, keys, latencies, start.elapsed()))
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

async fn expiry(a: &Args) -> anyhow::Result<()> {
    let mut client = Client::connect([a.endpoint.as_str()], None).await?;
    let lease = client.lease_grant(1, None).await?;
    let granted = lease.ttl();
    let key = "/hapool-bench-expiry/pe";
    client.put(key, "tcp://10.0.0.1:80", Some(PutOptions::new().with_lease(lease.id()))).await?;
    let start = Instant::now();
    while !client.get(key, None).await?.kvs().is_empty() {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the key outlived 60 s");
        }
        sleep(Duration::from_millis(5)).await;
    }
    println!("shortest lease granted: {granted} s; key gone {} ms after its put", start.elapsed().as_millis());
    Ok(())
}

async fn convergence(a: &Args) -> anyhow::Result<()> {
    let mut writer = Client::connect([a.endpoint.as_str()], None).await?;
    let mut reader = Client::connect([a.observe.as_str()], None).await?;
    let local = GetOptions::new().with_serializable();
    let mut latencies = Vec::with_capacity(a.count);
    let start = Instant::now();
    for i in 0..a.count {
        let key = format!("/hapool-bench-convergence/{}/{i}", i / 100);
        let sent = Instant::now();
        writer.put(key.as_str(), "tcp://10.0.0.1:80", None).await?;
        loop {
            if !reader.get(key.as_str(), Some(local.clone())).await?.kvs().is_empty() {
                break;
            }
            if sent.elapsed() > Duration::from_secs(10) {
                bail!("{key} not visible at {} after 10 s", a.observe);
            }
        }
        latencies.push(sent.elapsed().as_micros() as u64);
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "convergence {} puts: visible on another member p50 {} µs p99 {} µs ({:.1} s)",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        elapsed.as_secs_f64()
    );
    Ok(())
}

async fn leader_loss(members: &str) -> anyhow::Result<()> {
    let members: Vec<(String, u32)> = members
        .split(',')
        .map(|m| {
            let (url, pid) = m.split_once('=').context("members look like URL=PID")?;
            Ok((url.to_owned(), pid.parse()?))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut leader = None;
    for (url, pid) in &members {
        let mut c = Client::connect([url.as_str()], None).await?;
        let status = c.status().await?;
        if status.leader() == status.header().map_or(0, |h| h.member_id()) {
            leader = Some((url.clone(), *pid));
        }
    }
    let (leader_url, pid) = leader.context("no member says it leads")?;
    let others: Vec<String> = members.iter().map(|(u, _)| u.clone()).filter(|u| *u != leader_url).collect();
    let mut client = Client::connect(others.clone(), None).await?;
    client.put("/hapool-bench-leader/warm", "x", None).await?;
    let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status()?;
    anyhow::ensure!(status.success(), "cannot kill the leader (pid {pid})");
    let killed = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let put = tokio::time::timeout(
            Duration::from_millis(200),
            client.put("/hapool-bench-leader/after", "x", None),
        )
        .await;
        if matches!(put, Ok(Ok(_))) {
            break;
        }
        if killed.elapsed() > Duration::from_secs(30) {
            bail!("no write accepted 30 s after the leader died");
        }
        sleep(Duration::from_millis(5)).await;
    }
    println!(
        "leader killed: first write accepted {} ms later ({attempts} attempts)",
        killed.elapsed().as_millis()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    if a.expiry {
        return expiry(&a).await;
    }
    if a.convergence {
        return convergence(&a).await;
    }
    if let Some(members) = &a.leader_loss {
        return leader_loss(members).await;
    }
    let mut clients = Vec::new();
    for _ in 0..a.concurrency {
        clients.push(Client::connect([a.endpoint.as_str()], None).await.with_context(|| format!("cannot connect to etcd at {}", a.endpoint))?);
    }
    println!("{} connections, {:?} per phase, prefixes /hapool-bench-N/", a.concurrency, a.duration);
    let (clients, keys, l, e) = phase(clients, Phase::Register, &a, &[]).await?;
    report("register", l, e);
    let (clients, _, l, e) = phase(clients, Phase::Reregister, &a, &keys).await?;
    report("re-register", l, e);
    let (_, _, l, e) = phase(clients, Phase::Resolve, &a, &keys).await?;
    report("resolve", l, e);
    Ok(())
}
