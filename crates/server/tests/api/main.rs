//! End-to-end tests: the real server on port 0, real HTTP, real child processes.

mod clients;
#[cfg(feature = "kubernetes")]
mod fake_kubernetes;
mod helpers;
mod isolation;
#[cfg(feature = "kubernetes")]
mod kubernetes;
mod lifecycle;
mod live;
mod meta;
mod protection;
mod submit;

/// Shown as ignored (with the reason) when the feature is off, so that a run without it
/// says what it did not test.
#[cfg(not(feature = "kubernetes"))]
#[test]
#[ignore = "the Kubernetes executor's tests need the `kubernetes` feature (cargo test --all-features)"]
fn kubernetes_executor() {}
