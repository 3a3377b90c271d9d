//! The work-directory layout (one owner for every executor and the worker: an attempt's
//! directory `<work_root>/<job id>-<attempt>`, the server's `.batchgate/` in it, the
//! program's `tmp/`), and the work directories of attempts that run on this host: made
//! fresh, or recycled from an ended attempt's emptied directory.
//!
//! Why recycle: a directory made and removed per job costs an inode allocation and leaves
//! a freed inode behind, and ext4 without a journal searches past every inode freed in
//! the last minutes when it allocates the next one (`recently_deleted`), so the cost of a
//! job grew with the jobs before it (bench/README.md). An emptied directory keeps its own
//! inode and those of its `.batchgate` and `tmp`, renamed under `.spare/` until the next
//! attempt renames it to its own name. A directory whose program ran with a uid of its own
//! is recycled too, once every process of that uid has ended: it is emptied, and what is
//! kept (`.batchgate`, `tmp`) goes back to the server's user before the next attempt hands
//! it over.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The server's own files inside a work directory (captured streams).
pub const META: &str = ".batchgate";
/// The program's `TMPDIR` inside its work directory.
pub const TMP: &str = "tmp";

/// The work directory of one attempt, under a work root.
pub fn work_dir(work_root: &Path, id: uuid::Uuid, attempt: u32) -> PathBuf {
    work_root.join(format!("{id}-{attempt}"))
}

/// The server's own files inside a work directory (captured streams).
pub fn meta_dir(work_dir: &Path) -> PathBuf {
    work_dir.join(META)
}

/// Where an executor captures a stream (`stdout`, `stderr`) while the attempt runs.
pub fn live_log(work_dir: &Path, stream: &str) -> PathBuf {
    meta_dir(work_dir).join(stream)
}

/// `<job id>-<attempt>`, the name of an attempt's work directory.
pub fn attempt_label(workdir: &Path) -> String {
    workdir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The job and attempt a work directory's name says.
pub fn parse_label(label: &str) -> Option<(uuid::Uuid, u32)> {
    let (id, attempt) = label.rsplit_once('-')?;
    Some((uuid::Uuid::parse_str(id).ok()?, attempt.parse().ok()?))
}

pub struct WorkDirs {
    spare_root: PathBuf,
    spare: Mutex<Vec<PathBuf>>,
    capacity: usize,
    named: AtomicU64,
}

impl WorkDirs {
    /// Spare directories live in `<work_root>/.spare`, emptied at start by the process
    /// that runs jobs there; at most `capacity` are kept (0: this process runs none).
    pub fn new(work_root: &Path, capacity: usize) -> WorkDirs {
        let spare_root = work_root.join(".spare");
        if capacity > 0 {
            let _ = fs::remove_dir_all(&spare_root);
        }
        WorkDirs {
            spare_root,
            spare: Mutex::new(Vec::new()),
            capacity,
            named: AtomicU64::new(0),
        }
    }

    /// A fresh (or, with `reuse`, a recycled empty) `workdir` with `.batchgate`, `tmp`
    /// and `directories` in it, even if a crashed attempt left one behind; one blocking
    /// call.
    pub async fn create(
        &self,
        workdir: &Path,
        directories: Vec<PathBuf>,
        reuse: bool,
    ) -> std::io::Result<()> {
        let spare = if reuse { self.lock().pop() } else { None };
        let workdir = workdir.to_owned();
        tokio::task::spawn_blocking(move || {
            let _ = fs::remove_dir_all(&workdir);
            if let Some(spare) = spare {
                if fs::rename(&spare, &workdir).is_err() {
                    let _ = fs::remove_dir_all(&spare);
                }
            }
            [workdir.join(META), workdir.join(TMP)]
                .iter()
                .chain(&directories)
                .try_for_each(fs::create_dir_all)?;
            // No other user may enter; a program with a uid of its own is given it.
            crate::datadir::set_mode(&workdir, 0o700)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Removes `workdir`, or empties it and keeps it for the next attempt when
    /// `recyclable` (every process of its attempt has ended) and there is room.
    pub async fn release(&self, workdir: &Path, recyclable: bool) {
        let spare = (recyclable && self.lock().len() < self.capacity).then(|| {
            let number = self.named.fetch_add(1, Ordering::Relaxed);
            self.spare_root.join(number.to_string())
        });
        let (emptied, spare_root) = (workdir.to_owned(), self.spare_root.clone());
        let kept = tokio::task::spawn_blocking(move || {
            let spare = spare?;
            let recycled = empty_for_reuse(&emptied)
                .and_then(|()| fs::create_dir_all(&spare_root))
                .and_then(|()| fs::rename(&emptied, &spare));
            recycled.is_ok().then_some(spare)
        })
        .await
        .ok()
        .flatten();
        match kept {
            Some(spare) => self.lock().push(spare),
            None => remove(workdir).await,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.spare.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes an attempt's work directory (logged when it cannot).
pub async fn remove(workdir: &Path) {
    if let Err(error) = tokio::fs::remove_dir_all(workdir).await {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(workdir = %workdir.display(), %error, "cannot remove the work directory");
        }
    }
}

/// Removes everything in `workdir` but the contents of `.batchgate` and `tmp`, which are
/// emptied and given back to the server's user (0700): a program with a uid of its own
/// may have chowned, chmodded or replaced them. Fails (and the directory is removed
/// instead) if either is not a directory, or `.batchgate` is not the server's own, as a
/// program may leave them. Only called once every process of the attempt has ended.
fn empty_for_reuse(workdir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let own = rustix::process::geteuid().as_raw();
    let mut kept = 0;
    for entry in fs::read_dir(workdir)? {
        let entry = entry?;
        let name = entry.file_name();
        let file_type = entry.file_type()?;
        let ours = || entry.metadata().is_ok_and(|m| m.uid() == own);
        if file_type.is_dir() && (name == TMP || (name == META && ours())) {
            empty(&entry.path())?;
            std::os::unix::fs::lchown(entry.path(), Some(own), None)?;
            crate::datadir::set_mode(&entry.path(), 0o700)?;
            kept += 1;
        } else {
            remove_entry(&entry)?;
        }
    }
    if kept < 2 {
        return Err(std::io::Error::other("not a work directory to reuse"));
    }
    Ok(())
}

fn empty(directory: &Path) -> std::io::Result<()> {
    fs::read_dir(directory)?.try_for_each(|entry| remove_entry(&entry?))
}

/// Removes a directory entry; a link is removed, never followed.
fn remove_entry(entry: &fs::DirEntry) -> std::io::Result<()> {
    if entry.file_type()?.is_dir() {
        fs::remove_dir_all(entry.path())
    } else {
        fs::remove_file(entry.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn files_in(directory: &Path) -> Vec<String> {
        let mut names = walk(directory, directory);
        names.sort();
        names
    }

    fn walk(root: &Path, directory: &Path) -> Vec<String> {
        let mut names = Vec::new();
        for entry in fs::read_dir(directory).unwrap() {
            let path = entry.unwrap().path();
            names.push(path.strip_prefix(root).unwrap().display().to_string());
            if path.is_dir() && !path.is_symlink() {
                names.extend(walk(root, &path));
            }
        }
        names
    }

    #[tokio::test]
    async fn an_ended_attempts_directory_is_emptied_and_reused_with_its_inodes() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let dirs = WorkDirs::new(root.path(), 2);
        let first = root.path().join("a-1");
        dirs.create(&first, vec![first.join("out")], true)
            .await
            .unwrap();
        assert_eq!(files_in(&first), [".batchgate", "out", "tmp"]);
        let inode = fs::metadata(&first).unwrap().ino();
        fs::write(first.join("data.bin"), "input").unwrap();
        fs::write(first.join("tmp/scratch"), "x").unwrap();
        fs::write(first.join(".batchgate/stderr"), "log").unwrap();
        fs::create_dir_all(first.join("made/by/program")).unwrap();
        std::os::unix::fs::symlink("/etc", first.join("link")).unwrap();
        dirs.release(&first, true).await;
        assert!(!first.exists());

        let second = root.path().join("b-1");
        dirs.create(&second, Vec::new(), true).await.unwrap();
        assert_eq!(
            fs::metadata(&second).unwrap().ino(),
            inode,
            "the same directory"
        );
        assert_eq!(
            files_in(&second),
            [".batchgate", "tmp"],
            "nothing of the first job"
        );
        assert!(fs::read_dir(root.path().join(".spare"))
            .unwrap()
            .next()
            .is_none());
    }

    /// A program with a uid of its own owned its directory: what is kept goes back to the
    /// server, and a `.batchgate` it made itself is not reused.
    #[tokio::test]
    async fn a_directory_a_program_of_its_own_uid_held_is_given_back_or_removed() {
        use std::os::unix::fs::MetadataExt;
        if !rustix::process::geteuid().is_root() {
            return; // chown needs root; CI runs as root
        }
        let root = tempfile::tempdir().unwrap();
        let dirs = WorkDirs::new(root.path(), 2);
        let handed = root.path().join("a-1");
        dirs.create(&handed, Vec::new(), true).await.unwrap();
        for path in [handed.clone(), handed.join(TMP)] {
            std::os::unix::fs::lchown(&path, Some(61999), Some(61999)).unwrap();
        }
        fs::set_permissions(handed.join(TMP), fs::Permissions::from_mode(0o777)).unwrap();
        dirs.release(&handed, true).await;
        let reused = root.path().join("b-1");
        dirs.create(&reused, Vec::new(), true).await.unwrap();
        let tmp = fs::metadata(reused.join(TMP)).unwrap();
        assert_eq!((tmp.uid(), tmp.mode() & 0o777), (0, 0o700));

        // A `.batchgate` the program replaced with its own: the directory is removed.
        let replaced = root.path().join("c-1");
        dirs.create(&replaced, Vec::new(), true).await.unwrap();
        std::os::unix::fs::lchown(replaced.join(META), Some(61999), Some(61999)).unwrap();
        dirs.release(&replaced, true).await;
        assert!(!replaced.exists());
        assert_eq!(fs::read_dir(root.path().join(".spare")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_directory_is_removed_when_not_recyclable_or_damaged_or_over_capacity() {
        let root = tempfile::tempdir().unwrap();
        let dirs = WorkDirs::new(root.path(), 1);
        let spares = || fs::read_dir(root.path().join(".spare")).map_or(0, Iterator::count);

        let own_user = root.path().join("a-1");
        dirs.create(&own_user, Vec::new(), true).await.unwrap();
        dirs.release(&own_user, false).await;
        assert!(!own_user.exists());
        assert_eq!(spares(), 0);

        // A program replaced its tmp with a file: nothing to reuse.
        let damaged = root.path().join("b-1");
        dirs.create(&damaged, Vec::new(), true).await.unwrap();
        fs::remove_dir(damaged.join(TMP)).unwrap();
        fs::write(damaged.join(TMP), "").unwrap();
        dirs.release(&damaged, true).await;
        assert!(!damaged.exists());
        assert_eq!(spares(), 0);

        let (kept, over) = (root.path().join("c-1"), root.path().join("d-1"));
        dirs.create(&kept, Vec::new(), true).await.unwrap();
        dirs.create(&over, Vec::new(), true).await.unwrap();
        dirs.release(&kept, true).await;
        dirs.release(&over, true).await;
        assert!(!kept.exists() && !over.exists());
        assert_eq!(spares(), 1, "the capacity");
    }
}
