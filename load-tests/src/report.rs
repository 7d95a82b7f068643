//! Latency recording and the final report (human summary and JSON).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use uuid::Uuid;

use crate::chaos::{Accounting, Chaos};
use crate::progress::Sample;
use crate::run::ShareResult;
use crate::telemetry::{Snapshot, ratio};

/// Latencies in microseconds, 1 µs to 60 s at 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(us);
}

#[derive(Serialize, Debug, Default, Clone, Copy)]
pub(crate) struct LatencyMs {
    pub(crate) p50: f64,
    pub(crate) p95: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    pub(crate) mean: f64,
}

impl LatencyMs {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// The JSON report of a timed run.
#[derive(Serialize, Debug, Default)]
pub(crate) struct Report {
    pub(crate) scenario: String,
    pub(crate) processes: usize,
    /// Concurrent callers, in all processes together.
    pub(crate) concurrency: usize,
    /// Command actors per process.
    pub(crate) actors: usize,
    pub(crate) keys: usize,
    pub(crate) skew: f64,
    pub(crate) seed: u64,
    pub(crate) duration_s: f64,
    /// Commands sent: committed + rejected + errors.
    pub(crate) commands: u64,
    pub(crate) committed: u64,
    /// Refused by a business rule (a valid answer, not an error).
    pub(crate) rejected: u64,
    /// Failed append conditions (each one retried or, after the last attempt, an error).
    pub(crate) conflicts: u64,
    pub(crate) retries: u64,
    /// Failed store operations, transient ones (retried) included: `dcb_store_errors_total`.
    pub(crate) store_errors: u64,
    pub(crate) errors: u64,
    /// Errors by the `outcome` label of `dcb_commands_total`.
    pub(crate) errors_by_outcome: BTreeMap<String, u64>,
    /// Committed commands per second.
    pub(crate) throughput_per_s: f64,
    /// Committed plus rejected commands per second.
    pub(crate) decisions_per_s: f64,
    /// Failed append conditions per append attempt.
    pub(crate) conflict_rate: f64,
    pub(crate) latency_ms: LatencyMs,
    /// Counted with SQL over the `events` table after the run.
    pub(crate) invariant_violations: i64,
    pub(crate) events_in_store: i64,
    /// Mean appends per dcb_append transaction (group commit).
    pub(crate) mean_batch_size: Option<f64>,
    /// Mean duration of one dcb_append transaction, in ms.
    pub(crate) mean_append_transaction_ms: Option<f64>,
    /// Mean duration of one read, in ms.
    pub(crate) mean_read_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) baseline_tps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ratio: Option<f64>,
    /// The fault injected with `--chaos`, and how many times (backends killed, restarts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) chaos: Option<Chaos>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) chaos_injected: Option<u64>,
    /// Under `--chaos`: acknowledged, acknowledged_missing, duplicates, unacknowledged_stored.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub(crate) accounting: Option<Accounting>,
    /// One sample per second (per process when several ran: summed rates, worst p99).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) timeline: Vec<Sample>,
    #[serde(skip)]
    pub(crate) first_errors: Vec<String>,
    #[serde(skip)]
    pub(crate) sent_ids: Vec<Uuid>,
    #[serde(skip)]
    pub(crate) acked_ids: Vec<Uuid>,
}

impl Report {
    /// Merges what each process did. Throughput is over the longest process's duration.
    pub(crate) fn merge(scenario: &str, shares: Vec<ShareResult>) -> Self {
        let mut latencies = histogram();
        let mut metrics = Snapshot::default();
        let mut report = Report {
            scenario: scenario.to_owned(),
            processes: shares.len(),
            ..Report::default()
        };
        for share in shares {
            report.committed += share.committed;
            report.rejected += share.rejected;
            report.errors += share.errors;
            for (outcome, n) in share.errors_by_outcome {
                *report.errors_by_outcome.entry(outcome).or_insert(0) += n;
            }
            report.first_errors.extend(share.first_errors);
            report.duration_s = report.duration_s.max(share.duration_s);
            for (value, count) in share.latency_us {
                latencies.saturating_record_n(value, count);
            }
            metrics = metrics.plus(share.metrics);
            merge_timeline(&mut report.timeline, &share.timeline);
            report.sent_ids.extend(share.sent_ids);
            report.acked_ids.extend(share.acked_ids);
        }
        report.commands = report.committed + report.rejected + report.errors;
        report.throughput_per_s = report.committed as f64 / report.duration_s.max(1e-9);
        report.decisions_per_s =
            (report.committed + report.rejected) as f64 / report.duration_s.max(1e-9);
        report.latency_ms = LatencyMs::of(&latencies);
        report.with_metrics(metrics)
    }

    /// Adds what the library's own metrics counted.
    pub(crate) fn with_metrics(mut self, m: Snapshot) -> Self {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let whole = |x: f64| x.round().max(0.0) as u64;
        self.conflicts = whole(m.conflicts);
        self.retries = whole(m.retries);
        self.store_errors = whole(m.store_errors);
        self.conflict_rate = m.conflict_rate();
        self.mean_batch_size = ratio(m.batch_sum, m.batch_count);
        self.mean_append_transaction_ms =
            ratio(m.append_seconds_sum, m.append_count).map(|s| s * 1000.0);
        self.mean_read_ms = ratio(m.read_seconds_sum, m.read_count).map(|s| s * 1000.0);
        self
    }

    /// Whether the run failed: a violated invariant, an error, or (under chaos) an acknowledged
    /// command lost or a command stored twice.
    pub(crate) fn failure(&self) -> Option<String> {
        let a = self.accounting.unwrap_or_default();
        let failed = self.invariant_violations > 0
            || self.errors > 0
            || a.acknowledged_missing > 0
            || a.duplicates > 0;
        failed.then(|| {
            format!(
                "{} invariant violations, {} errors, {} acknowledged but missing, {} duplicates",
                self.invariant_violations, self.errors, a.acknowledged_missing, a.duplicates
            )
        })
    }

    pub(crate) fn print(&self) {
        println!("scenario             {}", self.scenario);
        println!(
            "concurrency          {} caller(s) in {} process(es), {} actor(s) each; {} key(s), skew {}",
            self.concurrency, self.processes, self.actors, self.keys, self.skew
        );
        println!(
            "duration             {:.1} s (seed {})",
            self.duration_s, self.seed
        );
        println!(
            "commands             {} ({} committed, {} rejected by a rule, {} errors)",
            self.commands, self.committed, self.rejected, self.errors
        );
        for (outcome, n) in &self.errors_by_outcome {
            println!("  errors: {outcome:<12} {n}");
        }
        for message in &self.first_errors {
            println!("  e.g. {message}");
        }
        println!(
            "conflicts            {} failed append conditions ({:.1} % of appends), {} retries",
            self.conflicts,
            self.conflict_rate * 100.0,
            self.retries
        );
        if self.store_errors > 0 {
            println!(
                "store errors         {} failed reads or appends, retried until the deadline",
                self.store_errors
            );
        }
        println!(
            "throughput           {:.0} committed/s ({:.0} decided/s)",
            self.throughput_per_s, self.decisions_per_s
        );
        let l = self.latency_ms;
        println!(
            "latency (ms)         p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
            l.p50, l.p95, l.p99, l.max
        );
        if let (Some(b), Some(r)) = (self.baseline_tps, self.ratio) {
            println!(
                "baseline             {b:.0} plain inserts/s at the same concurrency; ratio {r:.2}x"
            );
        }
        if let (Some(b), Some(t)) = (self.mean_batch_size, self.mean_append_transaction_ms) {
            println!(
                "group commit         {b:.1} appends per transaction on average, {t:.2} ms each"
            );
        }
        if let Some(r) = self.mean_read_ms {
            println!("reads                {r:.2} ms on average");
        }
        println!("events in store      {}", self.events_in_store);
        if let (Some(chaos), Some(a)) = (self.chaos, self.accounting) {
            println!(
                "chaos                {chaos:?}, injected {} time(s): {} acknowledged, {} of them \
                 missing, {} duplicates, {} stored for commands that answered an error",
                self.chaos_injected.unwrap_or(0),
                a.acknowledged,
                a.acknowledged_missing,
                a.duplicates,
                a.unacknowledged_stored
            );
        }
        println!(
            "invariant violations {} (counted with SQL over the events table)",
            self.invariant_violations
        );
    }
}

/// Adds `other`'s samples to `into`, second by second: rates and counts add up, p99 is the worse.
fn merge_timeline(into: &mut Vec<Sample>, other: &[Sample]) {
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

pub(crate) fn write_json(path: Option<&Path>, value: &impl Serialize) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    match path {
        Some(p) => {
            std::fs::write(p, json + "\n")
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
            eprintln!("report written to {}", p.display());
        }
        None => println!("{json}"),
    }
    Ok(())
}
