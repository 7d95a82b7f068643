//! While other processes write to the store, the appender lets a lone request nobody waits for
//! wait a little for company before it commits.
//!
//! `dcb_append` serialises every writer of a store with one lock, held until the commit has
//! reached the disk. With one process its appender is the only writer and never waits for it.
//! With several, each transaction waits for the others', each a statement and a disk sync, so
//! what bounds them is the number of transactions: four processes of 16 callers each, one actor
//! each, committed one actor's chain of about 8 decisions per transaction, where one process of 64
//! commits about 30. An actor's next chain comes a read later (its callers answered, they send
//! again). So while other writers are about, a batch of a single request waits up to [`LINGER`]
//! for a second one; that wait is shorter than the one for the lock it saves.
//!
//! - *Other writers* show in the positions: a batch whose first position is not right after the
//!   last one this appender stored came after another writer's. [`ENTER_AFTER`] such batches in
//!   a row make it linger, [`LEAVE_AFTER`] batches in a row right behind its own stop it.
//! - *Nobody waits for it*: an append others wait on (a chain holding turns that other processes
//!   wait for, or a resend) is urgent and never lingers: a wait would only delay them, and their
//!   next chain with it.

use std::time::Duration;

/// The longest a lone request waits for a second one.
pub(super) const LINGER: Duration = Duration::from_millis(1);

/// Batches in a row that came after another writer's before lingering.
const ENTER_AFTER: u32 = 2;

/// Batches in a row right behind this appender's own before lingering no more.
const LEAVE_AFTER: u32 = 8;

/// Whether a lone request waits for company: while other writers are about.
#[derive(Debug, Default)]
pub(super) struct Linger {
    others_about: bool,
    after_others_in_a_row: u32,
    after_own_in_a_row: u32,
    /// The last position this appender stored.
    last_written: Option<i64>,
}

impl Linger {
    /// Whether a batch of one request nobody waits for should wait for company now.
    pub(super) fn now(&self) -> bool {
        self.others_about
    }

    /// A batch committed, storing `stored` (each fresh append's first and last position).
    pub(super) fn committed(&mut self, stored: &[(i64, i64)]) {
        let first = stored.iter().map(|&(first, _)| first).min();
        let previous = self.last_written;
        if let Some(last) = stored.iter().map(|&(_, last)| last).max() {
            self.last_written = Some(last);
        }
        // Nothing stored, or nothing before to compare with: no news.
        let (Some(previous), Some(first)) = (previous, first) else {
            return;
        };
        if first > previous + 1 {
            self.after_others_in_a_row += 1;
            self.after_own_in_a_row = 0;
            if self.after_others_in_a_row >= ENTER_AFTER {
                self.others_about = true;
            }
        } else {
            self.after_own_in_a_row += 1;
            self.after_others_in_a_row = 0;
            if self.after_own_in_a_row >= LEAVE_AFTER {
                self.others_about = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch storing the ten events from `first`.
    fn ten(first: i64) -> [(i64, i64); 1] {
        [(first, first + 9)]
    }

    #[test]
    fn a_lone_writer_never_lingers() {
        let mut linger = Linger::default();
        for batch in 0..100 {
            linger.committed(&ten(batch * 10 + 1));
            assert!(!linger.now(), "batch {batch}");
        }
    }

    #[test]
    fn batches_after_others_in_a_row_start_it_and_after_its_own_stop_it() {
        let mut linger = Linger::default();
        linger.committed(&ten(1));
        // One batch after another writer's is not yet a pattern.
        linger.committed(&ten(20));
        assert!(!linger.now());
        linger.committed(&ten(30));
        linger.committed(&ten(50));
        assert!(
            !linger.now(),
            "the count restarts after a batch right behind its own"
        );
        linger.committed(&[(80, 89), (70, 79)]);
        assert!(linger.now());
        let mut next = 90;
        for _ in 0..LEAVE_AFTER - 1 {
            linger.committed(&ten(next));
            next += 10;
        }
        linger.committed(&ten(next + 5));
        next += 15;
        assert!(linger.now(), "one batch after others restarts the count");
        for _ in 0..LEAVE_AFTER {
            assert!(linger.now());
            linger.committed(&ten(next));
            next += 10;
        }
        assert!(!linger.now());
    }

    #[test]
    fn batches_storing_nothing_change_nothing() {
        let mut linger = Linger::default();
        linger.committed(&ten(1));
        linger.committed(&ten(20));
        linger.committed(&[]);
        linger.committed(&ten(40));
        assert!(linger.now(), "the empty batch did not break the run");
    }
}
