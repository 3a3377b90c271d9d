//! The database's clock: its offset from this process's, measured every 30 s.

use super::*;

/// How often the offset between this process's clock and the database's is measured.
pub(super) const CLOCK_INTERVAL: Duration = Duration::from_secs(30);

/// An offset past this is said in the log and in `/readyz`.
pub const CLOCK_TOLERANCE: Duration = Duration::from_secs(2);

/// The database's clock minus ours, from one `SELECT now()` (the middle of the round
/// trip taken as the moment the database read its clock).
pub(super) async fn measure_offset(pool: &PgPool) -> Result<i64, StoreError> {
    let before = Utc::now();
    let database: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(pool)
        .await
        .map_err(unavailable)?;
    let after = Utc::now();
    let middle = before + (after - before) / 2;
    Ok((database - middle).num_milliseconds())
}

/// Keeps `offset` up to date; says so in the log when it passes the tolerance.
pub(super) async fn follow_clock(pool: PgPool, offset: Arc<std::sync::atomic::AtomicI64>) {
    use std::sync::atomic::Ordering;
    loop {
        tokio::time::sleep(CLOCK_INTERVAL).await;
        if let Ok(measured) = measure_offset(&pool).await {
            let before = offset.swap(measured, Ordering::Relaxed);
            warn_about_offset(measured, Some(before));
        }
    }
}

pub(super) fn warn_about_offset(offset_ms: i64, before: Option<i64>) {
    let tolerance = CLOCK_TOLERANCE.as_millis() as i64;
    let off = offset_ms.abs() > tolerance;
    let was_off = before.is_some_and(|before| before.abs() > tolerance);
    if off && !was_off {
        tracing::warn!(
            offset_ms,
            "this machine's clock differs from the database's; leases and backoff follow the database's clock"
        );
    }
}
