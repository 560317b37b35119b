//! Which client connections a listener takes, over all its workers.
//!
//! Each worker accepts on a socket of its own (SO_REUSEPORT); the
//! listener's `max_connections` holds for all of them together, and the
//! connections each worker has open are counted, for `/status` and for a
//! worker's shutdown to wait on (the kernel
//! picks a worker by a hash of the client's address and port, so the
//! counts differ by chance).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What the workers of one listener share.
pub(crate) struct Admission {
    /// Open connections per worker.
    open: Box<[AtomicUsize]>,
    /// The listener's `max_connections`.
    permits: Arc<Semaphore>,
}

/// An admitted connection: counted open on its worker, and holding one of
/// the listener's connections, for as long as it lives.
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    worker: usize,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.open[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    /// A listener served by `workers` workers, at most `max_connections`
    /// open at once.
    pub(crate) fn new(workers: usize, max_connections: usize) -> Arc<Self> {
        Arc::new(Self {
            open: (0..workers.max(1)).map(|_| AtomicUsize::new(0)).collect(),
            permits: Arc::new(Semaphore::new(max_connections)),
        })
    }

    /// Admits a connection `worker` accepted; `None` when the listener
    /// is at `max_connections`.
    pub(crate) fn admit(self: &Arc<Self>, worker: usize) -> Option<Admitted> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        self.open[worker].fetch_add(1, Ordering::Relaxed);
        Some(Admitted {
            admission: self.clone(),
            worker,
            _permit: permit,
        })
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
        let admission = Admission::new(2, 3);
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
}
