//! Listening sockets that the service manager opened for this process and
//! passed to it as it started (systemd's socket activation, the protocol
//! of `sd_listen_fds(3)`): `LISTEN_PID` names the process they are for,
//! `LISTEN_FDS` says how many descriptors, from 3 on, it was given.
//!
//! A gateway serves such sockets instead of binding its own. They belong
//! to the service manager, which keeps them open while the service
//! restarts: connections that arrive in between wait in the socket's
//! queue for the next process instead of being refused.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The first descriptor passed (`SD_LISTEN_FDS_START`).
const FIRST: RawFd = 3;

/// Set by the first call of [`passed_listeners`]: the descriptors are
/// taken once.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Why the passed descriptors cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActivationError {
    /// `LISTEN_PID` is not a process id.
    #[error("LISTEN_PID is {0:?}, not a process id")]
    Pid(String),
    /// `LISTEN_FDS` is not a count of descriptors.
    #[error("LISTEN_FDS is {0:?}, not a number of descriptors")]
    Count(String),
    /// A descriptor the count takes in is not open.
    #[error("descriptor {0} is not open, though LISTEN_FDS says it was passed")]
    NotOpen(RawFd),
    /// A descriptor is not a TCP socket listening on an IP address.
    #[error("descriptor {fd} passed by the service manager is not a listening TCP socket: {why}")]
    NotTcpListener {
        /// The descriptor.
        fd: RawFd,
        /// What it is instead.
        why: String,
    },
}

/// The listening sockets passed to this process, with the address each is
/// bound to, in the order they were passed. None when nothing was passed
/// (no `LISTEN_PID`, or one naming another process: an ancestor's), and
/// none on a second call: they are taken once.
pub fn passed_listeners() -> Result<Vec<(SocketAddr, TcpListener)>, ActivationError> {
    let Ok(pid) = std::env::var("LISTEN_PID") else {
        return Ok(Vec::new());
    };
    let pid: u32 = pid.trim().parse().map_err(|_| ActivationError::Pid(pid))?;
    if pid != std::process::id() || TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let count = std::env::var("LISTEN_FDS").unwrap_or_default();
    let count: RawFd = match count.trim().parse() {
        Ok(n) if (0..=RawFd::MAX - FIRST).contains(&n) => n,
        _ => return Err(ActivationError::Count(count)),
    };
    // Each descriptor is owned from here on, so that those after a bad one
    // are closed too.
    let owned: Vec<(RawFd, Result<OwnedFd, ActivationError>)> =
        (FIRST..FIRST + count).map(|fd| (fd, own(fd))).collect();
    owned
        .into_iter()
        .map(|(fd, owned)| listener(fd, owned?))
        .collect()
}

/// The descriptor `fd`, passed to this process, as its owner.
#[allow(unsafe_code)]
fn own(fd: RawFd) -> Result<OwnedFd, ActivationError> {
    // SAFETY: F_GETFD reads the flags of a descriptor number, open or not,
    // and changes nothing.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(ActivationError::NotOpen(fd));
    }
    // SAFETY: the descriptor is open, and the service manager passed it to
    // this process (`LISTEN_PID` names it) for the process to own: nothing
    // in the process opened it, nothing else refers to it by number, and
    // `TAKEN` makes this the one place that takes it, once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `owned` checked to be a TCP socket listening on an IP address, made
/// non-blocking and closed on exec (the service manager passes neither).
fn listener(fd: RawFd, owned: OwnedFd) -> Result<(SocketAddr, TcpListener), ActivationError> {
    let not = |why: String| ActivationError::NotTcpListener { fd, why };
    let socket = socket2::Socket::from(owned);
    let kind = socket
        .r#type()
        .map_err(|e| not(format!("not a socket ({e})")))?;
    if kind != socket2::Type::STREAM {
        return Err(not(format!("a socket of type {kind:?}")));
    }
    let address = socket
        .local_addr()
        .map_err(|e| not(e.to_string()))?
        .as_socket()
        .ok_or_else(|| not("not bound to an IP address (a Unix socket?)".into()))?;
    if !socket.is_listener().map_err(|e| not(e.to_string()))? {
        return Err(not(format!("bound to {address} but not listening")));
    }
    socket
        .set_cloexec(true)
        .and_then(|()| socket.set_nonblocking(true))
        .map_err(|e| not(e.to_string()))?;
    Ok((address, socket.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(owned: impl Into<OwnedFd>) -> Result<(SocketAddr, TcpListener), ActivationError> {
        listener(7, owned.into())
    }

    #[test]
    fn a_listening_tcp_socket_is_taken_with_its_address() {
        let socket = TcpListener::bind("127.0.0.1:0").unwrap();
        let bound = socket.local_addr().unwrap();
        let (address, taken) = check(socket).unwrap();
        assert_eq!(address, bound);
        // Non-blocking: nothing waits, so accepting does not block.
        let e = taken.accept().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    }

    #[test]
    fn anything_else_is_refused_naming_what_it_is() {
        let why = |e: ActivationError| match e {
            ActivationError::NotTcpListener { fd: 7, why } => why,
            other => panic!("{other}"),
        };
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let said = why(check(udp).unwrap_err());
        assert_eq!(said, "a socket of type SOCK_DGRAM");
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(why(check(file).unwrap_err()).starts_with("not a socket"));
        let path = std::env::temp_dir().join(format!("hapool-activation-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let said = why(check(unix).unwrap_err());
        let _ = std::fs::remove_file(&path);
        assert!(said.contains("not bound to an IP address"), "{said}");
        let unbound =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        unbound
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let said = why(check(unbound).unwrap_err());
        assert!(said.contains("but not listening"), "{said}");
    }
}
