//! The built-in demo: a configuration and the compiled demo program it wraps.

use std::path::Path;

/// The demo configuration (`examples/demo.toml`); `@DEMO_BIN@` names the directory the
/// analyzer is installed in.
pub const CONFIG: &str = include_str!("../../../examples/demo.toml");

/// The demo configuration with `@DEMO_BIN@` pointing at where the analyzer is installed
/// under `data_dir` (by `install`, when a worker starts: reading a configuration writes
/// nothing).
pub fn resolve(text: &str, data_dir: &Path) -> std::io::Result<String> {
    let analyzer = crate::embedded::location(data_dir, "analyzer", crate::embedded::ANALYZER)?;
    let bin = analyzer.parent().unwrap_or(data_dir);
    Ok(text.replace("@DEMO_BIN@", &bin.to_string_lossy()))
}

/// Installs the demo analyzer under `data_dir` (once: its path is its content's hash).
pub fn install(data_dir: &Path) -> std::io::Result<()> {
    crate::embedded::install(data_dir, "analyzer", crate::embedded::ANALYZER).map(drop)
}

/// Writes the demo analyzer to `file`, executable (for an image of one's own).
pub fn write_program(file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(file, crate::embedded::ANALYZER)?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o755))
}
