//! Builds the demo legacy program (`examples/analyzer/analyzer.cpp`) with the system C++
//! compiler, so that the binary can embed it and the README's first command needs no
//! extra step; and `launcher/limits.c`, the small static program that sets a job's
//! resource limits and then executes it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let source = manifest_dir.join("../../examples/analyzer/analyzer.cpp");
    println!("cargo:rerun-if-changed={}", source.display());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let binary = out_dir.join("analyzer");

    // `cc` finds the C++ compiler the same way it would for a library (CXX, target
    // triple, ...); we only ask it for the compiler and link an executable ourselves.
    let compiler = cc::Build::new()
        .cpp(true)
        .opt_level(2)
        .cargo_metadata(false)
        .get_compiler();
    let mut command: Command = compiler.to_command();
    command
        .arg("-std=c++17")
        .arg("-O2")
        .arg("-o")
        .arg(&binary)
        .arg(&source);
    let status = command
        .status()
        .unwrap_or_else(|error| panic!("cannot run the C++ compiler ({command:?}): {error}"));
    assert!(
        status.success(),
        "building the demo analyzer failed: {command:?} exited with {status}"
    );
    build_limits(&manifest_dir, &out_dir);
}

/// `batchgate-limits`, linked statically when the C library allows it: it is executed
/// before every program, so it should start in microseconds (no dynamic loader).
fn build_limits(manifest_dir: &std::path::Path, out_dir: &std::path::Path) {
    let source = manifest_dir.join("launcher/limits.c");
    println!("cargo:rerun-if-changed={}", source.display());
    let binary = out_dir.join("batchgate-limits");
    let compiler = cc::Build::new()
        .opt_level(2)
        .cargo_metadata(false)
        .get_compiler();
    let build = |extra: &[&str]| {
        let mut command: Command = compiler.to_command();
        command
            .arg("-O2")
            .args(extra)
            .arg("-o")
            .arg(&binary)
            .arg(&source);
        let status = command
            .status()
            .unwrap_or_else(|error| panic!("cannot run the C compiler ({command:?}): {error}"));
        status.success()
    };
    assert!(
        build(&["-static"]) || build(&[]),
        "building launcher/limits.c failed"
    );
}
