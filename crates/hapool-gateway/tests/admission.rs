//! A listener's connections over several workers: `/status` counts each
//! worker's open connections, `max_connections` holds for the listener as
//! a whole, whichever worker's socket a connection comes to, and the
//! workers are kept even.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hapool_gateway::{Gateway, GatewayConfig};

mod common;

/// The gateway under test: no member is ever asked, the clients here only
/// connect.
fn config(workers: usize, max_connections: usize) -> GatewayConfig {
    common::one_member_gateway((Ipv4Addr::LOCALHOST, 9).into(), workers, max_connections)
}

/// Opens `count` connections to `address`, each from a port of its own.
fn connect(address: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| TcpStream::connect(address).unwrap())
        .collect()
}

/// The listener's open connections per worker, once they add up to
/// `total` (or after two seconds).
async fn open_per_worker(gateway: &Gateway, total: usize) -> Vec<usize> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let open = gateway.view().status().listeners[0].connections.clone();
        if open.iter().sum::<usize>() == total || Instant::now() > deadline {
            return open;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether the gateway closed `client` (which sends nothing) rather than
/// waiting for its request.
fn closed_by_gateway(mut client: &TcpStream) -> bool {
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    match client.read(&mut [0; 16]) {
        Ok(read) => read == 0,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

#[tokio::test]
async fn each_worker_counts_its_open_connections() {
    let gateway = Gateway::start(config(4, 1000)).await.unwrap();
    let address = gateway.local_addrs()[0];
    for total in [1, 40] {
        let clients = connect(address, total);
        let open = open_per_worker(&gateway, total).await;
        assert_eq!(open.len(), 4);
        assert_eq!(open.iter().sum::<usize>(), total, "{open:?}");
        drop(clients);
        assert_eq!(open_per_worker(&gateway, 0).await, vec![0; 4]);
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn max_connections_counts_every_worker() {
    let gateway = Gateway::start(config(2, 6)).await.unwrap();
    let address = gateway.local_addrs()[0];
    let mut clients = connect(address, 6);
    assert_eq!(open_per_worker(&gateway, 6).await.iter().sum::<usize>(), 6);
    // Beyond the limit a connection is closed at once, whichever worker's
    // socket it came to.
    clients.extend(connect(address, 6));
    let (closed, clients) = tokio::task::spawn_blocking(move || {
        let closed = clients.iter().filter(|c| closed_by_gateway(c)).count();
        (closed, clients)
    })
    .await
    .unwrap();
    assert_eq!(closed, 6);
    assert_eq!(open_per_worker(&gateway, 6).await.iter().sum::<usize>(), 6);
    drop(clients);
    gateway.shutdown().await;
}

/// Sends one request on each of `clients` and reads its answer's status
/// line.
fn ask_each(clients: &mut [TcpStream]) -> Vec<String> {
    for client in clients.iter_mut() {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: gateway\r\n\r\n")
            .unwrap();
    }
    clients
        .iter_mut()
        .map(|client| {
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut answer = [0; 12];
            client.read_exact(&mut answer).unwrap();
            String::from_utf8_lossy(&answer).into_owned()
        })
        .collect()
}

#[tokio::test]
async fn the_workers_are_kept_even_and_a_handed_connection_is_served() {
    let member = common::member().await;
    let gateway = Gateway::start(common::one_member_gateway(member, 4, 1000))
        .await
        .unwrap();
    let address = gateway.local_addrs()[0];
    let total = 200;
    let clients = connect(address, total);
    let open = open_per_worker(&gateway, total).await;
    assert_eq!(open.iter().sum::<usize>(), total, "{open:?}");
    // The kernel's hash alone leaves the four about 15 apart; a worker
    // that accepts while it has more than the fewest + 1 + fewest/32
    // (here the fewest + 2) hands the connection on, so they end at most
    // one more apart (and one more for two workers placing at once).
    let (fewest, most) = (open.iter().min().unwrap(), open.iter().max().unwrap());
    assert!(most - fewest <= 2 + fewest / 32 + 1, "{open:?}");
    let (answers, clients) = tokio::task::spawn_blocking(move || {
        let mut clients = clients;
        (ask_each(&mut clients), clients)
    })
    .await
    .unwrap();
    // On failure, what the gateway knows of its member says why (a
    // failed exchange, or the member found unreachable).
    assert!(
        answers.iter().all(|a| a == "HTTP/1.1 200"),
        "{answers:?}\n{:?}",
        gateway.view().status().pools
    );
    drop(clients);
    assert_eq!(open_per_worker(&gateway, 0).await, vec![0; 4]);
    gateway.shutdown().await;
}
