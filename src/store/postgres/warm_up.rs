//! Connections opened and made ready before the store is handed out.
//!
//! The pool opens connections as they are first needed, and a new backend plans each statement
//! at its first run (`dcb_append` is a dozen of them). So the first second of a fresh process ran
//! its first commands behind connection set-ups and planning: in an open-loop run of the main job
//! at 22,000 commands/s, that second's p99 was 8-50 ms against 3-8 ms in the next ones. `connect`
//! now opens the connections a process keeps busy under load, and runs on each a read and an
//! empty append. The empty append takes the writers' lock for a moment, as a first batch on the
//! connection would have, planning under it.

use deadpool_postgres::Pool;
use futures::future::try_join_all;

use super::{group_commit, read_sql};
use crate::error::StoreError;
use crate::event::Tag;
use crate::query::{Query, QueryItem};
use crate::store::ReadOptions;

/// Opens `connections` connections of `pool` at once and readies each to read and to append.
pub(super) async fn warm_up(pool: &Pool, connections: usize) -> Result<(), StoreError> {
    // Held together, so that each is a connection of its own.
    let clients = try_join_all((0..connections).map(|_| pool.get())).await?;
    try_join_all(clients.iter().map(|client| async move {
        // A boundary nobody writes: the shape of a one-tag read, planned.
        let query: Query = QueryItem::with_tags([Tag::new("dcb", "warm-up")]).into();
        let read = read_sql::build(&query, &ReadOptions::default());
        let statement = client.prepare_cached(&read.sql).await?;
        client.query(&statement, &read.params()).await?;
        group_commit::warm(client).await
    }))
    .await?;
    Ok(())
}
