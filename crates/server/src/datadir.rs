//! The data directory: its modes (what a job's program, running under a uid of its own,
//! may reach in it; ARCHITECTURE.md, "Isolation model"), and what its disk's failures
//! mean (`is_full`).
//!
//! | path | mode | a program with its own uid |
//! |---|---|---|
//! | `data_dir/` | 0711 | passes through, cannot list |
//! | `bin/`, `bin/<hash>/` | 0711, programs 0755 | executes the installed programs |
//! | `work/` | 0711 | passes through to its own directory, cannot list |
//! | `work/<job>-<attempt>/` | 0700, owned by the job's uid | its own work directory |
//! | `jobs.db` (+ `-wal`, `-shm`) | 0600 | nothing (the URL-signing secret is in it) |
//! | `blobs/`, `staging/`, anything else | 0700 / 0600 | nothing |
//!
//! Modes are set explicitly rather than through the umask: a data directory made by an
//! older version (or restored from a backup) is tightened at start too.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A full disk or quota (ENOSPC, EDQUOT): the server's trouble, which passes when space
/// is made; never the client's fault.
pub fn is_full(error: &std::io::Error) -> bool {
    let code = error.raw_os_error();
    code == Some(rustix::io::Errno::NOSPC.raw_os_error())
        || code == Some(rustix::io::Errno::DQUOT.raw_os_error())
}

/// Directories a program must pass through (to its work directory, to the installed
/// programs) without listing them.
const PASSED_THROUGH: [&str; 2] = ["bin", "work"];

/// Makes `data_dir` and gives it, and each entry at its top, the mode of the table above.
pub fn prepare(data_dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    set_mode(data_dir, 0o711)?;
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        let file_type = entry.file_type()?;
        let passed = PASSED_THROUGH.iter().any(|name| entry.file_name() == *name);
        let mode = match (file_type.is_dir(), passed) {
            (true, true) => 0o711,
            (true, false) => 0o700,
            (false, _) if file_type.is_file() => 0o600,
            // A link or a socket is left alone: its target is not ours to change.
            _ => continue,
        };
        set_mode(&entry.path(), mode)?;
    }
    Ok(())
}

/// Makes `directory` (and its parents) and gives it `mode`.
pub fn create_with_mode(directory: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(directory)?;
    set_mode(directory, mode)
}

pub fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Can another user pass through every directory above `data_dir`? A program with a uid
/// of its own must reach its work directory and the installed programs inside it.
pub fn reachable_by_others(data_dir: &Path) -> Result<(), String> {
    for directory in data_dir.ancestors().skip(1) {
        let mode = std::fs::metadata(directory)
            .map_err(|error| format!("cannot read {}: {error}", directory.display()))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(format!(
                "programs run with uids of their own cannot reach their work directories in \
                 {}, because {} cannot be passed through by other users: choose a data_dir \
                 they can reach (e.g. /var/lib/batchgate), or `chmod o+x {}`",
                data_dir.display(),
                directory.display(),
                directory.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn an_old_open_data_directory_is_tightened() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        for directory in ["bin/abc", "work/j-1", "blobs/jobs", "staging"] {
            std::fs::create_dir_all(data.join(directory)).unwrap();
        }
        for file in ["jobs.db", "jobs.db-wal", "bin/abc/tool"] {
            std::fs::write(data.join(file), "x").unwrap();
        }
        for path in [
            "",
            "bin",
            "work",
            "blobs",
            "staging",
            "jobs.db",
            "jobs.db-wal",
        ] {
            set_mode(&data.join(path), 0o755).unwrap();
        }
        std::os::unix::fs::symlink("/etc", data.join("link")).unwrap();
        prepare(&data).unwrap();
        let expected = [
            ("", 0o711),
            ("bin", 0o711),
            ("work", 0o711),
            ("blobs", 0o700),
            ("staging", 0o700),
            ("jobs.db", 0o600),
            ("jobs.db-wal", 0o600),
        ];
        for (path, wanted) in expected {
            assert_eq!(mode(&data.join(path)), wanted, "{path}");
        }
        assert_eq!(mode(Path::new("/etc")), 0o755, "a link is not followed");
    }

    #[test]
    fn a_closed_parent_is_named() {
        let root = tempfile::tempdir().unwrap();
        let closed = root.path().join("closed");
        std::fs::create_dir_all(closed.join("data")).unwrap();
        set_mode(&closed, 0o700).unwrap();
        let error = reachable_by_others(&closed.join("data")).unwrap_err();
        assert!(
            error.contains(&format!("because {} cannot", closed.display())),
            "{error}"
        );
        set_mode(&closed, 0o711).unwrap();
        set_mode(root.path(), 0o755).unwrap();
        // The rest of the path (the system's temporary directory) is open on test machines.
        if reachable_by_others(root.path()).is_ok() {
            assert!(reachable_by_others(&closed.join("data")).is_ok());
        }
    }
}
