//! SQLite's schema: the migrations (`crates/server/migrations/sqlite/`) and their runner.

use super::*;

/// Migrations (`crates/server/migrations/sqlite/`), applied in order inside one
/// `BEGIN IMMEDIATE`; `PRAGMA user_version` counts those applied. Not `sqlx::migrate!`:
/// its SQLite runner takes no lock (sqlx-sqlite's `Migrate::lock` does nothing), so a
/// `serve --no-worker` and a `worker` opening one data directory at once would both run
/// an `ALTER TABLE`, and every database written so far records its version here, not in
/// `_sqlx_migrations`.
pub(super) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4];

pub(super) const V1: &str = include_str!("../../../migrations/sqlite/0001_jobs.sql");

pub(super) const V2: &str = include_str!("../../../migrations/sqlite/0002_keys_usage_signing.sql");

/// The event log of every job, written by triggers so that no change of state, attempt,
/// progress or cancel flag can be made without its event, whichever statement makes it.
pub(super) const V3: &str = include_str!("../../../migrations/sqlite/0003_job_events.sql");

/// Where a running attempt's program can be found again (see `JobStore::set_executor_ref`).
pub(super) const V4: &str = include_str!("../../../migrations/sqlite/0004_executor_ref.sql");

pub(super) async fn migrate(pool: &SqlitePool) -> Result<(), StoreError> {
    let mut connection = pool.acquire().await.map_err(unavailable)?;
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *connection)
        .await
        .map_err(unavailable)?;
    let result = async {
        let applied: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&mut *connection)
            .await
            .map_err(unavailable)?;
        if applied as usize > MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "the database is at schema version {applied}, newer than this server ({})",
                MIGRATIONS.len()
            )));
        }
        for migration in &MIGRATIONS[applied as usize..] {
            sqlx::raw_sql(migration)
                .execute(&mut *connection)
                .await
                .map_err(unavailable)?;
        }
        sqlx::raw_sql(&format!("PRAGMA user_version = {}", MIGRATIONS.len()))
            .execute(&mut *connection)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
    .await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    sqlx::query(end)
        .execute(&mut *connection)
        .await
        .map_err(unavailable)?;
    result
}

#[cfg(test)]
mod migration_tests {
    use super::*;

    /// A database written by the first release (schema version 0, no `user_version`)
    /// opens with its jobs intact and gains the new columns with their defaults.
    #[tokio::test]
    async fn a_first_release_database_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        {
            let options = SqliteConnectOptions::from_str("sqlite:")
                .unwrap()
                .filename(&path)
                .create_if_missing(true);
            let pool = SqlitePool::connect_with(options).await.unwrap();
            sqlx::raw_sql(V1).execute(&pool).await.unwrap();
            sqlx::query(
                "INSERT INTO jobs (id, owner, tool, tool_version, state, params, inputs, \
                 created_at, max_attempts, run_after) \
                 VALUES ('01a20055-d239-74ba-b2a6-d6af23a9a98b', '', 'sort', 1, 'queued', \
                 '{}', '[]', 1, 3, 1)",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let store = SqliteJobStore::open(&path).await.unwrap();
        let id = Uuid::parse_str("01a20055-d239-74ba-b2a6-d6af23a9a98b").unwrap();
        let job = store.get(id).await.unwrap().unwrap();
        assert_eq!((job.tier.as_str(), job.priority), ("", 0));
        assert_eq!(job.retention, Duration::from_secs(7 * 24 * 3600));
        assert!(!store.has_keys().await.unwrap());
        // Opening again applies nothing twice.
        drop(store);
        let store = SqliteJobStore::open(&path).await.unwrap();
        assert!(store.get(id).await.unwrap().is_some());
    }
}
