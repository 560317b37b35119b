//! A client of an echo pool that keeps working while servers die: it sends
//! a line every half second and prints which PE echoed it; when its PE
//! fails, it reports it unreachable and moves to another PE of the pool.
//!
//! `cargo run -p hapool-client --example echo_pu -- 127.0.0.1:3863 echo 20`

use std::net::SocketAddr;
use std::time::Duration;

use hapool_client::{PoolUser, PuConfig};
use hapool_wire::PoolHandle;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let registrar: SocketAddr = args.next().unwrap_or("127.0.0.1:3863".into()).parse()?;
    let pool = PoolHandle::from(args.next().unwrap_or("echo".into()).as_str());
    let count: u32 = args.next().unwrap_or("20".into()).parse()?;
    let user = PoolUser::new(PuConfig::new(vec![registrar]));
    let mut sent = 0;
    while sent < count {
        let (pe, stream) = user.connect(&pool).await?;
        println!("connected to PE {} at {}", pe.id, pe.user_transport);
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        while sent < count {
            let line = format!("hello {sent}");
            let echoed = match write.write_all(format!("{line}\n").as_bytes()).await {
                Ok(()) => lines.next_line().await.ok().flatten(),
                Err(_) => None,
            };
            if echoed.as_deref() != Some(line.as_str()) {
                println!("PE {} failed; reporting it and failing over", pe.id);
                let _ = user.report_unreachable(&pool, pe.id).await;
                break;
            }
            println!("{line} echoed by PE {}", pe.id);
            sent += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}
