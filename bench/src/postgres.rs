//! PostgreSQL for the benchmark, when one is reachable: each measurement gets a schema of
//! its own in the given database, made empty and dropped afterwards, so a run never meets
//! an earlier run's jobs and leaves nothing behind.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::Failure;

/// Where PostgreSQL was found: a pool to make and drop schemas in.
pub struct Postgres {
    admin: PgPool,
    url: String,
}

impl Postgres {
    /// Connects to `url`; `None` (with the reason on stderr) when nothing answers there.
    pub async fn reachable(url: &str) -> Option<Postgres> {
        let options = match PgConnectOptions::from_str(url) {
            Ok(options) => options,
            Err(error) => {
                eprintln!("batchgate-bench: not measuring on PostgreSQL: bad URL {url}: {error}");
                return None;
            }
        };
        let connecting = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options);
        match tokio::time::timeout(Duration::from_secs(5), connecting).await {
            Ok(Ok(admin)) => Some(Postgres {
                admin,
                url: url.to_owned(),
            }),
            Ok(Err(error)) => {
                eprintln!("batchgate-bench: not measuring on PostgreSQL: {url}: {error}");
                None
            }
            Err(_) => {
                eprintln!("batchgate-bench: not measuring on PostgreSQL: {url} did not answer");
                None
            }
        }
    }

    /// A new empty schema, named after this process and `purpose`.
    pub async fn schema(&self, purpose: &str) -> Result<Schema, Failure> {
        let name = format!("batchgate_bench_{}_{purpose}", std::process::id());
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
            .execute(&self.admin)
            .await?;
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&self.admin)
            .await?;
        let separator = if self.url.contains('?') { '&' } else { '?' };
        Ok(Schema {
            url: format!("{}{separator}options=-csearch_path%3D{name}", self.url),
            name,
            admin: self.admin.clone(),
        })
    }
}

/// A schema made by `Postgres::schema`; `url` reaches the database with it as the
/// `search_path` (what `batchgate serve --store` and `PgJobStore::open` take).
pub struct Schema {
    pub url: String,
    name: String,
    admin: PgPool,
}

impl Schema {
    pub async fn drop(self) -> Result<(), Failure> {
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.name))
            .execute(&self.admin)
            .await?;
        Ok(())
    }
}
