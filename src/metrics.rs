//! Metric names (a contract with the Grafana dashboard and the load tests) and where they are
//! recorded. Recording goes through the `metrics` facade: without an installed recorder it costs
//! next to nothing.

/// Histogram: appends written per `dcb_append` transaction.
pub const APPEND_BATCH_SIZE: &str = "dcb_append_batch_size";
/// Histogram: seconds per `dcb_append` transaction (one batch), from send to answer.
pub const APPEND_DURATION_SECONDS: &str = "dcb_append_duration_seconds";
/// Histogram: seconds per read.
pub const READ_DURATION_SECONDS: &str = "dcb_read_duration_seconds";
/// Counter: events stored (replays not counted).
pub const EVENTS_APPENDED_TOTAL: &str = "dcb_events_appended_total";

/// Registers descriptions and units, for exporters that show them.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_histogram!(
        APPEND_BATCH_SIZE,
        Unit::Count,
        "Appends written per dcb_append transaction (group commit)."
    );
    describe_histogram!(
        APPEND_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of one dcb_append transaction."
    );
    describe_histogram!(
        READ_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of one read."
    );
    describe_counter!(
        EVENTS_APPENDED_TOTAL,
        Unit::Count,
        "Events stored by appends."
    );
}
