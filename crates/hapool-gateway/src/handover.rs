//! Listening sockets handed from a gateway to the one that replaces it.
//!
//! A successor that binds its own sockets beside the running gateway's
//! (`SO_REUSEPORT`) shares the address with it, but the running gateway's
//! sockets must close when it stops, and Linux resets a connection whose
//! handshake completes on a socket at the moment it closes (the final ACK
//! is matched to the closing socket, then finds it no longer listening;
//! `net.ipv4.tcp_migrate_req` does not cover that moment). With a
//! `handover` socket configured, a gateway instead serves, on that Unix
//! socket, copies of its listening sockets (`SCM_RIGHTS`); a gateway
//! starting with the same configuration asks for them first and serves
//! them as its own, binding only the listeners nobody handed over. The
//! sockets then never close: the old gateway stops accepting, its copies
//! close, and every connection queued or in its handshake is the new
//! gateway's.
//!
//! Only a process of the same user is given sockets (the peer's
//! credentials are checked), and the socket file is made readable and
//! writable by its owner alone. A successor that cannot get the sockets
//! (nobody at the path, a stale file, an answer it cannot read) binds its
//! own beside, as without `handover`, and says so.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use hapool_net::passing::{self, PassError};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::timeout;
use tracing::{debug, info, warn};

use crate::{GatewayError, Listening, SideListener};

/// What a successor asks for.
const ASK: &str = "listeners\n";

/// How long either side waits for the other.
const WAIT: Duration = Duration::from_secs(2);

/// One listener's sockets, as the answer names them; the descriptors
/// follow in the same order.
#[derive(Debug, Serialize, Deserialize)]
struct Offer {
    /// The configured address (a successor with the same configuration
    /// asks for it by that).
    address: SocketAddr,
    /// Where its sockets are bound (a configured port 0 is a port now).
    bound: SocketAddr,
    /// How many of the descriptors are this listener's.
    sockets: usize,
}

/// Listening sockets handed over by the gateway before, with the address
/// each listener was configured with and the one it is bound to.
#[derive(Debug, Default)]
pub(crate) struct Inherited(Vec<(Offer, Vec<std::net::TcpListener>)>);

impl Inherited {
    /// The sockets of the listener configured with `address`, or bound to
    /// it, if one was handed over (taken: each is used once).
    pub(crate) fn take(&mut self, address: SocketAddr) -> Vec<std::net::TcpListener> {
        match self
            .0
            .iter()
            .position(|(offer, _)| offer.address == address || offer.bound == address)
        {
            Some(i) => self.0.swap_remove(i).1,
            None => Vec::new(),
        }
    }

    /// The addresses handed over and not taken: listeners the new
    /// configuration no longer has. The copies here close when this drops;
    /// the sockets themselves when the gateway before stops.
    pub(crate) fn left(&self) -> Vec<SocketAddr> {
        self.0.iter().map(|(offer, _)| offer.bound).collect()
    }
}

/// Asks the gateway serving `path`, if there is one, for its listening
/// sockets. Nobody there is no error (an empty answer); a gateway there
/// whose answer cannot be used is warned of, and nothing is taken.
pub(crate) async fn ask(path: &Path) -> Inherited {
    match timeout(WAIT, exchange(path)).await {
        Ok(Ok(inherited)) => inherited,
        Ok(Err(e)) if is_nobody_there(&e) => {
            debug!(path = %path.display(), error = %e, "no gateway to take listening sockets from");
            Inherited::default()
        }
        Ok(Err(e)) => {
            warn!(path = %path.display(), error = %e, "cannot take the listening sockets of the gateway before: binding new ones beside its own");
            Inherited::default()
        }
        Err(_) => {
            warn!(path = %path.display(), "the gateway before did not hand its listening sockets over in {WAIT:?}: binding new ones beside its own");
            Inherited::default()
        }
    }
}

fn is_nobody_there(e: &HandoverError) -> bool {
    matches!(e, HandoverError::Connect(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused))
}

/// Why sockets could not be taken from the gateway before.
#[derive(Debug, thiserror::Error)]
enum HandoverError {
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("cannot ask: {0}")]
    Ask(io::Error),
    #[error("no answer: {0}")]
    Answer(PassError),
    #[error("an answer that is not a list of listeners: {0}")]
    Unreadable(String),
    #[error("the answer names {named} sockets but {came} came")]
    Count { named: usize, came: usize },
    #[error("a socket handed over for {address} is not listening there: {why}")]
    NotListening { address: SocketAddr, why: String },
}

/// Connects to `path`, asks for the listeners, and checks what came: as
/// many sockets as the answer names, each listening where it says.
async fn exchange(path: &Path) -> Result<Inherited, HandoverError> {
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(HandoverError::Connect)?;
    stream
        .write_all(ASK.as_bytes())
        .await
        .map_err(HandoverError::Ask)?;
    let (text, fds): (Vec<u8>, _) = stream
        .async_io(Interest::READABLE, || {
            passing::recv_with_fds(&stream).map_err(|e| match e {
                PassError::Io(io) => io,
                other => io::Error::other(other),
            })
        })
        .await
        .map_err(|e| match e.downcast::<PassError>() {
            Ok(pass) => HandoverError::Answer(pass),
            Err(io) => HandoverError::Answer(PassError::Io(io)),
        })?;
    let offers: Vec<Offer> = serde_json::from_slice(&text).map_err(|e| {
        HandoverError::Unreadable(format!("{e}: {:?}", String::from_utf8_lossy(&text)))
    })?;
    let named: usize = offers.iter().map(|o| o.sockets).sum();
    if named != fds.len() {
        return Err(HandoverError::Count {
            named,
            came: fds.len(),
        });
    }
    let mut fds = fds.into_iter();
    let mut inherited = Vec::new();
    for offer in offers {
        let mut sockets = Vec::with_capacity(offer.sockets);
        for fd in fds.by_ref().take(offer.sockets) {
            let socket = socket2::Socket::from(fd);
            let listening = socket.is_listener().unwrap_or(false);
            let at = socket.local_addr().ok().and_then(|a| a.as_socket());
            let fits = at == Some(offer.bound);
            if !listening || !fits {
                return Err(HandoverError::NotListening {
                    address: offer.bound,
                    why: format!("listening {listening}, bound to {at:?}"),
                });
            }
            socket
                .set_nonblocking(true)
                .map_err(|e| HandoverError::NotListening {
                    address: offer.bound,
                    why: e.to_string(),
                })?;
            sockets.push(std::net::TcpListener::from(socket));
        }
        info!(address = %offer.bound, sockets = sockets.len(), "listening sockets taken from the gateway before");
        inherited.push((offer, sockets));
    }
    Ok(Inherited(inherited))
}

/// Binds `path` for the gateway's successors: a socket file there (of the
/// gateway before, which keeps serving its own connections, or one left
/// by a gateway that died) is replaced; anything else there is an error.
/// Returns the socket with its path, as [`Serving::set`] takes it.
pub(crate) fn bind(path: &Path) -> Result<(UnixListener, PathBuf), GatewayError> {
    let failed = |source: io::Error| GatewayError::Handover {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(failed)?,
        Ok(_) => {
            return Err(failed(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "something other than a socket is there",
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(e)),
    }
    let listener = UnixListener::bind(path).map_err(failed)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
    Ok((listener, path.to_owned()))
}

/// The handover socket the gateway serves, if any: set at the start, and
/// opened, moved or closed by a reload.
#[derive(Default)]
pub(crate) struct Serving(Mutex<Option<(PathBuf, tokio::task::JoinHandle<()>)>>);

impl Serving {
    /// The path served.
    pub(crate) fn path(&self) -> Option<PathBuf> {
        let serving = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        serving.as_ref().map(|(path, _)| path.clone())
    }

    /// Serves `socket` (bound at its path by [`bind`]) from now on, or
    /// nothing; the socket served before is closed by the time this
    /// returns (its file is left: a successor may have bound its own there
    /// since).
    pub(crate) async fn set(
        &self,
        socket: Option<(UnixListener, PathBuf)>,
        listeners: &Arc<RwLock<Vec<Listening>>>,
        side: &Arc<Mutex<Vec<SideListener>>>,
    ) {
        let next = socket.map(|(socket, path)| {
            let task = tokio::spawn(serve(socket, path.clone(), listeners.clone(), side.clone()));
            (path, task)
        });
        let before = std::mem::replace(
            &mut *self.0.lock().unwrap_or_else(PoisonError::into_inner),
            next,
        );
        if let Some((_, task)) = before {
            // The socket closes when the task's future is dropped, which
            // an abort only asks for: the task ends once it has been.
            task.abort();
            let _ = task.await;
        }
    }
}

/// Hands copies of the gateway's listening sockets to every process of
/// this user that asks on `listener`, until the task is stopped.
async fn serve(
    listener: UnixListener,
    path: PathBuf,
    listeners: Arc<RwLock<Vec<Listening>>>,
    side: Arc<Mutex<Vec<SideListener>>>,
) {
    info!(path = %path.display(), "handing listening sockets to a successor on request");
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "handover socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match timeout(WAIT, hand_over(stream, &path, &listeners, &side)).await {
            Ok(Ok(count)) => {
                info!(path = %path.display(), sockets = count, "listening sockets handed to a successor");
            }
            Ok(Err(e)) => warn!(path = %path.display(), error = %e, "handover refused or failed"),
            Err(_) => warn!(path = %path.display(), "handover: the asker said nothing in time"),
        }
    }
}

/// Answers one asker: the listeners and side listeners, and copies of
/// their sockets.
async fn hand_over(
    stream: UnixStream,
    path: &Path,
    listeners: &RwLock<Vec<Listening>>,
    side: &Mutex<Vec<SideListener>>,
) -> io::Result<usize> {
    // The socket file is this gateway's, made as its user.
    let me = std::fs::metadata(path)?.uid();
    let asker = stream.peer_cred()?.uid();
    if asker != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("asked by user {asker}, not this gateway's user {me}"),
        ));
    }
    let mut reader = BufReader::new(stream);
    let mut asked = String::new();
    reader.read_line(&mut asked).await?;
    if asked != ASK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("asked {asked:?}, not {ASK:?}"),
        ));
    }
    let stream = reader.into_inner();
    let copies = copies(listeners, side)?;
    let offers: Vec<&Offer> = copies.iter().map(|(offer, _)| offer).collect();
    let text = serde_json::to_vec(&offers).map_err(io::Error::other)?;
    let fds: Vec<_> = copies
        .iter()
        .flat_map(|(_, sockets)| sockets.iter().map(AsFd::as_fd))
        .collect();
    stream
        .async_io(Interest::WRITABLE, || {
            passing::send_with_fds(&stream, &text, &fds).map_err(|e| match e {
                PassError::Io(io) => io,
                other => io::Error::other(other),
            })
        })
        .await?;
    Ok(fds.len())
}

/// Every listener and side listener as offered, with copies of its
/// sockets, as they are now.
fn copies(
    listeners: &RwLock<Vec<Listening>>,
    side: &Mutex<Vec<SideListener>>,
) -> io::Result<Vec<(Offer, Vec<std::net::TcpListener>)>> {
    let offer = |address, bound, sockets: Vec<std::net::TcpListener>| {
        let offer = Offer {
            address,
            bound,
            sockets: sockets.len(),
        };
        (offer, sockets)
    };
    let mut copies = listeners
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|l| {
            Ok(offer(
                l.configured_address(),
                l.address(),
                l.handover_copies()?,
            ))
        })
        .collect::<io::Result<Vec<_>>>()?;
    for s in side.lock().unwrap_or_else(PoisonError::into_inner).iter() {
        let sockets = vec![s.socket.try_clone()?];
        copies.push(offer(s.address, s.socket.local_addr()?, sockets));
    }
    Ok(copies)
}
