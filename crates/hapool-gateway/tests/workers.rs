//! Where the gateway's workers run: a single worker started from a
//! single-threaded runtime runs on that runtime, and the process gains no
//! thread; more workers run on threads of their own. Alone in its file,
//! so that its process runs no other test's gateway while threads are
//! counted.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hapool_gateway::{Gateway, GatewayConfig};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

mod common;

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

#[tokio::test]
async fn one_worker_runs_on_the_starting_runtime_and_more_on_threads_of_their_own() {
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
}
