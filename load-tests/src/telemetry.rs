//! The run's own Prometheus recorder: what the library records, read back for the report.

use std::net::SocketAddr;

use dcb_runtime::metrics::{
    APPEND_ATTEMPTS_TOTAL, APPEND_BATCH_SIZE, APPEND_CONFLICTS_TOTAL, APPEND_DURATION_SECONDS,
    APPEND_LEADERSHIPS_TOTAL, APPENDS_SENT_TOTAL, COMMAND_RETRIES_TOTAL,
    FORWARDED_COMMANDS_SERVED_TOTAL, FORWARDED_COMMANDS_TOTAL, LEASES_TOTAL, READ_DURATION_SECONDS,
    STORE_ERRORS_TOTAL,
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};

/// Installs the one global recorder; with `addr`, it also serves `/metrics` there for as long as
/// the process runs (call inside the tokio runtime).
pub(crate) fn install(addr: Option<SocketAddr>) -> anyhow::Result<PrometheusHandle> {
    let Some(addr) = addr else {
        let handle = dcb_runtime::metrics::prometheus_builder()?.install_recorder()?;
        dcb_runtime::metrics::describe();
        return Ok(handle);
    };
    let handle = dcb_runtime::metrics::install_prometheus(addr)
        .map_err(|e| anyhow::anyhow!("cannot serve /metrics on {addr}: {e}"))?;
    eprintln!("serving Prometheus metrics on http://{addr}/metrics");
    Ok(handle)
}

/// The library's counters and histogram sums at one moment. The recorder lives as long as the
/// process (a sweep runs several scenarios in one), so a run reports the difference of two.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    pub(crate) conflicts: f64,
    pub(crate) append_attempts: f64,
    pub(crate) retries: f64,
    /// Failed store operations (transient ones were retried).
    pub(crate) store_errors: f64,
    pub(crate) batch_sum: f64,
    pub(crate) batch_count: f64,
    pub(crate) append_seconds_sum: f64,
    pub(crate) append_count: f64,
    pub(crate) read_seconds_sum: f64,
    pub(crate) read_count: f64,
    /// Conflicts caused by another process's append (`dcb_append_conflicts_total`).
    #[serde(default)]
    pub(crate) conflicts_other_process: f64,
    /// Turns on keys contended by several processes (`dcb_leases_total`), by event.
    #[serde(default)]
    pub(crate) leases_taken: f64,
    #[serde(default)]
    pub(crate) leases_handed_over: f64,
    #[serde(default)]
    pub(crate) leases_lost: f64,
    #[serde(default)]
    pub(crate) leases_seen: f64,
    /// Commands sent to the process owning their key (`dcb_forwarded_commands_total`), by
    /// outcome, and those served for other processes.
    #[serde(default)]
    pub(crate) forwarded_committed: f64,
    #[serde(default)]
    pub(crate) forwarded_run_here: f64,
    #[serde(default)]
    pub(crate) forwarded_no_answer: f64,
    #[serde(default)]
    pub(crate) forwarded_served: f64,
    /// Appends sent to the elected appender (`dcb_appends_sent_total`), by outcome, and the
    /// times a process became it (`dcb_append_leaderships_total`).
    #[serde(default)]
    pub(crate) sent_written: f64,
    #[serde(default)]
    pub(crate) sent_failed: f64,
    #[serde(default)]
    pub(crate) leaderships: f64,
}

impl Snapshot {
    pub(crate) fn take(handle: &PrometheusHandle) -> Self {
        let text = handle.render();
        let (batch_sum, batch_count) = histogram_sum_count(&text, APPEND_BATCH_SIZE);
        let (append_seconds_sum, append_count) =
            histogram_sum_count(&text, APPEND_DURATION_SECONDS);
        let (read_seconds_sum, read_count) = histogram_sum_count(&text, READ_DURATION_SECONDS);
        Self {
            conflicts: counter_sum(&text, APPEND_ATTEMPTS_TOTAL, Some(("result", "conflict"))),
            append_attempts: counter_sum(&text, APPEND_ATTEMPTS_TOTAL, None),
            retries: counter_sum(&text, COMMAND_RETRIES_TOTAL, None),
            store_errors: counter_sum(&text, STORE_ERRORS_TOTAL, None),
            batch_sum,
            batch_count,
            append_seconds_sum,
            append_count,
            read_seconds_sum,
            read_count,
            conflicts_other_process: counter_sum(
                &text,
                APPEND_CONFLICTS_TOTAL,
                Some(("source", "other_process")),
            ),
            leases_taken: counter_sum(&text, LEASES_TOTAL, Some(("event", "taken"))),
            leases_handed_over: counter_sum(&text, LEASES_TOTAL, Some(("event", "handed_over"))),
            leases_lost: counter_sum(&text, LEASES_TOTAL, Some(("event", "lost"))),
            leases_seen: counter_sum(&text, LEASES_TOTAL, Some(("event", "seen"))),
            forwarded_committed: counter_sum(
                &text,
                FORWARDED_COMMANDS_TOTAL,
                Some(("outcome", "committed")),
            ),
            forwarded_run_here: counter_sum(
                &text,
                FORWARDED_COMMANDS_TOTAL,
                Some(("outcome", "run_here")),
            ),
            forwarded_no_answer: counter_sum(
                &text,
                FORWARDED_COMMANDS_TOTAL,
                Some(("outcome", "no_answer")),
            ),
            forwarded_served: counter_sum(&text, FORWARDED_COMMANDS_SERVED_TOTAL, None),
            sent_written: counter_sum(&text, APPENDS_SENT_TOTAL, Some(("outcome", "written"))),
            sent_failed: counter_sum(&text, APPENDS_SENT_TOTAL, Some(("outcome", "failed"))),
            leaderships: counter_sum(&text, APPEND_LEADERSHIPS_TOTAL, None),
        }
    }

    /// What happened between `earlier` and `self`.
    pub(crate) fn since(self, earlier: Self) -> Self {
        Self {
            conflicts: self.conflicts - earlier.conflicts,
            append_attempts: self.append_attempts - earlier.append_attempts,
            retries: self.retries - earlier.retries,
            store_errors: self.store_errors - earlier.store_errors,
            batch_sum: self.batch_sum - earlier.batch_sum,
            batch_count: self.batch_count - earlier.batch_count,
            append_seconds_sum: self.append_seconds_sum - earlier.append_seconds_sum,
            append_count: self.append_count - earlier.append_count,
            read_seconds_sum: self.read_seconds_sum - earlier.read_seconds_sum,
            read_count: self.read_count - earlier.read_count,
            conflicts_other_process: self.conflicts_other_process - earlier.conflicts_other_process,
            leases_taken: self.leases_taken - earlier.leases_taken,
            leases_handed_over: self.leases_handed_over - earlier.leases_handed_over,
            leases_lost: self.leases_lost - earlier.leases_lost,
            leases_seen: self.leases_seen - earlier.leases_seen,
            forwarded_committed: self.forwarded_committed - earlier.forwarded_committed,
            forwarded_run_here: self.forwarded_run_here - earlier.forwarded_run_here,
            forwarded_no_answer: self.forwarded_no_answer - earlier.forwarded_no_answer,
            forwarded_served: self.forwarded_served - earlier.forwarded_served,
            sent_written: self.sent_written - earlier.sent_written,
            sent_failed: self.sent_failed - earlier.sent_failed,
            leaderships: self.leaderships - earlier.leaderships,
        }
    }

    /// The sum of two processes' differences.
    pub(crate) fn plus(self, other: Self) -> Self {
        Self {
            conflicts: self.conflicts + other.conflicts,
            append_attempts: self.append_attempts + other.append_attempts,
            retries: self.retries + other.retries,
            store_errors: self.store_errors + other.store_errors,
            batch_sum: self.batch_sum + other.batch_sum,
            batch_count: self.batch_count + other.batch_count,
            append_seconds_sum: self.append_seconds_sum + other.append_seconds_sum,
            append_count: self.append_count + other.append_count,
            read_seconds_sum: self.read_seconds_sum + other.read_seconds_sum,
            read_count: self.read_count + other.read_count,
            conflicts_other_process: self.conflicts_other_process + other.conflicts_other_process,
            leases_taken: self.leases_taken + other.leases_taken,
            leases_handed_over: self.leases_handed_over + other.leases_handed_over,
            leases_lost: self.leases_lost + other.leases_lost,
            leases_seen: self.leases_seen + other.leases_seen,
            forwarded_committed: self.forwarded_committed + other.forwarded_committed,
            forwarded_run_here: self.forwarded_run_here + other.forwarded_run_here,
            forwarded_no_answer: self.forwarded_no_answer + other.forwarded_no_answer,
            forwarded_served: self.forwarded_served + other.forwarded_served,
            sent_written: self.sent_written + other.sent_written,
            sent_failed: self.sent_failed + other.sent_failed,
            leaderships: self.leaderships + other.leaderships,
        }
    }

    /// Failed append conditions per append attempt.
    pub(crate) fn conflict_rate(&self) -> f64 {
        ratio(self.conflicts, self.append_attempts).unwrap_or(0.0)
    }
}

pub(crate) fn ratio(part: f64, whole: f64) -> Option<f64> {
    (whole > 0.0).then(|| part / whole)
}

/// `(sum, count)` of an unlabelled histogram in a rendered exposition (0 if not recorded yet).
fn histogram_sum_count(text: &str, name: &str) -> (f64, f64) {
    let value = |suffix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{suffix} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (value("_sum"), value("_count"))
}

/// The sum of a counter's series in a rendered exposition, optionally those with a label value.
fn counter_sum(text: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| label.is_none_or(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
