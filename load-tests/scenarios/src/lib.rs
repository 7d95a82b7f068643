//! The scenarios of dcb-runtime's examples, tests and load tests, in one place.
//!
//! Each module is one business: its event shapes (a contract — external checkers count
//! invariants straight from the `events` table with SQL), its decisions, the events that set it
//! up, and its invariant as one SQL query that counts violations. The SQL reads only the
//! `events` table, in position order where the rule depends on order, so it checks what was
//! stored, independently of anything the process believed it committed.

pub mod disjoint;
pub mod enrollment;
pub mod invoice;
pub mod ledger;
pub mod lending;
pub mod transfer;

use dcb_runtime::{AppendError, Event, EventStore};

/// Appends set-up events in chunks (one transaction each), unconditionally.
pub async fn append_in_chunks(
    store: &impl EventStore,
    events: Vec<Event>,
) -> Result<(), AppendError> {
    for chunk in events.chunks(1_000) {
        store.append(chunk.to_vec()).await?;
    }
    Ok(())
}

/// Runs an invariant query (one row, one `bigint` column: the number of violations).
pub async fn count(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<i64, tokio_postgres::Error> {
    Ok(client.query_one(sql, &[]).await?.get(0))
}
