//! `claim_us`: the cost of one claim (the worker's "take the oldest due job" step) with a
//! short and with a very long queue, against the store itself: SQLite, and PostgreSQL when
//! one is reachable.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use batchgate_server::jobs::{Job, JobState, StoredInput};
use batchgate_server::store::postgres::PgJobStore;
use batchgate_server::store::sqlite::SqliteJobStore;
use batchgate_server::store::{Admission, Inserted, JobStore};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::Row;
use uuid::Uuid;

use crate::postgres::{Postgres, Schema};
use crate::{emit, percentile, round, sorted, Failure};

/// Which store's claim to measure.
#[derive(Clone, Copy)]
pub enum Backend<'a> {
    Sqlite,
    Postgres(&'a Postgres),
}

/// A store with `queued` jobs waiting, and what must live as long as it does.
struct Filled {
    store: Box<dyn JobStore>,
    fill_seconds: f64,
    _dir: Option<tempfile::TempDir>,
    schema: Option<Schema>,
}

impl Backend<'_> {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// A new store holding the template job and `queued - 1` copies of it.
    async fn filled(self, queued: u64) -> Result<Filled, Failure> {
        let template = queued_job();
        let (store, dir, schema): (Box<dyn JobStore>, _, _) = match self {
            Backend::Sqlite => {
                let dir = tempfile::tempdir()?;
                let store = SqliteJobStore::open(&dir.path().join("jobs.db")).await?;
                (Box::new(store), Some(dir), None)
            }
            Backend::Postgres(postgres) => {
                let schema = postgres.schema(&format!("claim{queued}")).await?;
                let store = PgJobStore::open(&schema.url).await?;
                (Box::new(store), None, Some(schema))
            }
        };
        match store.insert(&template, &Admission::default()).await? {
            Inserted::Created => {}
            other => return Err(format!("the template job was not stored: {other:?}").into()),
        }
        let filling = Instant::now();
        match (&dir, &schema) {
            (Some(dir), _) => {
                fill_sqlite(&dir.path().join("jobs.db"), &template.id, queued - 1).await?
            }
            (_, Some(schema)) => fill_postgres(&schema.url, &template.id, queued - 1).await?,
            _ => unreachable!("a store is in a directory or a schema"),
        }
        Ok(Filled {
            store,
            fill_seconds: filling.elapsed().as_secs_f64(),
            _dir: dir,
            schema,
        })
    }
}

pub async fn claim_cost(
    backend: Backend<'_>,
    sizes: &[u64],
    samples: usize,
) -> Result<(), Failure> {
    let mut p99s = Vec::new();
    for &queued in sizes {
        let filled = backend.filled(queued).await?;
        let store = &filled.store;
        let mut latencies = Vec::with_capacity(samples);
        for _ in 0..samples {
            let now = chrono::Utc::now() + chrono::Duration::milliseconds(1);
            let lease = now + chrono::Duration::seconds(60);
            let start = Instant::now();
            let claimed = store.claim(now, lease, &[]).await?;
            latencies.push(start.elapsed().as_secs_f64() * 1e6);
            if claimed.is_none() {
                return Err("a claim found no job in a full queue".into());
            }
            // Untimed: one more job queued, so the queue keeps its length.
            let mut job = queued_job();
            job.id = Uuid::now_v7();
            store.insert(&job, &Admission::default()).await?;
        }
        let latencies = sorted(latencies);
        let p99 = percentile(&latencies, 0.99);
        p99s.push(p99);
        emit(
            "claim_us",
            p99,
            "us",
            json!({ "percentile": "p99", "queued": queued, "p50_us": round(percentile(&latencies, 0.5)),
                    "claims": samples, "store": backend.name(), "fill_s": round(filled.fill_seconds) }),
        );
        let Filled { store, schema, .. } = filled;
        drop(store);
        if let Some(schema) = schema {
            schema.drop().await?;
        }
    }
    if let (Some(first), Some(last)) = (p99s.first(), p99s.last()) {
        emit(
            "claim_us_ratio",
            last / first,
            "ratio",
            json!({ "of": format!("p99 at {} queued / p99 at {} queued",
                sizes.last().unwrap_or(&0), sizes.first().unwrap_or(&0)), "store": backend.name() }),
        );
    }
    Ok(())
}

fn queued_job() -> Job {
    let now = batchgate_server::jobs::now();
    Job {
        id: Uuid::now_v7(),
        owner: String::new(),
        tier: String::new(),
        priority: 0,
        retention: Duration::from_secs(3600),
        tool: "copy".into(),
        tool_version: 1,
        state: JobState::Queued,
        params: serde_json::Map::new(),
        inputs: vec![StoredInput {
            name: "data".into(),
            size: 100,
        }],
        created_at: now,
        started_at: None,
        finished_at: None,
        expires_at: None,
        attempt: 0,
        max_attempts: 3,
        lease_until: None,
        run_after: now,
        progress: None,
        error: None,
        outputs: vec![],
        cancel_requested: false,
        idempotency_key: None,
        request_hash: None,
        purged_at: None,
        executor_ref: None,
    }
}

/// Copies the template job `count` times under new ids in one transaction (through the
/// store's own triggers and indexes), far faster than `count` durable inserts.
async fn fill_sqlite(path: &Path, template: &Uuid, count: u64) -> Result<(), Failure> {
    let options = SqliteConnectOptions::from_str("sqlite:")?
        .filename(path)
        .pragma("synchronous", "OFF");
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let columns: Vec<String> = sqlx::query("SELECT name FROM pragma_table_info('jobs')")
        .fetch_all(&pool)
        .await?
        .iter()
        .map(|row| row.get::<String, _>(0))
        .collect();
    // Valid UUID text.
    let (columns, select) = copies(&columns, "printf('ffffffff-0000-7000-8000-%012x', n.i)");
    let sql = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) \
         INSERT INTO jobs ({columns}) SELECT {select} FROM n, jobs AS t WHERE t.id = ?"
    );
    sqlx::query(&sql)
        .bind(count as i64)
        .bind(template.to_string())
        .execute(&pool)
        .await?;
    pool.close().await;
    Ok(())
}

/// Copies the template job `count` times under new ids in one statement, with the change
/// trigger off (it would log and announce each copy to nobody); the indexes are kept.
async fn fill_postgres(url: &str, template: &Uuid, count: u64) -> Result<(), Failure> {
    let pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = 'jobs' ORDER BY ordinal_position",
    )
    .fetch_all(&pool)
    .await?;
    let (columns, select) = copies(
        &columns,
        "('ffffffff-0000-7000-8000-' || lpad(to_hex(n.i), 12, '0'))::uuid",
    );
    let mut transaction = pool.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *transaction)
        .await?;
    sqlx::query("ALTER TABLE jobs DISABLE TRIGGER USER")
        .execute(&mut *transaction)
        .await?;
    sqlx::query(&format!(
        "INSERT INTO jobs ({columns}) SELECT {select} FROM generate_series(1, $1) AS n(i), \
         jobs AS t WHERE t.id = $2"
    ))
    .bind(count as i64)
    .bind(template)
    .execute(&mut *transaction)
    .await?;
    sqlx::query("ALTER TABLE jobs ENABLE TRIGGER USER")
        .execute(&mut *transaction)
        .await?;
    transaction.commit().await?;
    sqlx::query("ANALYZE jobs").execute(&pool).await?;
    pool.close().await;
    Ok(())
}

/// The column list of `jobs` and the matching select list that copies row `t` with the id
/// `id` (an SQL expression of the copy's number `n.i`; the ids sort after the template's,
/// and ids break `run_after` ties, so the template is claimed first).
fn copies(columns: &[String], id: &str) -> (String, String) {
    let select: Vec<String> = columns
        .iter()
        .map(|column| match column.as_str() {
            "id" => id.to_owned(),
            other => format!("t.{other}"),
        })
        .collect();
    (columns.join(", "), select.join(", "))
}
