//! **ledger** — a transactional read model of every event, for the read side's tests, example
//! and load tests: one row per event id with the times it was applied and when, written in the
//! subscription's transaction. Exact when every stored event has exactly one row, applied once,
//! at its position (checked with SQL against `events`).

use dcb_runtime::SequencedEvent;
use dcb_runtime::subscription::{HandlerError, TransactionalHandler};
use dcb_runtime::tokio_postgres::Transaction;

/// The read model's table (idempotent, also when several processes create it at once: `CREATE
/// TABLE IF NOT EXISTS` alone is not, two sessions can both find the table missing and one then
/// fails on the catalog's unique index; the batch is one implicit transaction, so the lock holds
/// until the table is committed).
pub const SCHEMA_SQL: &str = "\
SELECT pg_advisory_xact_lock(1145258578); \
CREATE TABLE IF NOT EXISTS projected_events (\
    id uuid PRIMARY KEY, position bigint NOT NULL, type text NOT NULL, \
    applied int NOT NULL, projected_at timestamptz NOT NULL)";

/// Differences from a fold over `events`: events without their row (or at another position or
/// of another type), rows without their event, and rows applied other than once.
pub const MISMATCH_SQL: &str = "\
SELECT (SELECT count(*) FROM events e WHERE NOT EXISTS (\
            SELECT 1 FROM projected_events p \
            WHERE p.id = e.id AND p.position = e.position AND p.type = e.type)) \
     + (SELECT count(*) FROM projected_events p \
        WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.id = p.id)) \
     + (SELECT count(*) FROM projected_events WHERE applied <> 1)";

/// Rows applied more than once (a subset of [`MISMATCH_SQL`], for messages).
pub const REAPPLIED_SQL: &str = "SELECT count(*) FROM projected_events WHERE applied > 1";

/// Commit-to-projected lag of every projected event in seconds, p50 and p99: from the start of
/// the appending transaction (`recorded_at`) to the row's write in the projecting one.
pub const LAG_SQL: &str = "\
SELECT coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY lag), 0)::float8, \
       coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY lag), 0)::float8 \
FROM (SELECT extract(epoch FROM p.projected_at - e.recorded_at)::float8 AS lag \
      FROM projected_events p JOIN events e ON e.id = p.id) l";

/// The handler: one statement per batch; an event projected again counts in `applied`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ledger;

impl TransactionalHandler for Ledger {
    async fn handle(
        &mut self,
        tx: &Transaction<'_>,
        events: &[SequencedEvent],
    ) -> Result<(), HandlerError> {
        write(
            tx,
            events,
            "ON CONFLICT (id) DO UPDATE SET applied = projected_events.applied + 1",
        )
        .await
    }
}

/// The ledger with plain inserts: an event another transaction wrote (committed or not) fails it,
/// as a read model with a unique key would.
#[derive(Debug, Default, Clone, Copy)]
pub struct StrictLedger;

impl TransactionalHandler for StrictLedger {
    async fn handle(
        &mut self,
        tx: &Transaction<'_>,
        events: &[SequencedEvent],
    ) -> Result<(), HandlerError> {
        write(tx, events, "").await
    }
}

/// One row per event, then `on_conflict`.
async fn write(
    tx: &Transaction<'_>,
    events: &[SequencedEvent],
    on_conflict: &str,
) -> Result<(), HandlerError> {
    let ids: Vec<_> = events.iter().map(|e| e.event.id()).collect();
    let positions: Vec<i64> = events.iter().map(|e| e.position.get()).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event.event_type()).collect();
    tx.execute(
        &format!(
            "INSERT INTO projected_events (id, position, type, applied, projected_at) \
             SELECT id, position, type, 1, clock_timestamp() \
             FROM unnest($1::uuid[], $2::bigint[], $3::text[]) AS u(id, position, type) \
             {on_conflict}"
        ),
        &[&ids, &positions, &types],
    )
    .await?;
    Ok(())
}

/// A light read model: events counted by type, one upsert per batch (what a dashboard counter
/// costs), to tell the subscription's own cost from a per-event read model's.
/// Idempotent as [`SCHEMA_SQL`] is, under the same lock.
pub const TALLY_SCHEMA_SQL: &str = "\
SELECT pg_advisory_xact_lock(1145258578); \
CREATE TABLE IF NOT EXISTS projected_tally (type text PRIMARY KEY, events bigint NOT NULL); \
CREATE TABLE IF NOT EXISTS projected_batches (\
    last_position bigint PRIMARY KEY, events int NOT NULL, projected_at timestamptz NOT NULL)";

/// The tally's lag in seconds, p50 and p99 over its batches: from the start of the transaction
/// that appended a batch's last event to the batch's write.
pub const TALLY_LAG_SQL: &str = "\
SELECT coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY lag), 0)::float8, \
       coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY lag), 0)::float8 \
FROM (SELECT extract(epoch FROM b.projected_at - e.recorded_at)::float8 AS lag \
      FROM projected_batches b JOIN events e ON e.position = b.last_position) l";

/// Differences between the tally and a count of `events` by type.
pub const TALLY_MISMATCH_SQL: &str = "\
SELECT count(*) FROM projected_tally t \
FULL JOIN (SELECT type, count(*) AS events FROM events GROUP BY type) e USING (type) \
WHERE t.events IS DISTINCT FROM e.events";

/// The tally's handler.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally;

impl TransactionalHandler for Tally {
    async fn handle(
        &mut self,
        tx: &Transaction<'_>,
        events: &[SequencedEvent],
    ) -> Result<(), HandlerError> {
        let types: Vec<&str> = events.iter().map(|e| e.event.event_type()).collect();
        let last = events.last().map_or(0, |e| e.position.get());
        let count = i32::try_from(events.len())?;
        tx.execute(
            "WITH tally AS (\
                 INSERT INTO projected_tally (type, events) \
                 SELECT type, count(*) FROM unnest($1::text[]) AS u(type) GROUP BY type \
                 ON CONFLICT (type) DO UPDATE \
                 SET events = projected_tally.events + EXCLUDED.events) \
             INSERT INTO projected_batches (last_position, events, projected_at) \
             VALUES ($2, $3, clock_timestamp())",
            &[&types, &last, &count],
        )
        .await?;
        Ok(())
    }
}
