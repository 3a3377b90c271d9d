//! PostgreSQL's schema: the migrations (`crates/server/migrations/postgres/`) and their runner.

use super::*;

/// Migrations (`crates/server/migrations/postgres/`), applied in order under an advisory
/// lock; `batchgate_schema.version` counts those applied (the same runner as SQLite's,
/// see there why not `sqlx::migrate!`).
pub(super) const MIGRATIONS: &[&str] = &[V1, V2];

/// An arbitrary constant: the advisory lock that serialises migrations.
pub(super) const MIGRATION_LOCK: i64 = 0x6261_7463_6867_6174; // "batchgat"

pub(super) const V1: &str = include_str!("../../../migrations/postgres/0001_schema.sql");

/// Where a running attempt's program can be found again (see `JobStore::set_executor_ref`).
pub(super) const V2: &str = include_str!("../../../migrations/postgres/0002_executor_ref.sql");

pub(super) async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut tx = pool.begin().await.map_err(unavailable)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    sqlx::query("CREATE TABLE IF NOT EXISTS batchgate_schema (version BIGINT NOT NULL)")
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    let applied: Option<i64> = sqlx::query_scalar("SELECT version FROM batchgate_schema")
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
    let applied = applied.unwrap_or(0);
    if applied as usize > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "the database is at schema version {applied}, newer than this server ({})",
            MIGRATIONS.len()
        )));
    }
    for migration in &MIGRATIONS[applied as usize..] {
        sqlx::raw_sql(migration)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
    }
    sqlx::query("DELETE FROM batchgate_schema")
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    sqlx::query("INSERT INTO batchgate_schema (version) VALUES ($1)")
        .bind(MIGRATIONS.len() as i64)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    tx.commit().await.map_err(unavailable)
}
