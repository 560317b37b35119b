//! Telling the service manager how the daemon is doing (systemd's
//! `sd_notify(3)` protocol, for units of `Type=notify`): one datagram of
//! `KEY=value` lines to the Unix socket `NOTIFY_SOCKET` names, a path, or
//! a name in the abstract namespace when it starts with `@`. Without
//! `NOTIFY_SOCKET` nothing is sent.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The daemon serves: the service manager counts the start as done.
pub const READY: &str = "READY=1";

/// The daemon is reading its configuration again; [`READY`] follows.
pub const RELOADING: &str = "RELOADING=1";

/// The daemon is stopping.
pub const STOPPING: &str = "STOPPING=1";

/// Sends `state` to the service manager: whether there is one to tell
/// (`NOTIFY_SOCKET` is set), or why it could not be told.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let target = target.to_string_lossy().into_owned();
    let address = address(&target)
        .map_err(|e| io::Error::new(e.kind(), format!("NOTIFY_SOCKET {target:?}: {e}")))?;
    let socket = UnixDatagram::unbound()?;
    socket
        .send_to_addr(state.as_bytes(), &address)
        .map_err(|e| io::Error::new(e.kind(), format!("NOTIFY_SOCKET {target:?}: {e}")))?;
    Ok(true)
}

/// The address `NOTIFY_SOCKET` names.
fn address(target: &str) -> io::Result<SocketAddr> {
    match target.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None if target.starts_with('/') => SocketAddr::from_pathname(target),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "neither an absolute path nor an abstract name (@NAME)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_abstract_names_are_addresses_and_nothing_else_is() {
        assert!(
            address("/run/systemd/notify")
                .unwrap()
                .as_pathname()
                .is_some()
        );
        use std::os::linux::net::SocketAddrExt;
        let abstract_name = address("@hapool/test").unwrap();
        assert_eq!(abstract_name.as_abstract_name(), Some(&b"hapool/test"[..]));
        let e = address("relative/notify").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
