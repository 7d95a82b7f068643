//! The timeline of a run: one sample per second, taken by the progress sampler, merged over
//! processes, reported in the JSON and charted.

use serde::{Deserialize, Serialize};

use crate::telemetry::ratio;

/// One second of a run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Sample {
    /// Seconds since the start, at the end of the interval.
    pub(crate) t_s: f64,
    pub(crate) committed_per_s: f64,
    /// Committed plus rejected per second.
    pub(crate) decided_per_s: f64,
    pub(crate) conflicts: f64,
    pub(crate) append_attempts: f64,
    pub(crate) p99_ms: f64,
}

impl Sample {
    /// Failed append conditions per append attempt in this interval.
    pub(crate) fn conflict_rate(&self) -> f64 {
        ratio(self.conflicts, self.append_attempts).unwrap_or(0.0)
    }
}

/// Adds `other`'s samples to `into`, second by second: rates and counts add up, p99 is the worse.
pub(crate) fn merge(into: &mut Vec<Sample>, other: &[Sample]) {
    for (i, s) in other.iter().enumerate() {
        match into.get_mut(i) {
            None => into.push(*s),
            Some(t) => {
                t.t_s = t.t_s.max(s.t_s);
                t.committed_per_s += s.committed_per_s;
                t.decided_per_s += s.decided_per_s;
                t.conflicts += s.conflicts;
                t.append_attempts += s.append_attempts;
                t.p99_ms = t.p99_ms.max(s.p99_ms);
            }
        }
    }
}
