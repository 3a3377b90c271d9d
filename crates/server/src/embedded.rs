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

/// Writes `bytes` as the executable `data_dir/bin/<content hash>/<name>` unless it is there
/// already, and returns its path. The file is written under a temporary name and renamed,
/// so a program never sees a half-written binary.
pub fn install(data_dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let digest = hex::encode(&Sha256::digest(bytes)[..8]);
    let dir = std::path::absolute(data_dir.join("bin").join(digest))?;
    let target = dir.join(name);
    let _guard = INSTALL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if target.exists() {
        return Ok(target);
    }
    std::fs::create_dir_all(&dir)?;
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
