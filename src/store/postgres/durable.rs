//! Durable before answered, without holding the writers' lock while the disk syncs.
//!
//! Every append takes `dcb_append`'s transaction-level lock (positions follow commit order), and
//! PostgreSQL releases it only after the commit's WAL flush. A batch therefore commits with
//! `synchronous_commit` off: the lock passes to the next writer of the store (in this process or
//! another) as soon as the commit is in the WAL buffers, and the disk syncs of concurrent batches
//! are shared. Its callers are answered only after [`wait_durable`] has returned, so nothing is
//! acknowledged before it would survive a crash.
//!
//! What is visible is not yet always durable: for about a WAL flush, a read can see a batch that
//! a crash would then erase, with its writer never answered (it learns that its outcome is
//! unknown, and may re-send). A decision built on such a read is safe: its own append commits
//! later, so its durability implies theirs. A subscription hands a page over only after
//! [`wait_durable`], since its handler may act outside the database.

use deadpool_postgres::Client;

use crate::error::StoreError;

/// A transaction with one tiny WAL record (a logical decoding message, which nothing decodes:
/// callable by any role, at any `wal_level`), committed synchronously. Its commit flushes the WAL
/// up to its own record, after the commit record of every transaction that had committed when
/// it started.
const DURABLE_SQL: &str = "SELECT pg_logical_emit_message(true, 'dcb-durable', '')";

/// Returns once every transaction that committed before the call is durable.
///
/// # Errors
///
/// A connection failure: whether those transactions are durable is then unknown.
pub(crate) async fn wait_durable(client: &Client) -> Result<(), StoreError> {
    let statement = client.prepare_cached(DURABLE_SQL).await?;
    // Synchronous commit is the session default; the appender's own batches turn it off for
    // their transaction only.
    client.query(&statement, &[]).await?;
    Ok(())
}
