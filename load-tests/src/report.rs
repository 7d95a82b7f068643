//! Latency recording and the final report (human summary and JSON).

use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::{RunArgs, baseline, telemetry};

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
    pub(crate) concurrency: usize,
    pub(crate) duration_s: f64,
    pub(crate) commands: u64,
    pub(crate) committed: u64,
    pub(crate) rejected: u64,
    pub(crate) conflicts: u64,
    pub(crate) retries: u64,
    pub(crate) errors: u64,
    pub(crate) throughput_per_s: f64,
    pub(crate) latency_ms: LatencyMs,
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
}

impl Report {
    /// Adds what the library's own metrics measured: batch sizes, transaction and read times.
    pub(crate) fn with_store_metrics(mut self, metrics: &PrometheusHandle) -> Self {
        use dcb_runtime::metrics::{
            APPEND_BATCH_SIZE, APPEND_DURATION_SECONDS, READ_DURATION_SECONDS,
        };
        self.mean_batch_size = telemetry::histogram_mean(metrics, APPEND_BATCH_SIZE);
        self.mean_append_transaction_ms =
            telemetry::histogram_mean(metrics, APPEND_DURATION_SECONDS).map(|s| s * 1000.0);
        self.mean_read_ms =
            telemetry::histogram_mean(metrics, READ_DURATION_SECONDS).map(|s| s * 1000.0);
        self
    }

    /// Counts the store's events, measures the baseline if asked, prints the summary, writes the
    /// JSON report, and fails the run on invariant violations or errors.
    pub(crate) async fn conclude(
        mut self,
        args: &RunArgs,
        db: &dcb_runtime::testing::TestDatabase,
    ) -> anyhow::Result<()> {
        let client = db.client().await?;
        self.events_in_store = client
            .query_one("SELECT count(*) FROM events", &[])
            .await?
            .get(0);
        if args.baseline {
            eprintln!("baseline: plain inserts for {:?}", args.duration);
            let tps = baseline::plain_insert_tps(db.url(), args.concurrency, args.duration).await?;
            self.baseline_tps = Some(tps);
            self.ratio = Some(self.throughput_per_s / tps);
        }
        self.print();
        write_json(args.json.as_deref(), &self)?;
        if self.invariant_violations > 0 || self.errors > 0 {
            anyhow::bail!(
                "{} invariant violations, {} errors",
                self.invariant_violations,
                self.errors
            );
        }
        Ok(())
    }

    pub(crate) fn print(&self) {
        println!("scenario            {}", self.scenario);
        println!(
            "concurrency         {} caller(s) in {} process(es)",
            self.concurrency, self.processes
        );
        println!("duration            {:.1} s", self.duration_s);
        println!(
            "commands            {} ({} committed, {} rejected, {} errors)",
            self.commands, self.committed, self.rejected, self.errors
        );
        println!(
            "conflicts           {} failed append conditions, {} retries",
            self.conflicts, self.retries
        );
        println!(
            "throughput          {:.0} committed/s",
            self.throughput_per_s
        );
        let l = self.latency_ms;
        println!(
            "latency (ms)        p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
            l.p50, l.p95, l.p99, l.max
        );
        if let (Some(b), Some(r)) = (self.baseline_tps, self.ratio) {
            println!(
                "baseline            {b:.0} plain inserts/s at the same concurrency; ratio {r:.2}x"
            );
        }
        if let (Some(b), Some(t)) = (self.mean_batch_size, self.mean_append_transaction_ms) {
            println!(
                "group commit        {b:.1} appends per transaction on average, {t:.2} ms each"
            );
        }
        if let Some(r) = self.mean_read_ms {
            println!("reads               {r:.2} ms on average");
        }
        println!("events in store     {}", self.events_in_store);
        println!(
            "invariant violations {} (counted with SQL over the events table)",
            self.invariant_violations
        );
    }
}

pub(crate) fn write_json(path: Option<&Path>, value: &impl Serialize) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    match path {
        Some(p) => {
            std::fs::write(p, json + "\n")?;
            eprintln!("report written to {}", p.display());
        }
        None => println!("{json}"),
    }
    Ok(())
}
