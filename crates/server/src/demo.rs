//! The built-in demo: a configuration and the compiled demo program it wraps.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// The demo configuration (`examples/demo.toml`); `@DEMO_BIN@` names the directory the
/// analyzer is installed in.
pub const CONFIG: &str = include_str!("../../../examples/demo.toml");

/// The demo analyzer (`examples/analyzer/analyzer.cpp`), compiled by `build.rs`.
const ANALYZER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/analyzer"));

/// The demo configuration with `@DEMO_BIN@` pointing at the analyzer, installed under
/// `data_dir` first.
pub fn resolve(text: &str, data_dir: &Path) -> std::io::Result<String> {
    let bin = install_analyzer(data_dir)?;
    Ok(text.replace("@DEMO_BIN@", &bin.to_string_lossy()))
}

/// Serialises installs inside one process (tests start many servers at once).
static INSTALL: Mutex<()> = Mutex::new(());

/// Writes the analyzer under `data_dir/bin/<content hash>/analyzer` unless it is there
/// already, and returns that directory. The file is written under a temporary name and
/// renamed, so a program never sees a half-written binary.
fn install_analyzer(data_dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let digest = hex::encode(&Sha256::digest(ANALYZER)[..8]);
    let dir = std::path::absolute(data_dir.join("bin").join(digest))?;
    let target = dir.join("analyzer");
    let _guard = INSTALL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if target.exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir)?;
    let temporary = dir.join(format!(".analyzer.{}", std::process::id()));
    {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(ANALYZER)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, &target)?;
    Ok(dir)
}
