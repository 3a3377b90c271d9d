//! Group commit for SQLite in WAL mode. The writer commits with `synchronous = NORMAL`
//! (no fsync per commit); a write that must survive a power cut before it is acknowledged
//! (a job accepted with `202`, a result published, a cancel confirmed) then waits for
//! `WalSync::sync`, which fsyncs the write-ahead log — once for every commit that finished
//! before the fsync began. Concurrent writers share one fsync instead of queueing one each
//! behind the single write lock: the same guarantee as `synchronous = FULL`, at a fraction
//! of the disk round trips under load.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Mutex;

pub struct WalSync {
    wal: PathBuf,
    /// Commits that asked to be made durable (each takes a ticket after committing).
    requested: AtomicU64,
    /// Every ticket up to this one is on disk.
    synced: AtomicU64,
    /// One fsync at a time; the others wait here and usually find their ticket covered.
    running: Mutex<()>,
    fsyncs: AtomicU64,
}

impl WalSync {
    /// For the database at `database` (its log is `<database>-wal`).
    pub fn new(database: &std::path::Path) -> WalSync {
        let mut wal = database.as_os_str().to_owned();
        wal.push("-wal");
        WalSync {
            wal: wal.into(),
            requested: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            running: Mutex::new(()),
            fsyncs: AtomicU64::new(0),
        }
    }

    /// Returns once everything committed before the call is on disk.
    pub async fn sync(&self) -> std::io::Result<()> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = self.running.lock().await;
        if self.synced.load(Ordering::SeqCst) >= ticket {
            // An fsync that began after this commit has finished.
            return Ok(());
        }
        // Every ticket taken so far belongs to a commit that has finished.
        let covered = self.requested.load(Ordering::SeqCst);
        let wal = self.wal.clone();
        tokio::task::spawn_blocking(move || match std::fs::File::open(&wal) {
            Ok(file) => file.sync_data(),
            // No log: SQLite checkpointed and removed it, so the database file itself
            // holds (and has synced) every commit.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error),
        })
        .await
        .map_err(std::io::Error::other)??;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.synced.fetch_max(covered, Ordering::SeqCst);
        Ok(())
    }

    /// fsyncs made so far.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fifty writers asking at once share two fsyncs: the first caller's, and one that
    /// covers everyone who asked while it ran.
    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_syncs_share_an_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("jobs.db");
        std::fs::write(dir.path().join("jobs.db-wal"), b"frames").unwrap();
        let wal = WalSync::new(&database);
        let results = futures_util::future::join_all((0..50).map(|_| wal.sync())).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(wal.fsyncs(), 2);
        // A later commit gets its own.
        wal.sync().await.unwrap();
        assert_eq!(wal.fsyncs(), 3);
    }
}
