//! The checkpoint row of a subscription (table `dcb_subscriptions`, migration V4): created once
//! with the subscription's start, then only ever moved forward by compare-and-set.

use std::time::SystemTime;

use tokio_postgres::GenericClient;

use crate::error::StoreError;
use crate::event::Position;

/// Where a subscription begins the first time it runs (afterwards its checkpoint rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// Every event ever stored.
    #[default]
    Beginning,
    /// Only events stored after the subscription was first created.
    Now,
    /// Events after this position.
    After(Position),
}

/// A subscription's row as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    pub(crate) id: i32,
    /// The last position handled (0: none).
    pub(crate) position: i64,
    /// Where it stopped on a failing handler, if it did.
    pub(crate) failed_position: Option<i64>,
    /// Why, and when (database clock).
    pub(crate) failure: Option<(String, SystemTime)>,
    /// The database's clock when the row was read.
    pub(crate) read_at: SystemTime,
}

/// Creates the row if it does not exist (the start is resolved now: `Now` is the head at this
/// moment) and reads it.
pub(crate) async fn ensure(
    client: &impl GenericClient,
    name: &str,
    start: Start,
) -> Result<Row, StoreError> {
    let after: Option<i64> = match start {
        Start::Beginning => Some(0),
        Start::Now => None,
        Start::After(p) => Some(p.get()),
    };
    client
        .execute(
            "INSERT INTO dcb_subscriptions (name, position) \
             SELECT $1, coalesce($2, (SELECT coalesce(max(position), 0) FROM events)) \
             ON CONFLICT (name) DO NOTHING",
            &[&name, &after],
        )
        .await?;
    load(client, name)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("subscription {name:?} vanished")))
}

/// Reads the row.
pub(crate) async fn load(
    client: &impl GenericClient,
    name: &str,
) -> Result<Option<Row>, StoreError> {
    let row = client
        .query_opt(
            "SELECT id, position, failed_position, failed_error, updated_at, clock_timestamp() \
             FROM dcb_subscriptions WHERE name = $1",
            &[&name],
        )
        .await?;
    row.map(|r| {
        Ok(Row {
            id: r.try_get(0)?,
            position: r.try_get(1)?,
            failed_position: r.try_get(2)?,
            failure: r
                .try_get::<_, Option<String>>(3)?
                .map(|error| Ok::<_, tokio_postgres::Error>((error, r.try_get(4)?)))
                .transpose()?,
            read_at: r.try_get(5)?,
        })
    })
    .transpose()
}

/// Moves the checkpoint from `from` to `to` if it is still at `from`, and clears a recorded
/// failure (the failing event is behind it now). `None` if another consumer moved it: this one
/// is no longer the active one. Otherwise the database's clock when it moved.
pub(crate) async fn advance(
    client: &impl GenericClient,
    name: &str,
    from: i64,
    to: i64,
) -> Result<Option<SystemTime>, StoreError> {
    let row = client
        .query_opt(
            "UPDATE dcb_subscriptions \
             SET position = $3, updated_at = clock_timestamp(), \
                 failed_position = NULL, failed_error = NULL \
             WHERE name = $1 AND position = $2 RETURNING updated_at",
            &[&name, &from, &to],
        )
        .await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// Records the event the subscription stopped on and why, if the checkpoint is still at
/// `checkpoint` (just before it).
pub(crate) async fn record_failure(
    client: &impl GenericClient,
    name: &str,
    checkpoint: i64,
    at: Position,
    error: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE dcb_subscriptions SET failed_position = $2, failed_error = $3, \
             updated_at = clock_timestamp() WHERE name = $1 AND position = $4",
            &[&name, &at.get(), &error, &checkpoint],
        )
        .await?;
    Ok(())
}

/// Moves the checkpoint onto the event the subscription stopped on, so that it resumes after
/// it; refuses unless `event` is that event. The event's position is kept in `skipped`.
pub(crate) async fn skip(
    client: &impl GenericClient,
    name: &str,
    event: Position,
) -> Result<bool, StoreError> {
    let moved = client
        .execute(
            "UPDATE dcb_subscriptions \
             SET position = failed_position, skipped = skipped || failed_position, \
                 failed_position = NULL, failed_error = NULL, updated_at = clock_timestamp() \
             WHERE name = $1 AND failed_position = $2 AND position < failed_position",
            &[&name, &event.get()],
        )
        .await?;
    Ok(moved == 1)
}
