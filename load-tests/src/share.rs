//! One process's share of a run: what it is asked to do and what it did. The parent merges the
//! results of all processes into the report; a child process sends its result as JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::telemetry::Snapshot;
use crate::timeline::Sample;

/// What one process is asked to do.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Share {
    pub(crate) process: usize,
    pub(crate) callers: usize,
    /// Commands to send in all (else run for the duration).
    pub(crate) commands: Option<u64>,
    /// Open loop: this process's commands per second (its part of `--rate`).
    pub(crate) rate: Option<f64>,
}

/// What one process did: merged by the parent when several processes run.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct ShareResult {
    /// Which of `--processes` this is.
    #[serde(default)]
    pub(crate) process: usize,
    pub(crate) committed: u64,
    pub(crate) rejected: u64,
    pub(crate) errors: u64,
    /// Errors by the `outcome` label they count under in `dcb_commands_total`.
    pub(crate) errors_by_outcome: BTreeMap<String, u64>,
    /// The first few error messages, for the summary.
    pub(crate) first_errors: Vec<String>,
    pub(crate) duration_s: f64,
    /// Command latencies in µs as `(value, count)` pairs.
    pub(crate) latency_us: Vec<(u64, u64)>,
    /// Under `--rate`: latencies in µs from when each command was due, as `(value, count)`.
    pub(crate) scheduled_latency_us: Vec<(u64, u64)>,
    /// Under `--rate`: commands due before the end of the run.
    pub(crate) due: u64,
    /// Under `--rate`: commands sent after they were due, every caller being busy then.
    pub(crate) late: u64,
    /// CPU seconds of this process while its callers ran; `None` without `/proc`.
    pub(crate) cpu_client_s: Option<f64>,
    /// CPU seconds of this process's PostgreSQL backends while its callers ran; `None` when the
    /// server is not on this machine.
    pub(crate) cpu_server_s: Option<f64>,
    pub(crate) metrics: Snapshot,
    pub(crate) timeline: Vec<Sample>,
    /// Under `--chaos`: the id of the event each command sent would store, and those of the
    /// commands acknowledged as committed.
    pub(crate) sent_ids: Vec<Uuid>,
    pub(crate) acked_ids: Vec<Uuid>,
}
