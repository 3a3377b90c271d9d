//! Builds the benchmark's trivial program (`stamp.c`) with the system C compiler.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let source = manifest_dir.join("stamp.c");
    println!("cargo:rerun-if-changed={}", source.display());
    let binary = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("stamp");
    let compiler = cc::Build::new()
        .opt_level(2)
        .cargo_metadata(false)
        .get_compiler();
    let mut command: Command = compiler.to_command();
    command.arg("-O2").arg("-o").arg(&binary).arg(&source);
    let status = command
        .status()
        .unwrap_or_else(|error| panic!("cannot run the C compiler ({command:?}): {error}"));
    assert!(
        status.success(),
        "building stamp failed: {command:?} exited with {status}"
    );
    println!("cargo:rustc-env=BATCHGATE_BENCH_STAMP={}", binary.display());
}
