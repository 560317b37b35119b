//! Where the gateway's workers run: a single worker started from a
//! single-threaded runtime runs on that runtime, and the process gains no
//! thread; more workers run on threads of their own, each pinned to a CPU
//! of its own when the CPUs go round. Alone in their file, and taking
//! turns ([`ONE_AT_A_TIME`]), so that no other test's gateway runs in
//! the process while threads are counted.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hapool_gateway::{Gateway, GatewayConfig};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

mod common;

/// Held by each test of this file for as long as it runs.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `test` on a single-threaded runtime of its own while holding
/// [`ONE_AT_A_TIME`]: the runtime, and any thread it started, is gone
/// before the next test's turn.
fn in_turn(test: impl Future<Output = ()>) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

fn config(member: SocketAddr, workers: usize) -> GatewayConfig {
    let mut config = common::one_member_gateway(member, workers, 100);
    config.probe_interval = Duration::from_millis(100);
    config
}

/// The names of the process's threads.
fn threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .collect()
}

/// The CPUs a thread of this process may run on, as the kernel lists them
/// (`Cpus_allowed_list`: `0-1`, `0,2`, ...).
fn cpus_of(task: &std::path::Path) -> Vec<usize> {
    let status = std::fs::read_to_string(task.join("status")).unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    list.split(',')
        .flat_map(|range| {
            let (from, to) = range.split_once('-').unwrap_or((range, range));
            from.parse::<usize>().unwrap()..=to.parse::<usize>().unwrap()
        })
        .collect()
}

/// The CPUs each gateway worker thread may run on, by worker.
fn worker_cpus() -> Vec<(String, Vec<usize>)> {
    let mut workers: Vec<(String, Vec<usize>)> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| {
            let path = task.ok()?.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?;
            let name = name.trim().strip_prefix("hapool-gw-")?.to_owned();
            Some((name, cpus_of(&path)))
        })
        .collect();
    workers.sort();
    workers
}

/// The process's threads named as gateway workers (a new thread takes its
/// name once it runs: wait for it).
async fn worker_threads(expected: usize) -> usize {
    let named = || {
        threads()
            .iter()
            .filter(|name| name.starts_with("hapool-gw-"))
            .count()
    };
    for _ in 0..100 {
        if named() == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    named()
}

/// A large answer and a large request body, both through the gateway.
async fn exchange(gateway: SocketAddr) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let big = client
        .request(
            Request::get(format!("http://{gateway}/big"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(big.status(), StatusCode::OK);
    let body = big.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), common::BIG);
    assert!(body.iter().all(|&b| b == b'x'));
    for length in [0, 5, 200_000] {
        let posted = client
            .request(
                Request::builder()
                    .method(Method::POST)
                    .uri(format!("http://{gateway}/echo"))
                    .body(Full::new(Bytes::from(vec![b'y'; length])))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(posted.status(), StatusCode::OK);
        let answer = posted.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(answer, length.to_string().as_bytes());
    }
}

#[test]
fn one_worker_runs_on_the_starting_runtime_and_more_on_threads_of_their_own() {
    in_turn(async {
        let member = common::member().await;
        let before = threads().len();
        let gateway = Gateway::start(config(member, 1)).await.unwrap();
        exchange(gateway.local_addrs()[0]).await;
        assert_eq!(threads().len(), before, "one worker: no thread more");
        gateway.shutdown().await;

        let gateway = Gateway::start(config(member, 2)).await.unwrap();
        assert_eq!(worker_threads(2).await, 2, "two workers");
        exchange(gateway.local_addrs()[0]).await;
        gateway.shutdown().await;
        assert_eq!(worker_threads(0).await, 0, "two workers stopped");
    });
}

#[test]
fn workers_are_pinned_each_to_a_cpu_of_its_own_unless_told_not_to() {
    in_turn(async {
        let member = common::member().await;
        let allowed = cpus_of(std::path::Path::new("/proc/thread-self"));
        let pins = allowed.len() >= 2;

        let gateway = Gateway::start(config(member, 2)).await.unwrap();
        assert_eq!(worker_threads(2).await, 2);
        // A worker pins itself as it starts: wait for both.
        let mut seen = worker_cpus();
        for _ in 0..100 {
            if !pins || seen.iter().all(|(_, cpus)| cpus.len() == 1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            seen = worker_cpus();
        }
        let status = serde_json::to_value(gateway.view().status()).unwrap();
        if pins {
            let expected = vec![
                ("0".to_owned(), vec![allowed[0]]),
                ("1".to_owned(), vec![allowed[1]]),
            ];
            assert_eq!(
                seen, expected,
                "the first two of the process's CPUs {allowed:?}"
            );
            assert_eq!(
                status["worker_cpus"],
                serde_json::json!([allowed[0], allowed[1]])
            );
        } else {
            assert!(seen.iter().all(|(_, cpus)| *cpus == allowed), "{seen:?}");
            assert!(status["worker_cpus"].is_null());
        }
        exchange(gateway.local_addrs()[0]).await;
        gateway.shutdown().await;
        assert_eq!(worker_threads(0).await, 0);
        // The starting thread keeps all its CPUs.
        assert_eq!(cpus_of(std::path::Path::new("/proc/thread-self")), allowed);

        let mut unpinned = config(member, 2);
        unpinned.pin_workers = false;
        let gateway = Gateway::start(unpinned).await.unwrap();
        assert_eq!(worker_threads(2).await, 2);
        let seen = worker_cpus();
        assert!(seen.iter().all(|(_, cpus)| *cpus == allowed), "{seen:?}");
        assert!(serde_json::to_value(gateway.view().status()).unwrap()["worker_cpus"].is_null());
        gateway.shutdown().await;
    });
}
