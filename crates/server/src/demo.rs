//! The built-in demo: a configuration and the compiled demo program it wraps.

use std::path::Path;

/// The demo configuration (`examples/demo.toml`); `@DEMO_BIN@` names the directory the
/// analyzer is installed in.
pub const CONFIG: &str = include_str!("../../../examples/demo.toml");

/// The demo configuration with `@DEMO_BIN@` pointing at the analyzer, installed under
/// `data_dir` first.
pub fn resolve(text: &str, data_dir: &Path) -> std::io::Result<String> {
    let analyzer = crate::embedded::install(data_dir, "analyzer", crate::embedded::ANALYZER)?;
    let bin = analyzer.parent().unwrap_or(data_dir);
    Ok(text.replace("@DEMO_BIN@", &bin.to_string_lossy()))
}
