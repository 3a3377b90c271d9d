//! End-to-end tests: the real server on port 0, real HTTP, real child processes.

mod clients;
mod fake_kubernetes;
mod helpers;
mod isolation;
mod kubernetes;
mod lifecycle;
mod live;
mod meta;
mod protection;
mod submit;
