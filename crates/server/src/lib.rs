//! batchgate: legacy command-line batch programs behind an asynchronous HTTP API.
//!
//! Layout (see ARCHITECTURE.md for the map and the invariants):
//! - `api/`: the only module that knows HTTP (axum handlers, problem documents, OpenAPI).
//! - `jobs/`: the job domain and state machine; pure logic.
//! - `store/`: durable job state (`JobStore`, SQLite and PostgreSQL), its conformance suite.
//! - `blobs`: job inputs, outputs and logs (`BlobStore`: a directory, or object storage).
//! - `executors/`: how an attempt's program runs; `process.rs` alone spawns programs.
//! - `transforms/`: JSON ↔ the program's file formats.
//! - `tools/`: tool declarations, argv templates and control files.
//! - `worker/`: the worker pool (`WorkerState`) and the pipeline of one attempt.
//! - `retention`, `running`, `workdirs`: below both the API and the worker: purging a
//!   finished job, the attempts running here, the work-directory layout.
//! - `config`, `demo`, `app`: settings, the built-in demo, and the wiring (`app` only
//!   wires: nothing imports it; `tests/layers.rs` checks the import directions).
//! - `datadir`: the data directory's modes (what a job's program may reach).

pub mod api;
pub mod app;
pub mod auth;
pub mod blobs;
pub mod config;
pub mod datadir;
pub mod demo;
pub mod embedded;
pub mod executors;
pub mod jobs;
pub mod retention;
pub mod running;
pub mod store;
pub mod telemetry;
pub mod tools;
pub mod transforms;
pub mod workdirs;
pub mod worker;

pub use app::{Application, Workers};

/// Why the server could not start: reported once and the process exits.
pub type StartError = Box<dyn std::error::Error + Send + Sync>;
pub use config::{Config, ConfigSource, Overrides, Settings};
