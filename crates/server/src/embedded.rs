//! Programs compiled by `build.rs` and embedded in the server binary, installed under
//! `data_dir/bin/<content hash>/` when first needed: the demo analyzer and
//! `batchgate-limits` (sets a job's resource limits, then executes the job's program).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// The demo analyzer (`examples/analyzer/analyzer.cpp`).
pub const ANALYZER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/analyzer"));

/// `launcher/limits.c`: `batchgate-limits RESOURCE=VALUE... -- PROGRAM [ARG]...`.
pub const LIMITS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/batchgate-limits"));

/// Serialises installs inside one process (tests start many servers at once).
static INSTALL: Mutex<()> = Mutex::new(());

/// Where `install` puts `bytes` named `name`: `data_dir/bin/<content hash>/<name>`,
/// absolute.
pub fn location(data_dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let digest = hex::encode(&Sha256::digest(bytes)[..8]);
    Ok(std::path::absolute(data_dir.join("bin").join(digest))?.join(name))
}

/// Writes `bytes` as the executable `data_dir/bin/<content hash>/<name>` unless it is there
/// already, and returns its path. The file is written under a temporary name and renamed,
/// so a program never sees a half-written binary.
pub fn install(data_dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let target = location(data_dir, name, bytes)?;
    let dir = target.parent().unwrap_or(data_dir).to_owned();
    let _guard = INSTALL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if target.exists() {
        return Ok(target);
    }
    // Programs with uids of their own pass through to execute these, and list nothing.
    for directory in [data_dir.join("bin"), dir.clone()] {
        crate::datadir::create_with_mode(&directory, 0o711)?;
    }
    let temporary = dir.join(format!(".{name}.{}", std::process::id()));
    {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, &target)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Output};

    /// Runs the embedded `batchgate-limits` with `args`, only `env` in its environment.
    fn limits(args: &[&str], env: &[(&str, &str)]) -> Output {
        let data = tempfile::tempdir().unwrap();
        let wrapper = install(data.path(), "batchgate-limits", LIMITS).unwrap();
        Command::new(wrapper)
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .current_dir(data.path())
            .output()
            .unwrap()
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    const PATH: (&str, &str) = ("PATH", "/usr/bin:/bin");

    #[test]
    fn the_wrapper_sets_soft_and_hard_limits_and_runs_the_program_found_on_path() {
        let out = limits(
            &[
                "nofile=77",
                "cpu=5",
                "core=0",
                "--",
                "sh",
                "-c",
                "ulimit -Sn; ulimit -Hn; ulimit -t; ulimit -c; echo \"$0 $X\"",
            ],
            &[("PATH", "/nonexistent:/usr/bin:/bin"), ("X", "kept")],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "77\n77\n5\n0\nsh kept\n");
    }

    #[test]
    fn the_wrapper_refuses_bad_limits_and_missing_programs_with_127() {
        for (args, message) in [
            (&["nofile=1x", "--", "true"][..], "bad limit nofile=1x"),
            (&["bogus=1", "--", "true"][..], "bad limit bogus=1"),
            (&["nofile=", "--", "true"][..], "bad limit nofile="),
            (
                &["cpu=99999999999999999999999", "--", "true"][..],
                "bad limit cpu=",
            ),
            (&["nofile=5"][..], "usage: batchgate-limits"),
            (
                &["--", "no-such-program"][..],
                "cannot run no-such-program: no such file or directory",
            ),
            (&["--", "/"][..], "cannot run /: permission denied"),
        ] {
            let out = limits(args, &[PATH]);
            assert_eq!(out.status.code(), Some(127), "{args:?}");
            assert!(
                text(&out.stderr).contains(message),
                "{args:?}: {}",
                text(&out.stderr)
            );
        }
    }

    #[test]
    fn a_cpu_limit_has_a_higher_hard_limit() {
        let out = limits(
            &["cpu=2:3", "--", "sh", "-c", "ulimit -St; ulimit -Ht"],
            &[PATH],
        );
        assert_eq!(text(&out.stdout), "2\n3\n", "{}", text(&out.stderr));
        let out = limits(&["cpu=3:2", "--", "true"], &[PATH]);
        assert_eq!(
            out.status.code(),
            Some(127),
            "a hard limit below the soft one"
        );
    }

    /// `contain` ends what the program left behind (a daemon in its own session holding
    /// the output pipe: `output()` returns only when it is gone) and exits as the program.
    #[test]
    fn contained_programs_take_their_daemons_with_them_and_keep_their_status() {
        use std::os::unix::process::ExitStatusExt;
        let started = std::time::Instant::now();
        let out = limits(
            &[
                "contain",
                "--",
                "sh",
                "-c",
                "setsid -f sleep 3; (sleep 4 &); echo left; exit 7",
            ],
            &[PATH],
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "the wrapper waited {:?} for the daemons",
            started.elapsed()
        );
        assert_eq!(out.status.code(), Some(7));
        assert_eq!(text(&out.stdout), "left\n");
        let out = limits(&["contain", "--", "sh", "-c", "kill -SEGV $$"], &[PATH]);
        assert_eq!(
            out.status.signal(),
            Some(11),
            "the program's signal, re-raised"
        );
        let out = limits(&["contain", "--", "no-such-program"], &[PATH]);
        assert_eq!(out.status.code(), Some(127));
    }

    /// execvp(3) hands an executable without a known format to /bin/sh; the wrapper does
    /// not (a job's files never become shell text).
    #[test]
    fn the_wrapper_never_hands_a_file_to_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script");
        std::fs::write(&script, "echo ran by a shell\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let on_path = format!("{}:/usr/bin:/bin", dir.path().display());
        for program in [script.to_str().unwrap(), "script"] {
            let out = limits(&["nofile=64", "--", program], &[("PATH", &on_path)]);
            assert_eq!(out.status.code(), Some(127), "{program}");
            assert!(out.stdout.is_empty(), "{program}: {}", text(&out.stdout));
            assert!(
                text(&out.stderr).contains("exec format error"),
                "{}",
                text(&out.stderr)
            );
        }
    }
}
