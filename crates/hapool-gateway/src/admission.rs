//! Which client connections a listener takes, and which of its workers
//! serves each.
//!
//! Each worker accepts on a socket of its own (SO_REUSEPORT); the
//! listener's `max_connections` holds for all of them together, and the
//! connections each worker has open are counted, for `/status`, for a
//! worker's shutdown to wait on, and to keep the workers even. The kernel
//! picks the accepting worker by a hash of the client's address and port,
//! so by chance one worker may get a quarter more connections than the
//! other, and the clients on it wait longer for every answer. A worker that
//! accepts a connection while it has more open than the least busy worker
//! by more than a small slack hands the connection to that worker
//! ([`place`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

/// What the workers of one listener share.
pub(crate) struct Admission {
    /// Open connections per worker.
    open: Box<[AtomicUsize]>,
    /// The listener's `max_connections` (a reload may change it).
    max: AtomicUsize,
    /// Connections admitted and open, all workers together.
    admitted: AtomicUsize,
    /// Each worker's inbox of connections other workers accepted for it.
    inboxes: Box<[UnboundedSender<Handed>]>,
}

/// An admitted connection: counted open on its worker, and holding one of
/// the listener's connections, for as long as it lives.
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    worker: usize,
}

impl Admitted {
    /// Counts the connection on `worker` instead.
    fn move_to(mut self, worker: usize) -> Self {
        self.admission.open[worker].fetch_add(1, Ordering::Relaxed);
        self.admission.open[self.worker].fetch_sub(1, Ordering::Relaxed);
        self.worker = worker;
        self
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.open[self.worker].fetch_sub(1, Ordering::Relaxed);
        self.admission.admitted.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection one worker accepted and handed to another.
pub(crate) struct Handed {
    /// The connection, out of the accepting worker's reactor.
    pub(crate) stream: std::net::TcpStream,
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// Counted on the worker it was handed to.
    pub(crate) admitted: Admitted,
}

/// What became of an accepted connection.
pub(crate) enum Placed {
    /// The accepting worker serves it.
    Here(tokio::net::TcpStream, Admitted),
    /// Another worker serves it.
    Handed,
    /// The listener is at `max_connections`: the connection is closed.
    Full,
    /// Moving it between workers failed: the connection is closed.
    Lost(std::io::Error),
}

/// Where a connection that `accepting` accepted is served, given each
/// worker's open connections before it: on the worker with the fewest,
/// when `accepting` has more than that by more than a thirty-second of it
/// plus one; else where it was accepted (a hand-off costs a wake-up of
/// the other worker and two reactor registrations, so a few connections of
/// difference are left alone).
pub(crate) fn place(open: &[usize], accepting: usize) -> usize {
    let Some((least, &fewest)) = open.iter().enumerate().min_by_key(|&(_, n)| *n) else {
        return accepting;
    };
    if open[accepting] > fewest + 1 + fewest / 32 {
        least
    } else {
        accepting
    }
}

impl Admission {
    /// A listener served by `workers` workers, at most `max_connections`
    /// open at once; with each worker's inbox, in worker order.
    pub(crate) fn new(
        workers: usize,
        max_connections: usize,
    ) -> (Arc<Self>, Vec<UnboundedReceiver<Handed>>) {
        let (inboxes, receivers): (Vec<_>, Vec<_>) = (0..workers.max(1))
            .map(|_| mpsc::unbounded_channel())
            .unzip();
        let admission = Arc::new(Self {
            open: (0..workers.max(1)).map(|_| AtomicUsize::new(0)).collect(),
            max: AtomicUsize::new(max_connections),
            admitted: AtomicUsize::new(0),
            inboxes: inboxes.into(),
        });
        (admission, receivers)
    }

    /// Admits a connection `worker` accepted; `None` when the listener
    /// is at `max_connections`.
    pub(crate) fn admit(self: &Arc<Self>, worker: usize) -> Option<Admitted> {
        let max = self.max.load(Ordering::Relaxed);
        self.admitted
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.open[worker].fetch_add(1, Ordering::Relaxed);
        Some(Admitted {
            admission: self.clone(),
            worker,
        })
    }

    /// Takes a new `max_connections`: connections beyond it are not closed,
    /// new ones wait for their number to fall below it.
    pub(crate) fn set_max(&self, max_connections: usize) {
        self.max.store(max_connections, Ordering::Relaxed);
    }

    /// Admits a connection `worker` accepted from `peer`, and hands it to
    /// the worker [`place`] chooses; `worker` serves it itself also when
    /// the chosen worker no longer takes connections.
    pub(crate) fn admit_and_place(
        self: &Arc<Self>,
        worker: usize,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
    ) -> Placed {
        let target = place(&self.open(), worker);
        let Some(admitted) = self.admit(worker) else {
            return Placed::Full;
        };
        if target == worker {
            return Placed::Here(stream, admitted);
        }
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => return Placed::Lost(e),
        };
        let handed = Handed {
            stream,
            peer,
            admitted: admitted.move_to(target),
        };
        match self.inboxes[target].send(handed) {
            Ok(()) => Placed::Handed,
            Err(mpsc::error::SendError(back)) => {
                match tokio::net::TcpStream::from_std(back.stream) {
                    Ok(stream) => Placed::Here(stream, back.admitted.move_to(worker)),
                    Err(e) => Placed::Lost(e),
                }
            }
        }
    }

    /// Open connections, per worker.
    pub(crate) fn open(&self) -> Vec<usize> {
        (0..self.open.len()).map(|w| self.open_on(w)).collect()
    }

    /// The connections `worker` has open.
    pub(crate) fn open_on(&self, worker: usize) -> usize {
        self.open[worker].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_counts_every_worker_and_a_closed_connection_frees_its_place() {
        let (admission, _inboxes) = Admission::new(2, 3);
        let first = admission.admit(1).unwrap();
        let others = [admission.admit(0).unwrap(), admission.admit(1).unwrap()];
        assert_eq!(admission.open(), vec![1, 2]);
        assert!(
            admission.admit(0).is_none(),
            "max_connections is the listener's"
        );
        drop(first);
        assert_eq!(admission.open(), vec![1, 1]);
        assert!(admission.admit(0).is_some());
        drop(others);
        assert_eq!(admission.open(), vec![0, 0]);
    }

    #[test]
    fn a_new_limit_holds_for_the_next_connections() {
        let (admission, _inboxes) = Admission::new(1, 2);
        let open = [admission.admit(0).unwrap(), admission.admit(0).unwrap()];
        admission.set_max(1);
        let [first, second] = open;
        drop(first);
        assert!(admission.admit(0).is_none(), "one is open: at the limit");
        drop(second);
        let again = admission.admit(0).unwrap();
        admission.set_max(3);
        let more = [admission.admit(0).unwrap(), admission.admit(0).unwrap()];
        assert!(admission.admit(0).is_none());
        drop((again, more));
    }

    #[test]
    fn a_connection_goes_to_the_fewest_only_beyond_the_slack() {
        // Even, or one apart: where it was accepted.
        assert_eq!(place(&[0, 0], 0), 0);
        assert_eq!(place(&[1, 0], 0), 0);
        assert_eq!(place(&[0, 1], 0), 0);
        // Two apart: to the other.
        assert_eq!(place(&[2, 0], 0), 1);
        // The slack grows by one every 32 connections.
        assert_eq!(place(&[66, 64], 0), 0);
        assert_eq!(place(&[67, 64], 0), 0);
        assert_eq!(place(&[68, 64], 0), 1);
        // Among several, the one with the fewest.
        assert_eq!(place(&[5, 9, 3, 4], 1), 2);
        assert_eq!(place(&[5, 9, 3, 4], 3), 3);
        assert_eq!(place(&[7], 0), 0);
    }

    /// A connected pair of sockets on loopback: the accepted end, and the
    /// client's end with its address.
    async fn accepted() -> (tokio::net::TcpStream, SocketAddr, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        (stream, peer, client)
    }

    #[tokio::test]
    async fn a_busier_worker_hands_a_connection_on_unless_the_other_is_gone() {
        let (admission, mut inboxes) = Admission::new(2, 10);
        let held: Vec<Admitted> = (0..3).map(|_| admission.admit(0).unwrap()).collect();
        assert_eq!(admission.open(), vec![3, 0]);

        let (stream, peer, _client) = accepted().await;
        assert!(matches!(
            admission.admit_and_place(0, stream, peer),
            Placed::Handed
        ));
        let handed = inboxes[1].try_recv().expect("handed to worker 1");
        assert_eq!(handed.peer, peer);
        assert_eq!(handed.stream.peer_addr().unwrap(), peer);
        assert_eq!(admission.open(), vec![3, 1]);

        // Worker 1 has stopped taking connections: worker 0 serves it.
        drop(inboxes.pop());
        let (stream, peer, _client) = accepted().await;
        let Placed::Here(stream, admitted) = admission.admit_and_place(0, stream, peer) else {
            panic!("served where accepted");
        };
        assert_eq!(stream.peer_addr().unwrap(), peer);
        assert_eq!(admission.open(), vec![4, 1]);
        drop((admitted, handed, held));
        assert_eq!(admission.open(), vec![0, 0]);
    }

    #[tokio::test]
    async fn a_full_listener_takes_no_connection() {
        let (admission, _inboxes) = Admission::new(2, 1);
        let _only = admission.admit(1).unwrap();
        let (stream, peer, _client) = accepted().await;
        assert!(matches!(
            admission.admit_and_place(0, stream, peer),
            Placed::Full
        ));
        assert_eq!(admission.open(), vec![0, 1]);
    }
}
