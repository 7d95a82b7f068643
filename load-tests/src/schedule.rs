//! `--rate`: the open-loop schedule of one process. Command k is due at `start + k / rate`, for
//! every k due before the end of `--duration`, whether earlier commands have answered or not.
//!
//! The process's callers share the schedule: a free caller takes the next command and waits
//! until it is due. When it takes one already due, every caller was busy at the due time: the
//! command is sent late (as soon as a caller is free, in due order, so the schedule never slows
//! down to the system's pace), and is timed from when it was due all the same. Commands still
//! waiting for a caller when the duration is over are not sent: the report counts them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub(crate) struct Schedule {
    start: Instant,
    rate: f64,
    duration: Duration,
    due: u64,
    next: AtomicU64,
    late: AtomicU64,
}

/// A command taken off the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    /// When it is (or was) due.
    pub(crate) due_at: Instant,
    /// Taken after it was due: no caller was free for it in time.
    pub(crate) late: bool,
}

impl Schedule {
    /// `rate` commands per second (above 0) from `start` for `duration`.
    pub(crate) fn new(start: Instant, rate: f64, duration: Duration) -> Self {
        // k is due before the end while k / rate < duration, that is k < rate * duration.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let due = (rate * duration.as_secs_f64()).ceil().max(0.0) as u64;
        Self {
            start,
            rate,
            duration,
            due,
            next: AtomicU64::new(0),
            late: AtomicU64::new(0),
        }
    }

    /// Commands due before the end of the run.
    pub(crate) fn due(&self) -> u64 {
        self.due
    }

    /// Commands taken after they were due.
    pub(crate) fn late(&self) -> u64 {
        self.late.load(Ordering::Relaxed)
    }

    /// The next command for a caller free at `now`; `None` when every due command is taken, or
    /// when the next one is overdue and the run is over (it stays unsent).
    pub(crate) fn take(&self, now: Instant) -> Option<Slot> {
        if now >= self.start + self.duration {
            // Over: whatever is still waiting for a caller is not sent (a slot already taken
            // and waited for is, even if its wake-up comes a little after the end).
            return None;
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        if k >= self.due {
            return None;
        }
        let due_at = self.start + Duration::from_secs_f64(k as f64 / self.rate);
        let late = now > due_at;
        if late {
            self.late.fetch_add(1, Ordering::Relaxed);
        }
        Some(Slot { due_at, late })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::Schedule;

    #[test]
    fn commands_are_due_at_the_rate_until_the_end() {
        let start = Instant::now();
        let s = Schedule::new(start, 200.0, Duration::from_secs(2));
        assert_eq!(s.due(), 400);
        let slots: Vec<_> = std::iter::from_fn(|| s.take(start)).collect();
        assert_eq!(slots.len(), 400);
        assert_eq!(slots[0].due_at, start);
        assert_eq!(slots[1].due_at - start, Duration::from_millis(5));
        assert_eq!(slots[399].due_at - start, Duration::from_millis(1995));
        assert!(slots.iter().all(|s| !s.late));
        assert_eq!(s.late(), 0);
        // A rate that does not divide the duration: k / rate < 1 s for k = 0, 1, 2.
        assert_eq!(Schedule::new(start, 2.5, Duration::from_secs(1)).due(), 3);
    }

    #[test]
    fn a_command_taken_after_its_time_is_late_and_none_is_taken_after_the_end() {
        let start = Instant::now();
        let s = Schedule::new(start, 10.0, Duration::from_secs(1));
        let at = |ms| start + Duration::from_millis(ms);
        assert!(!s.take(at(0)).unwrap().late);
        // The second is due at 100 ms: taken at 250 ms it is late, and so is the third (200 ms).
        assert!(s.take(at(250)).unwrap().late);
        assert!(s.take(at(250)).unwrap().late);
        assert!(!s.take(at(250)).unwrap().late);
        assert_eq!(s.late(), 2);
        assert_eq!(s.take(at(1000)), None);
        // Not taken after the end: 4 of the 10 were taken.
        assert_eq!(s.next.load(std::sync::atomic::Ordering::Relaxed), 4);
    }
}
