//! The machine-wide pool of uids that local programs run as, one per running attempt.

use std::path::PathBuf;

/// The uids programs run as (`run_as_uid`): one per running attempt on this machine, so
/// that a per-user process limit holds per job, jobs cannot signal or read one another,
/// and "every process of the uid" is exactly what a job started. A uid is held with an
/// exclusive `flock` on `/run/batchgate/uids/<uid>`, so every batchgate process of the
/// machine (several servers, workers, test servers) shares one pool without a
/// coordinator, and a crashed holder's lock goes with it; the next holder first kills
/// whatever the crashed one's job left running under that uid.
pub struct UidPool {
    first: u32,
    count: u32,
    directory: PathBuf,
    next: std::sync::atomic::AtomicU32,
}

/// Where the pool's lock files live.
pub const UID_LOCKS: &str = "/run/batchgate/uids";

impl UidPool {
    /// The pool of `count` uids from `first`; makes its lock directory (root only).
    pub fn open(first: u32, count: u32) -> std::io::Result<UidPool> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        if first == 0 || first.checked_add(count.max(1)).is_none() {
            return Err(std::io::Error::other(format!(
                "the pool {first} + {count} uids must lie between 1 and 4294967295"
            )));
        }
        let directory = PathBuf::from(UID_LOCKS);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&directory)?;
        let metadata = std::fs::metadata(&directory)?;
        if metadata.uid() != 0 || metadata.mode() & 0o022 != 0 {
            return Err(std::io::Error::other(format!(
                "{UID_LOCKS} must be owned by root and writable by no one else"
            )));
        }
        Ok(UidPool {
            first,
            count: count.max(1),
            directory,
            next: std::sync::atomic::AtomicU32::new(std::process::id() % count.max(1)),
        })
    }

    /// A uid no other running job of this machine holds.
    pub fn acquire(&self) -> Result<UidLease, String> {
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for offset in 0..self.count {
            let uid = self.first + (start.wrapping_add(offset)) % self.count;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(self.directory.join(uid.to_string()))
                .map_err(|error| format!("cannot lock a uid for the program: {error}"))?;
            let locked =
                rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive);
            if locked.is_ok() {
                return Ok(UidLease { uid, _lock: file });
            }
        }
        Err(format!(
            "all {} uids of the program users' pool are in use on this machine",
            self.count
        ))
    }
}

/// A uid held for one attempt; released when dropped (after its processes were killed).
pub struct UidLease {
    uid: u32,
    _lock: std::fs::File,
}

impl UidLease {
    pub fn uid(&self) -> u32 {
        self.uid
    }
}
