//! The last member list of every registrar pool, kept on disk so that a
//! gateway restarted while no registrar answers still has members to
//! serve with (they are probed before use, as any member is).
//!
//! The file is one ENRP_HANDLE_TABLE_RESPONSE message, the format in
//! which registrars exchange their handle tables: decoding it checks it as
//! thoroughly as a message from a peer. It is written to a temporary file
//! beside it, flushed to the disk, and renamed over the old one, so a
//! crash (of the gateway or of the machine) or a full disk leaves the
//! previous list, never half of one. A write that failed is tried again
//! with the next answer from the registrars, even when the members did
//! not change.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use hapool_wire::{
    EnrpBody, EnrpMessage, Message, PoolElement, PoolEntries, PoolHandle, RegistrarId,
};
use tracing::{info, warn};

/// The member lists as last written (or read), and where they are kept.
pub(crate) struct MemberCache {
    path: PathBuf,
    lists: BTreeMap<PoolHandle, Vec<PoolElement>>,
    /// Whether the file lags behind `lists` because its last write failed.
    behind: bool,
}

impl MemberCache {
    /// The cache at `path`, with what it holds; empty (and a warning
    /// naming the file) when the file cannot be read.
    pub(crate) fn open(path: PathBuf) -> Self {
        let lists = match load(&path) {
            Ok(lists) => {
                if !lists.is_empty() {
                    info!(path = %path.display(), pools = lists.len(), "member lists from the cache");
                }
                lists
            }
            Err(e) => {
                warn!(error = %e, "starting without the member cache");
                BTreeMap::new()
            }
        };
        Self {
            path,
            lists,
            behind: false,
        }
    }

    /// A cache at `path` that holds nothing yet: the file is written with
    /// the next answers (whatever it holds now is not read).
    pub(crate) fn empty(path: PathBuf) -> Self {
        Self {
            path,
            lists: BTreeMap::new(),
            behind: false,
        }
    }

    /// The cached members of `pool`, if any.
    pub(crate) fn members(&self, pool: &PoolHandle) -> Option<&[PoolElement]> {
        self.lists.get(pool).map(Vec::as_slice)
    }

    /// Records the registrars' answer for `pool`, and writes the file when
    /// the pool's members (identifiers and addresses) changed, or when the
    /// last write failed; a load update alone is not worth a write. A
    /// failing write is logged once, and again when a write succeeds. The
    /// file is written on a thread for blocking work: flushing it to the
    /// disk can take long, and the calling task may share its thread with
    /// a worker serving requests.
    pub(crate) async fn record(&mut self, pool: &PoolHandle, elements: &[PoolElement]) {
        let same = self
            .lists
            .get(pool)
            .is_some_and(|cached| membership(cached) == membership(elements));
        if same && !self.behind {
            return;
        }
        if !same {
            if elements.is_empty() {
                self.lists.remove(pool);
            } else {
                self.lists.insert(pool.clone(), elements.to_vec());
            }
        }
        let (path, lists) = (self.path.clone(), self.lists.clone());
        let saved = tokio::task::spawn_blocking(move || save(&path, &lists))
            .await
            .unwrap_or_else(|e| {
                Err(MemberCacheError::Write {
                    path: self.path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            });
        match saved {
            Ok(()) if self.behind => {
                self.behind = false;
                info!(path = %self.path.display(), "the member cache is up to date again");
            }
            Ok(()) => {}
            Err(e) if !self.behind => {
                self.behind = true;
                warn!(error = %e, "the member cache is not up to date: written again with the next answer");
            }
            Err(_) => {}
        }
    }
}

/// Who is in a pool, in a comparable order.
fn membership(elements: &[PoolElement]) -> Vec<(u32, &hapool_wire::Transport)> {
    let mut members: Vec<_> = elements
        .iter()
        .map(|e| (e.id.0, &e.user_transport))
        .collect();
    members.sort_by_key(|(id, _)| *id);
    members
}

/// Why the cache file cannot be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MemberCacheError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file is not a member list.
    #[error("{path} is not a member list: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

/// The member lists in the file at `path`, by pool; empty when there is
/// no file yet.
pub(crate) fn load(
    path: &Path,
) -> Result<BTreeMap<PoolHandle, Vec<PoolElement>>, MemberCacheError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(MemberCacheError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let malformed = |reason: String| MemberCacheError::Malformed {
        path: path.to_owned(),
        reason,
    };
    let decoded = EnrpMessage::decode(&bytes).map_err(|e| malformed(e.to_string()))?;
    match decoded.message.body {
        EnrpBody::HandleTableResponse { pools, .. } => Ok(pools
            .into_iter()
            .map(|pool| (pool.pool_handle, pool.elements))
            .collect()),
        other => Err(malformed(format!(
            "an ENRP message of another kind ({:?})",
            other.message_type()
        ))),
    }
}

/// Replaces the file at `path` with `pools` (pools without members are
/// left out).
pub(crate) fn save(
    path: &Path,
    pools: &BTreeMap<PoolHandle, Vec<PoolElement>>,
) -> Result<(), MemberCacheError> {
    let write_error = |source| MemberCacheError::Write {
        path: path.to_owned(),
        source,
    };
    let message = EnrpMessage {
        sender: RegistrarId(0),
        receiver: RegistrarId(0),
        body: EnrpBody::HandleTableResponse {
            reject: false,
            more_to_send: false,
            pools: pools
                .iter()
                .filter(|(_, elements)| !elements.is_empty())
                .map(|(handle, elements)| PoolEntries {
                    pool_handle: handle.clone(),
                    elements: elements.clone(),
                })
                .collect(),
        },
    };
    let bytes = message
        .to_bytes()
        .map_err(|e| write_error(std::io::Error::other(e.to_string())))?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    File::create(&temporary)
        .and_then(|mut file| {
            file.write_all(&bytes)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|source| {
            let _ = std::fs::remove_file(&temporary);
            write_error(source)
        })?;
    // The rename itself is on the disk once the directory is: without
    // this, a machine that crashes now may come back with the old list,
    // which is still a whole one, so a failure here is not an error.
    if let Some(directory) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = File::open(directory).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hapool_wire::{Policy, PoolElementId, Transport};

    fn element(id: u32, port: u16) -> PoolElement {
        PoolElement {
            id: PoolElementId(id),
            home_registrar: RegistrarId(7),
            registration_life: 30_000,
            user_transport: Transport::tcp(([127, 0, 0, 1], port).into()),
            policy: Policy::LeastUsed { load: id },
            asap_transport: None,
        }
    }

    #[test]
    fn a_saved_list_loads_back_and_a_bad_file_is_named() {
        let dir = std::env::temp_dir().join(format!("hapool-member-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("members");
        assert!(load(&path).unwrap().is_empty(), "no file yet: no members");
        let mut pools = BTreeMap::new();
        pools.insert(
            PoolHandle::from("web"),
            vec![element(1, 8001), element(2, 8002)],
        );
        pools.insert(PoolHandle::from("gone"), Vec::new());
        save(&path, &pools).unwrap();
        pools.remove(&PoolHandle::from("gone"));
        assert_eq!(load(&path).unwrap(), pools);
        std::fs::write(&path, b"not a message").unwrap();
        let error = load(&path).unwrap_err().to_string();
        assert!(error.contains("is not a member list"), "{error}");
        assert!(error.contains(&path.display().to_string()), "{error}");
        let other = EnrpMessage {
            sender: RegistrarId(1),
            receiver: RegistrarId(2),
            body: EnrpBody::ListRequest,
        };
        std::fs::write(&path, other.to_bytes().unwrap()).unwrap();
        let error = load(&path).unwrap_err().to_string();
        assert!(error.contains("another kind (ListRequest)"), "{error}");
        let error = save(&dir.join("no/such/dir/members"), &pools)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("cannot write"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_failed_write_is_made_with_the_next_answer() {
        let dir =
            std::env::temp_dir().join(format!("hapool-member-cache-retry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // The directory does not exist yet: the write fails, as on a full
        // disk, and nothing is left behind.
        let path = dir.join("members");
        let mut cache = MemberCache::empty(path.clone());
        let web = PoolHandle::from("web");
        let members = [element(1, 8001), element(2, 8002)];
        cache.record(&web, &members).await;
        assert!(cache.behind);
        assert!(!path.exists());
        // The same members again, once the file can be written: written now,
        // where an unchanged list alone is not.
        std::fs::create_dir_all(&dir).unwrap();
        cache.record(&web, &members).await;
        assert!(!cache.behind);
        assert_eq!(
            load(&path).unwrap().get(&web).map(Vec::as_slice),
            Some(&members[..])
        );
        assert!(!dir.join("members.new").exists());
        // Up to date: an unchanged list is not written again.
        std::fs::remove_file(&path).unwrap();
        cache.record(&web, &members).await;
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
