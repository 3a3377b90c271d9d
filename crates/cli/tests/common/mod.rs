//! Starting the real binary in the binary's tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// `batchgate ARGS…` with stdout piped (stderr as `command` sets it).
pub fn batchgate(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_batchgate"));
    command.args(args).stdout(Stdio::piped());
    command
}

/// Spawns a `serve` command and reads the address from the line it prints first.
pub fn start(mut command: Command) -> (Child, String) {
    let mut child = command.spawn().expect("the binary starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .trim()
        .strip_prefix("batchgate listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, address)
}

/// Skips a test whose requirement is missing, with a visible message; under
/// `BATCHGATE_TEST_STRICT=1` (CI) the skip is a failure.
#[allow(dead_code)] // not every test binary skips
pub fn skip(reason: &str) {
    if std::env::var_os("BATCHGATE_TEST_STRICT").is_some() {
        panic!("required for CI but missing: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}
