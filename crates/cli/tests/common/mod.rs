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

/// A new, empty PostgreSQL schema on the server `BATCHGATE_TEST_PG_URL` names: the URL
/// a batchgate process gets (the schema chosen with libpq's `options`, as an operator
/// would), and a pool on it for the test's own checks. `None` (after a visible skip)
/// without the variable.
#[allow(dead_code)] // not every test binary uses PostgreSQL
pub async fn pg_schema(prefix: &str) -> Option<(String, sqlx::PgPool)> {
    use std::str::FromStr;
    let Ok(base) = std::env::var("BATCHGATE_TEST_PG_URL") else {
        skip("set BATCHGATE_TEST_PG_URL to run the PostgreSQL tests");
        return None;
    };
    let schema = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
    let pool = sqlx::PgPool::connect_with(
        sqlx::postgres::PgConnectOptions::from_str(&base)
            .unwrap()
            .options([("search_path", schema.as_str())]),
    )
    .await
    .unwrap();
    Some((url, pool))
}

/// An HTTP client that shows redirects (the status monitor's `303`) instead of following
/// them.
#[allow(dead_code)] // not every test binary speaks HTTP
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Polls job `id`'s status monitor on the server at `address` until it answers `303`
/// (the job ended), and returns that status body.
#[allow(dead_code)] // not every test binary runs jobs
pub async fn wait_ended(
    client: &reqwest::Client,
    address: &str,
    id: &str,
    within: std::time::Duration,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let response = client
            .get(format!("{address}/v1/jobs/{id}"))
            .send()
            .await
            .unwrap();
        let code = response.status().as_u16();
        let status: serde_json::Value = response.json().await.unwrap();
        if code == 303 {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {id} never finished: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// GET `url` as JSON.
#[allow(dead_code)]
pub async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}
