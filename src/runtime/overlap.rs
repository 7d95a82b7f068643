//! How densely the commands spanning several actors overlap: the share of them that arrive while
//! a running chain holds one of their keys, as a moving average over the last few dozen.
//!
//! Routing gathers such commands on one actor while they overlap densely (transfers among 100
//! accounts: spread over four actors they wait for each other's keys chain by chain, and ran
//! about a third as fast), and spreads them by their own key while they rarely do (enrollments
//! in 1,000 courses, which four actors decide in parallel). The measure reads the same in both
//! modes (the keys held by running chains, wherever they run), so the choice does not undo
//! itself.

use std::sync::atomic::{AtomicU32, Ordering};

/// The average's scale: 1.0 is `SCALE`.
const SCALE: u32 = 1 << 16;
/// Each observation weighs 1/`WINDOW`.
const WINDOW: u32 = 32;
/// Gathered above this share, spread below the lower one (the gap keeps the mode from flapping).
const GATHER_ABOVE: u32 = SCALE / 4;
const SPREAD_BELOW: u32 = SCALE / 8;

#[derive(Default)]
pub(crate) struct Overlap {
    /// The share of recent arrivals that found one of their keys held, scaled by `SCALE`.
    share: AtomicU32,
    gathered: std::sync::atomic::AtomicBool,
}

impl Overlap {
    /// Notes an arrival (`held`: one of its keys was held by a running chain); whether such
    /// commands are to gather on one actor now.
    pub(crate) fn gather(&self, held: bool) -> bool {
        let target = if held { SCALE } else { 0 };
        // Races between arrivals lose an observation now and then: an estimate, no more.
        let old = self.share.load(Ordering::Relaxed);
        let new = if target > old {
            old + (target - old) / WINDOW
        } else {
            old - (old - target) / WINDOW
        };
        self.share.store(new, Ordering::Relaxed);
        let gathered = self.gathered.load(Ordering::Relaxed);
        let now = if gathered {
            new >= SPREAD_BELOW
        } else {
            new > GATHER_ABOVE
        };
        if now != gathered {
            self.gathered.store(now, Ordering::Relaxed);
        }
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_overlap_gathers_sparse_overlap_spreads_and_the_mode_holds_in_between() {
        let overlap = Overlap::default();
        assert!(!overlap.gather(false), "starts spread");
        // Every arrival finds a key held: gathered within a few dozen.
        let gathered_after = (1..200).find(|_| overlap.gather(true)).expect("gathers");
        assert!(gathered_after < 40, "{gathered_after}");
        // One arrival in five (20 %) finds a key held: between the bounds, gathered stays.
        for i in 0..500 {
            assert!(overlap.gather(i % 5 == 0), "at {i}");
        }
        // None does: spread again.
        assert!((0..200).any(|_| !overlap.gather(false)));
        // And 20 % keeps it spread.
        for i in 0..500 {
            assert!(!overlap.gather(i % 5 == 0), "at {i}");
        }
    }
}
