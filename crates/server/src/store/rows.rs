//! Reading rows, the same for both stores: a column that cannot be read, or that holds
//! what no version of batchgate writes, is `StoreError::Corrupt` naming the column or
//! the value (the conformance suite's unreadable row checks both stores answer alike).

use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::StoreError;
use crate::jobs::{EventKind, JobState};

/// Column `index` (a name or a position) of `row`, decoded as `T`.
pub fn column<'r, T, R, I>(row: &'r R, index: I) -> Result<T, StoreError>
where
    R: sqlx::Row,
    T: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    I: sqlx::ColumnIndex<R> + std::fmt::Debug,
{
    let name = format!("{index:?}");
    row.try_get(index)
        .map_err(|error| StoreError::Corrupt(format!("column {name}: {error}")))
}

pub fn state(text: &str) -> Result<JobState, StoreError> {
    JobState::parse(text).ok_or_else(|| StoreError::Corrupt(format!("state {text}")))
}

pub fn event_kind(text: &str) -> Result<EventKind, StoreError> {
    EventKind::parse(text).ok_or_else(|| StoreError::Corrupt(format!("event kind {text}")))
}

pub fn uuid(text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(|error| StoreError::Corrupt(format!("id {text}: {error}")))
}

pub fn from_json<T: DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|error| StoreError::Corrupt(error.to_string()))
}
