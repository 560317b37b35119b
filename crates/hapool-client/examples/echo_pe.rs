//! An echo server that joins a pool: it registers with the registrars,
//! reports its load (open connections out of 100) as it changes, and
//! deregisters on Ctrl-C.
//!
//! `cargo run -p hapool-client --example echo_pe -- 127.0.0.1:3863 echo`

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use hapool_client::{PeConfig, PeHandle};
use hapool_wire::{Policy, PoolElement, PoolElementId, PoolHandle, RegistrarId, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const CAPACITY: u32 = 100;

fn load(open: u32) -> Policy {
    Policy::LeastUsed {
        load: (u64::from(open.min(CAPACITY)) * u64::from(u32::MAX) / u64::from(CAPACITY)) as u32,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let registrar: SocketAddr = args.next().unwrap_or("127.0.0.1:3863".into()).parse()?;
    let pool = PoolHandle::from(args.next().unwrap_or("echo".into()).as_str());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let element = PoolElement {
        id: PoolElementId(0),
        home_registrar: RegistrarId(0),
        registration_life: 30_000,
        user_transport: Transport::tcp(addr),
        policy: load(0),
        asap_transport: None,
    };
    let pe = Arc::new(PeHandle::start(PeConfig::new(
        vec![registrar],
        pool,
        element,
    )));
    println!("echo PE {} serving on {addr}", pe.id());
    let open = Arc::new(AtomicU32::new(0));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (mut stream, _) = accepted?;
                let (pe, open) = (pe.clone(), open.clone());
                tokio::spawn(async move {
                    pe.set_policy(load(open.fetch_add(1, Ordering::SeqCst) + 1)).await;
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    pe.set_policy(load(open.fetch_sub(1, Ordering::SeqCst) - 1)).await;
                });
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    if let Ok(pe) = Arc::try_unwrap(pe) {
        pe.stop().await;
    }
    println!("deregistered");
    Ok(())
}
