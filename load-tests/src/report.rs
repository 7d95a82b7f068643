//! The report of a timed run: merged from the processes' shares, shown as a human summary
//! (its `Display`) and serialized as the JSON report.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use uuid::Uuid;

use crate::baseline::Baseline;
use crate::chaos::{Accounting, Chaos};
use crate::cpu;
use crate::database::KeptDatabase;
use crate::latency::{self, LatencyMs};
use crate::share::ShareResult;
use crate::telemetry::{Snapshot, ratio};
use crate::timeline::{self, Sample};

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
    /// Of `conflicts`, those caused by another process's append (the rest: this process's).
    pub(crate) conflicts_other_process: u64,
    pub(crate) retries: u64,
    /// Turns on keys contended by several processes, summed over the processes.
    pub(crate) leases: Leases,
    pub(crate) forwarded: Forwarded,
    pub(crate) shared_appender: SharedAppender,
    /// What each process did, in process order.
    pub(crate) per_process: Vec<ProcessFigures>,
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
    /// `--rate`: the commands per second asked for, in all processes together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rate_per_s: Option<f64>,
    /// `--rate`: commands due before the end of the run (rate x duration).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) due: Option<u64>,
    /// `--rate`: commands sent after they were due, because every caller was busy then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) late: Option<u64>,
    /// `--rate`: commands due but never sent, still waiting for a free caller at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) unsent: Option<u64>,
    /// `--rate`: latency from when each command was due (not when it was sent) to its answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) scheduled_latency_ms: Option<LatencyMs>,
    /// CPU seconds (user + system) of the harness process(es) while the callers ran.
    pub(crate) cpu_client_s: Option<f64>,
    /// CPU seconds of the run's PostgreSQL backends while the callers ran; null when the server
    /// is not on this machine.
    pub(crate) cpu_server_s: Option<f64>,
    /// `cpu_client_s` in ms per committed command.
    pub(crate) cpu_client_ms_per_decision: Option<f64>,
    /// `cpu_server_s` in ms per committed command; null when the server is not on this machine.
    pub(crate) cpu_server_ms_per_decision: Option<f64>,
    /// Counted with SQL over the `events` table after the run.
    pub(crate) invariant_violations: i64,
    pub(crate) events_in_store: i64,
    /// Of `events_in_store`, those the scenario's set-up stored before the run (courses, books
    /// and readers, accounts): every other one was decided by a command.
    pub(crate) setup_events: i64,
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
    /// With `--baseline`: CPU ms of the harness per plain insert.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) baseline_cpu_client_ms_per_insert: Option<Option<f64>>,
    /// With `--baseline`: CPU ms of the inserting backends per plain insert (null when the
    /// server is not on this machine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) baseline_cpu_server_ms_per_insert: Option<Option<f64>>,
    /// The fault injected with `--chaos`, and how many times (backends killed, restarts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) chaos: Option<Chaos>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) chaos_injected: Option<u64>,
    /// Under `--chaos`: acknowledged, acknowledged_missing, duplicates, unacknowledged_stored.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub(crate) accounting: Option<Accounting>,
    /// With `--projection`: what the projection did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) projection: Option<crate::projection::ProjectionReport>,
    /// With `--keep-database`: the database left on the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) kept_database: Option<KeptDatabase>,
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

/// `dcb_leases_total` by event, over the run.
#[derive(Serialize, Debug, Default, Clone, Copy)]
pub(crate) struct Leases {
    /// Free at once.
    pub(crate) taken: u64,
    /// After waiting for another process's turn to end.
    pub(crate) handed_over: u64,
    /// Not taken or not kept (the chain ran without it).
    pub(crate) lost: u64,
    /// Turns another process held, seen by an append made without turns (turns are taken on
    /// those keys from then on).
    pub(crate) seen: u64,
}

/// `dcb_forwarded_commands_total` by outcome, and `dcb_forwarded_commands_served_total`, over
/// the run.
#[derive(Serialize, Debug, Default, Clone, Copy)]
pub(crate) struct Forwarded {
    /// Sent to the process owning their key and committed there.
    pub(crate) committed: u64,
    /// Sent, not committed there: run by their own process.
    pub(crate) run_here: u64,
    /// Sent, no answer in time: run by their own process.
    pub(crate) no_answer: u64,
    /// Run for another process, as the owner of their key.
    pub(crate) served: u64,
}

/// `dcb_appends_sent_total` by outcome, and `dcb_append_leaderships_total`, over the run.
#[derive(Serialize, Debug, Default, Clone, Copy)]
pub(crate) struct SharedAppender {
    /// Sent to the elected appender and written by it.
    pub(crate) written: u64,
    /// Sent, not answered: written by their own process.
    pub(crate) failed: u64,
    /// Times a process became the elected appender.
    pub(crate) leaderships: u64,
}

/// One process's part of the run.
#[derive(Serialize, Debug, Default, Clone)]
pub(crate) struct ProcessFigures {
    pub(crate) process: usize,
    pub(crate) committed: u64,
    pub(crate) errors: u64,
    pub(crate) throughput_per_s: f64,
    pub(crate) p99_ms: f64,
    /// Killed with SIGKILL during the run (`--chaos kill-owner`): its figures are unknown.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) killed: bool,
}

impl Report {
    /// Merges what each process did. Throughput is over the longest process's duration.
    pub(crate) fn merge(scenario: &str, shares: Vec<ShareResult>, killed: Option<usize>) -> Self {
        let (mut latencies, mut scheduled) = (latency::histogram(), latency::histogram());
        let mut metrics = Snapshot::default();
        let mut report = Report {
            scenario: scenario.to_owned(),
            processes: shares.len() + usize::from(killed.is_some()),
            ..Report::default()
        };
        // Summed over the processes; unknown if unknown for any.
        let (mut cpu_client_s, mut cpu_server_s) = (Some(0.0), Some(0.0));
        let (mut due, mut late, mut sent) = (0, 0, 0);
        for share in shares {
            let mut own = latency::histogram();
            for &(value, count) in &share.latency_us {
                own.saturating_record_n(value, count);
            }
            report.per_process.push(ProcessFigures {
                process: share.process,
                committed: share.committed,
                errors: share.errors,
                throughput_per_s: share.committed as f64 / share.duration_s.max(1e-9),
                p99_ms: LatencyMs::of(&own).p99,
                killed: false,
            });
            cpu_client_s = cpu_client_s.zip(share.cpu_client_s).map(|(a, b)| a + b);
            cpu_server_s = cpu_server_s.zip(share.cpu_server_s).map(|(a, b)| a + b);
            due += share.due;
            late += share.late;
            sent += share.committed + share.rejected + share.errors;
            for (value, count) in share.scheduled_latency_us {
                scheduled.saturating_record_n(value, count);
            }
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
            timeline::merge(&mut report.timeline, &share.timeline);
            report.sent_ids.extend(share.sent_ids);
            report.acked_ids.extend(share.acked_ids);
        }
        if let Some(process) = killed {
            report.per_process.push(ProcessFigures {
                process,
                killed: true,
                ..ProcessFigures::default()
            });
            report.per_process.sort_by_key(|p| p.process);
        }
        report.commands = report.committed + report.rejected + report.errors;
        report.throughput_per_s = report.committed as f64 / report.duration_s.max(1e-9);
        report.decisions_per_s =
            (report.committed + report.rejected) as f64 / report.duration_s.max(1e-9);
        report.latency_ms = LatencyMs::of(&latencies);
        if due > 0 {
            report.due = Some(due);
            report.late = Some(late);
            report.unsent = Some(due.saturating_sub(sent));
            report.scheduled_latency_ms = Some(LatencyMs::of(&scheduled));
        }
        report.with_cpu(cpu_client_s, cpu_server_s);
        report.with_metrics(metrics)
    }

    /// Sets the CPU figures of the run (after `committed`).
    pub(crate) fn with_cpu(&mut self, client_s: Option<f64>, server_s: Option<f64>) {
        self.cpu_client_s = client_s;
        self.cpu_server_s = server_s;
        self.cpu_client_ms_per_decision = cpu::ms_per(client_s, self.committed);
        self.cpu_server_ms_per_decision = cpu::ms_per(server_s, self.committed);
    }

    /// Sets the `--baseline` figures (after `throughput_per_s`).
    pub(crate) fn with_baseline(&mut self, b: Baseline) {
        self.baseline_tps = Some(b.tps);
        self.ratio = Some(self.throughput_per_s / b.tps);
        self.baseline_cpu_client_ms_per_insert = Some(b.cpu_client_ms_per_insert);
        self.baseline_cpu_server_ms_per_insert = Some(b.cpu_server_ms_per_insert);
    }

    /// Adds what the library's own metrics counted.
    pub(crate) fn with_metrics(mut self, m: Snapshot) -> Self {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let whole = |x: f64| x.round().max(0.0) as u64;
        self.conflicts = whole(m.conflicts);
        self.conflicts_other_process = whole(m.conflicts_other_process);
        self.leases = Leases {
            taken: whole(m.leases_taken),
            handed_over: whole(m.leases_handed_over),
            lost: whole(m.leases_lost),
            seen: whole(m.leases_seen),
        };
        self.forwarded = Forwarded {
            committed: whole(m.forwarded_committed),
            run_here: whole(m.forwarded_run_here),
            no_answer: whole(m.forwarded_no_answer),
            served: whole(m.forwarded_served),
        };
        self.shared_appender = SharedAppender {
            written: whole(m.sent_written),
            failed: whole(m.sent_failed),
            leaderships: whole(m.leaderships),
        };
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
        let mismatches = self.projection.map_or(0, |p| p.mismatches);
        let failed = self.invariant_violations > 0
            || mismatches > 0
            || self.errors > 0
            || a.acknowledged_missing > 0
            || a.duplicates > 0;
        failed.then(|| {
            format!(
                "{} invariant violations, {} errors, {} acknowledged but missing, {} duplicates, \
                 {mismatches} read-model mismatches",
                self.invariant_violations, self.errors, a.acknowledged_missing, a.duplicates
            )
        })
    }
}

/// The human summary, one figure a line.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "scenario             {}", self.scenario)?;
        writeln!(
            f,
            "concurrency          {} caller(s) in {} process(es), {} actor(s) each; {} key(s), skew {}",
            self.concurrency, self.processes, self.actors, self.keys, self.skew
        )?;
        writeln!(
            f,
            "duration             {:.1} s (seed {})",
            self.duration_s, self.seed
        )?;
        writeln!(
            f,
            "commands             {} ({} committed, {} rejected by a rule, {} errors)",
            self.commands, self.committed, self.rejected, self.errors
        )?;
        for (outcome, n) in &self.errors_by_outcome {
            writeln!(f, "  errors: {outcome:<12} {n}")?;
        }
        for message in &self.first_errors {
            writeln!(f, "  e.g. {message}")?;
        }
        writeln!(
            f,
            "conflicts            {} failed append conditions ({:.1} % of appends), {} retries",
            self.conflicts,
            self.conflict_rate * 100.0,
            self.retries
        )?;
        if self.conflicts > 0 {
            writeln!(
                f,
                "  by source          {} by another process, {} by this one",
                self.conflicts_other_process,
                self.conflicts - self.conflicts_other_process.min(self.conflicts)
            )?;
        }
        let Leases {
            taken,
            handed_over,
            lost,
            seen,
        } = self.leases;
        if taken + handed_over + lost + seen > 0 {
            writeln!(
                f,
                "turns across procs  {taken} taken at once, {handed_over} handed over by another \
                 process, {lost} lost; {seen} seen held by another process by appends without turns"
            )?;
        }
        let Forwarded {
            committed,
            run_here,
            no_answer,
            served,
        } = self.forwarded;
        if committed + run_here + no_answer + served > 0 {
            writeln!(
                f,
                "forwarded           {committed} committed by the key's owner, {run_here} run here \
                 after its answer, {no_answer} run here without one; {served} served as owner"
            )?;
        }
        let SharedAppender {
            written,
            failed,
            leaderships,
        } = self.shared_appender;
        if written + failed > 0 {
            writeln!(
                f,
                "shared appender     {written} appends written by the elected appender, {failed} \
                 here without its answer; {leaderships} leadership(s) taken"
            )?;
        }
        if self.per_process.len() > 1 {
            for p in &self.per_process {
                if p.killed {
                    writeln!(
                        f,
                        "  process {:<10} killed (SIGKILL) during the run",
                        p.process
                    )?;
                } else {
                    writeln!(
                        f,
                        "  process {:<10} {:.0} committed/s, p99 {:.2} ms, {} errors",
                        p.process, p.throughput_per_s, p.p99_ms, p.errors
                    )?;
                }
            }
        }
        if self.store_errors > 0 {
            writeln!(
                f,
                "store errors         {} failed reads or appends, retried until the deadline",
                self.store_errors
            )?;
        }
        writeln!(
            f,
            "throughput           {:.0} committed/s ({:.0} decided/s)",
            self.throughput_per_s, self.decisions_per_s
        )?;
        let l = self.latency_ms;
        writeln!(
            f,
            "latency (ms)         p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
            l.p50, l.p95, l.p99, l.max
        )?;
        if let (Some(rate), Some(due), Some(late), Some(unsent)) =
            (self.rate_per_s, self.due, self.late, self.unsent)
        {
            writeln!(
                f,
                "rate                 {rate} commands/s asked: {due} due, {} sent ({late} late: \
                 every caller busy when due), {unsent} never sent",
                self.commands
            )?;
        }
        if let Some(l) = self.scheduled_latency_ms {
            writeln!(
                f,
                "scheduled latency (ms) p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2} (from when due)",
                l.p50, l.p95, l.p99, l.max
            )?;
        }
        if let (Some(b), Some(r)) = (self.baseline_tps, self.ratio) {
            writeln!(
                f,
                "baseline             {b:.0} plain inserts/s at the same concurrency; ratio {r:.2}x"
            )?;
        }
        let ms = |x: Option<f64>| x.map_or("n/a".to_owned(), |x| format!("{x:.3}"));
        write!(
            f,
            "cpu (ms/decision)    client {} server {}",
            ms(self.cpu_client_ms_per_decision),
            ms(self.cpu_server_ms_per_decision)
        )?;
        if let (Some(client), Some(server)) = (
            self.baseline_cpu_client_ms_per_insert,
            self.baseline_cpu_server_ms_per_insert,
        ) {
            write!(
                f,
                "; baseline: client {} server {} per insert",
                ms(client),
                ms(server)
            )?;
        }
        if self.cpu_server_ms_per_decision.is_none() {
            write!(f, " (server: not on this machine, or not sampled)")?;
        }
        writeln!(f)?;
        if let (Some(b), Some(t)) = (self.mean_batch_size, self.mean_append_transaction_ms) {
            writeln!(
                f,
                "group commit         {b:.1} appends per transaction on average, {t:.2} ms each"
            )?;
        }
        if let Some(r) = self.mean_read_ms {
            writeln!(f, "reads                {r:.2} ms on average")?;
        }
        write!(f, "events in store      {}", self.events_in_store)?;
        if self.setup_events > 0 {
            write!(f, " ({} set up before the run)", self.setup_events)?;
        }
        writeln!(f)?;
        if let (Some(chaos), Some(a)) = (self.chaos, self.accounting) {
            writeln!(
                f,
                "chaos                {chaos:?}, injected {} time(s): {} acknowledged, {} of them \
                 missing, {} duplicates, {} stored for commands that answered an error",
                self.chaos_injected.unwrap_or(0),
                a.acknowledged,
                a.acknowledged_missing,
                a.duplicates,
                a.unacknowledged_stored
            )?;
        }
        if let Some(p) = self.projection {
            write!(
                f,
                "projection           {}: {} events, lag p50 {:.1} ms p99 {:.1} ms (append to projected), \
                 {:.0} events/s, head reached {:.0} ms after the callers; read model vs fold \
                 over events: {} mismatches ({} applied twice)",
                p.read_model.map_or("?", crate::projection::ReadModel::name),
                p.events_projected,
                p.lag_p50_ms,
                p.lag_p99_ms,
                p.events_per_s,
                p.drain_ms,
                p.mismatches,
                p.reapplied
            )?;
            if p.projectors_killed > 0 {
                write!(f, "; {} projectors killed", p.projectors_killed)?;
            }
            writeln!(f)?;
        }
        write!(
            f,
            "invariant violations {} (counted with SQL over the events table)",
            self.invariant_violations
        )
    }
}
