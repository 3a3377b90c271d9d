//! The optional bubblewrap sandbox: the program sees the host read-only, its own work
//! directory writable, a private /tmp, no network, its own pid/ipc/uts namespaces, and
//! none of the server's data (the data directory is hidden behind an empty tmpfs; only
//! the program's own directory inside it, if any, is mapped back read-only).

use std::path::{Path, PathBuf};

/// Finds `bwrap` on the server's `PATH`.
pub fn find_bwrap() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("bwrap"))
        .find(|candidate| candidate.is_file())
}

/// The argv that runs `argv` inside the sandbox.
pub fn wrap(bwrap: &Path, argv: Vec<String>, workdir: &Path, data_dir: &Path) -> Vec<String> {
    let text = |path: &Path| path.to_string_lossy().into_owned();
    let mut wrapped: Vec<String> = [
        &text(bwrap),
        "--unshare-all",
        "--die-with-parent",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
        "--tmpfs",
        &text(data_dir),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(program_dir) = Path::new(&argv[0]).parent() {
        if program_dir.starts_with(data_dir) && program_dir != data_dir {
            let dir = text(program_dir);
            wrapped.extend(["--ro-bind".into(), dir.clone(), dir]);
        }
    }
    let workdir = text(workdir);
    wrapped.extend([
        "--bind".into(),
        workdir.clone(),
        workdir.clone(),
        "--chdir".into(),
        workdir,
        "--".into(),
    ]);
    wrapped.extend(argv);
    wrapped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_keeps_its_argv_after_the_separator() {
        let argv = vec!["/data/bin/x/prog".to_owned(), "a b".to_owned()];
        let wrapped = wrap(
            Path::new("/usr/bin/bwrap"),
            argv,
            Path::new("/data/work/j-1"),
            Path::new("/data"),
        );
        let separator = wrapped.iter().position(|a| a == "--").unwrap();
        assert_eq!(&wrapped[separator + 1..], ["/data/bin/x/prog", "a b"]);
        let joined = wrapped[..separator].join(" ");
        assert!(
            joined.contains("--tmpfs /data --ro-bind /data/bin/x /data/bin/x"),
            "{joined}"
        );
        assert!(joined.contains("--bind /data/work/j-1 /data/work/j-1 --chdir /data/work/j-1"));
        assert!(joined.contains("--unshare-all"));
    }
}
