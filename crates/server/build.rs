//! Builds the demo legacy program (`examples/analyzer/analyzer.cpp`) with the system C++
//! compiler, so that the binary can embed it and the README's first command needs no
//! extra step; and `launcher/limits.c`, the small static program that sets a job's
//! resource limits and then executes it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    test_gates();
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let analyzer = manifest_dir.join("../../examples/analyzer/analyzer.cpp");
    assert!(
        compile(true, &analyzer, &out_dir.join("analyzer"), &["-std=c++17"]),
        "building the demo analyzer failed"
    );
    // `batchgate-limits` runs before every program, so it should start in microseconds:
    // without the C library (raw system calls, see the file's comment) where the target
    // allows it, else on a statically linked C library, else on the dynamic one.
    let limits = manifest_dir.join("launcher/limits.c");
    let binary = out_dir.join("batchgate-limits");
    let without_libc = [
        "-static",
        "-nostdlib",
        "-ffreestanding",
        "-fno-builtin",
        "-fno-stack-protector",
        "-fno-asynchronous-unwind-tables",
    ];
    let on_libc = ["-DBATCHGATE_LIMITS_LIBC"];
    assert!(
        (compile(false, &limits, &binary, &without_libc) && runs_or_cannot_tell(&binary))
            || compile(false, &limits, &binary, &[on_libc[0], "-static"])
            || compile(false, &limits, &binary, &on_libc),
        "building launcher/limits.c failed"
    );
}

/// Does the freshly built `batchgate-limits` set a limit and run a program? Only asked
/// when the build machine can run what it builds (not cross-compiling); a wrapper without
/// the C library that fails here is replaced by the C library one.
fn runs_or_cannot_tell(binary: &Path) -> bool {
    if std::env::var("HOST").ok() != std::env::var("TARGET").ok() {
        return true;
    }
    let status = Command::new(binary)
        .args(["nofile=64", "--", "true"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .status();
    let ok = status.as_ref().is_ok_and(|status| status.success());
    if !ok {
        println!("cargo:warning=batchgate-limits without the C library does not run here ({status:?}); using the C library");
    }
    ok
}

/// Compiles one source file into an executable. `cc` finds the compiler the same way it
/// would for a library (CC/CXX, target triple, ...); we only ask it for the compiler.
fn compile(cpp: bool, source: &Path, binary: &Path, extra: &[&str]) -> bool {
    println!("cargo:rerun-if-changed={}", source.display());
    let compiler = cc::Build::new()
        .cpp(cpp)
        .opt_level(2)
        .cargo_metadata(false)
        .get_compiler();
    let mut command: Command = compiler.to_command();
    command
        .arg("-O2")
        .args(extra)
        .arg("-o")
        .arg(binary)
        .arg(source);
    let status = command
        .status()
        .unwrap_or_else(|error| panic!("cannot run the compiler ({command:?}): {error}"));
    if !status.success() {
        println!("cargo:warning={command:?} exited with {status}");
    }
    status.success()
}

// `test_gates` (shared with the cli crate's build script).
include!("test_gates.rs");
