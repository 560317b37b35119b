//! Open sockets handed from one process to another over a Unix socket
//! (`SCM_RIGHTS`): a gateway gives its listening sockets to the gateway
//! that replaces it, so that they never close and no connection the kernel
//! has queued on them is lost.
//!
//! A message is a short text and the descriptors that go with it, sent
//! with one `sendmsg` and taken with one `recvmsg`; the descriptors
//! received are the receiver's own ([`OwnedFd`]).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The most descriptors one message carries (Linux's `SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;

/// The longest text of a message.
pub const MAX_TEXT: usize = 64 * 1024;

/// Why descriptors could not be sent or taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PassError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// More descriptors than one message carries.
    #[error("{0} descriptors, more than one message carries ({MAX_FDS})")]
    TooMany(usize),
    /// The text would not fit a message.
    #[error("a text of {0} bytes, more than a message carries ({MAX_TEXT})")]
    TooLong(usize),
    /// The other side sent only part of what it said it would: the text
    /// was cut short or some descriptors were dropped by the kernel.
    #[error("the message came cut short")]
    Truncated,
    /// The other side closed the socket before sending anything.
    #[error("the other side closed the socket without an answer")]
    Closed,
}

/// Sends `text` with `fds` on `socket` (a connected Unix stream socket) in
/// one `sendmsg`. The descriptors stay open here: the receiver gets
/// copies of them. A socket that cannot take the message at once fails
/// with `WouldBlock` (the message is small: a fresh connection takes it).
pub fn send_with_fds(
    socket: impl AsFd,
    text: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), PassError> {
    if fds.len() > MAX_FDS {
        return Err(PassError::TooMany(fds.len()));
    }
    if text.is_empty() || text.len() > MAX_TEXT {
        return Err(PassError::TooLong(text.len()));
    }
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(PassError::TooMany(fds.len()));
    }
    let sent = rustix::net::sendmsg(
        socket,
        &[IoSlice::new(text)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .map_err(io::Error::from)?;
    if sent < text.len() {
        return Err(PassError::Truncated);
    }
    Ok(())
}

/// Takes one message from `socket`: its text and the descriptors that came
/// with it, which close when dropped. Fails with `WouldBlock` when nothing
/// has come yet on a non-blocking socket.
pub fn recv_with_fds(socket: impl AsFd) -> Result<(Vec<u8>, Vec<OwnedFd>), PassError> {
    let mut text = vec![0u8; MAX_TEXT];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(&mut text)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if got
        .flags
        .intersects(rustix::net::ReturnFlags::TRUNC | rustix::net::ReturnFlags::CTRUNC)
    {
        return Err(PassError::Truncated);
    }
    if got.bytes == 0 {
        return Err(PassError::Closed);
    }
    text.truncate(got.bytes);
    Ok((text, fds))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn listening_sockets_pass_and_keep_accepting() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        send_with_fds(&ours, b"one", &[listener.as_fd()]).unwrap();
        // Closed here, the socket stays open as the receiver's.
        drop(listener);
        let (text, fds) = recv_with_fds(&theirs).unwrap();
        assert_eq!(text, b"one");
        assert_eq!(fds.len(), 1);
        let passed = TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(passed.local_addr().unwrap(), address);
        let mut client = std::net::TcpStream::connect(address).unwrap();
        let (mut served, _) = passed.accept().unwrap();
        client.write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        served.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
    }

    #[test]
    fn a_text_without_descriptors_and_a_closed_peer() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        send_with_fds(&ours, b"none to give", &[]).unwrap();
        let (text, fds) = recv_with_fds(&theirs).unwrap();
        assert_eq!((text.as_slice(), fds.len()), (&b"none to give"[..], 0));
        drop(ours);
        assert!(matches!(recv_with_fds(&theirs), Err(PassError::Closed)));
    }

    #[test]
    fn what_one_message_cannot_carry_is_refused() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let many = vec![listener.as_fd(); MAX_FDS + 1];
        assert!(matches!(
            send_with_fds(&ours, b"x", &many),
            Err(PassError::TooMany(254))
        ));
        assert!(matches!(
            send_with_fds(&ours, &vec![b'x'; MAX_TEXT + 1], &[]),
            Err(PassError::TooLong(_))
        ));
    }
}
