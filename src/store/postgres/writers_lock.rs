//! When several processes append to one store, the appender takes the writers' lock *before* it
//! picks its batch.
//!
//! `dcb_append` serialises every writer of a store with one transaction-level lock, held until
//! the commit has reached the disk. With one process its appender is the only writer and never
//! waits. With several, each batch waits for the others' batches, each of them a statement and a
//! disk sync: four processes of 16 callers each queued there with batches of about 8 decisions
//! (one actor's chain), where one process of 64 commits about 30 per transaction. So once other
//! writers show up, the appender opens its transaction and waits for the lock first, and only
//! when it is granted picks the batch: everything that queued during the wait goes into one
//! statement, committed right behind it on the same connection. That costs a round trip more per
//! transaction, inside the lock, which is why a lone writer does not do it.
//!
//! Other writers show in the positions: a batch whose first position is not right after the last
//! one this appender wrote came after another writer's. The appender switches to taking the lock
//! first after [`ENTER_AFTER`] such batches in a row, and back after [`LEAVE_AFTER`] batches in a
//! row found the lock free.

use deadpool_postgres::Pool;

use crate::error::StoreError;

/// Takes the writers' lock (`dcb_append`'s, V5) in the transaction, answering whether it was
/// free. `dcb_append` takes it again in the same transaction, at once.
const LOCK_SQL: &str = "SELECT CASE WHEN pg_try_advisory_xact_lock(7166468893617058148) THEN true \
     ELSE (SELECT false FROM pg_advisory_xact_lock(7166468893617058148)) END";

/// One-shot batches in a row that came after another writer's, before taking the lock first.
const ENTER_AFTER: u32 = 2;

/// Lock-first batches in a row that found the lock free, before going back to one statement.
const LEAVE_AFTER: u32 = 8;

/// A pooled connection in a transaction holding the writers' lock. Dropped without
/// [`Locked::release`], it is closed rather than returned to the pool (the server then rolls the
/// transaction back and frees the lock).
pub(super) struct Locked {
    client: Option<deadpool_postgres::Client>,
    /// Whether the lock was free when asked for.
    pub(super) was_free: bool,
}

impl Locked {
    /// Opens a transaction on a pooled connection and waits for the writers' lock in it.
    pub(super) async fn take(pool: &Pool) -> Result<Self, StoreError> {
        let mut locked = Self {
            client: Some(pool.get().await?),
            was_free: false,
        };
        let client = locked.client();
        let statement = client.prepare_cached(LOCK_SQL).await?;
        let (begun, row) = tokio::join!(
            client.batch_execute("BEGIN"),
            client.query_one(&statement, &[])
        );
        begun?;
        locked.was_free = row?.try_get(0)?;
        Ok(locked)
    }

    pub(super) fn client(&self) -> &deadpool_postgres::Client {
        self.client
            .as_ref()
            .expect("a Locked holds its client until released or dropped")
    }

    /// The transaction committed: the connection goes back to the pool.
    pub(super) fn release(mut self) {
        drop(self.client.take());
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Detached from the pool, the connection closes as the client drops.
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// Whether the appender takes the writers' lock before picking its batch, from what its batches
/// found.
#[derive(Debug, Default)]
pub(super) struct LockMode {
    lock_first: bool,
    after_others_in_a_row: u32,
    free_in_a_row: u32,
    /// The last position this appender stored.
    last_written: Option<i64>,
}

impl LockMode {
    pub(super) fn lock_first(&self) -> bool {
        self.lock_first
    }

    /// A batch committed, storing `stored` (each fresh append's first and last position); with
    /// `lock_was_free` when it took the lock first.
    pub(super) fn committed(&mut self, stored: &[(i64, i64)], lock_was_free: Option<bool>) {
        let first = stored.iter().map(|&(first, _)| first).min();
        let after_others = match (self.last_written, first) {
            (Some(last), Some(first)) => Some(first > last + 1),
            _ => None,
        };
        if let Some(last) = stored.iter().map(|&(_, last)| last).max() {
            self.last_written = Some(last);
        }
        match lock_was_free {
            None => {
                match after_others {
                    Some(true) => self.after_others_in_a_row += 1,
                    Some(false) => self.after_others_in_a_row = 0,
                    None => {}
                }
                if self.after_others_in_a_row >= ENTER_AFTER {
                    self.lock_first = true;
                    self.free_in_a_row = 0;
                }
            }
            Some(free) => {
                self.free_in_a_row = if free { self.free_in_a_row + 1 } else { 0 };
                if self.free_in_a_row >= LEAVE_AFTER {
                    self.lock_first = false;
                    self.after_others_in_a_row = 0;
                }
            }
        }
    }

    /// Taking the lock first failed: back to one statement per batch.
    pub(super) fn fall_back(&mut self) {
        self.lock_first = false;
        self.after_others_in_a_row = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_writer_never_takes_the_lock_first() {
        let mut mode = LockMode::default();
        for batch in 0..100 {
            mode.committed(&[(batch * 10 + 1, batch * 10 + 10)], None);
            assert!(!mode.lock_first(), "batch {batch}");
        }
    }

    #[test]
    fn other_writers_in_a_row_switch_it_on_and_a_free_lock_in_a_row_switches_it_off() {
        let mut mode = LockMode::default();
        mode.committed(&[(1, 5)], None);
        // One batch after another writer's is not yet a pattern.
        mode.committed(&[(9, 9)], None);
        assert!(!mode.lock_first());
        mode.committed(&[(10, 10)], None);
        mode.committed(&[(20, 21)], None);
        assert!(
            !mode.lock_first(),
            "the count restarts after a batch right behind its own"
        );
        mode.committed(&[(30, 31), (40, 40)], None);
        assert!(mode.lock_first());
        // Waiting keeps it on; only LEAVE_AFTER free locks in a row switch it off.
        for _ in 0..LEAVE_AFTER - 1 {
            mode.committed(&[(50, 50)], Some(true));
        }
        mode.committed(&[(60, 60)], Some(false));
        assert!(mode.lock_first());
        for _ in 0..LEAVE_AFTER {
            assert!(mode.lock_first());
            mode.committed(&[(70, 70)], Some(true));
        }
        assert!(!mode.lock_first());
    }

    #[test]
    fn batches_storing_nothing_change_nothing() {
        let mut mode = LockMode::default();
        mode.committed(&[(1, 1)], None);
        mode.committed(&[(5, 5)], None);
        mode.committed(&[], None);
        mode.committed(&[(9, 9)], None);
        assert!(mode.lock_first(), "the empty batch did not break the run");
        mode.fall_back();
        assert!(!mode.lock_first());
    }
}
