//! Durability barriers: what this store tells anyone is on disk first.
//!
//! A transaction's locks are released only after its commit has flushed the WAL, so every writer
//! of the store waits for the disk sync of the writer before it. A batch that had to wait for the
//! writers' lock of `dcb_append` therefore commits asynchronously (`dcb_append_yielding`, V9:
//! `synchronous_commit` off for that transaction only): the lock is released as soon as the commit
//! record is in the WAL, and the next writer (another process's appender above all) does not queue
//! behind this one's fsync. An uncontended batch (one process) commits synchronously, as before.
//!
//! Nothing is acknowledged before it is durable all the same: a barrier is a tiny transaction that
//! commits with the session's own `synchronous_commit`; its commit flushes the WAL up to its
//! commit record, which follows every commit visible when it started. Barriers are coalesced: one
//! runs at a time, and a waiter is answered by the first barrier that started after it asked.
//! Each barrier also reads the store's head: every position up to it is durable once the barrier
//! commits ([`Durability::durable_through`]); so is every position up to a synchronous batch's
//! last.
//!
//! Readers wait too. An asynchronously committed event is visible before it is flushed; a reader
//! told of it (or of a head that counts it) could act on an event a crash then takes back, and
//! worse, a later append conditioned on "nothing after that head" would miss new events stored at
//! the positions the crash freed. So a read reports only a durable head, and waits for a barrier
//! only when it returns an event not yet known durable ([`Durability::durable_head`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use deadpool_postgres::Pool;
use tokio::sync::{Notify, watch};

use crate::error::StoreError;

/// Writes a transactional WAL record (a logical-decoding message, prefix `dcb_barrier`, empty;
/// executable by anyone by default): a transaction that only takes a transaction id writes no WAL
/// before its commit record, and PostgreSQL then commits it asynchronously whatever
/// `synchronous_commit` says. Also reads the head its snapshot saw.
const BARRIER_SQL: &str = "SELECT pg_logical_emit_message(true, 'dcb_barrier', ''), \
    (SELECT coalesce(max(position), 0) FROM events)";

/// The last barrier's outcome: asks up to `through` are answered by it.
#[derive(Clone)]
struct Round {
    through: u64,
    outcome: Result<(), StoreError>,
}

struct Shared {
    /// Asks so far; an ask is numbered before the barrier task is woken.
    asked: AtomicU64,
    wake: Notify,
    /// Every position up to this one is on disk.
    durable_through: AtomicI64,
}

/// The store's barrier task and its waiters. Clones share the task.
#[derive(Clone)]
pub(super) struct Durability {
    shared: Arc<Shared>,
    rounds: watch::Receiver<Round>,
}

impl Durability {
    /// Starts the barrier task; it stops when the last clone of this handle is dropped.
    pub(super) fn start(pool: Pool) -> Self {
        let shared = Arc::new(Shared {
            asked: AtomicU64::new(0),
            wake: Notify::new(),
            durable_through: AtomicI64::new(0),
        });
        let (tx, rounds) = watch::channel(Round {
            through: 0,
            outcome: Ok(()),
        });
        tokio::spawn(run_barriers(pool, Arc::clone(&shared), tx));
        Self { shared, rounds }
    }

    /// Every position up to this one is known to be durable.
    pub(super) fn durable_through(&self) -> i64 {
        self.shared.durable_through.load(Ordering::Acquire)
    }

    /// Every position up to `last` is durable: a synchronous commit stored it.
    pub(super) fn flushed_through(&self, last: i64) {
        self.shared
            .durable_through
            .fetch_max(last, Ordering::AcqRel);
    }

    /// Returns once everything committed before this call is durable (or the barrier failed: then
    /// whether it is, is unknown).
    pub(super) async fn wait(&self) -> Result<(), StoreError> {
        let ticket = self.shared.asked.fetch_add(1, Ordering::AcqRel) + 1;
        self.shared.wake.notify_one();
        let mut rounds = self.rounds.clone();
        let round = rounds
            .wait_for(|round| round.through >= ticket)
            .await
            .map_err(|_| StoreError::Closed)?;
        round.outcome.clone()
    }

    /// Waits, unless every position up to `head` is known to be durable already.
    pub(super) async fn wait_for_head(&self, head: i64) -> Result<(), StoreError> {
        if head <= self.durable_through() {
            return Ok(());
        }
        self.wait().await
    }

    /// The head a read may report: one that is durable. A read whose events are all durable
    /// reports the durable head when its own is beyond it, without waiting: the read is then
    /// answered as if taken a moment earlier, which its events allow (none of them is above the
    /// durable head), and a condition placed after that head sees every newer event. Only a read
    /// that returns an event not yet known durable waits for a barrier (as does the first read,
    /// before any barrier ran).
    pub(super) async fn durable_head(
        &self,
        head: i64,
        newest_event: Option<i64>,
    ) -> Result<i64, StoreError> {
        let durable = self.durable_through();
        if head <= durable {
            return Ok(head);
        }
        if durable > 0 && newest_event.is_none_or(|newest| newest <= durable) {
            return Ok(durable);
        }
        self.wait().await?;
        Ok(head)
    }
}

/// One barrier at a time, each answering every ask made before it started.
async fn run_barriers(pool: Pool, shared: Arc<Shared>, rounds: watch::Sender<Round>) {
    loop {
        tokio::select! {
            () = shared.wake.notified() => {}
            () = rounds.closed() => return,
        }
        let through = shared.asked.load(Ordering::Acquire);
        if through <= rounds.borrow().through {
            continue;
        }
        let outcome = barrier(&pool).await;
        if let Ok(head) = &outcome {
            shared.durable_through.fetch_max(*head, Ordering::AcqRel);
        }
        if let Err(e) = &outcome {
            tracing::warn!(error = %e, "durability barrier failed");
        }
        rounds.send_replace(Round {
            through,
            outcome: outcome.map(|_| ()),
        });
    }
}

async fn barrier(pool: &Pool) -> Result<i64, StoreError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(BARRIER_SQL).await?;
    let row = client.query_one(&statement, &[]).await?;
    Ok(row.try_get(1)?)
}
