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

/// Counter: commands by `decision` and `outcome` ([`crate::CommandOutcome::label`]: committed,
/// rejected, conflict_exhausted, overloaded, timeout, shutting_down, error), one per answer.
pub const COMMANDS_TOTAL: &str = "dcb_commands_total";
/// Counter: conditional appends by `decision` and `result` (committed, conflict, error).
pub const APPEND_ATTEMPTS_TOTAL: &str = "dcb_append_attempts_total";
/// Counter: commands decided again after a conflict, by `decision`.
pub const COMMAND_RETRIES_TOTAL: &str = "dcb_command_retries_total";
/// Histogram: seconds from `execute` to its answer, by `decision`.
pub const COMMAND_DURATION_SECONDS: &str = "dcb_command_duration_seconds";
/// Histogram: seconds of each back-off after a conflict or a transient store error.
pub const BACKOFF_SECONDS: &str = "dcb_backoff_seconds";
/// Gauge: commands inside `execute`.
pub const INFLIGHT_COMMANDS: &str = "dcb_inflight_commands";
/// Gauge: commands held by command actors (queued, running or backing off), sampled each second.
pub const QUEUE_DEPTH: &str = "dcb_queue_depth";
/// Counter: command actors restarted by the supervisor.
pub const ACTOR_RESTARTS_TOTAL: &str = "dcb_actor_restarts_total";
/// Gauge: the store's connection pool by `state` (size, available, waiting), sampled each second.
pub const POOL_CONNECTIONS: &str = "dcb_pool_connections";

/// Counter: failed store operations by `operation` (read, append) and `reason` (see
/// [`crate::StoreError::reason`]); transient ones are retried, so this counts failures that
/// commands survived as well as those they did not.
pub const STORE_ERRORS_TOTAL: &str = "dcb_store_errors_total";

/// Gauge: a subscription's checkpoint (the last position handled), by `subscription`.
pub const SUBSCRIPTION_POSITION: &str = "dcb_subscription_position";
/// Gauge: the store's head minus a subscription's checkpoint, by `subscription`.
pub const SUBSCRIPTION_LAG_EVENTS: &str = "dcb_subscription_lag_events";
/// Gauge: seconds from the append of the last event a subscription handled to its checkpoint's
/// advance (database clock), by `subscription`.
pub const SUBSCRIPTION_LAG_SECONDS: &str = "dcb_subscription_lag_seconds";
/// Counter: events handed to a subscription's handler and checkpointed, by `subscription`.
pub const SUBSCRIPTION_EVENTS_TOTAL: &str = "dcb_subscription_events_total";
/// Counter: a subscription's failures by `subscription` and `kind` (handler, store); a handler
/// failure is retried, and stops the subscription after its attempts.
pub const SUBSCRIPTION_ERRORS_TOTAL: &str = "dcb_subscription_errors_total";
/// Gauge: 1 on the process whose consumer holds the subscription, 0 elsewhere, by `subscription`.
pub const SUBSCRIPTION_ACTIVE: &str = "dcb_subscription_active";

/// Counter: commands whose append met a conflict (as `dcb_append_attempts_total{result="conflict"}`
/// counts them), by `source`: `other_process` when an event another process appended (or one
/// appended without a runtime's append id, by hand or by another tool) invalidated the read, else
/// `same_process` (another actor of this process, on a
/// boundary whose commands hold different keys).
pub const APPEND_CONFLICTS_TOTAL: &str = "dcb_append_conflicts_total";
/// Counter: turns on keys contended by several processes (a session advisory lock held from a
/// chain's read to its append), by `event`: `taken` (free at once), `handed_over` (after waiting
/// for another process's turn to end), `lost` (not taken or not kept: the session failed or the
/// wait timed out; the chain ran without it), `seen` (an append made without turns found another
/// process holding the turn on one of its keys: this process takes turns there from then on).
pub const LEASES_TOTAL: &str = "dcb_leases_total";
/// Gauge: keys this process coordinates with other processes (found contended by another
/// process within the last seconds), sampled each second.
pub const LEASED_KEYS: &str = "dcb_leased_keys";
/// Counter: commands this process sent to the process owning their key, by `decision` and
/// `outcome`: `committed` there, `run_here` (not committed there: run here, under the same
/// idempotency key), `no_answer` (none in time: run here).
pub const FORWARDED_COMMANDS_TOTAL: &str = "dcb_forwarded_commands_total";
/// Counter: commands other processes sent to this one, as the owner of their key, that it ran.
pub const FORWARDED_COMMANDS_SERVED_TOTAL: &str = "dcb_forwarded_commands_served_total";
/// Counter: ownerships of contended keys, by `event`: `taken`, `given_back` (its lease lapsed).
pub const OWNERSHIPS_TOTAL: &str = "dcb_ownerships_total";
/// Gauge: contended keys this process owns (their forwarded commands run here).
pub const OWNED_KEYS: &str = "dcb_owned_keys";
/// Counter: waits of a lone append for company in the appender while other processes write to
/// the store, by `outcome`: `company` (another append came within 1 ms), `alone`.
pub const APPEND_LINGERS_TOTAL: &str = "dcb_append_lingers_total";
/// Counter: appends this process sent to the appender its store's processes elected, by
/// `outcome`: `written` (it answered), `failed` (no answer: this process wrote them itself, under
/// the same append ids). Only with `PostgresStoreBuilder::shared_appender`.
pub const APPENDS_SENT_TOTAL: &str = "dcb_appends_sent_total";
/// Counter: times this process became the appender its store's processes write through.
pub const APPEND_LEADERSHIPS_TOTAL: &str = "dcb_append_leaderships_total";
/// Every metric name, for checks that an exposition is complete.
pub const ALL: &[&str] = &[
    COMMANDS_TOTAL,
    APPEND_ATTEMPTS_TOTAL,
    COMMAND_RETRIES_TOTAL,
    COMMAND_DURATION_SECONDS,
    READ_DURATION_SECONDS,
    APPEND_DURATION_SECONDS,
    BACKOFF_SECONDS,
    APPEND_BATCH_SIZE,
    EVENTS_APPENDED_TOTAL,
    INFLIGHT_COMMANDS,
    QUEUE_DEPTH,
    ACTOR_RESTARTS_TOTAL,
    POOL_CONNECTIONS,
    STORE_ERRORS_TOTAL,
    SUBSCRIPTION_POSITION,
    SUBSCRIPTION_LAG_EVENTS,
    SUBSCRIPTION_LAG_SECONDS,
    SUBSCRIPTION_EVENTS_TOTAL,
    SUBSCRIPTION_ERRORS_TOTAL,
    SUBSCRIPTION_ACTIVE,
    APPEND_CONFLICTS_TOTAL,
    LEASES_TOTAL,
    LEASED_KEYS,
    FORWARDED_COMMANDS_TOTAL,
    FORWARDED_COMMANDS_SERVED_TOTAL,
    OWNERSHIPS_TOTAL,
    OWNED_KEYS,
    APPEND_LINGERS_TOTAL,
    APPENDS_SENT_TOTAL,
    APPEND_LEADERSHIPS_TOTAL,
];

/// Where [`install_prometheus`] listens unless told otherwise: loopback only.
pub const DEFAULT_ADDR: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

/// Bucket bounds of the `_seconds` histograms.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bucket bounds of `dcb_append_batch_size`.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A Prometheus builder with this crate's histogram buckets (histograms, never summaries).
///
/// # Errors
///
/// Never in practice: the bucket lists are non-empty.
pub fn prometheus_builder()
-> Result<metrics_exporter_prometheus::PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(APPEND_BATCH_SIZE.into()), BATCH_BUCKETS)
}

/// Installs the global Prometheus recorder and serves `/metrics` on `addr` (use
/// [`DEFAULT_ADDR`] for loopback). Call inside a tokio runtime; returns a handle that renders the
/// exposition.
///
/// # Errors
///
/// The address cannot be bound or a recorder is already installed.
pub fn install_prometheus(
    addr: std::net::SocketAddr,
) -> Result<metrics_exporter_prometheus::PrometheusHandle, metrics_exporter_prometheus::BuildError>
{
    let (recorder, exporter) = prometheus_builder()?.with_http_listener(addr).build()?;
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    tokio::spawn(exporter);
    describe();
    Ok(handle)
}

/// Registers descriptions and units, for exporters that show them.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
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
    describe_counter!(
        COMMANDS_TOTAL,
        Unit::Count,
        "Commands by decision and outcome."
    );
    describe_counter!(
        APPEND_ATTEMPTS_TOTAL,
        Unit::Count,
        "Conditional appends by decision and result."
    );
    describe_counter!(
        COMMAND_RETRIES_TOTAL,
        Unit::Count,
        "Commands decided again after a conflict."
    );
    describe_histogram!(
        COMMAND_DURATION_SECONDS,
        Unit::Seconds,
        "Time from execute to its answer."
    );
    describe_histogram!(
        BACKOFF_SECONDS,
        Unit::Seconds,
        "Back-off after a conflict or a transient store error."
    );
    describe_counter!(
        STORE_ERRORS_TOTAL,
        Unit::Count,
        "Failed store operations by operation and reason (transient ones are retried)."
    );
    describe_gauge!(INFLIGHT_COMMANDS, Unit::Count, "Commands inside execute.");
    describe_gauge!(QUEUE_DEPTH, Unit::Count, "Commands held by command actors.");
    describe_counter!(
        ACTOR_RESTARTS_TOTAL,
        Unit::Count,
        "Command actors restarted by the supervisor."
    );
    describe_gauge!(
        SUBSCRIPTION_POSITION,
        Unit::Count,
        "A subscription's checkpoint: the last position handled."
    );
    describe_gauge!(
        SUBSCRIPTION_LAG_EVENTS,
        Unit::Count,
        "The store's head minus a subscription's checkpoint."
    );
    describe_gauge!(
        SUBSCRIPTION_LAG_SECONDS,
        Unit::Seconds,
        "Seconds from the append of the last event a subscription handled to its checkpoint."
    );
    describe_counter!(
        SUBSCRIPTION_EVENTS_TOTAL,
        Unit::Count,
        "Events handled and checkpointed by a subscription."
    );
    describe_counter!(
        SUBSCRIPTION_ERRORS_TOTAL,
        Unit::Count,
        "A subscription's failures by kind (handler, store)."
    );
    describe_gauge!(
        SUBSCRIPTION_ACTIVE,
        Unit::Count,
        "1 on the process whose consumer holds the subscription."
    );
    describe_counter!(
        APPEND_CONFLICTS_TOTAL,
        Unit::Count,
        "Conflicting appends by source: another process or this one."
    );
    describe_counter!(
        LEASES_TOTAL,
        Unit::Count,
        "Turns on keys contended by several processes: taken, handed over, lost."
    );
    describe_gauge!(
        LEASED_KEYS,
        Unit::Count,
        "Keys coordinated with other processes."
    );
    describe_counter!(
        FORWARDED_COMMANDS_TOTAL,
        Unit::Count,
        "Commands sent to the process owning their key, by outcome."
    );
    describe_counter!(
        FORWARDED_COMMANDS_SERVED_TOTAL,
        Unit::Count,
        "Commands run for other processes, as the owner of their key."
    );
    describe_counter!(
        APPEND_LINGERS_TOTAL,
        Unit::Count,
        "Waits of a lone append for company while other processes write, by outcome."
    );
    describe_counter!(
        OWNERSHIPS_TOTAL,
        Unit::Count,
        "Ownerships of contended keys: taken, given back."
    );
    describe_gauge!(OWNED_KEYS, Unit::Count, "Contended keys this process owns.");
    describe_gauge!(
        POOL_CONNECTIONS,
        Unit::Count,
        "Connection pool by state: size, available, waiting."
    );
}

/// Counts a store failure met by `operation` (`read` or `append`), survived or not.
pub(crate) fn record_store_error(operation: &'static str, e: &crate::StoreError) {
    metrics::counter!(STORE_ERRORS_TOTAL, "operation" => operation, "reason" => e.reason())
        .increment(1);
}
